"""Live runner against a tiny fake OpenAI-compatible streaming server (no sluice involved), and reports."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from replay.live import run_live, synth_prompt
from replay.report import (
    OVERALL,
    SLO,
    RequestResult,
    resolve_slo,
    summarize,
)
from replay.tables import format_benchmark_block, format_table
from replay.workload import WorkloadRequest

FIRST_DELAY_S = 0.05  # the fake server's time to first token
GAP_S = 0.01  # and between tokens


class Fake:
    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0


def make_app(fake: Fake) -> Starlette:
    async def handle(request: Request, chat: bool):
        body = await request.json()
        auth = request.headers.get("authorization")
        fake.bodies.append(body)
        fake.auth.append(auth)
        if auth == "Bearer k-429":
            return JSONResponse({"error": {"message": "tenant over its share", "type": "rate_limit",
                                           "code": 429}}, status_code=429, headers={"Retry-After": "7"})
        if auth == "Bearer k-500":
            return JSONResponse({"error": {"message": "engine down"}}, status_code=500)
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        n = int(body["max_tokens"])

        async def stream():
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                await asyncio.sleep(FIRST_DELAY_S)
                if auth == "Bearer k-broken":
                    yield "data: " + json.dumps({"error": {"message": "boom"}}) + "\n\n"
                    return
                for i in range(n):
                    if i:
                        await asyncio.sleep(GAP_S)
                    choice = {"index": 0, "delta": {"content": f" t{i}"}} if chat else {"index": 0, "text": f" t{i}"}
                    yield "data: " + json.dumps({"choices": [choice]}) + "\n\n"
                usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n}
                yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
                yield "data: [DONE]\n\n"
            finally:
                fake.in_flight -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def completions(request: Request):
        return await handle(request, chat=False)

    async def chat(request: Request):
        return await handle(request, chat=True)

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
async def server():
    fake = Fake()
    config = uvicorn.Config(make_app(fake), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(500):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    assert srv.started, "fake server did not start"
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", fake
    srv.should_exit = True
    await task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS = {"alice": "k-alice", "bob": "k-bob", "mallory": "k-429", "broken": "k-broken", "down": "k-500"}


async def test_measures_ttft_tpot_itl_and_tokens(server):
    url, fake = server
    wl = [WorkloadRequest(0, 12, 5, "alice"), WorkloadRequest(20, 30, 8, "bob"),
          WorkloadRequest(40, 7, 1, "alice", slo_class="interactive")]
    seen = []
    rep = await run_live(url, wl, KEYS, speedup=1.0, on_result=seen.append)
    assert len(seen) == 3 and len(rep.results) == 3
    assert [r.index for r in rep.results] == [0, 1, 2]
    assert sorted(fake.auth) == ["Bearer k-alice", "Bearer k-alice", "Bearer k-bob"]
    assert sorted(b["max_tokens"] for b in fake.bodies) == [1, 5, 8]
    assert all(b["stream"] is True and b["model"] == "sluice-default" for b in fake.bodies)
    for req, res in zip(wl, rep.results):
        assert res.status == "ok" and res.http_status == 200 and res.error is None
        assert res.tenant == req.tenant
        assert res.output_tokens == req.output_length
        assert res.input_tokens == req.input_length  # the synthetic prompt has input_length words
        assert res.ttft_s >= FIRST_DELAY_S
        assert res.e2e_s >= res.ttft_s + (req.output_length - 1) * GAP_S
        assert len(res.itl_s) == req.output_length - 1
        assert sum(res.itl_s) <= res.e2e_s - res.ttft_s + 1e-9
        assert res.sent_s >= res.scheduled_s
        if req.output_length > 1:
            assert res.tpot_s == pytest.approx((res.e2e_s - res.ttft_s) / (req.output_length - 1))
        else:
            assert res.tpot_s is None
        d = res.to_dict()  # the JSON form keeps bench_serving's ms
        assert d["ttft_ms"] == pytest.approx(res.ttft_s * 1e3) and d["itl_ms"] == pytest.approx([x * 1e3 for x in res.itl_s])
        assert "ttft_s" not in d and d["sent_ms"] == pytest.approx(res.sent_s * 1e3)
    s = rep.summary
    assert set(s.per_tenant) == {"alice", "bob"}
    assert s.per_tenant["alice"].completed == 2 and s.per_tenant["bob"].completed == 1
    assert s.overall.total_output_tokens == 14
    assert s.overall.request_throughput == pytest.approx(3 / rep.duration_s)
    assert s.overall.mean_ttft_ms >= FIRST_DELAY_S * 1000
    assert s.overall.request_goodput is None  # no SLO given
    assert "alice" in rep.format_text() and "Successful requests:" in rep.format_text()
    out = json.loads(rep.to_json(per_request=True))
    assert out["completed"] == 3 and out["per_tenant"]["alice"]["completed"] == 2 and len(out["requests"]) == 3


async def test_goodput_against_slos(server):
    url, _ = server
    wl = [WorkloadRequest(0, 5, 3, "alice"), WorkloadRequest(0, 5, 3, "bob", slo_class="tight")]
    loose = await run_live(url, wl, KEYS, speedup=10.0, slo=SLO(ttft_ms=60_000, tpot_ms=60_000))
    assert loose.summary.overall.good == 2
    assert loose.summary.overall.request_goodput == pytest.approx(2 / loose.duration_s)
    # per-class SLO: a 1 ms TTFT cannot be met (the fake server waits 50 ms)
    mixed = await run_live(url, wl, KEYS, speedup=10.0, slo={"tight": SLO(ttft_ms=1), "*": SLO(e2e_ms=60_000)})
    assert mixed.summary.per_tenant["alice"].good == 1
    assert mixed.summary.per_tenant["bob"].good == 0
    assert mixed.summary.per_tenant["bob"].slo_attainment == 0.0
    assert [r.slo_met for r in mixed.results] == [True, False]


async def test_429_is_a_rejection_with_retry_after_and_errors_are_recorded(server):
    url, _ = server
    wl = [WorkloadRequest(0, 5, 3, "mallory"), WorkloadRequest(0, 5, 3, "down"),
          WorkloadRequest(0, 5, 3, "broken"), WorkloadRequest(0, 5, 2, "alice")]
    rep = await run_live(url, wl, KEYS, speedup=100.0, slo=SLO(ttft_ms=60_000))
    by = {r.tenant: r for r in rep.results}
    assert by["mallory"].status == "rejected" and by["mallory"].http_status == 429
    assert by["mallory"].retry_after_s == 7.0
    assert "tenant over its share" in by["mallory"].error
    assert by["down"].status == "error" and by["down"].http_status == 500 and "engine down" in by["down"].error
    assert by["broken"].status == "error" and "boom" in by["broken"].error
    assert by["alice"].status == "ok"
    s = rep.summary
    assert s.overall.completed == 1 and s.overall.rejected == 1 and s.overall.failed == 2
    assert s.per_tenant["mallory"].mean_retry_after_s == 7.0
    assert s.overall.good == 1 and s.overall.slo_attainment == pytest.approx(0.25)


async def test_connection_refused_is_recorded_not_raised():
    url = f"http://127.0.0.1:{_free_port()}"
    wl = [WorkloadRequest(0, 5, 3, "alice"), WorkloadRequest(1, 5, 3, "bob")]
    rep = await run_live(url, wl, KEYS, speedup=100.0)
    assert [r.status for r in rep.results] == ["error", "error"]
    assert all(r.http_status is None and r.error for r in rep.results)
    assert any("connect" in r.error.lower() for r in rep.results)
    assert rep.summary.overall.failed == 2 and rep.summary.overall.completed == 0


async def test_chat_endpoint_and_no_key(server):
    url, fake = server
    rep = await run_live(url + "/v1", [WorkloadRequest(0, 4, 3, "nokey")], {}, endpoint="chat", model="m")
    (r,) = rep.results
    assert r.status == "ok" and r.output_tokens == 3 and len(r.itl_s) == 2
    assert fake.auth == [None] and fake.bodies[0]["messages"][0]["role"] == "user"
    assert fake.bodies[0]["model"] == "m"


async def test_wildcard_key_and_extra_body(server):
    url, fake = server
    await run_live(url, [WorkloadRequest(0, 4, 2, "carol")], {"*": "k-any"}, extra_body={"ignore_eos": True})
    assert fake.auth == ["Bearer k-any"] and fake.bodies[0]["ignore_eos"] is True


async def test_max_concurrency_caps_in_flight(server):
    url, fake = server
    wl = [WorkloadRequest(0, 4, 3, "alice") for _ in range(4)]
    rep = await run_live(url, wl, KEYS, max_concurrency=1)
    assert rep.summary.overall.completed == 4
    assert fake.max_in_flight == 1


async def test_stop_event_returns_partial_report(server):
    url, _ = server
    wl = [WorkloadRequest(0, 4, 2, "alice"), WorkloadRequest(600_000, 4, 2, "alice"),
          WorkloadRequest(700_000, 4, 2, "bob")]
    stop = asyncio.Event()
    rep = await run_live(url, wl, KEYS, stop=stop, on_result=lambda r: stop.set())
    assert rep.stopped and rep.not_sent == 2
    assert [r.status for r in rep.results] == ["ok"]


async def test_stop_while_requests_in_flight_cancels_them(server):
    url, _ = server
    stop = asyncio.Event()
    wl = [WorkloadRequest(0, 4, 400, "alice")]  # ~4 s of streaming

    async def stopper():
        await asyncio.sleep(0.2)
        stop.set()

    t = asyncio.create_task(stopper())
    rep = await run_live(url, wl, KEYS, stop=stop)
    await t
    assert rep.stopped and rep.not_sent == 0
    assert [r.status for r in rep.results] == ["cancelled"]
    assert rep.summary.overall.cancelled == 1
    (r,) = rep.results  # what it got before the stop is kept: its send, first token and chunks
    assert r.sent_s is not None and r.ttft_s is not None and 1 <= r.output_tokens < 400
    assert rep.summary.overall.total_output_tokens == 0  # an unfinished request counts in no total


async def test_every_request_sent_has_exactly_one_result_whenever_it_stops(server):
    # requests due every 2 ms, stopped at various instants: a stop can land in the same loop turn
    # as a send, whose task is then cancelled before it ever ran
    url, _ = server
    wl = [WorkloadRequest(i * 2.0, 4, 50, "alice") for i in range(100)]
    for k in range(6):
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05 + 0.013 * k, stop.set)
        rep = await run_live(url, wl, KEYS, stop=stop)
        assert rep.stopped
        assert [r.index for r in rep.results] == list(range(len(wl) - rep.not_sent))
        assert rep.summary.overall.requests == len(wl) - rep.not_sent


async def test_cancelling_the_task_propagates(server):
    url, fake = server
    wl = [WorkloadRequest(0, 4, 400, "alice"), WorkloadRequest(600_000, 4, 2, "bob")]
    task = asyncio.create_task(run_live(url, wl, KEYS))
    for _ in range(300):  # until the first request is streaming
        if fake.in_flight:
            break
        await asyncio.sleep(0.01)
    assert fake.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(300):  # the server sees the client go away
        if not fake.in_flight:
            break
        await asyncio.sleep(0.01)
    assert fake.in_flight == 0


async def test_broken_callback_does_not_stop_the_run(server):
    url, _ = server

    def bad(_r):
        raise RuntimeError("callback bug")

    rep = await run_live(url, [WorkloadRequest(0, 4, 2, "alice"), WorkloadRequest(0, 4, 2, "bob")], KEYS,
                         on_result=bad)
    assert rep.summary.overall.completed == 2


def test_synth_prompt_lengths_and_shared_prefixes():
    a = synth_prompt(WorkloadRequest(0, 1000, 1, hash_ids=[7, 8]), 0)
    b = synth_prompt(WorkloadRequest(0, 700, 1, hash_ids=[7, 9]), 1)
    c = synth_prompt(WorkloadRequest(0, 10, 1), 2)
    assert len(a.split()) == 1000 and len(b.split()) == 700 and len(c.split()) == 10
    assert a.split()[:512] == b.split()[:512] and a.split()[512] != b.split()[512]
    assert synth_prompt(WorkloadRequest(0, 10, 1), 3) != c


# ------------------------------------------------------------------ report


def _results():
    return [
        RequestResult("a", "ok", ttft_s=0.1, tpot_s=0.01, e2e_s=0.2, itl_s=[0.01] * 10, input_tokens=50,
                      output_tokens=11),
        RequestResult("a", "ok", ttft_s=0.3, tpot_s=0.03, e2e_s=0.6, itl_s=[0.03] * 10, input_tokens=50,
                      output_tokens=11),
        RequestResult("b", "rejected", http_status=429, retry_after_s=2.0),
        RequestResult("b", "ok", ttft_s=0.05, tpot_s=None, e2e_s=0.05, input_tokens=10, output_tokens=1),
    ]


def test_summarize_rows_and_goodput():
    s = summarize(_results(), duration_s=2.0, slo=SLO(ttft_ms=200, tpot_ms=20))
    a, b, o = s.per_tenant["a"], s.per_tenant["b"], s.overall
    assert o.name == OVERALL and o.requests == 4 and o.completed == 3 and o.rejected == 1
    # the rows are in ms (bench_serving's fields), the results in seconds
    assert a.mean_ttft_ms == pytest.approx(200) and a.median_ttft_ms == pytest.approx(200)
    assert a.p99_ttft_ms == pytest.approx(100 + 0.99 * 200)  # linear interpolation, as numpy/vLLM
    assert a.mean_itl_ms == pytest.approx(20) and a.mean_tpot_ms == pytest.approx(20)
    assert a.request_throughput == 1.0 and a.output_throughput == 11.0
    assert a.total_throughput == pytest.approx((100 + 22) / 2)
    assert a.good == 1 and b.good == 1 and o.good == 2  # b's 1-token answer has no TPOT to miss
    assert o.request_goodput == 1.0 and o.slo_attainment == 0.5
    assert b.mean_retry_after_s == 2.0
    assert b.mean_tpot_ms is None
    table = format_table(s)
    lines = table.splitlines()
    assert lines[0].split()[0] == "tenant" and lines[2].split()[0] == "a" and lines[-1].split()[0] == "all"
    assert "50.0" in lines[-1]  # SLO % of all
    block = format_benchmark_block(o)
    assert "Request goodput (req/s):" in block and "Median TTFT (ms):" in block
    d = json.loads(s.to_json())
    assert d["per_tenant"]["a"]["completed"] == 2 and d["slo"] == {"ttft_ms": 200, "tpot_ms": 20, "e2e_ms": None, "ttft_ms_per_ktok": 0.0}


def test_summarize_uses_precomputed_slo_met_without_slo():
    rs = [RequestResult("a", "ok", ttft_s=0.001, slo_met=True), RequestResult("a", "ok", ttft_s=0.001, slo_met=False)]
    s = summarize(rs, duration_s=4.0)
    assert s.overall.good == 1 and s.overall.request_goodput == 0.25
    assert summarize([RequestResult("a", "ok")], 1.0).overall.request_goodput is None


def test_slo_parse_and_resolve():
    assert SLO.parse("ttft:500 tpot:50 e2el:10000") == SLO(500, 50, 10000)
    assert SLO.parse({"ttft_ms": 1}) == SLO(ttft_ms=1)
    with pytest.raises(ValueError):
        SLO.parse("itl:3")
    spec = {"interactive": SLO(1), "acme": SLO(2), "*": SLO(3)}
    assert resolve_slo(spec, "acme", "interactive") == SLO(1)
    assert resolve_slo(spec, "acme", None) == SLO(2)
    assert resolve_slo(spec, "other", "batch") == SLO(3)
    assert resolve_slo({"x": SLO(1)}, "y", None) is None
