"""SGLangHTTPEngine against SGLang's HTTP surface over real HTTP on 127.0.0.1.

The far side is `engine_adapter.sglang_server` (SGLang's shapes over a scripted engine), hand-written
apps for old releases and broken servers, and a subprocess killed mid-stream.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from engine_adapter.base import Chunk, EngineError, EngineOverloaded, GenerateRequest
from engine_adapter.sglang_http import SGLangHTTPEngine
from engine_adapter.sglang_load import parse_prometheus_load
from engine_adapter.sglang_wire import synthetic_input_ids
from engine_adapter.sglang_server import make_sglang_app
from tests.test_sglang_server import MODEL, FakeEngine, _wait_holding, expected_text, fake_app, serve


def req(rid: str, n: int = 5, *, stream: bool = True, **kw: Any) -> GenerateRequest:
    sp = kw.pop("sampling_params", {"max_new_tokens": n})
    return GenerateRequest(rid=rid, prompt="alpha beta gamma", sampling_params=sp, stream=stream, **kw)


async def collect(engine: SGLangHTTPEngine, r: GenerateRequest) -> list[Chunk]:
    return [c async for c in engine.submit(r)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("incremental_server", [False, True])
async def test_stream_round_trip_delta_text_and_counts(incremental_server: bool) -> None:
    eng = FakeEngine(retractions=2)
    async with serve(fake_app(eng, incremental_streaming_output=incremental_server)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            chunks = await collect(e, req("rt-1", 6, traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                                          priority=3))
        finally:
            await e.close()
    assert "".join(c.text for c in chunks) == expected_text(6)
    assert [c.text for c in chunks] == [f"w{i} " for i in range(6)]  # deltas, whatever the server streams
    assert [c.completion_tokens for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert [c.finish_reason for c in chunks] == [None] * 5 + ["length"]
    last = chunks[-1]
    assert last.prompt_tokens == 3 and last.cached_tokens == 3
    assert last.e2e_latency == 0.5 and last.num_retractions == 2
    seen = eng.requests[0]
    assert seen.rid == "rt-1" and seen.priority == 3
    assert seen.traceparent == "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    assert seen.sampling_params["max_new_tokens"] == 6


async def test_non_streaming_gives_one_final_chunk() -> None:
    async with serve(fake_app()) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            chunks = await collect(e, req("ns-1", 4, stream=False))
        finally:
            await e.close()
    assert len(chunks) == 1
    c = chunks[0]
    assert c.text == expected_text(4) and c.completion_tokens == 4 and c.finish_reason == "length"
    assert c.prompt_tokens == 3 and c.e2e_latency == 0.5


async def test_stop_finish_reason_and_forced_output_length() -> None:
    eng = FakeEngine()
    async with serve(fake_app(eng)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            stop = await collect(e, req("st-1", sampling_params={"max_new_tokens": 9, "x_stop_at": 3}))
            forced = await collect(e, GenerateRequest(rid="st-2", input_ids=[5, 6], output_tokens=7))
        finally:
            await e.close()
    assert stop[-1].finish_reason == "stop" and stop[-1].completion_tokens == 3
    assert forced[-1].completion_tokens == 7 and forced[-1].prompt_tokens == 2
    assert eng.requests[1].sampling_params["ignore_eos"] is True


async def test_request_body_fields() -> None:
    e = SGLangHTTPEngine("sg", "http://127.0.0.1:1")
    body = json.loads(e._body(req("b-1", 3)))
    assert body == {"text": "alpha beta gamma", "sampling_params": {"max_new_tokens": 3}, "stream": True,
                    "rid": "b-1"}  # no priority key when it is None
    body = json.loads(e._body(GenerateRequest(rid="b-2", input_ids=[1, 2], priority=0, stream=False)))
    assert body["input_ids"] == [1, 2] and body["priority"] == 0 and body["stream"] is False
    with pytest.raises(EngineError) as ei:
        e._body(GenerateRequest(rid="b-3"))
    assert ei.value.status_code == 400 and not ei.value.retryable


def test_synthetic_input_ids_share_prefix_blocks() -> None:
    a = synthetic_input_ids(1100, [7, 8, 9], "a")
    b = synthetic_input_ids(1100, [7, 8, 10], "b")
    c = synthetic_input_ids(300, None, "c")
    assert len(a) == len(b) == 1100 and len(c) == 300
    assert a[:1024] == b[:1024] and a[1024:] != b[1024:]
    assert all(1000 <= t < 30000 for t in a + c)


# ---------------------------------------------------------------------------------- abort


async def test_consumer_exit_aborts_at_the_engine() -> None:
    eng = FakeEngine(hold_after=2)
    async with serve(fake_app(eng)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            it = e.submit(req("ab-1", 10))
            got = [await it.__anext__(), await it.__anext__()]
            await it.aclose()  # the client went away
            assert eng.aborted == ["ab-1"]
            assert [c.text for c in got] == ["w0 ", "w1 "]
            # a request that ran to completion is not aborted
            await collect(e, req("ab-2", 2))
            assert eng.aborted == ["ab-1"]
        finally:
            await e.close()


async def test_cancelled_consumer_aborts_too() -> None:
    eng = FakeEngine(hold_after=1)
    async with serve(fake_app(eng)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            async def consume() -> None:
                async for _ in e.submit(req("cx-1", 10)):
                    pass

            task = asyncio.create_task(consume())
            await asyncio.wait_for(_wait_holding(eng, "cx-1"), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(400):
                if eng.aborted:
                    break
                await asyncio.sleep(0.005)
            assert eng.aborted == ["cx-1"]
        finally:
            await e.close()


async def test_explicit_abort_ends_the_stream_with_abort() -> None:
    eng = FakeEngine(hold_after=1)
    async with serve(fake_app(eng)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            task = asyncio.create_task(collect(e, req("ex-1", 10)))
            await asyncio.wait_for(_wait_holding(eng, "ex-1"), 5)
            await e.abort("ex-1")
            chunks = await asyncio.wait_for(task, 5)
        finally:
            await e.close()
    assert chunks[-1].finish_reason == "abort" and chunks[-1].status_code is None
    assert chunks[-1].message == "Aborted" and chunks[-1].completion_tokens == 1


# ---------------------------------------------------------------------------------- errors


async def test_connection_refused_is_engine_error() -> None:
    e = SGLangHTTPEngine("sg", f"http://127.0.0.1:{free_port()}", connect_timeout=2)
    try:
        with pytest.raises(EngineError) as ei:
            await collect(e, req("cr-1"))
        assert ei.value.retryable and not isinstance(ei.value, EngineOverloaded)
        with pytest.raises(EngineError):
            await e.load()
        with pytest.raises(EngineError):
            await e.info()
        assert await e.health() is False
    finally:
        await e.close()


async def test_overloaded_non_streaming_and_in_band() -> None:
    async with serve(fake_app(FakeEngine(overloaded=True))) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            with pytest.raises(EngineOverloaded) as ei:
                await collect(e, req("ov-1", stream=False))
            assert "queue is full" in str(ei.value)
            with pytest.raises(EngineOverloaded):
                await collect(e, req("ov-2", stream=True))
        finally:
            await e.close()


async def test_in_band_503_after_tokens_is_an_abort_chunk() -> None:
    async with serve(fake_app(FakeEngine(abort_503_at=2))) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            chunks = await collect(e, req("pr-1", 5))
        finally:
            await e.close()
    assert [c.text for c in chunks[:-1]] == ["w0 ", "w1 "]
    assert chunks[-1].finish_reason == "abort" and chunks[-1].status_code == 503
    assert "higher priority" in (chunks[-1].message or "")


async def test_error_chunk_and_http_400() -> None:
    eng = FakeEngine(hold_after=1)
    async with serve(fake_app(eng)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            task = asyncio.create_task(collect(e, req("dup-1", 5)))
            await asyncio.wait_for(_wait_holding(eng, "dup-1"), 5)
            with pytest.raises(EngineError) as ei:  # streaming: {"error": ...} chunk
                await collect(e, req("dup-1", 5))
            assert ei.value.status_code == 400 and "Duplicate" in str(ei.value) and not ei.value.retryable
            with pytest.raises(EngineError) as ei:  # non-streaming: HTTP 400
                await collect(e, req("dup-1", 5, stream=False))
            assert ei.value.status_code == 400 and "Duplicate" in str(ei.value)
            await e.abort("dup-1")
            await task
        finally:
            await e.close()


def _raw_server_handler(body: bytes, chunked: bool) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        if chunked:
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(body), body))
            writer.write(b"400\r\npartial")  # a chunk cut short: the process died
        else:
            writer.write(head + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.transport.abort()

    return handle


@pytest.mark.parametrize("chunked", [True, False])
async def test_engine_dies_mid_stream(chunked: bool) -> None:
    first = {"text": "w0 ", "output_ids": [1], "meta_info": {"id": "d", "finish_reason": None,
                                                             "prompt_tokens": 3, "completion_tokens": 1}}
    server = await asyncio.start_server(_raw_server_handler(b"data: " + json.dumps(first).encode() + b"\n\n",
                                                            chunked), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    e = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}")
    got: list[Chunk] = []
    try:
        with pytest.raises(EngineError) as ei:
            async for c in e.submit(req("die-1")):
                got.append(c)
        assert not ei.value.retryable  # tokens were already delivered
        assert [c.text for c in got] == ["w0 "]
    finally:
        await e.close()
        server.close()
        await server.wait_closed()


async def test_engine_process_killed_mid_stream() -> None:
    port = free_port()
    code = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.test_sglang_server import FakeEngine
        from engine_adapter.sglang_server import serve_sglang
        asyncio.run(serve_sglang(FakeEngine(hold_after=2), port={port}, model_name="m"))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    e = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}")
    try:
        for _ in range(600):
            if await e.health():
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the server subprocess did not come up")
        got: list[Chunk] = []
        with pytest.raises(EngineError):
            async for c in e.submit(req("kill-1", 10)):
                got.append(c)
                if len(got) == 2:
                    proc.send_signal(signal.SIGKILL)
        assert len(got) == 2
        assert await e.health() is False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        await e.close()


# ---------------------------------------------------------------------------------- load and info


async def test_load_from_v1_loads() -> None:
    async with serve(fake_app()) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            ld = await e.load()
        finally:
            await e.close()
    assert (ld.running, ld.waiting, ld.used_tokens, ld.total_tokens) == (2, 1, 1234, 10_000)
    assert ld.waiting_uncached_tokens == 77 and ld.gen_throughput == 456.5 and ld.cache_hit_rate == 0.25
    assert ld.timestamp > 1.6e9
    assert e._load_source == "loads"


async def test_load_from_v058_aggregate_only() -> None:
    async def loads(_: Any) -> Response:
        return JSONResponse({"timestamp": "2026-02-01T00:00:00+00:00", "version": "0.5.8", "loads": [],
                             "aggregate": {"total_running_reqs": 4, "total_waiting_reqs": 5, "total_reqs": 9,
                                           "total_used_tokens": 600, "total_tokens": 700, "avg_token_usage": 0.1,
                                           "avg_throughput": 12.0, "avg_utilization": 0.5}})

    async with serve(Starlette(routes=[Route("/v1/loads", loads)])) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            ld = await e.load()
        finally:
            await e.close()
    assert (ld.running, ld.waiting, ld.used_tokens) == (4, 5, 600) and ld.gen_throughput == 12.0


async def test_load_falls_back_to_get_load_on_a_legacy_server() -> None:
    # the emulated v0.5.5 has no /v1/loads; its /metrics is served by this app too, so force the
    # last resort by checking /get_load on an app that has only that and /get_server_info
    async def get_load(_: Any) -> Response:
        return JSONResponse([{"dp_rank": 0, "num_reqs": 5, "num_waiting_reqs": 2, "num_tokens": 900,
                              "num_pending_tokens": 10, "ts_tic": 1.0}])

    async def gsi(_: Any) -> Response:
        return JSONResponse({"model_path": "old/model", "max_total_num_tokens": 4096, "version": "0.4.9"})

    app = Starlette(routes=[Route("/get_load", get_load), Route("/get_server_info", gsi)])
    async with serve(app) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            ld = await e.load()
        finally:
            await e.close()
    assert (ld.running, ld.waiting, ld.used_tokens, ld.total_tokens) == (3, 2, 900, 4096)
    assert e._load_source == "get_load"


OLD_METRICS = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",priority="",tp_rank="0"} 7.0
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",priority="1",tp_rank="0"} 3.0
sglang:num_running_reqs{engine_type="unified",model_name="m",pp_rank="0",priority="",tp_rank="1"} 7.0
sglang:num_running_reqs{dp_rank="1",engine_type="unified",model_name="m",pp_rank="0",priority="",tp_rank="0"} 2.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 4.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 0.25
# HELP sglang:max_total_num_tokens Maximum total number of tokens.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 8000.0
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{engine_type="unified",model_name="m",pp_rank="0",tp_rank="0"} 321.5
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{engine_type="unified",model_name="m"} 99.0
"""


def test_parse_prometheus_load_filters_ranks_and_priorities() -> None:
    ld = parse_prometheus_load(OLD_METRICS)
    assert ld is not None
    assert ld.running == 9  # priority="" totals of tp_rank 0, summed over DP ranks
    assert ld.waiting == 4 and ld.total_tokens == 8000 and ld.used_tokens == 2000  # from token_usage
    assert ld.gen_throughput == 321.5
    assert parse_prometheus_load("# TYPE other gauge\nother 1\n") is None


async def test_load_and_info_from_a_metrics_only_server() -> None:
    async def metrics(_: Any) -> Response:
        return PlainTextResponse(OLD_METRICS)

    async def gsi(_: Any) -> Response:
        return JSONResponse({"model_path": "old/model", "internal_states": [
            {"memory_usage": {"token_capacity": 8000}}], "version": "0.5.2"})

    async def gmi(_: Any) -> Response:
        return JSONResponse({"model_path": "old/model", "is_generation": True})

    app = Starlette(routes=[Route("/metrics", metrics), Route("/get_server_info", gsi),
                            Route("/get_model_info", gmi)])
    async with serve(app) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            ld = await e.load()
            ld2 = await e.load()  # the learnt source is reused
            info = await e.info()
        finally:
            await e.close()
    assert ld.running == 9 and ld.waiting == 4 and ld2.running == 9
    assert e._load_source == "metrics"
    assert info.model == "old/model" and info.max_total_tokens == 8000 and info.version == "0.5.2"
    assert info.kind == "sglang" and not info.simulated and info.url == url


async def test_legacy_sglang_surface_end_to_end() -> None:
    """An emulated v0.5.5: /get_server_info (flat), /get_model_info, /metrics, total_retractions."""
    async with serve(fake_app(FakeEngine(retractions=4), version="0.5.5")) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            info = await e.info()
            ld = await e.load()
            chunks = await collect(e, req("lg-1", 2))
        finally:
            await e.close()
    assert info.max_total_tokens == 10_000 and info.model == MODEL and info.version == "0.5.5"
    assert e._load_source == "metrics" and ld.running == 2 and ld.used_tokens == 1234
    assert chunks[-1].num_retractions == 4


async def test_info_current_and_health() -> None:
    async with serve(fake_app()) as url:
        e = SGLangHTTPEngine("sg", url, model="override/name")
        e2 = SGLangHTTPEngine("sg2", url)
        try:
            info = await e.info()
            info2 = await e2.info()
            assert await e.health() is True
        finally:
            await e.close()
            await e2.close()
    assert info.model == "override/name" and info2.model == MODEL
    assert info.max_total_tokens == 10_000 and info.version == "0.5.18"


async def test_api_key_is_sent() -> None:
    async with serve(fake_app(api_key="k1")) as url:
        good = SGLangHTTPEngine("sg", url, api_key="k1")
        bad = SGLangHTTPEngine("sg", url)
        try:
            assert (await collect(good, req("ak-1", 1)))[-1].finish_reason == "length"
            with pytest.raises(EngineError) as ei:
                await collect(bad, req("ak-2", 1))
            assert ei.value.status_code == 401 and "Unauthorized" in str(ei.value)
        finally:
            await good.close()
            await bad.close()


# ---------------------------------------------------------------------------------- in-process


def test_inprocess_without_sglang_gives_a_clear_error() -> None:
    try:
        import sglang  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("sglang is installed here")
    from engine_adapter.sglang_inprocess import SGLangInProcessEngine

    with pytest.raises(ImportError, match=r"sluice\[sglang\]"):
        SGLangInProcessEngine("ip", model_path="meta-llama/Llama-3.1-8B-Instruct")


async def test_inprocess_adapter_over_a_duck_typed_engine() -> None:
    from engine_adapter.sglang_inprocess import SGLangInProcessEngine

    class TM:
        def __init__(self) -> None:
            self.aborted: list[str] = []

        def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
            self.aborted.append(rid)

    class Fake:
        tokenizer_manager = TM()

        async def async_generate(self, stream: bool = False, **kw: Any) -> Any:
            self.kw = kw

            async def gen() -> Any:
                for i in range(1, 4):
                    yield {"text": expected_text(i), "output_ids": list(range(i)), "meta_info": {
                        "id": kw["rid"], "finish_reason": {"type": "length", "length": 3} if i == 3 else None,
                        "prompt_tokens": 2, "completion_tokens": i, "cached_tokens": 1, "total_retractions": 1}}
            return gen()

    fake = Fake()
    e = SGLangInProcessEngine("ip", engine=fake)
    chunks = [c async for c in e.submit(req("ip-1", 3, traceparent="00-x-y-01", priority=2))]
    assert [c.text for c in chunks] == ["w0 ", "w1 ", "w2 "] and chunks[-1].finish_reason == "length"
    assert chunks[-1].num_retractions == 1
    assert fake.kw["external_trace_header"] == {"traceparent": "00-x-y-01"} and fake.kw["priority"] == 2
    it = e.submit(req("ip-2", 3))
    await it.__anext__()
    await it.aclose()
    assert fake.tokenizer_manager.aborted == ["ip-2"]


async def test_inprocess_openai_body_uses_the_models_template_and_refuses_what_needs_the_http_layer() -> None:
    from engine_adapter.sglang_inprocess import SGLangInProcessEngine

    class Tokenizer:  # a Qwen-style template: the model's own, not Llama 3's
        def apply_chat_template(self, messages: Any, tools: Any = None, tokenize: bool = True,
                                add_generation_prompt: bool = False) -> str:
            turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return turns + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    class Fake:
        class tokenizer_manager:  # noqa: N801 - SGLang's attribute name
            tokenizer = Tokenizer()

            class model_config:  # noqa: N801
                context_len = 32768

        async def async_generate(self, stream: bool = False, **kw: Any) -> Any:
            self.kw = kw

            async def gen() -> Any:
                yield {"text": "{}", "output_ids": [1], "meta_info": {
                    "id": kw["rid"], "finish_reason": {"type": "stop", "matched": 2}, "prompt_tokens": 9,
                    "completion_tokens": 1}}
            return gen()

    fake = Fake()
    e = SGLangInProcessEngine("ip", engine=fake)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "seed": 3,
            "response_format": {"type": "json_object"}}
    chunks = [c async for c in e.submit(GenerateRequest(rid="ip-3", openai=body))]
    assert chunks[-1].text == "{}" and fake.kw["prompt"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert fake.kw["sampling_params"] == {"max_new_tokens": 8, "sampling_seed": 3, "json_schema": '{"type": "object"}'}
    assert (await e.info()).context_length == 32768
    for extra, param in (({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
                         ({"logprobs": True}, "logprobs")):
        with pytest.raises(EngineError) as ei:
            [c async for c in e.submit(GenerateRequest(rid="ip-4", openai={**body, **extra}))]
        assert ei.value.status_code == 400 and not ei.value.retryable and f"param: {param}" in str(ei.value)


# ---------------------------------------------------------------------------------- the simulator


async def test_adapter_against_the_simulator_over_http() -> None:
    sim_engine = pytest.importorskip("engine_adapter.sim.engine")
    from engine_adapter.sim.profile import zero_delay

    sim = sim_engine.SimEngine("sim0", zero_delay(), seed=3)
    try:
        async with serve(make_sglang_app(sim, model_name="sim/llama")) as url:
            e = SGLangHTTPEngine("sg", url)
            try:
                chunks = await collect(e, GenerateRequest(rid="sim-1", input_ids=list(range(64)),
                                                          sampling_params={"max_new_tokens": 8},
                                                          output_tokens=8))
                ld = await e.load()
                info = await e.info()
            finally:
                await e.close()
    finally:
        await sim.close()
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 8
    assert chunks[-1].prompt_tokens == 64
    assert "".join(c.text for c in chunks)  # synthetic text arrives as deltas
    assert ld.total_tokens > 0 and info.max_total_tokens == ld.total_tokens


# ---------------------------------------------------------------------- OpenAI-compatible endpoints


def _canned_openai(events: list[Any], seen: list[Any]) -> Starlette:
    """SGLang's /v1/chat/completions as a canned stream: `events` (objects, or raw lines), then [DONE]."""
    async def handle(request: Any) -> Response:
        seen.append((request.url.path, await request.json(), request.headers.get("traceparent")))
        lines = [e if isinstance(e, bytes) else b"data: " + json.dumps(e).encode() for e in events]
        return Response(b"\n\n".join(lines + [b"data: [DONE]"]) + b"\n\n", media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", handle, methods=["POST"]),
                             Route("/v1/completions", handle, methods=["POST"])])


def _oai(delta: dict[str, Any] | None, fr: str | None = None, usage: tuple[int, int] | None = None,
         logprobs: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "choices": [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": fr}]}
    if usage:
        out["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage),
                        "prompt_tokens_details": {"cached_tokens": 2}}
    return out


async def test_openai_request_goes_to_the_chat_endpoint_with_rid_priority_and_trace() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    events = [_oai({"role": "assistant", "content": ""}, usage=(9, 0)),
              _oai({"tool_calls": [call]}, usage=(9, 1)),
              _oai({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, usage=(9, 2)),
              _oai({}, "tool_calls", usage=(9, 2)),
              _oai(None, usage=(9, 3))]  # the closing usage chunk: the counts the final chunk carries
    seen: list[Any] = []
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}],
            "max_tokens": 5}
    async with serve(_canned_openai(events, seen)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            got = await collect(e, GenerateRequest(rid="oai-1", openai=body, priority=3, traceparent="00-" + "1" * 32
                                                   + "-" + "2" * 16 + "-01"))
        finally:
            await e.close()
    path, sent, trace = seen[0]
    assert path == "/v1/chat/completions" and trace and sent["rid"] == "oai-1" and sent["priority"] == 3
    assert sent["messages"] == body["messages"] and sent["tools"] == body["tools"] and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert [c.extra["tool_calls"][0]["function"]["arguments"] for c in got[:-1]] == ["", "{}"]
    final = got[-1]
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens, final.cached_tokens) == \
        ("tool_calls", 9, 3, 2)


async def test_openai_text_completion_logprobs_and_error_chunk() -> None:
    lp = {"tokens": ["a"], "token_logprobs": [-0.1], "top_logprobs": None, "text_offset": [0]}
    events = [{"id": "x", "object": "text_completion", "choices": [
        {"index": 0, "text": "a", "logprobs": lp, "finish_reason": "length"}]}]
    seen: list[Any] = []
    async with serve(_canned_openai(events, seen)) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            got = await collect(e, GenerateRequest(rid="oai-2", openai={"prompt": "p", "logprobs": 0}))
        finally:
            await e.close()
    assert seen[0][0] == "/v1/completions"
    # no usage from this server: one token per delta, logprobs carried as they came
    assert [(c.text, c.completion_tokens, c.finish_reason, c.extra) for c in got] == [("a", 1, "length", {"logprobs": lp})]
    error = {"object": "error", "message": "The input (9000 tokens) is longer than the model's context length "
                                           "(8192 tokens).", "type": "BadRequestError", "param": None, "code": 400}
    async with serve(_canned_openai([error], [])) as url:
        e = SGLangHTTPEngine("sg", url)
        try:
            with pytest.raises(EngineError) as ei:
                await collect(e, GenerateRequest(rid="oai-3", openai={"prompt": "p"}))
        finally:
            await e.close()
    assert ei.value.status_code == 400 and not ei.value.retryable and "context length" in str(ei.value)


async def test_info_reads_the_context_length_from_v1_models() -> None:
    async with serve(fake_app(FakeEngine())) as url:  # the fake engine reports no window: the server's max_model_len
        e = SGLangHTTPEngine("sg", url)
        try:
            info = await e.info()
        finally:
            await e.close()
    assert info.context_length == 10_000  # FakeEngine's capacity, advertised as max_model_len
