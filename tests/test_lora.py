"""LoRA adapters without HTTP: an engine's adapter table (SGLang's rules: by name, least recently
used out, never a pinned one or one in use), the core's adapter index, the `adapter` scorer and the
forecast's load, the core's adapter-aware dispatch and its audit, the simulated engine's load stall
(on a virtual clock), and the configuration."""
from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from controlplane.config import ConfigError, parse_config
from controlplane.core.adapters import STALE_REPORTS, AdapterIndex
from controlplane.core.dispatch import Candidate, choose, rechoose
from controlplane.core.events import Decision, Dispatch, RequestSpec
from controlplane.driver import decision_row
from engine_adapter.base import EngineError, GenerateRequest
from engine_adapter.lora import AdapterError, AdapterSet
from engine_adapter.sim.engine import SimEngine
from replay.audit import audit_decisions
from tests.core_helpers import make_core, make_policy
from tests.test_dispatch import REQ, view
from tests.virtual_loop import VirtualTimeLoop


def test_the_adapter_table_evicts_the_least_recently_used_idle_one() -> None:
    table = AdapterSet(slots=2, load_s=0.1)
    assert table.load("a", "/a") is None and table.load("b", "/b") is None
    table.acquire("a")  # a is used now: b is the least recently used
    assert table.load("c", "/c") == "b" and table.names() == ["a", "c"]
    with pytest.raises(AdapterError, match="in use"):
        table.unload("a")
    table.release("a")
    assert table.load("d", "/d") == "a"  # idle again, and least recently used
    pinned = AdapterSet(slots=1)
    pinned.load("p", None, pinned=True)
    with pytest.raises(AdapterError, match="pinned or in use"):
        pinned.load("q", None)
    with pytest.raises(AdapterError) as err:
        table.acquire("zz")
    assert str(err.value) == ("The following requested LoRA adapters are not loaded: zz\n"
                              "Loaded adapters: ['c', 'd'].")
    assert table.state().loaded == ("c", "d") and table.state().slots == 2


def test_the_index_follows_reports_and_dispatches() -> None:
    index = AdapterIndex()
    assert index.costs("sql", ["e0"]) == [(0.0, False, False)]  # nothing reported: nothing known to cost
    index.report("e0", ["sql"], 2, 0.1)
    index.report("e1", [], 1, 0.2)
    assert index.costs("sql", ["e0", "e1"]) == [(0.1, True, False), (0.2, False, False)]
    index.used("e1", "sql")
    assert index.costs("chat", ["e1"]) == [(0.2, False, True)]  # one slot, taken: chat would push sql out
    index.used("e1", "chat")
    assert index.costs("sql", ["e1"]) == [(0.2, False, True)] and index.costs("chat", ["e1"]) == [(0.2, True, False)]
    index.used("e0", "chat")
    index.report("e0", ["sql", "chat"], 2, 0.1)  # the engine confirms; the index keeps its recency
    index.used("e0", "x")
    assert index.costs("sql", ["e0"]) == [(0.1, False, True)] and index.costs("chat", ["e0"]) == [(0.1, True, False)]
    index.drop("e0")
    assert index.costs("chat", ["e0"]) == [(0.0, False, False)]


def test_a_report_taken_before_a_load_does_not_forget_it() -> None:
    """The poll and the dispatch race: a report that predates the load still leaves the adapter
    held, for STALE_REPORTS reports; one that never confirms it forgets it then (seen in a loaded
    CI run: the second adapter went to the engine whose only slot held the first)."""
    index = AdapterIndex()
    index.report("e0", [], 1, 0.1)
    index.used("e0", "sql")
    for _ in range(STALE_REPORTS):
        index.report("e0", [], 1, 0.1)  # taken before the load landed
        assert index.costs("chat", ["e0"]) == [(0.1, False, True)]  # chat would still push sql out
    index.report("e0", [], 1, 0.1)  # the engine never loaded it (or evicted it)
    assert index.costs("chat", ["e0"]) == [(0.1, False, False)]
    index.used("e0", "sql")
    index.report("e0", ["sql"], 1, 0.1)  # confirmed: from now on the reports alone say
    index.report("e0", [], 1, 0.1)
    assert index.costs("sql", ["e0"]) == [(0.1, False, False)]


def test_the_forecast_counts_the_load_and_the_adapter_scorer_its_saving() -> None:
    held = Candidate(view("held", in_flight=2), 0.0, True, 0.3, True)
    cold = Candidate(view("cold"), 0.0, True, 0.3, False)
    full = Candidate(view("full"), 0.0, True, 0.3, False, True)
    plain = choose([Candidate(view("held", in_flight=2), 0.0), Candidate(view("cold"), 0.0)], REQ, {"ttft": 1.0})
    assert plain.index == 1  # without an adapter the idle engine wins
    choice = choose([held, cold], REQ, {"ttft": 1.0, "adapter": 1.0})
    h, c = choice.scored
    assert h is not None and c is not None and choice.index == 0
    assert c.forecast.ttft_s == pytest.approx(plain.scored[1].forecast.ttft_s + 0.3)  # type: ignore[union-attr]
    assert h.forecast.ttft_s == plain.scored[0].forecast.ttft_s  # type: ignore[union-attr]
    assert (h.scores["adapter"], c.scores["adapter"]) == (0.3, 0.0)
    assert choose([held, cold], REQ, {"ttft": 1.0}).index == 0  # the load alone tips the default
    # both must load it: the default takes the first; the adapter scorer the one with a free slot
    assert choose([full, cold], REQ, {"ttft": 1.0}).index == 0
    spared = choose([full, cold], REQ, {"ttft": 1.0, "adapter": 1.0})
    assert spared.index == 1 and spared.scored[0].scores["adapter"] == -0.3  # type: ignore[union-attr]
    inputs = {"prompt_tokens": REQ.prompt_tokens, "output_tokens": REQ.output_tokens, "weights": {"ttft": 1.0},
              "engine_adapter": [[0.3, True, False], [0.3, False, False]]}
    again = rechoose([held.view, cold.view], inputs)
    assert again.index == 0 and again.chosen.total == choose([held, cold], REQ, {"ttft": 1.0}).chosen.total
    with pytest.raises(ValueError, match="engine_adapter"):
        rechoose([held.view, cold.view], {**inputs, "engine_adapter": [[0.3, True, False]]})


def _dispatches(actions: list) -> dict[str, str]:
    return {a.rid: a.engine for a in actions if isinstance(a, Dispatch)}


def test_the_core_sends_an_adapter_back_where_it_is_and_the_audit_rederives_it() -> None:
    core = make_core(make_policy(window=4), engines=2)
    for e in ("e0", "e1"):
        core.engine_adapters(0.0, e, [], 2, 0.25)
    actions = core.arrive(0.0, RequestSpec("r0", "a", 500, 20, adapter="sql"))
    first = _dispatches(actions)["r0"]
    actions += core.arrive(0.01, RequestSpec("r1", "b", 500, 20))  # no adapter: the idle engine
    actions += core.arrive(0.02, RequestSpec("r2", "a", 500, 20, adapter="sql"))
    sent = _dispatches(actions)
    assert sent["r1"] != first and sent["r2"] == first  # busier, but it holds sql: 0.25 s saved
    rows = [decision_row(d) for d in actions if isinstance(d, Decision)]
    lora = [r for r in rows if r["kind"] == "dispatch" and r["inputs"].get("adapter") == "sql"]
    assert lora[1]["inputs"]["engine_adapter"] == [(0.25, first == "e0", False), (0.25, first == "e1", False)]
    assert "engine_adapter" not in next(r for r in rows if r["kind"] == "dispatch" and r["rid"] == "r1")["inputs"]
    report = audit_decisions([{**r, "inputs": json.dumps(r["inputs"]), "outputs": json.dumps(r["outputs"])}
                              for r in rows])
    assert report.ok and report.dispatch_rederived == 3, report.format()


def _run(coro):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def _first_token_at(engine: SimEngine, req: GenerateRequest) -> float:
    """Seconds (on the loop's clock) to the first token; the request is aborted there."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with contextlib.aclosing(engine.submit(req)) as chunks:
        async for chunk in chunks:
            if chunk.completion_tokens:
                return loop.time() - start
    raise AssertionError("no token")


def test_a_load_stalls_the_simulated_engine_for_its_load_time() -> None:
    """On a virtual clock: a request whose adapter must be loaded first sees its first token one
    load later than the same request with the adapter held, and a request already running on the
    engine finishes one load later too (the whole engine waits, as SGLang's scheduler does)."""
    def engine(held: dict[str, str | None] | None = None) -> SimEngine:
        return SimEngine("s", "h100-llama3.1-8b", seed=1, max_loaded_loras=2, lora_load_s=0.25, lora_paths=held)

    def req(rid: str, adapter: str | None = None, source: str | None = None) -> GenerateRequest:
        return GenerateRequest(rid, prompt_tokens=800, sampling_params={"max_new_tokens": 40}, output_tokens=40,
                               lora_path=adapter, lora_source=source)

    async def first_token(e: SimEngine) -> float:
        took = await _first_token_at(e, req("r0", "sql", "/loras/sql"))
        await e.close()
        return took

    cold = _run(first_token(engine()))
    warm = _run(first_token(engine({"sql": "/loras/sql"})))  # held from the start: no load

    assert cold == pytest.approx(warm + 0.25, abs=1e-3)

    async def running_waits(load: bool) -> float:
        e = engine()
        loop = asyncio.get_running_loop()
        start = loop.time()
        long = asyncio.ensure_future(_drain(e.submit(req("long"))))
        await asyncio.sleep(0.05)
        if load:
            await e.load_adapter("chat", "/loras/chat")
        await long
        took = loop.time() - start
        await e.close()
        return took

    assert _run(running_waits(True)) == pytest.approx(_run(running_waits(False)) + 0.25, abs=1e-3)


async def _drain(gen) -> None:
    async for _ in gen:
        pass


def test_the_simulated_engine_refuses_an_adapter_it_does_not_hold_as_sglang_does() -> None:
    async def go() -> None:
        e = SimEngine("s", "h100-llama3.1-8b", lora_paths={"sql": None}, max_loaded_loras=1)
        with pytest.raises(EngineError) as err:
            await _first_token_at(e, GenerateRequest("r0", prompt_tokens=10, lora_path="chat"))
        assert err.value.status_code == 400 and "not loaded: chat" in str(err.value)
        assert (await e.load()).adapters.loaded == ("sql",)  # type: ignore[union-attr]
        await _first_token_at(e, GenerateRequest("r1", prompt_tokens=10, lora_path="sql"))
        plain = SimEngine("p", "h100-llama3.1-8b")
        with pytest.raises(EngineError, match="LoRA is not enabled"):
            await _first_token_at(plain, GenerateRequest("r2", prompt_tokens=10, lora_path="sql"))
        assert (await plain.load()).adapters is None
        await e.close()
        await plain.close()

    _run(go())


ENGINES = [{"name": "g0", "model": "llama"}, {"name": "g1", "model": "qwen"}]


@pytest.mark.parametrize("raw, message", [
    ({"tenants": [{"name": "t", "adapter": "llama:nope"}]}, "adapter 'llama:nope' is not \"model:adapter\""),
    ({"tenants": [{"name": "t", "adapter": "llama"}]}, "is not \"model:adapter\" for a declared adapter"),
    ({"tenants": [{"name": "t", "adapter": ["llama:sql", "sql-bot"]}]}, "two adapters for model 'llama'"),
    ({"tenants": [{"name": "t", "adapter": 3}]}, "adapter must be"),
    ({"engines": [{"name": "g0", "model": "llama", "max_loaded_loras": 0}]}, "max_loaded_loras must be"),
])
def test_bad_adapter_configuration_is_a_named_error(raw, message) -> None:
    base = {"engines": ENGINES, "models": {"llama": {"adapters": {"sql": "/loras/sql"},
                                                     "adapter_aliases": {"sql-bot": "sql"}}}}
    with pytest.raises(ConfigError) as err:
        parse_config({**base, **raw})
    assert message in str(err.value)
