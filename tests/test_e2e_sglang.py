"""End to end over real HTTP: the openai client -> sluice -> SGLang HTTP adapter -> sluice sim-server."""
from __future__ import annotations

import concurrent.futures
import http.client
import json

import openai
import pytest

from controlplane.config import EngineConfig
from controlplane.engines import build_engines
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from sluice.server import create_app
from tests.gateway_fixtures import KEYS, make_config
from tests.servers import ServerThread
from tests.test_gateway import wait_until


@pytest.fixture
def stack(tmp_path):
    sim = SimEngine("sim", load_profile("h100-llama3.1-8b"), seed=1, speedup=5.0)
    with ServerThread(make_sglang_app(sim, model_name="meta-llama/Llama-3.1-8B-Instruct")) as engine_server:
        config = make_config(tmp_path, ["gpu0"])
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=engine_server.url)]
        app, sluice = create_app(config, build_engines(config))
        with ServerThread(app) as gateway:
            yield gateway, sluice, sim


def test_openai_client_through_sluice_to_sglang(stack):
    gateway, sluice, sim = stack
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    r = client.chat.completions.create(model="sluice-default", messages=[{"role": "user", "content": "a b c d"}],
                                       max_tokens=8)
    assert r.choices[0].finish_reason in ("length", "stop")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.choices[0].message.content
    chunks = list(client.completions.create(model="sluice-default", prompt="hello world", max_tokens=6,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and usage.completion_tokens <= 6 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # the engine (through /v1/loads) is what sluice sees
    assert sluice.pool.infos["gpu0"].kind == "sglang"
    wait_until(lambda: "gpu0" in sluice.pool.loads)


def test_concurrent_tenants_through_sglang(stack):
    gateway, sluice, _ = stack

    def one(i):
        tenant = ("acme", "globex")[i % 2]
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEYS[tenant], max_retries=0)
        r = client.completions.create(model="sluice-default", prompt=f"request {i}", max_tokens=4)
        return r.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        counts = list(pool.map(one, range(18)))
    assert all(1 <= c <= 4 for c in counts)
    wait_until(lambda: len(sluice.stats.requests) == 18)
    assert {r["tenant"] for r in sluice.stats.requests} == {"acme", "globex"}
    assert all(r["status"] == "ok" and r["engine"] == "gpu0" for r in sluice.stats.requests)


def test_client_disconnect_aborts_at_the_sglang_engine(stack):
    gateway, sluice, sim = stack
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "sluice-default", "prompt": "tell me everything", "max_tokens": 4000, "stream": True}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.readline()
    conn.sock.close()
    conn.close()
    wait_until(lambda: sim.core.stats.aborted == 1, timeout=10)  # seen by the engine behind SGLang's API
    wait_until(lambda: sluice.pool.core.in_flight() == 0)
    row = next(r for r in sluice.stats.requests if r["status"] == "aborted")
    assert row["error"] == "client_disconnected" and row["completion_tokens"] < 4000
