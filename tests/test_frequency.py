"""The frequency rule (controlplane/core/frequency.py): pure, monotone in load, never below the SLO
by the model, no flapping under a steady or jittering load; its decision rows; read from a live
core; and run in virtual-time replay against the fixed maximum clock."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging

import pytest

from hypothesis import example, given, settings
from hypothesis import strategies as st

from controlplane.core.core import DecisionCore
from controlplane.core.events import RequestSpec
from controlplane.core.frequency import (ClockInputs, FrequencyController, FrequencyParams, choose_clock,
                                         clock_inputs, forecast_at, guard_clock, rederive, rederive_guard)
from controlplane.driver import decision_row
from controlplane.predict.output_length import OutputLengthPredictor
from engine_adapter.sim.profile import load_profile
from replay.audit import audit_decisions
from replay.runner import default_policy, engine_specs, run_virtual
from replay.simulate import energy_per_good_token, format_energy
from replay.workload import WorkloadRequest, scale_rate
from telemetry.nvml_clocks import NvmlClocks
from tests.test_telemetry_nvml import FakeNvml, NVMLError, NVMLError_LibraryNotFound, NVMLError_NotSupported

PROFILE = load_profile()
STEP, CLOCK = PROFILE.step, PROFILE.clock
PARAMS = FrequencyParams()


def inputs(batch: int = 16, rate: float = 2000.0, waiting: float = 0.0, **kw: object) -> ClockInputs:
    base: dict[str, object] = dict(engine="sim-0", batch=batch, kv_tokens=batch * 900.0, waiting_tokens=waiting,
                                   prompt_rate=rate, mean_prompt=600.0, chunk=8192, ttft_budget_s=0.53,
                                   tpot_budget_s=0.05)
    base.update(kw)
    return ClockInputs(**base)  # type: ignore[arg-type]


batches = st.integers(min_value=0, max_value=400)
rates = st.floats(min_value=0.0, max_value=60_000.0, allow_nan=False)
waits = st.floats(min_value=0.0, max_value=40_000.0, allow_nan=False)
prompts = st.floats(min_value=50.0, max_value=8000.0, allow_nan=False)


def wanted(x: ClockInputs) -> float:
    return choose_clock(x, STEP, CLOCK, PARAMS)[0]


@settings(max_examples=300, deadline=None)
@given(batches, batches, rates, rates, waits, waits, prompts)
def test_the_clock_is_monotone_in_load(b1: int, b2: int, r1: float, r2: float, w1: float, w2: float,
                                        prompt: float) -> None:
    """More running, more arriving or more waiting work never asks for a lower clock."""
    lo = inputs(min(b1, b2), min(r1, r2), min(w1, w2), mean_prompt=prompt)
    hi = inputs(max(b1, b2), max(r1, r2), max(w1, w2), mean_prompt=prompt)
    assert wanted(lo) <= wanted(hi)


@settings(max_examples=300, deadline=None)
@given(batches, rates, waits, prompts)
def test_never_below_the_slo_by_the_model(batch: int, rate: float, waiting: float, prompt: float) -> None:
    """Where the maximum clock meets the budgets with margin, the chosen clock does too, and one step
    below the SLO floor does not (the floor is the lowest clock that does)."""
    x = inputs(batch, rate, waiting, mean_prompt=prompt)
    want, floor, _, _ = choose_clock(x, STEP, CLOCK, PARAMS)
    assert CLOCK.f_min_mhz <= floor <= want <= CLOCK.f_max_mhz
    top = forecast_at(x, STEP, CLOCK, CLOCK.f_max_mhz)

    def meets(mhz: float) -> bool:
        f = forecast_at(x, STEP, CLOCK, mhz)
        return (f.utilisation <= PARAMS.max_utilisation and f.tpot_s <= PARAMS.margin * 0.05
                and f.ttft_s <= PARAMS.margin * 0.53)

    if not meets(CLOCK.f_max_mhz):
        assert want == CLOCK.f_max_mhz  # nothing to save: run flat out
        return
    assert top.tpot_s <= forecast_at(x, STEP, CLOCK, want).tpot_s  # a lower clock is never faster
    assert meets(want) and meets(floor)
    if floor - PARAMS.step_mhz >= CLOCK.f_min_mhz:
        assert not meets(floor - PARAMS.step_mhz)


def test_light_load_runs_slow_heavy_load_fast() -> None:
    idle = choose_clock(inputs(0, 0.0), STEP, CLOCK, PARAMS)
    busy = choose_clock(inputs(200, 30_000.0, 20_000.0), STEP, CLOCK, PARAMS)
    assert idle[0] < 0.7 * CLOCK.f_max_mhz  # decode-only work: far below the maximum
    assert idle[2] >= CLOCK.f_min_mhz and "energy" in idle[3]  # held up by the energy floor, not the SLO
    assert busy[0] > idle[0] and "SLO" in busy[3]
    # a tighter TPOT budget asks for a higher clock
    assert wanted(inputs(64, 4000.0, tpot_budget_s=0.012)) > wanted(inputs(64, 4000.0))


@settings(max_examples=100, deadline=None)
@example(0, 0.0, 4916.0, 5, 0.0)  # the batch beside a steady prompt backlog flapped the prefill guard
@given(batches, rates, waits, st.integers(min_value=0, max_value=40), st.floats(min_value=0.0, max_value=0.1))
def test_no_flapping_under_a_steady_or_jittering_load(batch: int, rate: float, waiting: float, jitter: int,
                                                      rel: float) -> None:
    """A steady load changes the clock at most once; one whose jitter repeats within the down
    window (here every 6 evaluations) settles too: a raise is kept until lower asks persist."""
    for seq in ([inputs(batch, rate, waiting)] * 40,
                [inputs(batch + (jitter if k % 2 else 0), rate * (1 + (rel if k % 3 == 0 else 0)), waiting)
                 for k in range(40)]):
        ctl = FrequencyController("sim-0", STEP, CLOCK, PARAMS)
        changes = sum(ctl.step(x, float(k)).changed for k, x in enumerate(seq))
        assert changes <= 2, changes
        assert sum(ctl.step(x, 40.0 + k).changed for k, x in enumerate(seq)) == 0  # settled


def test_raises_at_once_lowers_after_persistent_asks() -> None:
    ctl = FrequencyController("sim-0", STEP, CLOCK, PARAMS)
    light, heavy = inputs(2, 200.0), inputs(300, 40_000.0, 30_000.0)
    steps = [ctl.step(light, float(k)) for k in range(PARAMS.down_after)]
    assert [c.changed for c in steps] == [False] * (PARAMS.down_after - 1) + [True]
    low = ctl.current_mhz
    assert low < CLOCK.f_max_mhz and steps[-1].reason.startswith("lower")
    up = ctl.step(heavy, 10.0)
    assert up.changed and up.target_mhz > low and up.reason.startswith("raise")
    # a single light evaluation does not lower it again
    assert not ctl.step(light, 11.0).changed


@settings(max_examples=200, deadline=None)
@given(batches, rates, waits, waits, prompts)
def test_the_prefill_guard_is_the_lowest_clock_keeping_short_answers_within_the_margin(
        batch: int, rate: float, w1: float, w2: float, prompt: float) -> None:
    """More prompt tokens waiting never lowers the guard; at the guard a short answer's forecast
    TPOT is within the margin, one step below it is not (or the guard is f_max: nothing to save);
    with no more than `guard_chunks` of a chunk waiting there is none."""
    lo, hi = (inputs(batch, rate, w, mean_prompt=prompt) for w in sorted((w1, w2)))
    g_lo, g_hi = guard_clock(lo, STEP, CLOCK, PARAMS)[0], guard_clock(hi, STEP, CLOCK, PARAMS)[0]
    assert CLOCK.f_min_mhz <= g_lo <= g_hi <= CLOCK.f_max_mhz
    budget = PARAMS.margin * 0.05

    def short_tpot(mhz: float) -> float:
        return forecast_at(hi, STEP, CLOCK, mhz, PARAMS.short_output).tpot_s

    if hi.waiting_tokens <= PARAMS.guard_chunks * hi.chunk:
        assert g_hi == CLOCK.f_min_mhz  # no long prompt or burst waits: no guard
    elif g_hi < CLOCK.f_max_mhz:
        assert short_tpot(g_hi) <= budget
        if g_hi - PARAMS.step_mhz >= CLOCK.f_min_mhz:
            assert short_tpot(g_hi - PARAMS.step_mhz) > budget


def test_a_burst_of_long_prompts_beside_short_answers_raises_at_once_then_lapses() -> None:
    """Azure code at a lowered clock: prompts of thousands of tokens arrive beside 20-token answers
    while the learned mean answer is still near its 512-token prior. Spread over that mean answer,
    the waiting prefill looks harmless (the SLO floor stays near the idle clock), but a short
    answer's few steps carry it: the dispatch raises the clock at once (the prefill guard), and the
    next evaluation after the tokens are prefilled drops it again, without the 8-evaluation hold."""
    ctl = FrequencyController("sim-0", STEP, CLOCK, PARAMS)
    idle = inputs(0, 0.0, mean_prompt=952.0, mean_output=405.0)
    for k in range(PARAMS.down_after):
        ctl.step(idle, float(k))
    low = ctl.current_mhz
    assert low < 0.5 * CLOCK.f_max_mhz
    burst = inputs(2, 1090.0, 5448.0, kv_tokens=2000.0, mean_prompt=952.0, mean_output=405.0)
    want = choose_clock(burst, STEP, CLOCK, PARAMS)[0]
    assert want < 0.5 * CLOCK.f_max_mhz  # the mean-answer forecast alone would not raise
    assert forecast_at(burst, STEP, CLOCK, low, PARAMS.short_output).tpot_s > 0.05  # a short answer misses
    up = ctl.on_dispatch(burst, 8.2)
    assert up is not None and up.changed and up.reason.startswith("raise: guard")
    assert up.target_mhz == up.guard_mhz > 1.5 * want
    assert forecast_at(burst, STEP, CLOCK, up.target_mhz, PARAMS.short_output).tpot_s <= PARAMS.margin * 0.05
    assert ctl.on_dispatch(burst, 8.3) is None  # already there
    down = ctl.step(idle, 9.0)  # prefilled: the guard lapses at once
    assert down.changed and down.guard_mhz == CLOCK.f_min_mhz and down.target_mhz < 0.5 * CLOCK.f_max_mhz


def test_no_lowering_while_the_load_builds_up() -> None:
    """An engine filling up (a run's first seconds, a rising load) asks each evaluation for more
    than before, all far below f_max: the clock stays up until the asks stop climbing (lowered at
    the start of a ramp to capacity, Azure conv at 1x lost 1.85-4 points it never caught up)."""
    ctl = FrequencyController("sim-0", STEP, CLOCK, PARAMS)
    ramp = [inputs(2 + 8 * k, 500.0 + 800.0 * k) for k in range(12)]
    asks = [wanted(x) for x in ramp]
    assert asks == sorted(asks) and asks[-1] > asks[-PARAMS.down_after] + PARAMS.band_mhz
    assert asks[-1] < CLOCK.f_max_mhz - PARAMS.band_mhz
    assert not any(ctl.step(x, float(k)).changed for k, x in enumerate(ramp))
    held = [ctl.step(ramp[-1], 12.0 + k) for k in range(PARAMS.down_after)]  # the load settles
    assert any(c.changed for c in held) and ctl.current_mhz == asks[-1]


def test_a_change_is_an_auditable_decision_row() -> None:
    ctl = FrequencyController("sim-0", STEP, CLOCK, PARAMS)
    for k in range(PARAMS.down_after):
        c = ctl.step(inputs(4, 500.0), float(k))
    d = ctl.decision(c, policy_version=3)
    assert (d.kind, d.engine, d.policy_version, d.ts) == ("clock", "sim-0", 3, PARAMS.down_after - 1.0)
    row = decision_row(d, as_json=True)
    ins, outs = json.loads(row["inputs"]), json.loads(row["outputs"])
    assert ins["batch"] == 4 and ins["previous_mhz"] == CLOCK.f_max_mhz and ins["params"]["margin"] == PARAMS.margin
    assert outs["target_mhz"] == c.target_mhz < CLOCK.f_max_mhz
    # auditable from the row alone: its inputs give the same clock
    assert rederive(ins) == outs["wanted_mhz"]
    assert rederive({**ins, "batch": 400, "prompt_rate": 50_000.0}) > outs["wanted_mhz"]
    assert ins["params"]["short_output"] == PARAMS.short_output and rederive_guard(ins) == outs["guard_mhz"]
    assert rederive_guard({**ins, "waiting_tokens": 20_000.0}) > outs["guard_mhz"]


def test_inputs_come_from_the_core() -> None:
    core = DecisionCore(default_policy("fcfs"), engine_specs(PROFILE, 1), OutputLengthPredictor(torch_expert=False))
    for k in range(5):
        core.arrive(0.1 * k, RequestSpec(f"r{k}", "t", 1000, 200, "interactive"))
    x = clock_inputs(core.snapshot(1.0, with_tenants=False), "sim-0")
    assert x.batch == 5 and x.waiting_tokens > 0 and x.prompt_rate > 0
    assert x.tpot_budget_s == 0.05 and x.ttft_budget_s is not None and x.chunk == PROFILE.chunked_prefill_size


def _workload(rate: float, seconds: float) -> list[WorkloadRequest]:
    n = int(rate * seconds)
    return [WorkloadRequest(timestamp_ms=1000.0 * k / rate, input_length=300 + (k * 137) % 1500,
                            output_length=50 + (k * 71) % 400, tenant=f"t{k % 3}") for k in range(n)]


def test_replay_saves_energy_at_the_same_attainment() -> None:
    """A light load in virtual time: the controller lowers the clock (decision rows say so), the GPU
    spends less energy per good output token, every request still meets its SLO, and the energy
    attributed to the tenants' requests adds up to the steps' energy."""
    w = _workload(4.0, 30.0)
    fixed = run_virtual(w, "fcfs", torch_expert=False)
    ctl = run_virtual(w, "fcfs", torch_expert=False, clock_control=PARAMS, record_decisions=True)
    clocks = [d for d in ctl.decisions if d["kind"] == "clock"]
    assert clocks and all(d["engine"] == "sim-0" for d in clocks)
    report = audit_decisions(clocks)  # `sluice audit` re-runs the rule on every clock row
    assert report.ok and report.checked == len(clocks) and report.by_kind == {"clock": len(clocks)}
    tampered = [{**clocks[0], "outputs": clocks[0]["outputs"].replace('"wanted_mhz": ', '"wanted_mhz": 1')}]
    assert not audit_decisions(tampered).ok
    assert ctl.engines["sim-0"]["mean_clock_mhz"] < 0.8 * PROFILE.f_max_mhz
    assert fixed.engines["sim-0"]["clock_changes"] == 0 and fixed.engines["sim-0"]["mean_clock_mhz"] == PROFILE.f_max_mhz
    assert ctl.overall.slo_attainment == fixed.overall.slo_attainment == 1.0

    end = max(fixed.makespan_s, ctl.makespan_s)  # the same GPU over the same time
    assert energy_per_good_token(ctl, end) < 0.9 * energy_per_good_token(fixed, end)
    assert "clock changes" in format_energy({"fcfs": fixed, "fcfs/clock": ctl})
    for r in (fixed, ctl):
        assert all(x.energy_j > 0 for x in r.records)
        assert abs(sum(o.energy_j for o in r.per_tenant.values()) - r.overall.energy_j) < 1e-6 * r.overall.energy_j
        assert r.overall.energy_j < r.engines["sim-0"]["energy_j"]  # idle time between steps is nobody's


def test_replay_without_control_is_unchanged() -> None:
    w = _workload(2.0, 10.0)
    a = run_virtual(w, "fcfs", torch_expert=False)
    b = run_virtual(w, "fcfs", torch_expert=False, clock_control=None)
    assert [dataclasses.astuple(r) for r in a.records] == [dataclasses.astuple(r) for r in b.records]


# -- NVML: locked clocks on real GPUs, a dry run where not permitted ---------------------------------

class NVMLError_NoPermission(NVMLError):  # noqa: N801 - pynvml's own naming
    pass


class ClockNvml(FakeNvml):
    """The suite's fake NVML with the clock calls; `refuse` raises that error from every setter."""

    NVML_CLOCK_MEM = 2

    def __init__(self, refuse: type[Exception] | None = None, locked: bool = True, **kw: object) -> None:
        super().__init__(**kw)
        self.refuse, self.locked_supported = refuse, locked
        self.calls: list[tuple[object, ...]] = []

    def _set(self, *call: object) -> None:
        if self.refuse is not None:
            raise self.refuse("Insufficient Permissions")
        self.calls.append(call)

    def nvmlDeviceSetGpuLockedClocks(self, h, lo, hi):  # noqa: N802
        if not self.locked_supported:
            raise NVMLError_NotSupported("Not Supported")
        self._set("locked", h[1], lo, hi)

    def nvmlDeviceSetApplicationsClocks(self, h, mem, sm):  # noqa: N802
        self._set("application", h[1], mem, sm)

    def nvmlDeviceResetGpuLockedClocks(self, h):  # noqa: N802
        self.calls.append(("reset", h[1]))

    def nvmlDeviceGetClockInfo(self, h, kind):  # noqa: N802
        return 2619 if kind == self.NVML_CLOCK_MEM else 1980


def test_nvml_locks_the_sm_clock() -> None:
    nv = ClockNvml()
    clocks = NvmlClocks(nv)
    assert clocks.set_sm_clock(1, 1184.6) == "locked"
    assert nv.calls == [("locked", 1, 1185, 1185)] and clocks.targets == {1: 1184.6}
    clocks.reset(1)
    assert nv.calls[-1] == ("reset", 1) and 1 not in clocks.status


def test_nvml_falls_back_to_application_clocks() -> None:
    nv = ClockNvml(locked=False)
    assert NvmlClocks(nv).set_sm_clock(0, 990.0) == "application clocks"
    assert nv.calls == [("application", 0, 2619, 990)]  # the memory clock it runs at, kept


def test_not_permitted_runs_dry_with_one_log_line(caplog) -> None:
    clocks = NvmlClocks(ClockNvml(refuse=NVMLError_NoPermission))
    with caplog.at_level(logging.WARNING, logger="sluice.telemetry.nvml"):
        for mhz in (1200.0, 1100.0, 1000.0):
            how = clocks.set_sm_clock(0, mhz)
    assert how.startswith("dry run: not permitted") and "root" in how
    assert clocks.targets == {0: 1000.0} and clocks.status[0] == how
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "runs dry" in lines[0] and "NoPermission" in lines[0]
    clocks.reset(0)  # nothing was locked: nothing to undo, nothing raised


def test_no_gpu_runs_dry() -> None:
    clocks = NvmlClocks(ClockNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found")))
    assert clocks.set_sm_clock(0, 1200.0).startswith("dry run: no GPU")


def test_serving_and_replay_change_clocks_alike(monkeypatch) -> None:
    """The serving runtime (on a virtual-time loop, simulated engines) runs the rule on the same
    cadence and inputs as replay: the same clock changes at the same instants, and the request rows
    carry the energy the simulator attributed, as replay's records do."""
    from tests import test_driver_parity as parity

    monkeypatch.setattr(parity, "Sluice", functools.partial(parity.Sluice, clock_control=PARAMS))
    # the parity workload at a third of its rate: below saturation, so that the clock moves
    workload, config = scale_rate(parity._workload(), 1 / 3), parity._config("vtc")
    recorder, served = parity._run_serving(workload, config)
    replayed = run_virtual(workload, config.policy, engines=parity.ENGINES, profile=parity.PROFILE, seed=parity.SEED,
                           record_decisions=True, torch_expert=False, clock_control=PARAMS)
    ours = [(r["ts"], r["engine"], r["outputs"]["target_mhz"]) for r in recorder.rows if r["kind"] == "clock"]
    theirs = [(r["ts"], r["engine"], json.loads(r["outputs"])["target_mhz"]) for r in replayed.decisions
              if r["kind"] == "clock"]
    assert ours and len(ours) == len(theirs)
    assert all(a[1:] == b[1:] and abs(a[0] - b[0]) < 1e-6 for a, b in zip(ours, theirs)), (ours[:3], theirs[:3])
    done = sorted(row["energy_j"] for row in served if row["status"] == "ok")
    assert done and done[0] > 0
    assert done == pytest.approx(sorted(r.energy_j for r in replayed.records if r.status == "ok"), rel=1e-6)
