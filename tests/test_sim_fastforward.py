"""The simulated engine's fast-forward (engine_adapter/sim/fastforward.py, batch.py) gives the same
results as stepping one engine step at a time, exactly: event times, GPU seconds, energy, load
and GPU readings, statistics; and replay's loop, which stops only where an event can happen while
requests are queued, gives the same records, decisions and engine figures as one that stops at
every step end (VirtualRun.step_by_step). Equality is `==` on floats throughout: no tolerance."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.core.frequency import FrequencyParams
from controlplane.core.policy import Policy, SLOClassPolicy, TenantPolicy
from engine_adapter.sim.batch import CLIP_MAX_NEW_TOKENS, RUNNING
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import SimProfile, load_profile
from replay.runner import VirtualRun, run_virtual
from replay.workload import WorkloadRequest

Arrival = tuple[float, SimRequest, float | None]  # (time, request, SM clock to set before it)


def arrivals(seed: int, n: int) -> list[Arrival]:
    """Bursty arrivals; uncapped, capped below and above the reserve's clip, drawn lengths; shared
    prefixes; priorities; a few clock changes."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rng.choice([0.5, 5.0, 50.0]))
        cap = rng.choice([rng.randint(1, 600), 32768, CLIP_MAX_NEW_TOKENS + rng.randint(1, 2000)])
        length = rng.choice([None, rng.randint(0, 400), rng.randint(0, 2500)])
        ids = [rng.randint(0, 20) for _ in range(rng.randint(0, 6))]
        clock = rng.choice([900.0, 1400.0, 1980.0]) if rng.random() < 0.02 else None
        out.append((t, SimRequest(f"r{i}", rng.randint(1, 3000), cap, length, ids, rng.choice([None, 0, 2])), clock))
    return out


def drive(profile: SimProfile, work: list[Arrival], fast: bool) -> tuple[SimCore, list[SimEvent], list]:
    """Stepping: advance to every step end, per-token events (nothing merged). Fast: advance
    straight to each arrival. Readings are taken before every fifth arrival."""
    core = SimCore(profile, seed=3)
    events: list[SimEvent] = []
    readings = []
    for k, (t, req, clock) in enumerate(work):
        if not fast:
            while (nt := core.next_time()) is not None and nt <= t:
                events += core.advance(nt, per_token=True)
        events += core.advance(t, per_token=not fast)
        if k % 5 == 0:
            readings.append((core.load(t), core.gpu(t)))
        if clock is not None:
            core.set_frequency(clock)
        core.submit(t, req)
    while not fast and (nt := core.next_time()) is not None:
        events += core.advance(nt, per_token=True)
    events += core.advance(math.inf, per_token=not fast)
    return core, [e for e in events if e.kind != "tokens"], readings


@pytest.mark.parametrize("seed,kv,max_running,ratio", [(0, 450_000, 2048, 0.3), (1, 8_000, 64, 0.3),
                                                       (2, 60_000, 8, 1.0), (3, 5_000, 2048, 0.0)])
def test_fast_forward_equals_stepping_bit_for_bit(seed: int, kv: int, max_running: int, ratio: float) -> None:
    profile = dataclasses.replace(load_profile(), kv_capacity_tokens=kv, max_running_requests=max_running,
                                  new_token_ratio=ratio)
    work = arrivals(seed, 150)
    stepped, ev_step, read_step = drive(profile, work, fast=False)
    fast, ev_fast, read_fast = drive(profile, work, fast=True)
    assert ev_fast == ev_step  # every field, GPU seconds and energy included
    assert read_fast == read_step  # load reports and GPU readings (energy, power, utilisation)
    assert fast.stats == stepped.stats
    assert fast.gpu(1e6) == stepped.gpu(1e6)
    assert len([e for e in ev_fast if e.kind == "finish"]) == len(work)
    if ratio == 0.0:  # admission without a reserve: the KV pool runs short
        assert fast.stats.retractions > 0  # retractions were exercised


def test_fast_forward_merges_decode_steps() -> None:
    """The fast path does run: a decode batch advanced to the end plans and completes far fewer
    steps one at a time than it runs (`_complete` is the one-step path)."""
    core = SimCore(load_profile(), seed=0)
    for i in range(32):
        core.submit(0.0, SimRequest(f"d{i}", 100, 5000, output_tokens=500 + 37 * i))
    one_by_one = 0
    complete = core._complete

    def counting(*args):  # type: ignore[no-untyped-def]
        nonlocal one_by_one
        one_by_one += 1
        return complete(*args)

    core._complete = counting  # type: ignore[method-assign]
    events = core.advance(math.inf, per_token=False)
    assert len([e for e in events if e.kind == "finish"]) == 32
    assert core.stats.steps > 1500 and one_by_one < 100


def test_next_event_time_is_the_next_event_exactly() -> None:
    core = SimCore(load_profile(), seed=0)
    core.submit(0.0, SimRequest("long", 200, 5000, output_tokens=900))
    core.submit(0.0, SimRequest("short", 300, 5000, output_tokens=250))
    first = core.next_event_time()
    assert first == core.next_time()  # a prefill step: its end (a first token may come)
    core.advance(first, per_token=False)
    while core.current_step().n_prefill:  # until both decode
        core.advance(core.next_time(), per_token=False)
    t_finish = core.next_event_time()
    assert t_finish > core.next_time()  # many decode steps ahead
    assert core.advance(math.nextafter(t_finish, 0.0), per_token=False) == []  # nothing before it
    assert [(e.rid, e.kind) for e in core.advance(t_finish, per_token=False)] == [("short", "finish")]
    assert core.next_event_time(limit=0.0) > t_finish  # past the limit it stops early: a bound, not the end
    core.submit(t_finish, SimRequest("new", 50, 10, output_tokens=10))
    assert core.next_event_time() == core.next_time()  # a submit: the next step may change anything


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reqs=st.lists(st.tuples(st.integers(1, 400), st.integers(1, 5200), st.integers(0, 5200), st.floats(0, 3)),
                     min_size=1, max_size=16),
       cap=st.integers(600, 3000), ratio=st.sampled_from([0.0, 0.3, 1.0]))
def test_reserve_and_kv_totals_match_a_direct_sum(reqs, cap, ratio) -> None:
    """The batch's running totals are what summing over its requests gives, at every step."""
    prof = dataclasses.replace(load_profile(), kv_capacity_tokens=cap, chunked_prefill_size=256,
                               max_running_requests=6, new_token_ratio=ratio)
    core = SimCore(prof, seed=1)
    for i, (prompt, max_new, out, when) in enumerate(sorted(reqs, key=lambda r: r[3])):
        core.advance(when, per_token=False)
        core.submit(when, SimRequest(f"h{i}", prompt, max_new, output_tokens=out))
    while (t := core.next_time()) is not None:
        batch = core._batch
        members = [r for r in core._running.values() if r.prefilled]
        live = [batch.live(r) for r in members]
        assert batch.n == len(members) and batch.kv == sum(kv for _, kv, _, _ in live)
        assert core._used == sum(kv for _, kv, _, _ in live) + sum(r.kv for r in core._prefilling.values())
        direct = sum(min(r.req.max_new_tokens - g, CLIP_MAX_NEW_TOKENS) for r, (g, *_) in zip(members, live))
        assert batch.reserve() == direct
        assert all(r.state == RUNNING for r in members)
        core.advance(t, per_token=False)
    assert core.active() == 0 and core.load(1e9).used_tokens == 0


# -- replay: the loop's fast-forward against stopping at every step end --------------------------------

CLASSES = {"interactive": SLOClassPolicy(0.5, 0.05, on_miss="reject"),
           "batch": SLOClassPolicy(None, None, 20.0, "defer")}


def _policy(scheduler: str, admission: bool) -> Policy:
    return Policy(scheduler=scheduler, admission=admission, slo_classes=CLASSES,
                  tenants={f"t{k}": TenantPolicy(1.0 + k % 2, "batch" if k == 3 else "interactive")
                           for k in range(4)}).validate()


def _workload(seed: int, n: int, rate: float, caps: tuple[int | None, ...] = (None, 64, 300, 5000),
              hashes: bool = False) -> list[WorkloadRequest]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        tenant = f"t{rng.randint(0, 3)}"
        ids = [rng.randint(0, 30) for _ in range(rng.randint(0, 5))] if hashes else None
        out.append(WorkloadRequest(round(t * 1e3, 3), rng.randint(10, 4000), rng.randint(1, 1500), tenant,
                                   "batch" if tenant == "t3" else None, ids, rng.choice(caps)))
    return out


def _tiny() -> SimProfile:
    return dataclasses.replace(load_profile(), kv_capacity_tokens=9000, new_token_ratio=0.0)


CASES = {
    "overloaded, admission, cut at a horizon while queued": (
        lambda: _workload(1, 500, 40.0), lambda: _policy("equinox", True), {"horizon_s": 10.0}),
    "two engines, clock control, prefixes": (
        lambda: _workload(2, 300, 60.0, hashes=True), lambda: _policy("vtc", False),
        {"engines": 2, "clock_control": FrequencyParams()}),
    "a small KV pool: retractions, deadlines expire": (
        lambda: _workload(5, 120, 6.0, caps=(None, 3000)), lambda: _policy("fcfs", False), {"profile": _tiny()}),
    "two engines, small KV, cut at a horizon": (
        lambda: _workload(6, 200, 12.0, caps=(None, 3000)), lambda: _policy("equinox", True),
        {"profile": _tiny(), "engines": 2, "horizon_s": 15.0}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_replay_fast_forward_equals_stepping(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make_workload, make_policy, kwargs = CASES[case]
    workload, results, stops = make_workload(), {}, {}
    advance = VirtualRun.advance_engines
    calls = 0

    def counting(self, until):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return advance(self, until)

    monkeypatch.setattr(VirtualRun, "advance_engines", counting)
    for stepping in (True, False):
        monkeypatch.setattr(VirtualRun, "step_by_step", stepping)
        calls = 0
        results[stepping] = run_virtual(workload, make_policy(), torch_expert=False, record_decisions=True,
                                        **kwargs)
        stops[stepping] = calls
    step, fast = results[True], results[False]
    assert [r.to_dict() for r in fast.records] == [r.to_dict() for r in step.records]  # times, energy, outcome
    assert fast.decisions == step.decisions and len(fast.decisions) >= len(workload) // 2
    assert fast.engines == step.engines  # steps, busy time, energy, retractions, clocks
    assert (fast.makespan_s, fast.fairness, fast.backlogged) == (step.makespan_s, step.fairness, step.backlogged)
    assert stops[False] < stops[True]  # and it did skip stops
