"""Virtual-time replay: the decision core and simulated engines on a virtual clock.

`run_virtual` drives the very same `DecisionCore` the gateway serves with (controlplane/core) and
one `SimCore` per engine (engine_adapter/sim) as a discrete-event simulation:

- arrivals come from the workload: `RequestSpec(prompt_tokens=input_length, max_tokens=cap)` for the
  core, `SimRequest(max_new_tokens=cap, output_tokens=output_length, hash_ids=...)` for the engine,
  where cap is the request's `max_tokens` or `DEFAULT_MAX_TOKENS`: only the engine knows where the
  output will stop, as in serving (the core predicts it; tests/test_decision_quality.py holds this);
- `Dispatch` -> `SimCore.submit`; the engine's `first_token` -> `core.first_token`, its `finish` ->
  `core.finish(FinishReport)`, whose actions are applied at once;
- `core.tick` at the driver's tick instants while requests are queued (deadlines; a tick with
  nothing queued changes nothing), `core.engine_load` at its load-report instants, with the
  engine's own load report: the cadence, the action routing, the engine specs, the decision rows
  and the SLO accounting are controlplane/driver.py's, the same the serving runtime uses;
- the next stop is min(next arrival, next tick, next load report, and while requests are queued
  each engine's next event); at one instant: engine events, then arrivals, then the tick, then
  the load reports (the driver's order; tests/test_driver_parity.py holds serving to it).

Causality: a first token or a finish can dispatch a queued request, so while requests are queued
the loop stops where an engine's next event can come (`SimCore.next_event_time`: the end of a
step with prefill, else the end of the decode step in which a request finishes); the steps
ending before it emit nothing the core could act on. While nothing is queued, no engine event can
produce an action (the core only learns), so the engines are advanced straight to the next
arrival or load report. Either way the simulator runs stretches of decode-only steps in one go
(`advance(per_token=False)`), and the results are those of stopping at every step end, exactly
(`step_by_step`, the reference tests/test_sim_fastforward.py holds the loop to).

Model pools: `engines` may map pool names to engine counts; each pool gets its own core (its own
fair queues, admission and dispatch, the policy's per-pool weights: `Policy.for_pool`) over its own
engines, as serving opens one per model (controlplane/engine_pool.py), and a request goes to the pool
its `model` names (the first when it names none). With one pool, everything is as it always was.

Everything is deterministic for a seed: no wall clock is read except to report the speed.

What a run comes to (per tenant and class outcomes, fairness, the `VirtualResult`) is
replay/outcomes.py's, over the run's `RequestRecord`s (replay/records.py); its text table is
replay/tables.py's.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.core.events import ADMISSION_KINDS, Decision, Dispatch, FinishReport, Reject, RequestSpec
from controlplane.core.frequency import FrequencyParams
from controlplane.core.policy import DEFAULT_SLO_CLASSES, Policy, SLOClassPolicy
from controlplane.driver import LOAD_EVERY_S, TICK_EVERY_S, Driver, decision_row, next_frequency, next_load, next_tick
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import SimProfile, load_profile
from replay.outcomes import VirtualResult, engine_figures, fairness_figures, judge, outcomes, served
from replay.pools import build_pools, check_workload, engine_specs
from replay.records import RequestRecord
from replay.report import CANCELLED, ERROR, EXPIRED, OK, REJECTED, SLOSpec
from replay.workload import WorkloadRequest

__all__ = [
    "LOAD_EVERY_S",
    "TICK_EVERY_S",
    "VirtualRun",
    "default_policy",
    "engine_specs",
    "run_virtual",
]


# -- building the core as the gateway does --------------------------------------------------------

def default_policy(scheduler: str = "fcfs", *, admission: bool = False, weights: Mapping[str, float] | None = None,
                   slo_classes: Mapping[str, SLOClassPolicy] | None = None, **overrides: Any) -> Policy:
    """A policy with the given SLO classes (default: sluice's built-in ones, DEFAULT_SLO_CLASSES)
    and tenant weights (every tenant interactive)."""
    from controlplane.core.policy import TenantPolicy

    classes = dict(DEFAULT_SLO_CLASSES if slo_classes is None else slo_classes)
    tenants = {t: TenantPolicy(float(w)) for t, w in (weights or {}).items()}
    return Policy(scheduler=scheduler, admission=admission, slo_classes=classes, tenants=tenants,
                  **overrides).validate()


# -- the run --------------------------------------------------------------------------------------

class VirtualRun:
    """One run: the core, the simulated engines and the records; `run()`, then `result()`."""

    step_by_step = False  # True: stop at every engine step while requests are queued (the reference)

    def __init__(self, workload: Sequence[WorkloadRequest], policy: Policy, engines: int | Mapping[str, int],
                 profile: SimProfile, seed: int, horizon_s: float | None, record_decisions: bool, torch_expert: bool,
                 train_every: int, clock_control: FrequencyParams | None = None) -> None:
        counts = {"": engines} if isinstance(engines, int) else dict(engines)
        check_workload(workload, policy, list(counts))
        order = sorted(range(len(workload)), key=lambda i: (workload[i].timestamp_ms, i))
        self.workload = [workload[i] for i in order]
        self.policy = policy
        self.horizon = horizon_s
        self.errors = ForecastErrors(window=max(1, len(workload)))
        self.predictor = OutputLengthPredictor(seed=seed, torch_expert=torch_expert, train_every=train_every)
        self.names = [f"sim-{i}" for i in range(sum(counts.values()))]
        self.sims = {name: SimCore(profile, seed=seed + i) for i, name in enumerate(self.names)}
        # one core per model pool (replay/pools.py); with one, the run is its own sink, as it always was
        self.pools = list(counts)
        self.drivers, self.engine_pool, self.steerings = build_pools(
            self, policy, counts, profile, self.names, self.predictor, self.errors, clock_control)
        self.driver = self.drivers[self.pools[0]]  # the first pool's (replay/autoscale.py: one pool)
        self.core = self.driver.core
        self.steering = self.steerings.get(self.pools[0])
        self.clock_log: dict[str, list[tuple[float, float]]] = {name: [(0.0, profile.f_max_mhz)]
                                                                 for name in self.names}
        width = max(6, len(str(len(workload))))
        self.records = [
            RequestRecord(k, f"r{k:0{width}d}", w.tenant, w.slo_class, w.timestamp_ms / 1e3, max(1, w.input_length),
                          max(1, w.output_length), w.output_cap)
            for k, w in enumerate(self.workload)]
        self.by_rid = {r.rid: r for r in self.records}
        self.record_decisions = record_decisions
        self.decisions: list[dict[str, Any]] = []
        self.queued: dict[str, int] = {}
        self.backlog_start: dict[str, float] = {}
        self.backlogged: dict[str, list[tuple[float, float]]] = {}
        self.last_event = 0.0
        self.advanced_to = 0.0  # every engine has run all its steps ending at or before this time

    # the core's actions (the driver's ActionSink)
    def dispatch(self, now: float, a: Dispatch) -> None:
        if now < self.advanced_to:  # the engines already ran past `now`: a causality bug
            raise RuntimeError(f"dispatch of {a.rid} at {now} after the engines reached {self.advanced_to}")
        rec = self.by_rid[a.rid]
        rec.engine, rec.dispatch_s = a.engine, now
        self.unqueue(rec.tenant, now)
        w = self.workload[rec.index]
        self.sims[a.engine].submit(now, SimRequest(
            a.rid, rec.input_tokens, rec.max_tokens, rec.requested_output_tokens, w.hash_ids, a.priority))
        steering = self.steerings.get(self.engine_pool.get(a.engine, self.pools[0]))
        if steering is not None:
            self._driver_of(a.engine).apply(now, steering.dispatched(now, a.engine))

    def reject(self, now: float, a: Reject) -> None:
        rec = self.by_rid[a.rid]
        rec.retry_after_s = a.retry_after_s
        rec.reason = a.code
        if a.code == "deadline_expired":
            self.end(rec, EXPIRED, now)
            self.unqueue(rec.tenant, now)
        else:
            self.end(rec, REJECTED, now)

    def decision(self, d: Decision, pool: str | None = None) -> None:
        rec = self.by_rid.get(d.rid)
        if rec is not None and d.kind in ADMISSION_KINDS:
            rec.decision, rec.reason = d.kind, d.reason
            rec.slo_class = d.inputs.get("slo_class", rec.slo_class) if d.inputs else rec.slo_class
            if d.kind != "reject":
                out = d.outputs
                rec.predicted_ttft_s, rec.predicted_tpot_s = out.get("ttft_s"), out.get("tpot_s")
                rec.predicted_output_tokens = d.inputs.get("output_tokens")
                self.enqueue(rec.tenant, d.ts)
        if self.record_decisions:  # the row the serving recorder writes to `decisions`
            row = decision_row(d, as_json=True)
            if pool is not None:  # several pools: which one's core decided (serving's rows say so too)
                row["pool"] = pool
            self.decisions.append(row)

    def _driver_of(self, engine: str) -> Driver:
        """The driver of the pool an engine serves in (an engine an autoscaler added: the first)."""
        return self.drivers[self.engine_pool.get(engine, self.pools[0])]

    def enqueue(self, tenant: str, now: float) -> None:
        n = self.queued.get(tenant, 0)
        if n == 0:
            self.backlog_start[tenant] = now
        self.queued[tenant] = n + 1

    def unqueue(self, tenant: str, now: float) -> None:
        n = self.queued[tenant] - 1
        self.queued[tenant] = n
        if n == 0:
            start = self.backlog_start.pop(tenant)
            if now > start:
                self.backlogged.setdefault(tenant, []).append((start, now))

    def end(self, rec: RequestRecord, status: str, now: float) -> None:
        if rec.status is not None:
            raise RuntimeError(f"request {rec.rid} ended twice ({rec.status}, then {status})")
        rec.status = status
        rec.finish_s = now if status in (OK, ERROR) else rec.finish_s
        self.last_event = max(self.last_event, now)

    def engine_event(self, ev: SimEvent) -> None:
        rec = self.by_rid[ev.rid]
        driver = self._driver_of(rec.engine)  # type: ignore[arg-type]  # dispatched: it has one
        if ev.kind == "first_token":
            rec.first_token_s = ev.time
            driver.first_token(ev.time, ev.rid)
        elif ev.kind == "finish":
            rec.cached_tokens, rec.output_tokens, rec.energy_j = ev.cached_tokens, ev.completion_tokens, ev.energy_j
            status = "aborted" if ev.finish_reason == "abort" else "ok"
            report = FinishReport(status, ev.prompt_tokens, ev.cached_tokens, ev.completion_tokens, rec.first_token_s)
            if status != "ok":
                rec.reason = ev.message or "engine_abort"
            self.end(rec, OK if status == "ok" else ERROR, ev.time)
            driver.finish(ev.time, ev.rid, report)

    def scale(self, now: float) -> None:
        """A hook at each load-report instant, before the reports: replay/autoscale.py adds and
        removes engines here (a fixed fleet does nothing)."""

    def set_clock(self, now: float, engine: str, mhz: float) -> None:
        """The frequency rule's change (`ClockSteering`): the engine runs at it from its next step."""
        self.clock_log[engine].append((now, self.sims[engine].set_frequency(mhz)))

    def next_engine_event(self, limit: float, t_eng: float) -> float:
        """The earliest time an engine can emit an event (a first token or a finish, which may
        dispatch a queued request), given nothing is submitted before it: every step ending
        earlier changes nothing the core sees, so the loop need not stop there (SimCore
        fast-forwards over those steps, with the same results as stepping through them).
        `step_by_step`: every step end (the reference the tests hold the fast-forward to)."""
        if self.step_by_step:
            return t_eng
        first = math.inf
        for s in self.sims.values():
            t = s.next_event_time(limit)
            if t is not None and t < first:
                first = t
        return first

    def advance_engines(self, until: float) -> None:
        """Run every engine to `until`, feeding their events to the core in time order (ties: by
        engine, then by each engine's own order); repeat while handling them submits more work."""
        if until > self.advanced_to:
            self.advanced_to = until
        per_token = self.step_by_step  # (the reference steps each engine one step at a time)
        sims = self.sims
        if len(sims) == 1:  # one engine (the common case): its events come in time order
            sim = next(iter(sims.values()))
            # advance until it returns nothing: an advance that is not due returns nothing and
            # changes nothing, so this is `while due: advance` with one call less per round
            while events := sim.advance(until, per_token):
                for ev in events:
                    self.engine_event(ev)
            return
        while True:
            due = [(e, sims[name]) for e, name in enumerate(self.names) if sims[name].due(until)]
            if not due:
                return
            if len(due) == 1:  # one engine's events come in time order
                for ev in due[0][1].advance(until, per_token):
                    self.engine_event(ev)
                continue
            batch: list[tuple[float, int, int, SimEvent]] = []
            for e, sim in due:
                for k, ev in enumerate(sim.advance(until, per_token)):
                    batch.append((ev.time, e, k, ev))
            batch.sort(key=lambda x: (x[0], x[1], x[2]))
            for *_, ev in batch:
                self.engine_event(ev)

    def report_loads(self, now: float, t_freq: float) -> tuple[float, float]:
        """A load-report instant: the autoscaler's hook, every engine's load report, then the
        frequency rule when it is due. Returns the next load-report and frequency instants."""
        self.scale(now)
        for name in self.names:
            self._driver_of(name).engine_load(now, name, self.sims[name].load(now))
        t_load = next_load(now)
        if self.steerings and t_freq <= now:
            for pool, steering in self.steerings.items():
                self.drivers[pool].apply(now, steering.evaluate(now))
            t_freq = next_frequency(now)
        return t_load, t_freq

    def run(self) -> None:
        sims, drivers = self.sims, self.drivers
        cores = [d.core for d in drivers.values()]
        n, i = len(self.workload), 0
        arrivals = [w.timestamp_ms / 1e3 for w in self.workload]
        horizon = self.horizon if self.horizon is not None else math.inf
        inf = math.inf
        first = arrivals[0] if n else 0.0
        # the first load report at the grid instant at or before the first arrival (serving reports
        # from its start; reports before anything happened change nothing)
        t_load = LOAD_EVERY_S * int(first / LOAD_EVERY_S)
        if self.steerings:  # the rule counts evaluations from the start, as serving's does
            t_load = 0.0
        t_freq = next_frequency(0.0)  # (a load instant too) serving's first is the first after its start
        # next_tick(last_event) for last_event in [tick_from, tick): the same grid instant, not
        # recomputed at every stop (last_event only grows)
        tick_from, tick = inf, inf
        while True:
            t_arr = arrivals[i] if i < n else inf
            if t_arr > horizon:
                t_arr = inf
            t_eng = inf  # the earliest end of a step in progress (inf: every engine idle)
            for s in sims.values():
                end = s.next_time()
                if end is not None and end < t_eng:
                    t_eng = end
            queued = sum(c.queued() for c in cores)
            busy = queued > 0 or t_eng != inf or any(c.in_flight() for c in cores)
            if t_arr == inf and not busy:
                break
            if queued:
                last = self.last_event
                if not tick_from <= last < tick:
                    tick_from, tick = last, next_tick(last)
                t_tick = tick
            else:
                t_tick = inf
            external = min(t_arr, t_load, t_tick)
            until = min(external, self.next_engine_event(external, t_eng)) if queued else external
            if until > horizon:
                if min(t_eng, external) > horizon:
                    break
                if queued:  # stepping stops at each step end up to the horizon: where it would last stop
                    self.advance_engines(horizon)
                    last = [s.last_end for s in sims.values() if s.last_end is not None]
                    self.last_event = max([self.last_event, *last])
                    break
                until = horizon
            self.advance_engines(until)
            now = until
            if now > self.last_event:
                self.last_event = now
            while i < n and arrivals[i] <= now and t_arr != inf:
                rec = self.records[i]
                w = self.workload[i]
                i += 1
                driver = drivers.get(w.model or "", self.driver)  # its pool's (default: the first)
                driver.arrive(now, RequestSpec(rec.rid, w.tenant, rec.input_tokens, rec.max_tokens, w.slo_class,
                                               prefix_hashes=tuple(w.hash_ids or ())))  # Mooncake: 512-token blocks
            if t_tick <= now:
                for driver in drivers.values():
                    driver.tick(now)
            if t_load <= now:
                t_load, t_freq = self.report_loads(now, t_freq)
        for rec in self.records:  # the horizon cut the rest off
            if rec.status is None:
                rec.status = CANCELLED

    # -- what it comes to (replay/outcomes.py) -------------------------------------------------------
    def result(self, slo: SLOSpec, wall: float, want_sd: bool, n_ticks: int) -> VirtualResult:
        records, policy = self.records, self.policy
        judge(records, policy, slo)
        last_arrival = max((r.arrival_s for r in records), default=0.0)
        duration = self.horizon if self.horizon is not None else last_arrival
        makespan = max([self.last_event] + [r.finish_s for r in records if r.finish_s is not None])
        # the policy's weights (with several pools: each tenant's base weight, whatever a pool gives it)
        weights = {t: policy.tenant(t).weight for t in dict.fromkeys(r.tenant for r in records)}
        per_tenant, overall, per_class, df = outcomes(records, weights, duration)
        done = served(records)
        for tenant, start in self.backlog_start.items():  # still backlogged at the horizon
            self.backlogged.setdefault(tenant, []).append((start, makespan))
        fairness = fairness_figures(per_tenant, df, done, self.backlogged, weights, duration, want_sd, n_ticks)
        forecast = {k: {"count": s.count, "median_ape": s.median_ape, "bias": s.bias, "mae": s.mae}
                    for k, s in self.errors.summary().items()}
        return VirtualResult(policy, records, per_tenant, overall, per_class, duration, makespan, wall, fairness,
                             forecast, self.engine_figures(makespan), self.decisions, done, self.backlogged)

    def engine_figures(self, makespan: float) -> dict[str, dict[str, Any]]:
        """Per engine: the simulator's figures up to `makespan` with its window from its pool's core."""
        snaps = {p: d.core.snapshot(makespan, with_tenants=False) for p, d in self.drivers.items()}
        windows = {name: snaps[self.engine_pool.get(name, self.pools[0])].engines[name].window for name in self.sims}
        return engine_figures(self.sims, windows, self.clock_log, makespan)


def run_virtual(
    workload: Sequence[WorkloadRequest],
    policy: Policy | str,
    *,
    engines: int | Mapping[str, int] = 1,
    profile: str | SimProfile = "h100-llama3.1-8b",
    seed: int = 0,
    slo: SLOSpec = None,
    horizon_s: float | None = None,
    weights: Mapping[str, float] | None = None,
    record_decisions: bool = False,
    torch_expert: bool = True,
    train_every: int = 256,
    service_difference: bool = True,
    fairness_ticks: int = 20,
    clock_control: FrequencyParams | None = None,
) -> VirtualResult:
    """Replay `workload` through the decision core and `engines` simulated engines in virtual time.

    policy: a `Policy`, or a scheduler name (then `default_policy(name, weights=weights)`).
    engines: how many simulated engines; or model pool -> how many (each pool its own core, a
        request to the pool its `model` names, the first when it names none).
    slo: the bounds a request must meet to count as good; default: its SLO class in the policy
        (TTFT, TPOT and, for deadline classes, e2e <= deadline).
    horizon_s: stop at this virtual time; requests still queued or running end as "cancelled".
        Default: run until every request has ended.
    record_decisions: keep every decision as the `decisions` table row the gateway writes (for audit).
    torch_expert / train_every: the output-length predictor's MLP expert, trained inline every
        `train_every` finishes (deterministic for the seed).
    service_difference: compute VTC's max service difference between backlogged tenants (exact for
        any number of tenants; pass False to skip it); default: on.
    clock_control: run the frequency rule (controlplane/core/frequency.py) with these parameters
        on the driver's cadence; default: every engine at its maximum clock.
    """
    if isinstance(policy, str):
        policy = default_policy(policy, weights=weights)
    prof = profile if isinstance(profile, SimProfile) else load_profile(profile)
    counts = [engines] if isinstance(engines, int) else list(engines.values())
    if not counts or any(n < 1 for n in counts):
        raise ValueError("engines must be >= 1 (in every pool)")
    run = VirtualRun(workload, policy, engines, prof, seed, horizon_s, record_decisions, torch_expert, train_every,
                     clock_control)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    return run.result(slo, wall, service_difference, fairness_ticks)
