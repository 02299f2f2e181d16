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
- the next event is min(next arrival, each engine's next step end, next tick, next load report);
  at one instant: engine events, then arrivals, then the tick, then the load reports (the driver's
  order; tests/test_driver_parity.py holds serving to it).

Causality: a finish can dispatch a queued request, so while requests are queued the loop stops at
every step end. While nothing is queued, no engine event can produce an action (the core only
learns), so the engines are advanced straight to the next arrival or load report, which lets the
simulator merge decode-only steps (`advance(per_token=False)`).

Everything is deterministic for a seed: no wall clock is read except to report the speed.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from controlplane.core.core import DecisionCore
from controlplane.core.events import ADMISSION_KINDS, Decision, Dispatch, EngineSpec, FinishReport, Reject, RequestSpec
from controlplane.core.policy import DEFAULT_SLO_CLASSES, Policy, SLOClassPolicy
from controlplane.core.frequency import FrequencyController, FrequencyParams
from controlplane.driver import (LOAD_EVERY_S, TICK_EVERY_S, ClockSteering, Driver, decision_row, engine_model,
                                 next_frequency, next_load, next_tick, slo_met)
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.predict.step_time import StepTimeModel
from engine_adapter.base import EngineInfo
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import SimProfile, load_profile
from fairness.metrics import (Served, demand_fairness, fairness_summary, request_service, service_curves, shares,
                             weighted_jain)
from replay.report import RequestResult, SLOSpec, Summary, format_table, resolve_slo, summarize
from replay.workload import WorkloadRequest

__all__ = [
    "LOAD_EVERY_S",
    "TICK_EVERY_S",
    "RequestRecord",
    "TenantOutcome",
    "VirtualResult",
    "default_policy",
    "engine_specs",
    "format_result",
    "run_virtual",
]

W_P, W_Q = 1.0, 2.0  # VTC's service weights for the fairness metrics

# request statuses
OK, REJECTED, EXPIRED, ERROR, CANCELLED = "ok", "rejected", "expired", "error", "cancelled"
STATUSES = (OK, REJECTED, EXPIRED, ERROR, CANCELLED)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


@dataclass(slots=True)
class RequestRecord:
    """One workload request's outcome in virtual time (seconds from the workload start)."""

    index: int
    rid: str
    tenant: str
    slo_class: str | None
    arrival_s: float
    input_tokens: int
    requested_output_tokens: int  # the true output length (the engine stops there); never shown to the core
    max_tokens: int = 0  # the client's cap: what the core sees
    status: str | None = None  # ok | rejected | expired | error | cancelled
    reason: str | None = None  # the core's decision reason or reject code
    decision: str | None = None  # admit | defer | reject
    engine: str | None = None
    dispatch_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    cached_tokens: int = 0
    output_tokens: int = 0
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None
    predicted_output_tokens: float | None = None
    retry_after_s: float | None = None
    slo_met: bool | None = None
    energy_j: float = 0.0  # the simulator's attribution: its share of each step's energy (docs/simulator.md)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.dispatch_s is None else self.dispatch_s - self.arrival_s

    @property
    def admitted(self) -> bool:
        """Admitted or deferred by the core (not refused at arrival)."""
        return self.decision in ("admit", "defer")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ttft_s=self.ttft_s, tpot_s=self.tpot_s, e2e_s=self.e2e_s, queue_s=self.queue_s)
        return out

    def to_result(self) -> RequestResult:
        """The live runner's vocabulary (ms), for replay.report. An expired request is reported as
        rejected (error "deadline_expired"): report.py has no expired column."""
        status = {OK: "ok", REJECTED: "rejected", EXPIRED: "rejected", ERROR: "error"}.get(self.status or "",
                                                                                       "cancelled")
        return RequestResult(
            tenant=self.tenant, status=status, index=self.index, slo_class=self.slo_class,
            scheduled_ms=self.arrival_s * 1e3, sent_ms=self.arrival_s * 1e3, ttft_ms=_ms(self.ttft_s),
            tpot_ms=_ms(self.tpot_s), e2e_ms=_ms(self.e2e_s), input_tokens=self.input_tokens,
            output_tokens=self.output_tokens, requested_output_tokens=self.requested_output_tokens,
            slo_met=self.slo_met, error=self.reason if self.status != OK else None,
            retry_after_s=self.retry_after_s)


@dataclass(slots=True)
class TenantOutcome:
    """Per-tenant outcome of a virtual run. Times in seconds; rates per second of `duration_s`."""

    tenant: str
    weight: float
    requests: int = 0
    admitted: int = 0  # admitted or deferred by the core
    rejected: int = 0  # refused at arrival (429/503)
    expired: int = 0  # deferred, then its deadline passed in the queue
    completed: int = 0
    errors: int = 0
    cancelled: int = 0  # still queued or running at the horizon
    good: int = 0  # completed within every bound of its SLO
    goodput_rps: float = 0.0
    goodput_tps: float = 0.0  # prompt + output tokens/s of the good requests
    refused: float | None = None  # share of requests refused at arrival (rejected) or expired in the queue
    slo_attainment: float | None = None  # good / requests
    slo_attainment_admitted: float | None = None  # good / admitted
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    queue_p50_s: float | None = None
    # forecast error of admitted, completed requests: |predicted - actual| / actual
    ttft_ape_p50: float | None = None
    ttft_ape_p90: float | None = None
    output_ape_p50: float | None = None  # the output-length prediction (the core saw only max_tokens)
    cache_hit_rate: float | None = None  # prefix-cache hits / prompt tokens of completed requests
    service: float = 0.0  # w_p * prompt + w_q * output of completed requests
    energy_j: float = 0.0  # GPU energy attributed to its requests (finished or aborted on the engine)
    share: float = 0.0  # of all service
    weight_share: float = 0.0  # of the weights of tenants present
    share_ratio: float = 0.0  # share / weight_share (1 = exactly the weighted share)
    # the same, counting only service delivered while every tenant was backlogged (None if never)
    share_backlogged: float | None = None
    share_ratio_backlogged: float | None = None
    # service that met its SLO over the tenant's weighted max-min fair share of what was asked
    fair_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class VirtualResult:
    policy: Policy
    records: list[RequestRecord]
    per_tenant: dict[str, TenantOutcome]
    overall: TenantOutcome
    per_class: dict[str, TenantOutcome]
    duration_s: float  # the workload's span: last arrival (or the horizon)
    makespan_s: float  # the last event
    wall_s: float
    fairness: dict[str, Any]
    forecast: dict[str, Any]
    engines: dict[str, dict[str, Any]]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # recorder-format rows (record_decisions)
    served: list[Served] = field(default_factory=list)
    backlogged: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def virtual_per_wall(self) -> float:
        return self.makespan_s / self.wall_s if self.wall_s > 0 else math.inf

    def status_counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.records:
            out[r.status or CANCELLED] += 1
        return out

    def summary(self) -> Summary:
        """replay.report's per-tenant table (ms, bench_serving vocabulary)."""
        return summarize([r.to_result() for r in self.records], self.duration_s)

    def to_dict(self, *, requests: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy.to_dict(),
            "duration_s": self.duration_s,
            "makespan_s": self.makespan_s,
            "wall_s": self.wall_s,
            "virtual_s_per_wall_s": self.virtual_per_wall,
            "statuses": self.status_counts(),
            "overall": self.overall.to_dict(),
            "per_tenant": {t: o.to_dict() for t, o in self.per_tenant.items()},
            "per_class": {c: o.to_dict() for c, o in self.per_class.items()},
            "fairness": self.fairness,
            "forecast": self.forecast,
            "engines": self.engines,
            "report": self.summary().to_dict(),
        }
        if requests:
            out["requests"] = [r.to_dict() for r in self.records]
        return _clean(out)

    def to_json(self, *, requests: bool = False, **kw: Any) -> str:
        return json.dumps(self.to_dict(requests=requests), **kw)


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


def engine_specs(profile: SimProfile, engines: int) -> list[tuple[EngineSpec, StepTimeModel]]:
    """What `Sluice.start` builds (`driver.engine_model`) from the `info()` of `engines` simulated
    engines named sim-0, sim-1, ... (SimEngine.info reports this)."""
    return [engine_model(f"sim-{i}", EngineInfo(f"sim-{i}", "sim", profile.model, None, profile.kv_capacity_tokens,
                                                 True, profile.step)) for i in range(engines)]


def _check_classes(workload: Sequence[WorkloadRequest], policy: Policy) -> None:
    """Every request's SLO class (its own, else its tenant's) must exist in the policy: an unknown
    class is an error that names it, never silently interactive."""
    for k, w in enumerate(workload):
        name = w.slo_class or policy.tenant(w.tenant).slo_class
        if name not in policy.slo_classes:
            raise ValueError(f"workload request {k} (tenant {w.tenant!r}): unknown slo_class {name!r}; "
                             f"the policy's classes are {sorted(policy.slo_classes)}")


# -- the run --------------------------------------------------------------------------------------

class _Run:
    def __init__(self, workload: Sequence[WorkloadRequest], policy: Policy, engines: int, profile: SimProfile,
                 seed: int, horizon_s: float | None, record_decisions: bool, torch_expert: bool,
                 train_every: int, clock_control: FrequencyParams | None = None) -> None:
        _check_classes(workload, policy)
        order = sorted(range(len(workload)), key=lambda i: (workload[i].timestamp_ms, i))
        self.workload = [workload[i] for i in order]
        self.policy = policy
        self.horizon = horizon_s
        self.errors = ForecastErrors(window=max(1, len(workload)))
        self.predictor = OutputLengthPredictor(seed=seed, torch_expert=torch_expert, train_every=train_every)
        self.core = DecisionCore(policy, engine_specs(profile, engines), self.predictor, self.errors)
        self.driver = Driver(self.core, self)
        self.names = [f"sim-{i}" for i in range(engines)]
        self.sims = {name: SimCore(profile, seed=seed + i) for i, name in enumerate(self.names)}
        # the frequency rule per engine (None: every engine stays at f_max), planning with the
        # engine's prior step profile at f_max, as serving does with what the engine reports
        self.steering = None if clock_control is None else ClockSteering(self.core, {
            name: FrequencyController(name, profile.step, profile.clock, clock_control) for name in self.names},
            self.set_clock)
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
        if self.steering is not None:
            self.driver.apply(now, self.steering.dispatched(now, a.engine))

    def reject(self, now: float, a: Reject) -> None:
        rec = self.by_rid[a.rid]
        rec.retry_after_s = a.retry_after_s
        rec.reason = a.code
        if a.code == "deadline_expired":
            self.end(rec, EXPIRED, now)
            self.unqueue(rec.tenant, now)
        else:
            self.end(rec, REJECTED, now)

    def decision(self, d: Decision) -> None:
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
            self.decisions.append(decision_row(d, as_json=True))

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
        if ev.kind == "first_token":
            rec.first_token_s = ev.time
            self.driver.first_token(ev.time, ev.rid)
        elif ev.kind == "finish":
            rec.cached_tokens, rec.output_tokens, rec.energy_j = ev.cached_tokens, ev.completion_tokens, ev.energy_j
            status = "aborted" if ev.finish_reason == "abort" else "ok"
            report = FinishReport(status, ev.prompt_tokens, ev.cached_tokens, ev.completion_tokens, rec.first_token_s)
            if status != "ok":
                rec.reason = ev.message or "engine_abort"
            self.end(rec, OK if status == "ok" else ERROR, ev.time)
            self.driver.finish(ev.time, ev.rid, report)

    def scale(self, now: float) -> None:
        """A hook at each load-report instant, before the reports: replay/autoscale.py adds and
        removes engines here (a fixed fleet does nothing)."""

    def set_clock(self, now: float, engine: str, mhz: float) -> None:
        """The frequency rule's change (`ClockSteering`): the engine runs at it from its next step."""
        self.clock_log[engine].append((now, self.sims[engine].set_frequency(mhz)))

    def advance_engines(self, until: float) -> None:
        """Run every engine to `until`, feeding their events to the core in time order (ties: by
        engine, then by each engine's own order); repeat while handling them submits more work."""
        self.advanced_to = max(self.advanced_to, until)
        while True:
            batch: list[tuple[float, int, int, SimEvent]] = []
            for e, name in enumerate(self.names):
                for k, ev in enumerate(self.sims[name].advance(until, per_token=False)):
                    batch.append((ev.time, e, k, ev))
            if not batch:
                return
            batch.sort(key=lambda x: (x[0], x[1], x[2]))
            for *_, ev in batch:
                self.engine_event(ev)

    def run(self) -> None:
        core, sims, driver = self.core, self.sims, self.driver
        n, i = len(self.workload), 0
        horizon = self.horizon if self.horizon is not None else math.inf
        inf = math.inf
        first = self.workload[0].timestamp_ms / 1e3 if n else 0.0
        # the first load report at the grid instant at or before the first arrival (serving reports
        # from its start; reports before anything happened change nothing)
        t_load = LOAD_EVERY_S * int(first / LOAD_EVERY_S)
        if self.steering is not None:  # the rule counts evaluations from the start, as serving's does
            t_load = 0.0
        t_freq = next_frequency(0.0)  # (a load instant too) serving's first is the first after its start
        while True:
            t_arr = self.workload[i].timestamp_ms / 1e3 if i < n else inf
            if t_arr > horizon:
                t_arr = inf
            ends = [t for t in (s.next_time() for s in sims.values()) if t is not None]
            t_eng = min(ends) if ends else inf
            queued = core.queued()
            busy = queued > 0 or bool(ends) or core.in_flight() > 0
            if t_arr == inf and not busy:
                break
            t_tick = next_tick(self.last_event) if queued else inf
            external = min(t_arr, t_load, t_tick)
            until = min(external, t_eng) if queued else external
            if until > horizon:
                if min(t_eng, external) > horizon:
                    break
                until = horizon
            self.advance_engines(until)
            now = until
            self.last_event = max(self.last_event, now)
            while i < n and self.workload[i].timestamp_ms / 1e3 <= now and t_arr != inf:
                rec = self.records[i]
                w = self.workload[i]
                i += 1
                driver.arrive(now, RequestSpec(rec.rid, w.tenant, rec.input_tokens, rec.max_tokens, w.slo_class))
            if t_tick <= now:
                driver.tick(now)
            if t_load <= now:
                self.scale(now)
                for name in self.names:
                    driver.engine_load(now, name, sims[name].load(now))
                t_load = next_load(now)
                if self.steering is not None and t_freq <= now:
                    driver.apply(now, self.steering.evaluate(now))
                    t_freq = next_frequency(now)
        for rec in self.records:  # the horizon cut the rest off
            if rec.status is None:
                rec.status = CANCELLED


def run_virtual(
    workload: Sequence[WorkloadRequest],
    policy: Policy | str,
    *,
    engines: int = 1,
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
    if engines < 1:
        raise ValueError("engines must be >= 1")
    run = _Run(workload, policy, engines, prof, seed, horizon_s, record_decisions, torch_expert, train_every,
               clock_control)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    return _result(run, slo, wall, service_difference, fairness_ticks)


# -- outcomes ------------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def _outcome(tenant: str, weight: float, recs: list[RequestRecord], duration: float) -> TenantOutcome:
    o = TenantOutcome(tenant, weight, requests=len(recs))
    ok = [r for r in recs if r.status == OK]
    o.admitted = sum(r.admitted for r in recs)
    o.rejected = sum(r.status == REJECTED for r in recs)
    o.expired = sum(r.status == EXPIRED for r in recs)
    o.errors = sum(r.status == ERROR for r in recs)
    o.cancelled = sum(r.status == CANCELLED for r in recs)
    o.completed = len(ok)
    o.good = sum(1 for r in ok if r.slo_met)
    o.goodput_rps = o.good / duration if duration > 0 else 0.0
    good_tokens = sum(r.input_tokens + r.output_tokens for r in ok if r.slo_met)
    o.goodput_tps = good_tokens / duration if duration > 0 else 0.0
    o.refused = (o.rejected + o.expired) / o.requests if o.requests else None
    o.slo_attainment = o.good / o.requests if o.requests else None
    o.slo_attainment_admitted = o.good / o.admitted if o.admitted else None
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
    queue = [r.queue_s for r in ok if r.queue_s is not None]
    o.ttft_p50_s, o.ttft_p99_s = _pct(ttft, 50), _pct(ttft, 99)  # type: ignore[arg-type]
    o.tpot_p50_s, o.tpot_p99_s = _pct(tpot, 50), _pct(tpot, 99)  # type: ignore[arg-type]
    o.queue_p50_s = _pct(queue, 50)  # type: ignore[arg-type]
    ttft_ape = [abs(r.predicted_ttft_s - r.ttft_s) / r.ttft_s for r in ok
                if r.predicted_ttft_s is not None and r.ttft_s]
    o.ttft_ape_p50, o.ttft_ape_p90 = _pct(ttft_ape, 50), _pct(ttft_ape, 90)
    out_ape = [abs(r.predicted_output_tokens - r.output_tokens) / r.output_tokens for r in ok
               if r.predicted_output_tokens is not None and r.output_tokens]
    o.output_ape_p50 = _pct(out_ape, 50)
    prompt = sum(r.input_tokens for r in ok)
    o.cache_hit_rate = sum(r.cached_tokens for r in ok) / prompt if prompt else None
    o.service = float(sum(request_service(r.input_tokens, r.output_tokens, W_P, W_Q) for r in ok))
    o.energy_j = float(sum(r.energy_j for r in recs))
    return o


def _result(run: _Run, slo: SLOSpec, wall: float, want_sd: bool, n_ticks: int) -> VirtualResult:
    policy = run.policy
    for rec in run.records:
        rec.slo_class = rec.slo_class or policy.tenant(rec.tenant).slo_class
        if rec.status == OK:
            if slo is None:  # its class, judged as serving judges it
                rec.slo_met = slo_met(policy.slo(rec.slo_class), rec.input_tokens, rec.ttft_s, rec.tpot_s, rec.e2e_s)
            else:  # a given SLO (replay/report.py's, in ms)
                s = resolve_slo(slo, rec.tenant, rec.slo_class)
                ms = [None if x is None else x * 1e3 for x in (rec.ttft_s, rec.tpot_s, rec.e2e_s)]
                rec.slo_met = True if s is None else s.met(*ms)
        else:
            rec.slo_met = False
    last_arrival = max((r.arrival_s for r in run.records), default=0.0)
    duration = run.horizon if run.horizon is not None else last_arrival
    makespan = max([run.last_event] + [r.finish_s for r in run.records if r.finish_s is not None])
    groups: dict[str, list[RequestRecord]] = {}
    for r in run.records:
        groups.setdefault(r.tenant, []).append(r)
    weights = {t: policy.tenant(t).weight for t in groups}
    per_tenant = {t: _outcome(t, weights[t], rs, duration) for t, rs in sorted(groups.items())}
    overall = _outcome("__all__", sum(weights.values()), run.records, duration)
    classes: dict[str, list[RequestRecord]] = {}
    for r in run.records:
        classes.setdefault(r.slo_class or "", []).append(r)
    per_class = {c: _outcome(c, sum(weights[t] for t in {r.tenant for r in rs}), rs, duration)
                 for c, rs in sorted(classes.items())}
    overall.service = sum(o.service for o in per_tenant.values())
    total_w = sum(weights.values())
    for o in per_tenant.values():
        o.share = o.service / overall.service if overall.service > 0 else 0.0
        o.weight_share = o.weight / total_w if total_w > 0 else 0.0
        o.share_ratio = o.share / o.weight_share if o.weight_share > 0 else 0.0

    served = [Served(r.tenant, r.first_token_s if r.first_token_s is not None else r.finish_s, r.finish_s,
                     request_service(r.input_tokens, r.output_tokens, W_P, W_Q), r.arrival_s)
              for r in run.records if r.status == OK and r.finish_s is not None]
    for tenant, start in run.backlog_start.items():  # still backlogged at the horizon
        run.backlogged.setdefault(tenant, []).append((start, makespan))
    ticks = list(np.linspace(0.0, max(duration, 1e-9), n_ticks + 1)[1:]) if n_ticks else None
    fs = fairness_summary(served, weights, run.backlogged if want_sd else None, ticks)
    sd = fs.get("service_difference")
    asked: dict[str, float] = {}
    good_service: dict[str, float] = {}
    for r in run.records:  # what each tenant asked for (refused requests too) and what met its SLO
        svc = request_service(r.input_tokens, r.requested_output_tokens, W_P, W_Q)
        asked[r.tenant] = asked.get(r.tenant, 0.0) + svc
        good_service[r.tenant] = good_service.get(r.tenant, 0.0) + (svc if r.slo_met else 0.0)
    df = demand_fairness(asked, good_service, weights)
    for t, o in per_tenant.items():
        o.fair_ratio = df.tenants[t].ratio
    fairness: dict[str, Any] = {
        "w_p": W_P, "w_q": W_Q,
        "jain_demand": df.jain,  # Jain over good service / max-min fair share of offered demand
        "min_fair_ratio": df.min_ratio, "min_fair_tenant": df.min_tenant,
        "jain_weighted": fs["jain"],
        "service_difference": sd.value if sd is not None else None,  # type: ignore[attr-defined]
        "service_difference_pair": list(sd.tenants) if sd is not None and sd.tenants else None,  # type: ignore[attr-defined]
        "service_difference_interval": list(sd.interval) if sd is not None and sd.interval else None,  # type: ignore[attr-defined]
        "backlogged_s": {t: sum(b - a for a, b in iv) for t, iv in sorted(run.backlogged.items())},
    }
    common = _all_backlogged(run.backlogged, list(groups))
    fairness["all_backlogged_s"] = sum(b - a for a, b in common)
    if common and len(groups) > 1:
        curves = service_curves(served)
        got = {t: sum(float(curves[t].at(b)) - float(curves[t].at(a)) for a, b in common) if t in curves else 0.0
               for t in groups}
        sh = shares(got, weights)
        fairness["jain_backlogged"] = weighted_jain(got, weights)
        for t, o in per_tenant.items():
            o.share_backlogged, o.share_ratio_backlogged = sh[t].share, sh[t].ratio
        fairness["shares_backlogged"] = {t: {"service": v.service, "share": v.share, "weight_share": v.weight_share,
                                             "ratio": v.ratio} for t, v in sh.items()}
    for key in ("accumulated_difference", "windowed_difference"):
        if key in fs:
            fairness[key] = fs[key]
    if ticks is not None:
        fairness["ticks_s"] = ticks
    stats = run.errors.summary()
    forecast = {k: {"count": s.count, "median_ape": s.median_ape, "bias": s.bias, "mae": s.mae}
                for k, s in stats.items()}
    engines = {}
    snap = run.core.snapshot(makespan, with_tenants=False)
    for name, sim in run.sims.items():
        st = sim.stats
        engines[name] = {"steps": st.steps, "busy_s": st.busy_s, "output_tokens": st.output_tokens,
                         "prefill_tokens": st.prefill_tokens, "cached_tokens": st.cached_tokens,
                         "retractions": st.retractions, "finished": st.finished, "aborted": st.aborted,
                         "cache_hit_rate": (st.cached_tokens / st.admitted_prompt_tokens
                                            if st.admitted_prompt_tokens else None),
                         "utilization": st.busy_s / makespan if makespan > 0 else 0.0,
                         "window": snap.engines[name].window,
                         "energy_j": sim.gpu(makespan)["energy_j"],  # idle between steps included
                         "idle_w": sim.profile.idle_w,
                         "clock_changes": len(run.clock_log.get(name, [])[1:]),
                         "mean_clock_mhz": _time_mean(run.clock_log.get(name) or [(0.0, sim.frequency_mhz)], makespan)}
    return VirtualResult(policy, run.records, per_tenant, overall, per_class, duration, makespan, wall, fairness, forecast,
                         engines, run.decisions, served, run.backlogged)


def _time_mean(log: list[tuple[float, float]], end: float) -> float | None:
    """The time-weighted mean of a step function given as (from, value) pairs, up to `end`."""
    if end <= 0 or not log:
        return log[-1][1] if log else None
    total = sum(v * (min(end, t1) - t0) for (t0, v), (t1, _) in zip(log, log[1:] + [(end, 0.0)]) if t1 > t0)
    return total / end


def _all_backlogged(backlogged: Mapping[str, list[tuple[float, float]]], tenants: list[str]
                    ) -> list[tuple[float, float]]:
    """Intervals in which every tenant was backlogged (queued in the core)."""
    common: list[tuple[float, float]] | None = None
    for t in tenants:
        ivs = sorted(backlogged.get(t, []))
        if common is None:
            common = ivs
            continue
        out, i, j = [], 0, 0
        while i < len(common) and j < len(ivs):
            lo, hi = max(common[i][0], ivs[j][0]), min(common[i][1], ivs[j][1])
            if lo < hi:
                out.append((lo, hi))
            if common[i][1] < ivs[j][1]:
                i += 1
            else:
                j += 1
        common = out
    return common or []


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating,)):
        return _clean(float(x))
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


# -- text ----------------------------------------------------------------------------------------

def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pctf(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_result(result: VirtualResult, title: str | None = None) -> str:
    """Per-tenant outcomes (seconds), fairness and forecast error of one run."""
    heads = ["tenant", "weight", "req", "admit", "rej", "exp", "ok", "good/s", "SLO%adm", "TTFT p50",
             "TTFT p99", "TPOT p50", "share*", "share*/w"]
    rows = []
    for o in list(result.per_tenant.values()) + [result.overall]:
        rows.append([
            "all" if o.tenant == "__all__" else o.tenant, _f(o.weight, 1), str(o.requests), str(o.admitted),
            str(o.rejected), str(o.expired), str(o.completed), _f(o.goodput_rps, 2), _pctf(o.slo_attainment_admitted),
            _f(o.ttft_p50_s), _f(o.ttft_p99_s), _f(o.tpot_p50_s, 4),
            "-" if o.tenant == "__all__" else _f(o.share if o.share_backlogged is None else o.share_backlogged),
            "-" if o.tenant == "__all__" else _f(o.share_ratio if o.share_ratio_backlogged is None
                                                  else o.share_ratio_backlogged)])
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(heads)]

    def line(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(vals, widths)))

    out = []
    if title:
        out.append(title)
    out += [line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    fz = result.fairness
    fc = result.forecast.get("ttft", {})
    out.append("share*: of the service delivered while every tenant was backlogged (else of all service)")
    out.append(f"Jain over fair shares of demand {_f(fz['jain_demand'])}   max service difference (backlogged) "
               f"{_f(fz['service_difference'], 0)}   TTFT forecast MdAPE {_pctf(fc.get('median_ape'))}%   "
               f"virtual {result.makespan_s:.0f} s in {result.wall_s:.1f} s wall "
               f"({result.virtual_per_wall:.0f}x)")
    return "\n".join(out)


def format_report_table(result: VirtualResult) -> str:
    """The live runner's table (ms) for the same run."""
    return format_table(result.summary())
