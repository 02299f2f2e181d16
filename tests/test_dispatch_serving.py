"""Locality-aware dispatch while serving, over real HTTP on loopback: the client -> sluice -> SGLang's
HTTP API -> two simulated engines. A prompt whose prefix sluice sent to one engine goes back to
that engine even when the other one is just as free, and the "why" read shows each candidate's
expected cached tokens and scores."""
from __future__ import annotations

import http.client
import json

import pytest

from controlplane.config import EngineConfig
from controlplane.core.policy import DispatchPolicy
from controlplane.engines import build_engines
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from sluice.server import create_app
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.servers import ServerThread
from tests.test_gateway import raw, wait_until

SYSTEM = " ".join(f"rule {i}: answer briefly and cite section {i * 7}." for i in range(200))  # ~8k characters
AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}


@pytest.fixture
def stack(tmp_path):
    sims = [SimEngine(f"sim{i}", load_profile("h100-llama3.1-8b"), seed=i, speedup=5.0) for i in range(2)]
    with ServerThread(make_sglang_app(sims[0], model_name="llama")) as s0, \
            ServerThread(make_sglang_app(sims[1], model_name="llama")) as s1:
        config = make_config(tmp_path, ["gpu0", "gpu1"],
                             dispatch=DispatchPolicy({"ttft": 1.0, "prefix": 2.0}, "prefix"))
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=s0.url),
                          EngineConfig(name="gpu1", kind="sglang", url=s1.url)]
        app, sluice = create_app(config, build_engines(config))
        with ServerThread(app) as gateway:
            wait_until(lambda: set(sluice.pool.loads) == {"gpu0", "gpu1"}, timeout=10)
            yield gateway, sluice


def _complete(gateway: ServerThread, prompt: str) -> str:
    status, headers, _ = raw(gateway, "POST", "/v1/completions",
                             {"model": "sluice-default", "prompt": prompt, "max_tokens": 4}, AUTH)
    assert status == 200
    return headers["x-request-id"]


def _why(gateway: ServerThread, rid: str) -> dict:
    status, _, data = raw(gateway, "GET", f"/admin/v1/requests/{rid}/why",
                          headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200
    return json.loads(data)


def test_a_repeated_prefix_goes_to_the_engine_that_holds_it(stack):
    gateway, sluice = stack
    core = sluice.pool.core
    # a long answer keeps gpu0 busy (both idle: the first engine takes it) ...
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "sluice-default", "prompt": "hold the line", "max_tokens": 3000, "ignore_eos": True,
         "stream": True}), headers={"Content-Type": "application/json", **AUTH})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.readline()
    assert len(core.engines["gpu0"].in_flight) == 1
    # ... so the first question with the long system prompt goes to gpu1
    first = _why(gateway, _complete(gateway, SYSTEM + " Question: what is rule 3?"))
    assert first["dispatch"]["engine"] == "gpu1"
    conn.sock.close()
    conn.close()
    # both engines idle again, and say so in their load reports
    wait_until(lambda: core.in_flight() == 0, timeout=10)
    wait_until(lambda: all(core.engines[n].reported_kv_tokens == 0 and core.engines[n].reported_waiting_tokens == 0
                           for n in ("gpu0", "gpu1")), timeout=10)
    # the second question shares the system prompt: it goes where that prefix is cached
    second = _why(gateway, _complete(gateway, SYSTEM + " Question: and rule 4?"))
    dispatch = second["dispatch"]
    assert dispatch["engine"] == "gpu1" and dispatch["weights"] == {"ttft": 1.0, "prefix": 2.0}
    by_engine = {c["engine"]: c for c in dispatch["candidates"]}
    assert by_engine["gpu0"]["cached_tokens"] == 0 and by_engine["gpu0"]["scores"]["prefix"] == 0
    assert by_engine["gpu1"]["cached_tokens"] >= 1500 and by_engine["gpu1"]["scores"]["prefix"] > 0
    assert [c["engine"] for c in dispatch["candidates"]] == ["gpu1", "gpu0"]  # the picker's order
    text = next(d["text"] for d in second["decisions"] if d["kind"] == "dispatch")
    assert "prompt tokens expected cached" in text and "2 x prefix" in text
    wait_until(lambda: any(r["rid"] == second["rid"] for r in sluice.stats.requests))
    assert next(r for r in sluice.stats.requests if r["rid"] == second["rid"])["engine"] == "gpu1"
