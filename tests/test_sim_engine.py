"""SimEngine: the simulator behind the Engine protocol, on the asyncio clock."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc

import pytest

from engine_adapter.base import Chunk, EngineError, GenerateRequest, StepProfile
from engine_adapter.sim import SimEngine, load_profile, zero_delay
from engine_adapter.sim.reply import DEFAULT_MAX_NEW_TOKENS, VOCAB
from engine_adapter.tokens import estimate_chat_tokens, estimate_tokens
from tests.conditions import eventually

# ~1 ms per step (decode) at speedup 1: quick streams, still paced by the clock
FAST = dataclasses.replace(load_profile("h100-llama3.1-8b"), name="fast",
                           step=StepProfile(0.0005, 1e-7, 0.001, 1e-6, 1e-9))


def req(rid: str, n_out: int | None = 8, max_new: int | None = 8, **kw) -> GenerateRequest:
    params = {} if max_new is None else {"max_new_tokens": max_new}
    return GenerateRequest(rid, prompt_tokens=kw.pop("prompt_tokens", 32), sampling_params=params,
                           output_tokens=n_out, **kw)


async def collect(engine: SimEngine, request: GenerateRequest) -> list[Chunk]:
    return [c async for c in engine.submit(request)]


@pytest.fixture
async def engine():
    e = SimEngine("sim0", FAST, seed=0)
    yield e
    await e.close()


def check_stream(chunks: list[Chunk]) -> None:
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # cumulative, growing
    assert all(c.finish_reason is None and c.e2e_latency is None for c in chunks[:-1])
    text = "".join(c.text for c in chunks)
    assert len(text.split()) == chunks[-1].completion_tokens  # one synthetic word per token
    assert set(text.split()) <= set(VOCAB)


async def test_streams_up_to_max_new_tokens(engine):
    # 120 tokens: ~1 s of decode steps, so that even a consumer starved on a loaded machine reads
    # them in several pieces (20 tokens arrived in one lump once under a load average of 5)
    chunks = await collect(engine, req("a", n_out=120, max_new=120))
    check_stream(chunks)
    last = chunks[-1]
    assert last.completion_tokens == 120 and last.finish_reason == "length"
    assert last.prompt_tokens == 32 and last.e2e_latency and last.e2e_latency > 0
    assert len(chunks) > 2  # streamed, not one lump
    assert "".join(c.text for c in chunks).startswith("synthetic simulated tokens")


async def test_finish_reason_stop_when_output_shorter(engine):
    chunks = await collect(engine, req("b", n_out=5, max_new=50))
    assert chunks[-1].finish_reason == "stop" and chunks[-1].completion_tokens == 5


async def test_non_streaming_yields_one_final_chunk(engine):
    chunks = await collect(engine, req("ns", n_out=12, max_new=12, stream=False))
    assert len(chunks) == 1 and chunks[0].finish_reason == "length" and chunks[0].completion_tokens == 12
    assert len(chunks[0].text.split()) == 12


async def test_prompt_tokens_sources_and_default_max_new(engine):
    a = await collect(engine, GenerateRequest("p1", input_ids=list(range(77)), output_tokens=3))
    b = await collect(engine, GenerateRequest("p2", prompt="x" * 41, output_tokens=3))
    c = await collect(engine, GenerateRequest("p3", prompt="x" * 41, prompt_tokens=500, output_tokens=3))
    assert (a[-1].prompt_tokens, b[-1].prompt_tokens, c[-1].prompt_tokens) == (77, 11, 500)
    d = await collect(engine, GenerateRequest("p4", prompt_tokens=4, output_tokens=10_000))
    assert d[-1].completion_tokens == DEFAULT_MAX_NEW_TOKENS and d[-1].finish_reason == "length"


async def test_concurrent_streams_and_load(engine):
    started: set[str] = set()

    async def one(rid: str) -> list[Chunk]:
        chunks = []
        async for c in engine.submit(req(rid, n_out=300, max_new=300)):
            started.add(rid)
            chunks.append(c)
        return chunks

    tasks = [asyncio.create_task(one(f"c{i}")) for i in range(8)]
    # every one prefilled and decoding (300 tokens: ~0.3 s before the first can finish)
    await eventually(lambda: len(started) == 8, what="all 8 streaming", poll_s=0)
    load = await engine.load()
    assert load.running + load.waiting == 8 and load.used_tokens > 8 * 32
    results = await asyncio.gather(*tasks)
    for chunks in results:
        check_stream(chunks)
        assert chunks[-1].completion_tokens == 300
    load = await engine.load()
    assert load.running == 0 and load.used_tokens == 0 and load.total_tokens == FAST.kv_capacity_tokens


async def test_consumer_leaving_aborts_in_core(engine):
    gen = engine.submit(req("gone", n_out=10_000, max_new=10_000))
    first = await gen.__anext__()
    assert first.completion_tokens >= 1
    assert engine.core.active() == 1 and (await engine.load()).used_tokens > 0
    await gen.aclose()  # what `async with aclosing(...)` or garbage collection does
    assert engine.core.active() == 0 and (await engine.load()).used_tokens == 0


async def test_break_out_of_async_for_aborts(engine):
    async def consume():
        async for chunk in engine.submit(req("brk", n_out=10_000, max_new=10_000)):
            if chunk.completion_tokens >= 3:
                break

    await consume()
    gc.collect()
    # the loop's async-generator finaliser runs aclose(), which aborts the request in the core
    await eventually(lambda: engine.core.active() == 0, what="the abandoned stream aborted")


async def test_cancelled_consumer_aborts(engine):
    task = asyncio.create_task(collect(engine, req("cx", n_out=10_000, max_new=10_000)))
    await eventually(lambda: engine.core.active() == 1, what="the request running")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert engine.core.active() == 0 and (await engine.load()).running == 0


async def test_engine_abort_ends_stream_with_abort(engine):
    chunks: list[Chunk] = []

    async def consume():
        async for c in engine.submit(req("ab", n_out=10_000, max_new=10_000)):
            chunks.append(c)

    task = asyncio.create_task(consume())
    while not chunks:
        await asyncio.sleep(0.001)
    await engine.abort("ab")
    await asyncio.wait_for(task, 5)
    assert chunks[-1].finish_reason == "abort" and 0 < chunks[-1].completion_tokens < 10_000
    await engine.abort("ab")  # unknown now: a no-op
    assert engine.core.active() == 0


async def test_errors(engine):
    with pytest.raises(EngineError) as err:
        await collect(engine, req("big", prompt_tokens=FAST.kv_capacity_tokens))
    assert err.value.status_code == 400
    gen = engine.submit(req("dup", n_out=1000, max_new=1000))
    await gen.__anext__()
    with pytest.raises(EngineError):
        await collect(engine, req("dup"))
    await gen.aclose()


async def test_info_health_gpu_close():
    e = SimEngine("sim1", "h100-llama3.1-8b", seed=1, speedup=50)
    info = await e.info()
    assert info.kind == "sim" and info.simulated and info.name == "sim1"
    assert info.profile == load_profile("h100-llama3.1-8b").step and info.max_total_tokens > 400_000
    assert await e.health()
    chunks = await collect(e, req("g", n_out=20, max_new=20))
    assert chunks[-1].finish_reason == "length"
    g = e.gpu()
    assert g["energy_j"] > 0 and g["memory_total_bytes"] > 0
    assert e.set_frequency(990.0) == 990.0 and e.gpu()["sm_clock_mhz"] == 990.0
    pending = asyncio.create_task(collect(e, req("open", n_out=100_000, max_new=100_000)))
    await eventually(lambda: e.core.active() == 1, what="the request running")
    await e.close()
    chunks = await asyncio.wait_for(pending, 5)
    assert chunks[-1].finish_reason == "abort"
    assert not await e.health()
    with pytest.raises(EngineError):
        await collect(e, req("late"))


async def test_speedup_divides_the_reported_latency():
    """The same simulated work (10 steps of ~6.5 ms), reported in wall seconds: 1/speedup of it,
    whenever the loop happens to wake (the times are the model's, not measured)."""
    slow = SimEngine("s", "h100-llama3.1-8b", speedup=1.0)
    fast = SimEngine("f", "h100-llama3.1-8b", speedup=20.0)
    try:
        a = await collect(slow, req("x", n_out=10, max_new=10))
        b = await collect(fast, req("x", n_out=10, max_new=10))
    finally:
        await slow.close()
        await fast.close()
    assert 0.05 < a[-1].e2e_latency < 0.1
    assert b[-1].e2e_latency == pytest.approx(a[-1].e2e_latency / 20, rel=1e-9)


async def test_zero_delay_many_requests():
    e = SimEngine("z", zero_delay())

    async def one(i: int) -> Chunk:
        chunks = await collect(e, GenerateRequest(f"z{i}", prompt_tokens=64, sampling_params={"max_new_tokens": 16}))
        check_stream(chunks)
        return chunks[-1]

    lasts = await asyncio.gather(*(one(i) for i in range(500)))
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 16 for c in lasts)
    assert all(c.e2e_latency == 0.0 for c in lasts)
    assert e.core.active() == 0
    await e.close()


async def test_hints_prefix_cache_and_priority_pass_through(engine):
    a = await collect(engine, req("h1", prompt_tokens=1024, hash_ids=[5, 6], n_out=2))
    b = await collect(engine, req("h2", prompt_tokens=1024, hash_ids=[5, 6], n_out=2, priority=3))
    assert a[-1].cached_tokens == 0 and b[-1].cached_tokens == 1023


def test_token_estimates():
    assert estimate_tokens("") == 1 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100
    msgs = [{"role": "system", "content": "x" * 40}, {"role": "user", "content": [{"type": "text", "text": "y" * 8}]}]
    assert estimate_chat_tokens(msgs) == 5 + (5 + 10) + (5 + 2)
    assert estimate_chat_tokens([]) == 5
