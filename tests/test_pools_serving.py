"""Model pools while serving, over real HTTP on loopback: the client -> sluice -> SGLang's HTTP API ->
two simulated engines serving two models. A request goes only to its model's engines; a tenant is
held to its allow-list (403) and an unknown model is OpenAI's 404; each pool has its own queue, so a
tenant flooding one model does not hold up another model's requests; one policy with per-pool
weights steers both cores; the rows, metrics, admin state and the audit name the pool."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import EngineConfig, TenantConfig, hash_key
from controlplane.core.policy import TenantPolicy
from controlplane.engines import build_engines
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from replay.audit import audit_db
from sluice.server import create_app
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.servers import ServerThread
from tests.test_admin_state import problems
from tests.test_gateway import raw, wait_until

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
KEYS = {**KEYS, "initech": "sk-test-initech"}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def stack(tmp_path):
    sims = [SimEngine(f"sim{i}", load_profile("h100-llama3.1-8b"), seed=i, speedup=2.0) for i in range(2)]
    with ServerThread(make_sglang_app(sims[0], model_name="llama")) as s0, \
            ServerThread(make_sglang_app(sims[1], model_name="qwen")) as s1:
        config = make_config(tmp_path, ["gpu0", "gpu1"], window=1)
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=s0.url, model="llama"),
                          EngineConfig(name="gpu1", kind="sglang", url=s1.url, model="qwen")]
        config.models = {"qwen": {"aliases": ["qwen-7b"]}}
        config.tenants.append(TenantConfig("initech", api_key_sha256=hash_key(KEYS["initech"]), models=["qwen-7b"]))
        config.policy = replace(config.policy, tenants={**config.policy.tenants,
                                                        "initech": TenantPolicy(1.0, weights={"qwen-7b": 3.0})})
        config.validate()
        app, sluice = create_app(config, build_engines(config))
        with ServerThread(app) as gateway:
            wait_until(lambda: {e for p in sluice.pools.values() for e in p.loads} == {"gpu0", "gpu1"}, timeout=10)
            yield gateway, sluice


def _complete(gateway, tenant: str, model: str, max_tokens: int = 4) -> tuple[int, dict, dict]:
    status, headers, data = raw(gateway, "POST", "/v1/completions",
                                {"model": model, "prompt": "hello there", "max_tokens": max_tokens}, auth(tenant))
    return status, headers, json.loads(data)


def _row(sluice, rid: str) -> dict:
    wait_until(lambda: any(r["rid"] == rid for r in sluice.stats.requests))
    return next(r for r in sluice.stats.requests if r["rid"] == rid)


def test_each_model_goes_to_its_own_pool(stack):
    gateway, sluice = stack
    assert list(sluice.pools) == ["llama", "qwen"]
    status, _, models = raw(gateway, "GET", "/v1/models", headers=auth("acme"))
    assert status == 200
    assert [m["id"] for m in json.loads(models)["data"]] == ["llama", "sluice-default", "qwen", "qwen-7b"]
    assert {m["owned_by"] for m in json.loads(models)["data"]} == {"sluice"}
    for model, engine, pool in (("llama", "gpu0", "llama"), ("sluice-default", "gpu0", "llama"),
                                ("qwen", "gpu1", "qwen"), ("qwen-7b", "gpu1", "qwen")):
        status, headers, body = _complete(gateway, "acme", model)
        assert status == 200 and body["model"] == model  # the client's own name comes back
        row = _row(sluice, headers["x-request-id"])
        assert (row["engine"], row["pool"], row["model"]) == (engine, pool, model)


def test_a_disallowed_model_is_403_and_an_unknown_one_404(stack):
    gateway, sluice = stack
    status, _, body = _complete(gateway, "initech", "llama")
    assert status == 403
    assert body["error"] == {"message": "The model 'llama' is not available to this API key",
                             "type": "permission_error", "param": "model", "code": "model_not_allowed"}
    status, _, body = _complete(gateway, "initech", "qwen")  # the pool's own name: the same model
    assert status == 200
    status, _, body = _complete(gateway, "acme", "mistral")
    assert status == 404 and body["error"]["code"] == "model_not_found" and body["error"]["type"] == "not_found_error"
    status, _, models = raw(gateway, "GET", "/v1/models", headers=auth("initech"))
    assert [m["id"] for m in json.loads(models)["data"]] == ["qwen", "qwen-7b"]
    assert raw(gateway, "GET", "/v1/models/llama", headers=auth("initech"))[0] == 403
    assert raw(gateway, "GET", "/v1/models/qwen-7b", headers=auth("initech"))[0] == 200
    rows = [r for r in sluice.stats.requests if r["tenant"] == "initech" and r["status"] == "rejected"]
    assert [(r["http_status"], r["error_code"], r["pool"]) for r in rows] == [(403, "model_not_allowed", None)]


def test_a_flood_on_one_model_does_not_queue_another(stack):
    """acme floods llama (window 1: one runs, the rest queue in llama's core); globex's qwen request
    is dispatched at its arrival (queue_ms exactly 0: the dispatch happened inside its admission)."""
    gateway, sluice = stack
    llama = sluice.pools["llama"].core
    with ThreadPoolExecutor(5) as pool:
        flood = [pool.submit(_complete, gateway, "acme", "llama", 256) for _ in range(5)]
        wait_until(lambda: llama.queued() >= 3, timeout=10)
        status, headers, _ = _complete(gateway, "globex", "qwen")
        assert status == 200
        assert llama.queued() >= 1  # the flood still waits in its own pool
        assert all(f.result(timeout=60)[0] == 200 for f in flood)
    quiet = _row(sluice, headers["x-request-id"])
    assert quiet["pool"] == "qwen" and quiet["queue_ms"] == 0.0
    flooded = [r for r in sluice.stats.requests if r["tenant"] == "acme" and r["pool"] == "llama"]
    assert len(flooded) == 5 and sum(r["queue_ms"] > 0 for r in flooded) >= 3


def test_one_policy_per_pool_weights_and_the_state(stack, tmp_path):
    gateway, sluice = stack
    assert sluice.pools["qwen"].core.policy.tenant("initech").weight == 3.0
    assert sluice.pools["llama"].core.policy.tenant("initech").weight == 1.0
    status, _, data = raw(gateway, "PATCH", "/admin/v1/policy",
                          {"changes": {"scheduler": "vtc", "tenants": {"acme": {"weights": {"llama": 5}}}},
                           "reason": "acme pays for llama"}, ADMIN_AUTH)
    assert status == 200, data
    for pool in sluice.pools.values():  # one policy, in both cores, same version
        assert pool.core.policy.version == sluice.policy.version == 2 and pool.core.scheduler.name == "vtc"
    assert sluice.pools["llama"].core.policy.tenant("acme").weight == 5
    assert sluice.pools["qwen"].core.policy.tenant("acme").weight == 2.0  # its base weight
    status, _, data = raw(gateway, "PATCH", "/admin/v1/policy",
                          {"changes": {"tenants": {"acme": {"weights": {"mistral": 2}}}}, "reason": "typo"}, ADMIN_AUTH)
    assert status == 422 and b"names no model pool" in data and sluice.policy.version == 2
    status, _, data = raw(gateway, "GET", "/admin/v1/state", headers=ADMIN_AUTH)
    state = json.loads(data)
    assert problems("/admin/v1/state", state) == []
    assert {e["name"]: e["pool"] for e in state["engines"]} == {"gpu0": "llama", "gpu1": "qwen"}
    pools = {p["name"]: p for p in state["pools"]}
    assert pools["qwen"]["aliases"] == ["qwen-7b"] and pools["llama"]["engines"] == ["gpu0"]
    weights = {p: {t["name"]: t["weight"] for t in pools[p]["tenants"]} for p in pools}
    assert weights["llama"]["acme"] == 5 and weights["qwen"]["acme"] == 2.0 and weights["qwen"]["initech"] == 3.0
    assert {t["name"]: t["weight"] for t in state["tenants"]}["acme"] == 2.0  # the base weight at the top


def test_rows_metrics_and_the_audit_name_the_pool(stack, tmp_path):
    gateway, sluice = stack
    for tenant, model in (("acme", "llama"), ("globex", "qwen"), ("acme", "qwen-7b"), ("globex", "llama")):
        assert _complete(gateway, tenant, model)[0] == 200
    wait_until(lambda: len(sluice.stats.requests) == 4)
    text = raw(gateway, "GET", "/metrics", headers=ADMIN_AUTH)[2].decode()
    ok = {(s.labels["tenant"], s.labels["pool"]): s.value for f in text_string_to_metric_families(text)
          for s in f.samples if s.name == "sluice_requests_total" and s.labels["outcome"] == "ok"}
    assert ok == {("acme", "llama"): 1, ("globex", "qwen"): 1, ("acme", "qwen"): 1, ("globex", "llama"): 1}
    store = sluice.recorder.store
    wait_until(store.flush, timeout=10)  # a live server keeps recording: until a flush leaves nothing pending
    con = store.cursor()
    pools = dict(con.execute("SELECT rid, pool FROM requests").fetchall())
    assert sorted(pools.values()) == ["llama", "llama", "qwen", "qwen"]
    dispatches = con.execute("SELECT rid, pool, engine, inputs FROM decisions WHERE kind = 'dispatch'").fetchall()
    members = {"llama": {"gpu0"}, "qwen": {"gpu1"}}
    assert len(dispatches) == 4
    for rid, pool, engine, inputs in dispatches:  # each chose among its own pool's engines only
        assert pool == pools[rid] and set(json.loads(inputs)["candidates"]) <= members[pool] and engine in members[pool]
    report = audit_db(con)
    assert report.ok and report.dispatch_rederived == 4, report.format()
