"""End to end over real HTTP: the openai client -> sluice -> SGLang HTTP adapter -> sluice sim-server."""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import socket
import time

import openai
import pytest
from uvicorn.protocols.http import httptools_impl

from controlplane.config import EngineConfig
from controlplane.engines import build_engines
from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from engine_adapter.sim.reply import VOCAB
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



@contextlib.contextmanager
def _slow_link_stack(tmp_path, monkeypatch, send_timeout_s: float = 60.0):
    """The stack with the gateway's sockets to its clients buffering ~8 KiB, not the megabytes
    loopback autotunes to (as on a slow link), so that uvicorn's own flow control engages within
    one long stream."""
    gateway_ports: set[int] = set()
    made = httptools_impl.HttpToolsProtocol.connection_made

    def small_send_buffer(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.getsockname()[1] in gateway_ports:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        made(self, transport)

    monkeypatch.setattr(httptools_impl.HttpToolsProtocol, "connection_made", small_send_buffer)
    sim = SimEngine("sim", load_profile("h100-llama3.1-8b"), seed=1, speedup=50.0)
    with ServerThread(make_sglang_app(sim, model_name="meta-llama/Llama-3.1-8B-Instruct")) as engine_server:
        config = make_config(tmp_path, ["gpu0"])
        config.engines = [EngineConfig(name="gpu0", kind="sglang", url=engine_server.url)]
        config.server.send_timeout_s = send_timeout_s
        app, sluice = create_app(config, build_engines(config))
        gateway = ServerThread(app)
        gateway_ports.add(gateway.port)
        with gateway:
            yield gateway, sluice, sim


def _long_stream(port: int, max_tokens: int) -> http.client.HTTPConnection:
    """A streamed completion of exactly `max_tokens` tokens sent by a client with a small receive
    window, which reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.connect(("127.0.0.1", port))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.sock = sock
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "sluice-default", "prompt": "tell me everything", "max_tokens": max_tokens, "ignore_eos": True,
         "stream": True, "stream_options": {"include_usage": True}}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    return conn


def _counting_backed_up_writes(monkeypatch) -> list[str]:
    from controlplane.gateway import asgi_io

    backed_up: list[str] = []
    real_send_now = asgi_io.send_now

    def counting_send_now(send, message):
        rest = real_send_now(send, message)
        if rest is not None:
            backed_up.append(message["type"])
        return rest

    monkeypatch.setattr(asgi_io, "send_now", counting_send_now)
    return backed_up


def test_a_client_that_stops_reading_gets_every_event_once_it_reads_again(tmp_path, monkeypatch):
    # the push path under uvicorn's own flow control: while the client reads nothing, the gateway's
    # writes back up (send_now hands back the rest of the send), the engine's socket is not read,
    # and once the client reads again every event arrives, in order, and the request ends ok
    backed_up = _counting_backed_up_writes(monkeypatch)
    with _slow_link_stack(tmp_path, monkeypatch) as (gateway, sluice, _):
        conn = _long_stream(gateway.port, 8000)
        time.sleep(1.5)  # reads nothing meanwhile
        resp = conn.getresponse()
        raw = resp.read().decode()
        conn.close()
        wait_until(lambda: any(r["status"] == "ok" for r in sluice.stats.requests))
        assert [(r["status"], r["completion_tokens"]) for r in sluice.stats.requests] == [("ok", 8000)]
    assert resp.status == 200
    events = [e[6:] for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text_events = [c for c in chunks if c["choices"]]
    assert chunks[-1]["usage"]["completion_tokens"] == 8000
    assert text_events[-1]["choices"][0]["finish_reason"] == "length"
    # every token's word, in order: the simulator's words run through its vocabulary in a cycle
    words = "".join(c["choices"][0]["text"] for c in text_events).split()
    first = VOCAB.index(words[0])
    assert words == [VOCAB[(first + i) % len(VOCAB)] for i in range(8000)]
    assert "http.response.body" in backed_up  # the backed-up path ran, not only the prompt one


def test_a_client_that_never_reads_again_is_given_up_on(tmp_path, monkeypatch):
    # [server] send_timeout_s: a write that waits that long ends the request: the engine gets its
    # abort, the core its slot back and the row its status, while the client still reads nothing
    backed_up = _counting_backed_up_writes(monkeypatch)
    with _slow_link_stack(tmp_path, monkeypatch, send_timeout_s=0.5) as (gateway, sluice, sim):
        conn = _long_stream(gateway.port, 20000)
        wait_until(lambda: sluice.stats.requests, timeout=10)
        row = sluice.stats.requests[0]
        assert (row["status"], row["error"], row["http_status"]) == ("aborted", "client_stalled", 200)
        assert row["completion_tokens"] < 20000
        wait_until(lambda: sim.core.stats.aborted == 1, timeout=10)  # the engine was told
        assert sluice.pool.core.in_flight() == 0
        conn.close()
    assert backed_up
