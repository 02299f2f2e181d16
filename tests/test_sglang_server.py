"""The SGLang-compatible server (engine_adapter.sglang_server) over real HTTP on 127.0.0.1.

Also home of the helpers the HTTP-adapter tests share: `FakeEngine` (a scripted Engine) and
`serve()` (uvicorn on a free loopback port inside the test's loop).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from engine_adapter.base import (
    Chunk,
    EngineInfo,
    EngineLoad,
    EngineOverloaded,
    GenerateRequest,
)
from engine_adapter.sglang_server import make_sglang_app

MODEL = "fake/model-1b"


class FakeEngine:
    """A scripted `Engine`: token i is the text ``"w{i} "``; the request gets `max_new_tokens` tokens
    (``output_tokens`` wins), finishing with "length", or "stop" at ``sampling_params["x_stop_at"]``.

    Knobs: `overloaded` (submit raises EngineOverloaded), `hold_after` (after that many tokens the
    stream waits until the request is aborted), `abort_503_at` (an in-band 503 abort after that
    many tokens). `aborted` lists the rids passed to `abort()`, `closed_early` the rids whose stream
    was closed by the consumer before the end, `requests` every GenerateRequest seen.
    """

    def __init__(self, name: str = "fake", *, overloaded: bool = False, hold_after: int | None = None,
                 abort_503_at: int | None = None, cached_tokens: int = 3, retractions: int = 0,
                 capacity: int = 10_000) -> None:
        self.name = name
        self.overloaded = overloaded
        self.hold_after = hold_after
        self.abort_503_at = abort_503_at
        self.cached_tokens = cached_tokens
        self.retractions = retractions
        self.capacity = capacity
        self.aborted: list[str] = []
        self.closed_early: list[str] = []
        self.requests: list[GenerateRequest] = []
        self.holding: dict[str, asyncio.Event] = {}  # rid -> set when it reached hold_after
        self._abort: dict[str, asyncio.Event] = {}
        self.load_value = EngineLoad(running=2, waiting=1, used_tokens=1234, total_tokens=capacity,
                                     waiting_uncached_tokens=77, gen_throughput=456.5, cache_hit_rate=0.25)

    async def submit(self, req: GenerateRequest) -> AsyncIterator[Chunk]:
        self.requests.append(req)
        if self.overloaded:
            raise EngineOverloaded()
        sp, text = req.sampling_params, req.prompt
        if req.openai is not None:  # the OpenAI endpoints hand the engine the request body
            body = req.openai
            sp = {"max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or 16}
            text = body.get("prompt") or " ".join(m.get("content") or "" for m in body.get("messages", []))
        n = req.output_tokens or int(sp.get("max_new_tokens", 16))
        stop_at = sp.get("x_stop_at")
        prompt = len(req.input_ids) if req.input_ids else len((text or "").split())
        ev = self._abort[req.rid] = asyncio.Event()
        self.holding[req.rid] = held = asyncio.Event()
        done = False
        try:
            for i in range(n):
                if self.hold_after is not None and i == self.hold_after:
                    held.set()
                    await ev.wait()
                if ev.is_set():
                    done = True
                    yield Chunk("", i, prompt, self.cached_tokens, finish_reason="abort", message="Aborted")
                    return
                if self.abort_503_at is not None and i == self.abort_503_at:
                    done = True
                    yield Chunk("", i, prompt, 0, finish_reason="abort", status_code=503,
                                message="The request is aborted by a higher priority request.")
                    return
                await asyncio.sleep(0)
                last = i == n - 1 or (stop_at is not None and i + 1 == stop_at)
                fr = None
                if last:
                    done = True
                    fr = "stop" if stop_at is not None and i + 1 == stop_at else "length"
                yield Chunk(f"w{i} ", i + 1, prompt, self.cached_tokens, finish_reason=fr,
                            e2e_latency=0.5 if fr else None, num_retractions=self.retractions if fr else 0)
                if last:
                    return
        finally:
            if not done:
                self.closed_early.append(req.rid)
            self._abort.pop(req.rid, None)

    async def abort(self, rid: str) -> None:
        self.aborted.append(rid)
        ev = self._abort.get(rid)
        if ev is not None:
            ev.set()

    async def load(self) -> EngineLoad:
        return self.load_value

    async def info(self) -> EngineInfo:
        return EngineInfo(name=self.name, kind="fake", model=MODEL, url=None,
                          max_total_tokens=self.capacity, simulated=True, version="fake-1")

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def expected_text(n: int) -> str:
    return "".join(f"w{i} " for i in range(n))


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run `app` under uvicorn (httptools) on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, http="httptools", lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def fake_app(engine: FakeEngine | None = None, **kw: Any) -> Any:
    return make_sglang_app(engine or FakeEngine(), model_name=MODEL, **kw)


async def sse_events(resp: aiohttp.ClientResponse) -> list[Any]:
    """All `data:` payloads of an SSE response (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    raw = (await resp.read()).decode()
    for block in raw.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        assert block.startswith("data: "), block
        payload = block[6:]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# ---------------------------------------------------------------------------------- native /generate


async def test_generate_non_streaming_shape() -> None:
    async with serve(fake_app()) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"text": "a b c d", "sampling_params": {"max_new_tokens": 5},
                                                  "rid": "r-1"})
        assert r.status == 200
        out = await r.json()
    assert out["text"] == expected_text(5)
    assert len(out["output_ids"]) == 5
    meta = out["meta_info"]
    assert meta["id"] == "r-1"
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["prompt_tokens"] == 4
    assert meta["completion_tokens"] == 5
    assert meta["cached_tokens"] == 3
    assert meta["num_retractions"] == 0 and "total_retractions" not in meta
    assert meta["e2e_latency"] == 0.5
    assert meta["weight_version"] == "default"


async def test_generate_streaming_is_cumulative_and_ends_with_done() -> None:
    async with serve(fake_app()) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"input_ids": [1, 2, 3], "stream": True,
                                                  "sampling_params": {"max_new_tokens": 4}})
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [c["text"] for c in chunks] == [expected_text(i) for i in range(1, 5)]
    assert [len(c["output_ids"]) for c in chunks] == [1, 2, 3, 4]
    assert [c["meta_info"]["finish_reason"] for c in chunks[:-1]] == [None] * 3
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    assert chunks[-1]["meta_info"]["prompt_tokens"] == 3
    assert "e2e_latency" in chunks[-1]["meta_info"] and "e2e_latency" not in chunks[0]["meta_info"]


async def test_generate_incremental_streaming_output_sends_deltas() -> None:
    async with serve(fake_app(incremental_streaming_output=True)) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"text": "x", "stream": True,
                                                  "sampling_params": {"max_new_tokens": 3}})
        events = await sse_events(r)
    assert [c["text"] for c in events[:-1]] == ["w0 ", "w1 ", "w2 "]
    assert [len(c["output_ids"]) for c in events[:-1]] == [1, 1, 1]
    assert [c["meta_info"]["completion_tokens"] for c in events[:-1]] == [1, 2, 3]


async def test_generate_stop_finish_reason_and_ignore_eos_forces_length() -> None:
    eng = FakeEngine()
    async with serve(fake_app(eng)) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"text": "x", "sampling_params": {
            "max_new_tokens": 10, "x_stop_at": 2, "stop": ["\n"]}})
        out = await r.json()
        r2 = await s.post(f"{url}/generate", json={"text": "x", "sampling_params": {
            "max_new_tokens": 6, "ignore_eos": True}})
        await r2.read()
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "\n"}
    assert out["text"] == expected_text(2)
    assert eng.requests[0].output_tokens is None
    assert eng.requests[1].output_tokens == 6


async def test_generate_bad_requests_are_400() -> None:
    async with serve(fake_app()) as url, aiohttp.ClientSession() as s:
        r1 = await s.post(f"{url}/generate", data=b"{not json")
        r2 = await s.post(f"{url}/generate", json={"sampling_params": {}})
        r3 = await s.post(f"{url}/generate", json={"text": ["a", "b"]})
        bodies = [await r.json() for r in (r1, r2, r3)]
    assert [r.status for r in (r1, r2, r3)] == [400, 400, 400]
    assert all("message" in b["error"] for b in bodies)


async def test_duplicate_rid_in_flight() -> None:
    eng = FakeEngine(hold_after=1)
    async with serve(fake_app(eng)) as url, aiohttp.ClientSession() as s:
        first = await s.post(f"{url}/generate", json={"text": "x", "stream": True, "rid": "dup"})
        await asyncio.wait_for(_wait_holding(eng, "dup"), 5)
        r = await s.post(f"{url}/generate", json={"text": "x", "rid": "dup"})
        assert r.status == 400
        assert "Duplicate request ID" in (await r.json())["error"]["message"]
        rs = await s.post(f"{url}/generate", json={"text": "x", "rid": "dup", "stream": True})
        events = await sse_events(rs)
        assert rs.status == 200  # streaming: in-band, as SGLang does
        assert events[0]["error"]["code"] == 400 and "Duplicate" in events[0]["error"]["message"]
        assert events[-1] == "[DONE]"
        await s.post(f"{url}/abort_request", json={"rid": "dup"})
        rest = await sse_events(first)
    assert rest[-2]["meta_info"]["finish_reason"]["type"] == "abort"


async def _wait_holding(eng: FakeEngine, rid: str) -> None:
    while rid not in eng.holding:
        await asyncio.sleep(0.005)
    await eng.holding[rid].wait()


async def test_overloaded_engine_503_non_streaming_and_in_band_streaming() -> None:
    async with serve(fake_app(FakeEngine(overloaded=True))) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"text": "x"})
        body = await r.json()
        rs = await s.post(f"{url}/generate", json={"text": "x", "stream": True, "rid": "q"})
        events = await sse_events(rs)
    assert r.status == 503
    assert body["object"] == "error" and body["code"] == 503 and body["message"] == "The request queue is full."
    assert rs.status == 200
    fr = events[0]["meta_info"]["finish_reason"]
    assert fr["type"] == "abort" and fr["status_code"] == 503
    assert events[0]["meta_info"]["completion_tokens"] == 0
    assert events[-1] == "[DONE]"


async def test_abort_request_prefix_match_and_always_200() -> None:
    eng = FakeEngine(hold_after=1)
    async with serve(fake_app(eng)) as url, aiohttp.ClientSession() as s:
        a = await s.post(f"{url}/generate", json={"text": "x", "stream": True, "rid": "abc-1"})
        b = await s.post(f"{url}/generate", json={"text": "x", "stream": True, "rid": "abd-2"})
        await asyncio.wait_for(_wait_holding(eng, "abc-1"), 5)
        await asyncio.wait_for(_wait_holding(eng, "abd-2"), 5)
        r = await s.post(f"{url}/abort_request", json={"rid": "abc"})
        assert r.status == 200 and await r.read() == b""
        ea = await sse_events(a)
        assert eng.aborted == ["abc-1"]
        r = await s.post(f"{url}/abort_request", json={"rid": "no-such-rid"})
        assert r.status == 200
        r = await s.post(f"{url}/abort_request", json={"rid": ""})  # ignored without abort_all
        assert r.status == 200 and eng.aborted == ["abc-1"]
        await s.post(f"{url}/abort_request", json={"rid": "", "abort_all": True})
        eb = await sse_events(b)
    assert eng.aborted == ["abc-1", "abd-2"]
    assert ea[-2]["meta_info"]["finish_reason"] == {"type": "abort", "message": "Aborted", "status_code": None,
                                                    "err_type": None}
    assert eb[-2]["meta_info"]["finish_reason"]["type"] == "abort"


async def test_client_disconnect_closes_the_engine_stream() -> None:
    eng = FakeEngine(hold_after=2)
    async with serve(fake_app(eng)) as url:
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{url}/generate", json={"text": "x", "stream": True, "rid": "gone"})
            await asyncio.wait_for(_wait_holding(eng, "gone"), 5)
            r.close()
        for _ in range(400):
            if "gone" in eng.closed_early:
                break
            await asyncio.sleep(0.005)
    assert eng.closed_early == ["gone"]


# ---------------------------------------------------------------------------------- loads, metrics


async def test_v1_loads_current_shape() -> None:
    async with serve(fake_app(max_running_requests=8)) as url, aiohttp.ClientSession() as s:
        out = await (await s.get(f"{url}/v1/loads")).json()
        prom = await (await s.get(f"{url}/v1/loads?format=prometheus")).text()
    assert set(out) == {"timestamp", "version", "accelerator", "num_accelerators", "loads"}
    assert "aggregate" not in out
    ld = out["loads"][0]
    assert ld["num_running_reqs"] == 2 and ld["num_waiting_reqs"] == 1
    assert ld["num_used_tokens"] == 1234 and ld["max_total_num_tokens"] == 10_000
    assert ld["num_waiting_uncached_tokens"] == 77
    assert ld["token_usage"] == 0.1234 and ld["gen_throughput"] == 456.5
    assert ld["max_running_requests"] == 8 and ld["utilization"] == 0.25
    assert 'sglang_num_running_reqs{dp_rank="0"} 2' in prom


async def test_v1_loads_by_version() -> None:
    async with serve(fake_app(version="0.5.8")) as url, aiohttp.ClientSession() as s:
        out = await (await s.get(f"{url}/v1/loads")).json()
    assert out["aggregate"]["total_running_reqs"] == 2 and out["aggregate"]["total_used_tokens"] == 1234
    async with serve(fake_app(version="0.5.5")) as url, aiohttp.ClientSession() as s:
        r = await s.get(f"{url}/v1/loads")
        gl = await (await s.get(f"{url}/get_load")).json()
    assert r.status == 404
    assert gl[0]["num_reqs"] == 3 and gl[0]["num_waiting_reqs"] == 1 and gl[0]["num_tokens"] == 1234


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out.setdefault(smp.name, []).append(smp)
    return out


async def test_metrics_sglang_names_and_values() -> None:
    async with serve(fake_app()) as url, aiohttp.ClientSession() as s:
        for stream in (False, True):
            r = await s.post(f"{url}/generate", json={"text": "a b", "stream": stream,
                                                      "sampling_params": {"max_new_tokens": 3}})
            await r.read()
        text = await (await s.get(f"{url}/metrics")).text()
    smp = _samples(text)
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                 "sglang:num_used_tokens", "sglang:max_total_num_tokens", "sglang:gen_throughput",
                 "sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:cached_tokens_total",
                 "sglang:num_requests_total", "sglang:time_to_first_token_seconds_count",
                 "sglang:e2e_request_latency_seconds_count", "sglang:inter_token_latency_seconds_count"):
        assert name in smp, name
    running = smp["sglang:num_running_reqs"][0]
    assert running.value == 2
    assert running.labels["model_name"] == MODEL and running.labels["engine_type"] == "unified"
    gen = {x.labels["is_streaming"]: x.value for x in smp["sglang:generation_tokens_total"]}
    assert gen == {"true": 3.0, "false": 3.0}
    assert sum(x.value for x in smp["sglang:num_requests_total"]) == 2
    assert {x.labels["cache_source"]: x.value for x in smp["sglang:cached_tokens_total"]}["total"] == 6
    assert sum(x.value for x in smp["sglang:prompt_tokens_total"]) == 4
    assert sum(x.value for x in smp["sglang:time_to_first_token_seconds_count"]) == 2
    assert sum(x.value for x in smp["sglang:inter_token_latency_seconds_count"]) == 4  # 2 gaps per request


# ---------------------------------------------------------------------------------- info, health, auth


async def test_health_server_info_model_info() -> None:
    async with serve(fake_app()) as url, aiohttp.ClientSession() as s:
        assert (await s.get(f"{url}/health")).status == 200
        assert (await s.get(f"{url}/health_generate")).status == 200
        si = await (await s.get(f"{url}/server_info")).json()
        old = await (await s.get(f"{url}/get_server_info")).json()
        mi = await (await s.get(f"{url}/model_info")).json()
    assert si["scheduler_info"]["max_total_num_tokens"] == 10_000
    assert si["internal_states"][0]["memory_usage"]["token_capacity"] == 10_000
    assert si["version"] == "0.5.18" and old["scheduler_info"] == si["scheduler_info"]
    assert mi["model_path"] == MODEL and mi["served_model_name"] == MODEL and mi["is_generation"] is True


async def test_legacy_server_info_is_flat_and_new_names_are_absent() -> None:
    async with serve(fake_app(version="0.5.5")) as url, aiohttp.ClientSession() as s:
        assert (await s.get(f"{url}/server_info")).status == 404
        assert (await s.get(f"{url}/model_info")).status == 404
        old = await (await s.get(f"{url}/get_server_info")).json()
        omi = await (await s.get(f"{url}/get_model_info")).json()
        r = await s.post(f"{url}/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}})
        meta = (await r.json())["meta_info"]
    assert old["max_total_num_tokens"] == 10_000 and "scheduler_info" not in old
    assert omi["model_path"] == MODEL
    assert "total_retractions" in meta and "num_retractions" not in meta


async def test_api_key() -> None:
    async with serve(fake_app(api_key="sekret")) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/generate", json={"text": "x"})
        assert r.status == 401
        assert (await s.get(f"{url}/health")).status == 200
        assert (await s.get(f"{url}/metrics")).status == 200
        r = await s.post(f"{url}/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}},
                         headers={"Authorization": "Bearer sekret"})
        assert r.status == 200


# ---------------------------------------------------------------------------------- OpenAI-compatible


async def test_openai_client_chat_and_completions() -> None:
    openai = pytest.importorskip("openai")
    eng = FakeEngine()
    async with serve(fake_app(eng, enable_cache_report=True)) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            models = await client.models.list()
            assert [m.id for m in models.data] == [MODEL]
            chat = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=4)
            assert chat.object == "chat.completion"
            assert chat.choices[0].message.role == "assistant"
            assert chat.choices[0].message.content == expected_text(4)
            assert chat.choices[0].finish_reason == "length"
            assert chat.usage.completion_tokens == 4
            assert chat.usage.total_tokens == chat.usage.prompt_tokens + 4
            assert chat.usage.prompt_tokens_details.cached_tokens == 3

            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True,
                stream_options={"include_usage": True})
            pieces, finish, usage, roles = [], None, None, []
            async for ck in stream:
                assert ck.object == "chat.completion.chunk"
                if ck.choices:
                    d = ck.choices[0].delta
                    roles.append(d.role)
                    pieces.append(d.content or "")
                    finish = ck.choices[0].finish_reason or finish
                if ck.usage is not None:
                    usage = ck.usage
            assert "".join(pieces) == expected_text(3)
            assert roles[0] == "assistant" and finish == "length"
            assert usage is not None and usage.completion_tokens == 3

            comp = await client.completions.create(model=MODEL, prompt="one two", max_tokens=2)
            assert comp.object == "text_completion" and comp.choices[0].text == expected_text(2)
            assert comp.usage.prompt_tokens == 2 and comp.usage.completion_tokens == 2
            cstream = await client.completions.create(model=MODEL, prompt="one", max_tokens=2, stream=True)
            assert "".join([c.choices[0].text async for c in cstream if c.choices]) == expected_text(2)
        finally:
            await client.close()
    first = eng.requests[0].openai  # the body reaches the engine, which applies the template
    assert first["max_tokens"] == 4 and first["messages"] == [{"role": "user", "content": "hello there"}]


async def test_openai_errors_official_shapes() -> None:
    openai = pytest.importorskip("openai")
    async with serve(fake_app(FakeEngine(overloaded=True))) as url, aiohttp.ClientSession() as s:
        r = await s.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": []})
        bad = await r.json()
        assert r.status == 400
        assert set(bad) == {"object", "message", "type", "param", "code"} and bad["object"] == "error"
        rs = await s.post(f"{url}/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True})
        events = await sse_events(rs)
        assert events[0]["error"]["code"] == 503 and events[-1] == "[DONE]"
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            with pytest.raises(openai.APIStatusError) as ei:
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
            assert ei.value.status_code == 503
        finally:
            await client.close()


# ---------------------------------------------------------------------------------- the simulator


async def test_sim_engine_behind_sglang_server() -> None:
    sim_engine = pytest.importorskip("engine_adapter.sim.engine")
    from engine_adapter.sim.profile import zero_delay

    eng = sim_engine.SimEngine("sim0", zero_delay(), seed=1)
    try:
        app = make_sglang_app(eng, model_name="sim/llama")
        async with serve(app) as url, aiohttp.ClientSession() as s:
            r = await s.post(f"{url}/generate", json={"input_ids": list(range(40)), "stream": True,
                                                      "sampling_params": {"max_new_tokens": 6, "ignore_eos": True}})
            events = await sse_events(r)
            loads = await (await s.get(f"{url}/v1/loads")).json()
    finally:
        await eng.close()
    final = events[-2]["meta_info"]
    assert final["finish_reason"]["type"] == "length"
    assert final["completion_tokens"] == 6 and final["prompt_tokens"] == 40
    assert loads["loads"][0]["max_total_num_tokens"] > 0
