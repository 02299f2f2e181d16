"""One driver, two clocks: serving and virtual-time replay make the same decisions.

The same small multi-tenant workload (two interactive tenants, one of them bursting, and a batch
tenant with a tight deadline, over two simulated engines with small windows, so that requests are
queued, deferred, refused and expired) runs (a) through the serving runtime: a real `Sluice` over
`SimEngine`s, called as the gateway calls it, on an asyncio loop whose clock is virtual (the
clock injected into Sluice is that loop's `time`), and (b) through `replay.runner.run_virtual`.
Every decision must be the same, in the same order, at the same instant.

What is held equal on both sides, and why it would otherwise differ:
- the output length: replay hands the true length to the simulator; serving asks for exactly
  `max_tokens` with SGLang's `ignore_eos`, and the workload's `max_tokens` is that length, so the
  core sees the same cap and the engine stops at the same token;
- the output-length predictor: no torch expert (its background trainer in serving runs on the
  wall clock);
- the engines: same profile, same seeds, same names in the same order;
- the rids: the core breaks ties between equal deadlines by rid; replay's sort in arrival order,
  so serving's are numbered in arrival order here instead of drawn at random;
- one instant: requests arriving together start in workload order, and the driver's order (engine
  events and arrivals, then the tick, then load reports) is what both sides follow.

The loop's clock jumps from timer to timer, exactly, so serving's times are the very floats replay
computes: decisions, their inputs and their times come out identical (compared here with a
tolerance far below anything that could change a decision).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.config import Config, TenantConfig, parse_config
from controlplane.core.events import Decision
from controlplane.core.policy import SLOClassPolicy
from controlplane.driver import (DECISION_COLUMNS, DEFAULT_PROFILE, LOAD_EVERY_S, TICK_EVERY_S, decision_row,
                                 engine_model, next_on_grid, slo_met)
from controlplane.errors import ApiError
from controlplane.observe import Recorder
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.requests import CompletionRequest
from controlplane.service import Sluice
from engine_adapter.base import EngineInfo
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from replay.runner import run_virtual
from replay.workload import WorkloadRequest
from tests.virtual_loop import VirtualTimeLoop

PROFILE = load_profile("h100-llama3.1-8b")
ENGINES = 2
SEED = 0


def _workload() -> list[WorkloadRequest]:
    """114 requests over 15 s: acme (weight 2) steady, globex bursting at 6 s, batchco's long
    batch jobs at 2-4 s; a few arrivals exactly on tick and load-report instants."""
    rng = random.Random(3)
    out = []

    def add(t_ms: float, tenant: str, prompt: tuple[int, int], output: tuple[int, int]) -> None:
        n = rng.randint(*output)
        out.append(WorkloadRequest(t_ms, rng.randint(*prompt), n, tenant, max_tokens=n))

    t = 0.0
    while (t := t + rng.expovariate(5.0) * 1e3) < 15e3:
        add(round(t), "acme", (200, 3000), (30, 300))
    for _ in range(30):
        add(6000 + rng.randint(0, 1000), "globex", (1000, 4000), (50, 250))
    for _ in range(30):
        add(2000 + rng.randint(0, 2000), "batchco", (2000, 8000), (200, 800))
    for k, t_ms in enumerate((1000, 2500, 4000, 6500, 7050, 9500)):  # ties with a tick (and a load report)
        w = out[k * 9]
        out[k * 9] = WorkloadRequest(t_ms, w.input_length, w.output_length, w.tenant, max_tokens=w.max_tokens)
    return sorted(out, key=lambda w: w.timestamp_ms)


def _config(policy: str) -> Config:
    return parse_config({  # as the TOML file would give it
        "scheduler": {"policy": policy, "admission": True, "window": 6},
        "tenants": [{"name": "acme", "weight": 2.0}, {"name": "globex"}, {"name": "batchco", "slo_class": "batch"}],
        "slo_classes": {"batch": {"deadline_s": 10.0}},  # the built-in batch class with a shorter deadline
        "engines": [{"name": f"sim-{i}"} for i in range(ENGINES)],
    })


# -- serving on a virtual clock ---------------------------------------------------------------------

class _Rows(Recorder):
    """A recorder that keeps the decision rows the store would get, and the rids in arrival order."""

    def __init__(self) -> None:
        super().__init__(None, None, None)
        self.rows: list[dict[str, Any]] = []
        self.rids: list[str] = []

    def begin(self, ticket: Any) -> None:
        self.rids.append(ticket.rid)

    def decision(self, d: Decision, pool: str | None = None) -> None:
        self.rows.append(decision_row(d))


async def _request(sluice: Sluice, tenant: TenantConfig, w: WorkloadRequest) -> dict[str, Any] | None:
    """What the gateway's completion handler does (controlplane/gateway/app.py), minus HTTP."""
    req = CompletionRequest("text", sluice.config.server.model_name, "x", w.input_length, w.max_tokens, True, False,
                            {"max_new_tokens": w.max_tokens, "ignore_eos": True})
    try:
        ticket = sluice.submit(tenant, req)
    except ApiError:  # refused at arrival
        return None
    last = None
    status, http_status, error = "error", 500, "internal_error"
    try:
        await sluice.wait_dispatch(ticket)
        batches = sluice.open_stream(ticket)
        try:
            async for batch in batches:
                if ticket.first_token_at is None:
                    sluice.first_token(ticket, batch)
                last = batch[-1]
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
        status, http_status, error = "ok", 200, None
    except ApiError as err:  # expired in the queue
        status, http_status, error = ticket.row.get("status") or "rejected", err.status, err.code
    finally:
        sluice.close(ticket, status, http_status, chunk=last, error=error)
    return ticket.row


async def _serve(workload: list[WorkloadRequest], config: Config) -> tuple[_Rows, list[dict[str, Any]]]:
    loop = asyncio.get_running_loop()
    engines = {f"sim-{i}": SimEngine(f"sim-{i}", PROFILE, seed=SEED + i) for i in range(ENGINES)}
    recorder = _Rows()
    sluice = Sluice(config, engines, recorder=recorder, clock=loop.time,
                    predictor=OutputLengthPredictor(seed=SEED, torch_expert=False))
    await sluice.start()
    tenants = {t.name: t for t in config.tenants}
    handlers: list[asyncio.Task[dict[str, Any] | None]] = []
    arrived = loop.create_future()

    def arrive(batch: list[WorkloadRequest], last: bool) -> None:
        # one timer per instant, so requests arriving together start in workload order (timers due
        # at the same instant run in no defined order)
        handlers.extend(loop.create_task(_request(sluice, tenants[w.tenant], w)) for w in batch)
        if last:
            arrived.set_result(None)

    instants = [(t, list(ws)) for t, ws in itertools.groupby(workload, key=lambda w: w.timestamp_ms / 1e3)]
    for k, (t, batch) in enumerate(instants):
        loop.call_at(t, arrive, batch, k == len(instants) - 1)
    await arrived
    rows = await asyncio.gather(*handlers)
    await sluice.stop()
    return recorder, [row for row in rows if row is not None]


def _run_serving(workload: list[WorkloadRequest], config: Config) -> tuple[_Rows, list[dict[str, Any]]]:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(_serve(workload, config))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- the comparison ---------------------------------------------------------------------------------

def _decisions(rows: list[dict[str, Any]], index: dict[str, int]) -> list[tuple[Any, ...]]:
    return [(index[r["rid"]], r["tenant"], r["kind"], r["reason"], r["engine"], r["policy_version"]) for r in rows]


def _parity(policy: str) -> None:
    workload, config = _workload(), _config(policy)
    recorder, served = _run_serving(workload, config)
    replayed = run_virtual(workload, config.policy, engines=ENGINES, profile=PROFILE, seed=SEED,
                           record_decisions=True, torch_expert=False)

    # rids differ (serving draws random ones): request k is the k-th arrival on both sides
    serving_index = {rid: k for k, rid in enumerate(recorder.rids)}
    replay_index = {r.rid: r.index for r in replayed.records}
    assert len(serving_index) == len(replay_index) == len(workload)
    ours, theirs = _decisions(recorder.rows, serving_index), _decisions(replayed.decisions, replay_index)
    first = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    assert ours == theirs, f"first difference at decision {first}: serving {ours[first:first + 1]}, " \
                           f"replay {theirs[first:first + 1]}"
    late = [(k, a["ts"], b["ts"]) for k, (a, b) in enumerate(zip(recorder.rows, replayed.decisions))
            if abs(a["ts"] - b["ts"]) > 1e-6]
    assert not late, f"decision times differ: {late[:5]}"
    # what the decisions were made from: the admission inputs and forecasts, the dispatch counters
    for a, b in zip(recorder.rows, replayed.decisions):
        assert _close(a["inputs"], json.loads(b["inputs"])) and _close(a["outputs"], json.loads(b["outputs"])), \
            (a["kind"], a["inputs"], b["inputs"])

    kinds = {r["kind"] for r in recorder.rows}
    assert {"admit", "defer", "reject", "dispatch", "expire"} <= kinds, kinds  # the workload exercises them all
    # ignore_eos: every completed request produced exactly its max_tokens, as replay's engine did
    done = [row for row in served if row["status"] == "ok"]
    assert done and all(row["completion_tokens"] == row["max_tokens"] for row in done)
    # the same SLO accounting: each completed request's latencies and whether it met its class
    records = {r.index: r for r in replayed.records}
    assert len(done) == sum(r.status == "ok" for r in replayed.records)
    for row in done:
        rec = records[serving_index[row["rid"]]]
        assert rec.status == "ok" and row["slo_met"] == rec.slo_met
        assert abs(row["ttft_ms"] - rec.ttft_s * 1e3) <= 1e-3 and abs(row["e2e_ms"] - rec.e2e_s * 1e3) <= 1e-3
    assert any(row["slo_met"] for row in done) and not all(row["slo_met"] for row in done)


def _close(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-9 relative (times in serving can be a rounding apart)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
        return numbers and abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return bool(a == b)


def test_serving_and_replay_make_the_same_decisions_under_vtc() -> None:
    _parity("vtc")


def test_serving_and_replay_make_the_same_decisions_under_equinox() -> None:
    _parity("equinox")


# -- the shared pieces on their own -----------------------------------------------------------------

@given(st.floats(min_value=-1e3, max_value=1e7), st.sampled_from([TICK_EVERY_S, LOAD_EVERY_S, 0.1]))
def test_the_next_grid_instant_is_the_first_multiple_of_the_period_after_t(t: float, period: float) -> None:
    nxt = next_on_grid(t, period)
    k = round(nxt / period)
    assert nxt == k * period and nxt > t and (k - 1) * period <= t


def test_slo_met_gives_a_long_prompt_its_longer_ttft_budget() -> None:
    cls = SLOClassPolicy(ttft_s=0.5, tpot_s=0.05, ttft_s_per_ktok=0.1)
    assert slo_met(cls, 4000, 0.8, 0.04, 5.0)  # budget 0.5 + 4 x 0.1 = 0.9 s
    assert not slo_met(cls, 1000, 0.8, 0.04, 5.0)  # budget 0.6 s
    assert not slo_met(cls, 4000, 0.8, 0.06, 5.0)  # TPOT missed
    assert slo_met(cls, 4000, 0.8, None, 0.8)  # one token: no TPOT to miss
    batch = SLOClassPolicy(ttft_s=None, tpot_s=None, deadline_s=10.0, on_miss="defer")
    assert slo_met(batch, 9000, 9.0, 0.1, 10.0) and not slo_met(batch, 9000, 9.0, 0.1, 10.001)


@dataclass(slots=True)
class _SGLangInfo(EngineInfo):
    chunked_prefill_size: int = 2048
    max_running_requests: int = 48


def test_engine_model_takes_what_the_engine_reports() -> None:
    plain = EngineInfo("e", "sglang", "m", None, 100_000, False)  # no profile, no limits
    spec, model = engine_model("gpu0", plain)
    assert (spec.name, spec.kv_capacity, spec.chunk, spec.max_running) == ("gpu0", 100_000, 8192, 256)
    assert model.profile().decode_c == pytest.approx(DEFAULT_PROFILE.decode_c)
    spec, model = engine_model("gpu1", _SGLangInfo("e", "sglang", "m", None, 50_000, False, PROFILE.step))
    assert (spec.kv_capacity, spec.chunk, spec.max_running) == (50_000, 2048, 48)
    assert (spec.prefill_b, spec.decode_e) == (PROFILE.step.prefill_b, PROFILE.step.decode_e)


def test_a_decision_row_is_the_same_with_its_inputs_as_dicts_or_as_json() -> None:
    d = Decision(1.5, "r1", "acme", "admit", "within_slo", "sim-0", 3, {"engines": [{"x": 1.25}]},
                 {"ttft_s": 0.08})
    row, text = decision_row(d), decision_row(d, as_json=True)
    assert set(row) == set(DECISION_COLUMNS) and row["inputs"] is d.inputs
    assert {**text, "inputs": json.loads(text["inputs"]), "outputs": json.loads(text["outputs"])} == row
