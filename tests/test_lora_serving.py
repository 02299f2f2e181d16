"""LoRA adapters while serving, over real HTTP on loopback: client -> sluice -> SGLang's HTTP API ->
engine. `model: "base:adapter"`, an adapter alias or the tenant's own adapter reach SGLang's surface
as `lora_path`; an undeclared adapter is OpenAI's 404; sluice loads an adapter where the engine
lacks it (`/load_lora_adapter`, least recently used out), the engines report what they hold, and
dispatch sends an adapter's requests back where it is loaded (the audit re-derives those choices)."""
from __future__ import annotations

import json

import pytest

from controlplane.config import EngineConfig, TenantConfig, hash_key
from controlplane.core.policy import DispatchPolicy
from controlplane.engines import build_engines
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from replay.audit import audit_db
from sluice.server import create_app
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import KEYS, make_config
from tests.servers import ServerThread
from tests.test_gateway import raw, wait_until

KEYS = {**KEYS, "initech": "sk-test-initech"}


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _chat(gateway, tenant: str, model: str) -> tuple[int, dict, dict]:
    status, headers, data = raw(gateway, "POST", "/v1/chat/completions",
                                {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                                auth(tenant))
    return status, headers, json.loads(data)


def _row(sluice, rid: str) -> dict:
    wait_until(lambda: any(r["rid"] == rid for r in sluice.stats.requests))
    return next(r for r in sluice.stats.requests if r["rid"] == rid)


@pytest.fixture
def wire(tmp_path):
    """One SGLang server over a recording engine; the adapter is the server's own (no path)."""
    fake = FakeEngine("fake")
    with ServerThread(make_sglang_app(fake, model_name="llama")) as server:
        config = make_config(tmp_path, ["gpu0"])
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=server.url, model="llama")]
        config.models = {"llama": {"adapters": ["sql"], "adapter_aliases": {"sql-bot": "sql"}}}
        config.tenants.append(TenantConfig("initech", api_key_sha256=hash_key(KEYS["initech"]), adapter="llama:sql"))
        config.validate()
        app, sluice = create_app(config, build_engines(config))
        with ServerThread(app) as gateway:
            yield gateway, sluice, fake, server


def test_an_adapter_reaches_sglang_as_lora_path(wire):
    gateway, sluice, fake, server = wire
    for tenant, model, adapter in (("acme", "llama:sql", "sql"), ("acme", "sql-bot", "sql"), ("acme", "llama", None),
                                   ("initech", "llama", "sql"), ("initech", "llama:sql", "sql")):
        status, headers, body = _chat(gateway, tenant, model)
        assert status == 200 and body["model"] == model
        assert fake.submitted[-1].lora_path == adapter, (tenant, model)
        row = _row(sluice, headers["x-request-id"])
        assert (row["model"], row["pool"], row["adapter"]) == (model, "llama", adapter)
    status, _, body = _chat(gateway, "acme", "llama:nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"
    models = [m["id"] for m in json.loads(raw(gateway, "GET", "/v1/models", headers=auth("acme"))[2])["data"]]
    assert models == ["llama", "sluice-default", "llama:sql", "sql-bot"]
    # SGLang's native /generate takes it too, and the OpenAI model syntax without sluice
    status, _, _ = raw(server, "POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2},
                                                      "lora_path": "sql"})
    assert status == 200 and fake.submitted[-1].lora_path == "sql"
    status, _, _ = raw(server, "POST", "/v1/completions", {"model": "llama:other", "prompt": "hi", "max_tokens": 2})
    assert status == 200 and fake.submitted[-1].lora_path == "other"


@pytest.fixture
def sims(tmp_path):
    """Two SGLang servers over simulated engines holding one adapter at a time; sluice knows where
    each adapter is and loads it where it is missing; dispatch weighs the adapter load saved."""
    engines = [SimEngine(f"sim{i}", "h100-llama3.1-8b", seed=i, speedup=5.0, max_loaded_loras=1, lora_load_s=0.1)
               for i in range(2)]
    with ServerThread(make_sglang_app(engines[0], model_name="llama")) as s0, \
            ServerThread(make_sglang_app(engines[1], model_name="llama")) as s1:
        config = make_config(tmp_path, ["gpu0", "gpu1"], dispatch=DispatchPolicy({"ttft": 1.0, "adapter": 1.0}))
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=s0.url, model="llama"),
                          EngineConfig(name="gpu1", kind="sglang", url=s1.url, model="llama")]
        config.models = {"llama": {"adapters": {"sql": "/loras/sql", "chat": "/loras/chat"}}}
        config.validate()
        app, sluice = create_app(config, build_engines(config))
        with ServerThread(app) as gateway:
            wait_until(lambda: len(sluice.pool.loads) == 2, timeout=10)
            yield gateway, sluice, engines, (s0, s1)


def test_sluice_loads_an_adapter_and_sends_it_back_where_it_is(sims):
    gateway, sluice, engines, servers = sims
    by_name = {"gpu0": engines[0], "gpu1": engines[1]}
    status, headers, _ = _chat(gateway, "acme", "llama:sql")
    assert status == 200
    first = _row(sluice, headers["x-request-id"])["engine"]
    assert by_name[first].lora.names() == ["sql"]  # loaded by sluice through /load_lora_adapter
    url = servers[0] if first == "gpu0" else servers[1]
    cards = json.loads(raw(url, "GET", "/v1/models")[2])["data"]
    assert [(c["id"], c["root"], c["parent"]) for c in cards[1:]] == [("sql", "/loras/sql", "llama")]
    other = "gpu1" if first == "gpu0" else "gpu0"
    # both would load it, but on the first it would push sql out: the other one
    status, headers, _ = _chat(gateway, "acme", "llama:chat")
    assert status == 200 and _row(sluice, headers["x-request-id"])["engine"] == other
    wait_until(lambda: all(e.lora.names() for e in engines), timeout=10)
    for _ in range(3):  # every later request goes where its adapter is loaded
        for model, engine in (("llama:sql", first), ("llama:chat", other)):
            status, headers, _ = _chat(gateway, "globex", model)
            assert status == 200 and _row(sluice, headers["x-request-id"])["engine"] == engine
    assert by_name[first].lora.names() == ["sql"] and by_name[other].lora.names() == ["chat"]
    # the engines' own reports reach the core's index
    wait_until(lambda: sluice.pool.core.adapters.costs("sql", [first, other]) == [(0.5, True, False),
                                                                                 (0.5, False, True)], timeout=10)
    store = sluice.recorder.store
    wait_until(store.flush, timeout=10)  # a live server keeps recording: until a flush leaves nothing pending
    con = store.cursor()
    rows = con.execute("SELECT inputs FROM decisions WHERE kind = 'dispatch'").fetchall()
    lora = [json.loads(r[0]) for r in rows if json.loads(r[0]).get("adapter")]
    assert len(lora) == 8 and all(len(i["engine_adapter"]) == len(i["candidates"]) for i in lora)
    report = audit_db(con)
    assert report.ok and report.dispatch_rederived == 8, report.format()
