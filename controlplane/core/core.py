"""The decision core: admission, fair queueing and dispatch, driven by timestamped events.

Pure: no I/O, no clock, no await. `now` is passed into every call; decisions come back as actions
(`Dispatch`, `Reject`) plus `Decision` records. The gateway drives it with the wall clock, replay
with a virtual clock: one code path for both.
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

from controlplane.core.admission import AdmissionInputs, EngineView, TokenBucket, decide, forecast
from controlplane.core.events import Action, Decision, Dispatch, EngineSpec, FinishReport, Reject, RequestSpec
from controlplane.core.policy import Policy
from engine_adapter.base import StepProfile
from fairness import Outcome, Scheduler, Work, make_scheduler


class Prediction(Protocol):
    tokens: float


class OutputPredictor(Protocol):
    def predict(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None) -> Prediction: ...
    def observe(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None, actual: int) -> None: ...


class StepModel(Protocol):
    def prefill_time(self, tokens: float) -> float: ...
    def decode_time(self, batch: float, kv_tokens: float) -> float: ...
    def observe_prefill(self, tokens: float, seconds: float) -> None: ...
    def observe_decode(self, batch: float, kv_tokens: float, seconds: float) -> None: ...
    def profile(self) -> StepProfile: ...


class ForecastLog(Protocol):
    def record(self, kind: str, predicted: float, actual: float) -> None: ...


@dataclass(slots=True)
class Tracked:
    spec: RequestSpec
    slo_class: str
    arrival: float
    predicted_output: float
    work: Work
    forecast_ttft_s: float | None
    forecast_tpot_s: float | None
    deadline: float | None = None
    engine: str | None = None
    dispatched_at: float | None = None
    first_token_at: float | None = None
    batch_at_dispatch: int = 1
    kv_at_dispatch: float = 0.0
    engine_waiting_at_dispatch: float = 0.0  # other prompt tokens the engine still had to prefill
    expected_finish: float = 0.0  # predicted at dispatch: when its window slot frees
    prefilled_at_first_token: float = 0.0  # the engine's cumulative prefill tokens then
    dispatched_at_first_token: int = 0  # and its cumulative dispatches
    batch_at_first_token: int = 1


@dataclass(slots=True)
class EngineState:
    spec: EngineSpec
    model: StepModel
    healthy: bool = True
    in_flight: dict[str, Tracked] = field(default_factory=dict)
    waiting_tokens: float = 0.0  # dispatched prompt tokens without a first token yet
    kv_tokens: float = 0.0  # prompt + predicted output of in-flight requests
    reported_waiting_tokens: float = 0.0  # from the engine's own load report
    reported_kv_tokens: float = 0.0
    window: int = 1
    prior_window: int = 1  # the window the engine's own profile gives: a floor when learning goes wrong
    prefill_budget: float = 8192.0  # prompt tokens per step that keep a step within the TPOT budget
    meter: TokenBucket | None = None  # meters prompt tokens in at prefill_budget per TPOT budget
    profile: StepProfile | None = None  # the model's estimate, refreshed with each load report
    prefilled: float = 0.0  # cumulative prompt tokens dispatched
    dispatched: int = 0  # cumulative requests dispatched
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (time, prompt tokens) of dispatches
    recent_tokens: float = 0.0

    def rates(self, now: float) -> tuple[float, float]:
        """(prompt tokens/s, requests/s) dispatched over the last RATE_WINDOW_S."""
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent_tokens -= self.recent.popleft()[1]
        return self.recent_tokens / RATE_WINDOW_S, len(self.recent) / RATE_WINDOW_S


RATE_WINDOW_S = 5.0


class DecisionCore:
    def __init__(
        self,
        policy: Policy,
        engines: list[tuple[EngineSpec, StepModel]],
        predictor: OutputPredictor,
        errors: ForecastLog | None = None,
    ) -> None:
        self.policy = policy.validate()
        self.predictor = predictor
        self.errors = errors
        self.engines = {spec.name: EngineState(spec, model, profile=model.profile()) for spec, model in engines}
        self.requests: dict[str, Tracked] = {}
        self.scheduler = self._new_scheduler(policy)
        self._rps: dict[str, TokenBucket] = {}
        self._tpm: dict[str, TokenBucket] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap of queued requests' deadlines
        self._queued_total = 0
        self._queued_tokens_total = 0.0
        self._queued_tokens: dict[str, float] = {}  # per tenant
        self._dispatches: deque[tuple[float, str]] = deque()  # (time, tenant) over the last RATE_WINDOW_S
        self._dispatch_counts: dict[str, int] = {}
        self._active_weight = 0.0  # weight of the tenants served over the last RATE_WINDOW_S
        self._backlogged_weight = 0.0
        self._inflight_tpot: dict[str, int] = {}  # SLO class -> requests running
        self._mean_request_tokens = 1024.0  # EWMA of prompt + output: sizes the windows
        self._resize_windows()
        for eng in self.engines.values():
            eng.prior_window = eng.window

    # -- events -----------------------------------------------------------------------------
    def arrive(self, now: float, spec: RequestSpec) -> list[Action]:
        if spec.rid in self.requests:
            raise ValueError(f"duplicate rid {spec.rid!r}")
        tp = self.policy.tenant(spec.tenant)
        cls_name = spec.slo_class or tp.slo_class
        cls = self.policy.slo(cls_name)
        version = self.policy.version

        def refuse(status: int, code: str, message: str, retry: float | None, **extra: object) -> list[Action]:
            return [
                Reject(spec.rid, status, code, message, retry),
                Decision(now, spec.rid, spec.tenant, "reject", code, None, version,
                         {"slo_class": cls_name, **extra}, {"retry_after_s": retry}),
            ]

        if tp.paused:
            return refuse(429, "tenant_paused", f"tenant {spec.tenant!r} is paused by the operator", 30.0)
        limited = self._rate_limited(now, spec, tp.rate_limit_rps, tp.rate_limit_tpm)
        if limited is not None:
            code, wait = limited
            return refuse(429, code, f"rate limit exceeded for tenant {spec.tenant!r}", wait)

        predicted = min(float(spec.max_tokens), max(1.0, self.predictor.predict(
            spec.tenant, spec.prompt_tokens, spec.max_tokens, cls_name).tokens))
        inputs = self._admission_inputs(now, spec, cls_name, predicted)
        result = decide(inputs)
        if result.decision == "reject":
            status = 503 if result.reason == "no_healthy_engine" else 429
            message = _REJECT_MESSAGES.get(result.reason, result.reason)
            return [
                Reject(spec.rid, status, result.reason, message, result.retry_after_s),
                Decision(now, spec.rid, spec.tenant, "reject", result.reason, result.engine, version,
                         _inputs_record(inputs, cls_name), _shallow(result)),
            ]

        work = Work(spec.prompt_tokens, int(round(predicted)))
        tracked = Tracked(spec, cls_name, now, predicted, work,
                          result.ttft_ms / 1e3 if result.ttft_ms is not None else None,
                          result.tpot_ms / 1e3 if result.tpot_ms is not None else None)
        if cls.deadline_s is not None:
            tracked.deadline = now + cls.deadline_s
            heapq.heappush(self._deadlines, (tracked.deadline, spec.rid))
        self.requests[spec.rid] = tracked
        self._take_rate(now, spec, tp.rate_limit_rps, tp.rate_limit_tpm, predicted)
        self._enqueue(tracked)
        actions: list[Action] = [Decision(now, spec.rid, spec.tenant, result.decision, result.reason, result.engine,
                                          version, _inputs_record(inputs, cls_name), _shallow(result))]
        actions += self._pump(now)
        return actions

    def first_token(self, now: float, rid: str) -> list[Action]:
        """A prefill is done: the engine's prefill budget has room again."""
        t = self.requests.get(rid)
        if t is None or t.engine is None or t.first_token_at is not None:
            return []
        t.first_token_at = now
        eng = self.engines[t.engine]
        eng.waiting_tokens -= t.spec.prompt_tokens
        t.prefilled_at_first_token, t.batch_at_first_token = eng.prefilled, len(eng.in_flight)
        t.dispatched_at_first_token = eng.dispatched
        return self._pump(now)

    def finish(self, now: float, rid: str, report: FinishReport) -> list[Action]:
        t = self.requests.pop(rid, None)
        if t is None or t.engine is None:
            raise KeyError(f"finish for unknown or undispatched request {rid!r}")
        eng = self.engines[t.engine]
        del eng.in_flight[rid]
        if t.first_token_at is None:
            eng.waiting_tokens -= t.spec.prompt_tokens
        eng.kv_tokens -= t.spec.prompt_tokens + t.predicted_output
        self._inflight_tpot[t.slo_class] -= 1
        first = report.first_token_at if report.first_token_at is not None else t.first_token_at
        computed = max(0, report.prompt_tokens - report.cached_tokens)
        actual = Work(computed, report.completion_tokens)
        ttft = first - t.dispatched_at if first is not None and t.dispatched_at is not None else None
        tpot = (now - first) / (report.completion_tokens - 1) if first is not None and report.completion_tokens > 1 else None
        if report.status == "ok":
            self._learn(now, t, eng, report, ttft, tpot)
        ttft_total = first - t.arrival if first is not None else None
        self.scheduler.finish(t.spec.tenant, t.work, Outcome(
            actual, self._latency_factor(t.slo_class, ttft_total, tpot),
            gpu_seconds=eng.profile.prefill_time(computed) + report.completion_tokens * (
                eng.profile.decode_time(t.batch_at_dispatch, t.kv_at_dispatch) / max(1, t.batch_at_dispatch))))
        tpm = self._tpm.get(t.spec.tenant)
        if tpm is not None:  # reconcile the tokens/min charge with the truth
            tpm.give(now, t.spec.prompt_tokens + t.predicted_output - report.prompt_tokens - report.completion_tokens)
        return self._pump(now)

    def abort(self, now: float, rid: str, reason: str = "client_disconnected") -> list[Action]:
        """Remove a request that is still queued. A running one is aborted by the driver, which
        then reports `finish(status="aborted")`."""
        t = self.requests.get(rid)
        if t is None or t.engine is not None:
            return []
        self._dequeue(t)
        del self.requests[rid]
        return [Decision(now, rid, t.spec.tenant, "abort", reason, None, self.policy.version)]

    def tick(self, now: float) -> list[Action]:
        """Expire deferred requests whose deadline has passed; dispatch what the prefill meters allow."""
        actions: list[Action] = self._pump(now)
        while self._deadlines and self._deadlines[0][0] <= now:
            _, rid = heapq.heappop(self._deadlines)
            t = self.requests.get(rid)
            if t is None or t.engine is not None:
                continue
            self._dequeue(t)
            del self.requests[rid]
            actions.append(Reject(rid, 429, "deadline_expired",
                                  "the request's deadline passed before it could be scheduled", None))
            actions.append(Decision(now, rid, t.spec.tenant, "expire", "deadline_expired", None, self.policy.version))
        return actions

    def engine_load(self, now: float, name: str, waiting_tokens: float, kv_tokens: float) -> list[Action]:
        eng = self.engines[name]
        eng.reported_waiting_tokens, eng.reported_kv_tokens = waiting_tokens, kv_tokens
        eng.profile = eng.model.profile()  # re-solving the learned model per request would cost more than it tells
        self._resize_windows()  # the learned step model and request sizes move the windows
        return self.engine_health(now, name, True)

    def engine_health(self, now: float, name: str, healthy: bool) -> list[Action]:
        self.engines[name].healthy = healthy
        return self._pump(now) if healthy else []

    def set_policy(self, now: float, policy: Policy) -> list[Action]:
        """Swap the policy atomically; it governs the very next decision."""
        old, self.policy = self.policy, policy.validate()
        if policy.scheduler != old.scheduler:
            queued = self._drain_scheduler()
            self.scheduler = self._new_scheduler(policy)
            for t in queued:
                self.scheduler.push(t.spec.tenant, t.spec.rid, t.work)
        else:
            self._configure_scheduler(self.scheduler, policy)
        self._backlogged_weight = sum(self.policy.tenant(n).weight for n in self.scheduler.backlogged())
        self._active_weight = sum(self.policy.tenant(n).weight for n in self._dispatch_counts)
        self._resize_windows()
        return self._pump(now)

    # -- views ------------------------------------------------------------------------------
    def queued(self) -> int:
        return self._queued_total

    def in_flight(self) -> int:
        return sum(len(e.in_flight) for e in self.engines.values())

    def engine_view(self, eng: EngineState, now: float, ahead: float = 0.0) -> EngineView:
        """The engine as the forecast sees it; `ahead` requests queued before the one forecast."""
        p = eng.profile
        assert p is not None
        batch = max(1, min(eng.window, len(eng.in_flight) + 1))
        kv = max(eng.kv_tokens, eng.reported_kv_tokens)
        prefill_rate, dispatch_rate = eng.rates(now)
        m = eng.meter
        meter = (min(m.burst, m.level + max(0.0, now - m.stamp) * m.rate), m.rate) if m else (0.0, 0.0)
        view = EngineView(eng.spec.name, eng.window, len(eng.in_flight),
                          max(eng.waiting_tokens, eng.reported_waiting_tokens), kv, 0.0, prefill_rate,
                          dispatch_rate, (), p.prefill_a, p.prefill_b, p.decode_c, p.decode_d, p.decode_e,
                          eng.spec.chunk, eng.prefill_budget, *meter)
        half = self._mean_request_tokens / 2
        step = view.step_time(batch, kv)
        departures: tuple[float, ...] = ()
        if ahead >= view.free_slots and eng.in_flight:  # only a queued request needs them
            need = min(len(eng.in_flight), int(ahead - view.free_slots) + 1)
            departures = tuple(heapq.nsmallest(need, (self._remaining(t, now, step)
                                                      for t in eng.in_flight.values())))
        return replace(view, mean_service_s=view.prefill_through(half, batch, kv) + half * step,
                       departures=departures)

    @staticmethod
    def _remaining(t: Tracked, now: float, step: float) -> float:
        """Predicted seconds until an in-flight request finishes, from its progress at today's pace."""
        if t.first_token_at is None:
            return max(step, t.expected_finish - now)
        done = (now - t.first_token_at) / step
        return max(step, (t.predicted_output - 1 - done) * step)

    def typical_forecast(self, name: str, now: float) -> tuple[float, float]:
        """TTFT and TPOT (s) a typical new request would see on this engine now."""
        half = self._mean_request_tokens / 2
        ahead = self._queued_total / max(1, len(self.engines))
        f = forecast(self.engine_view(self.engines[name], now, ahead), ahead,
                     self._queued_tokens_total / max(1, len(self.engines)), half, half)
        return f.ttft_s, f.tpot_s

    # -- internals --------------------------------------------------------------------------
    def _new_scheduler(self, policy: Policy) -> Scheduler:
        params = {"alpha": policy.holistic_alpha} if policy.scheduler == "equinox" else {}
        scheduler = make_scheduler(policy.scheduler, {n: t.weight for n, t in policy.tenants.items()}, **params)
        self._configure_scheduler(scheduler, policy)
        return scheduler

    @staticmethod
    def _configure_scheduler(scheduler: Scheduler, policy: Policy) -> None:
        for name, tp in policy.tenants.items():
            scheduler.set_weight(name, tp.weight)
            scheduler.set_paused(name, tp.paused)
        if hasattr(scheduler, "set_alpha"):
            scheduler.set_alpha(policy.holistic_alpha)

    def _drain_scheduler(self) -> list[Tracked]:
        queued = [t for t in self.requests.values() if t.engine is None]
        queued.sort(key=lambda t: t.arrival)
        return queued

    def _enqueue(self, t: Tracked) -> None:
        tenant = t.spec.tenant
        if self.scheduler.queued(tenant) == 0:
            self._backlogged_weight += self.policy.tenant(tenant).weight
        self.scheduler.push(tenant, t.spec.rid, t.work)
        self._queued_total += 1
        self._queued_tokens_total += t.spec.prompt_tokens
        self._queued_tokens[tenant] = self._queued_tokens.get(tenant, 0.0) + t.spec.prompt_tokens

    def _dequeue(self, t: Tracked, removed: bool = False) -> None:
        tenant = t.spec.tenant
        if not removed:
            self.scheduler.remove(tenant, t.spec.rid)
        if self.scheduler.queued(tenant) == 0:
            self._backlogged_weight -= self.policy.tenant(tenant).weight
        self._queued_total -= 1
        self._queued_tokens_total -= t.spec.prompt_tokens
        self._queued_tokens[tenant] -= t.spec.prompt_tokens
        if not self.scheduler.queued(tenant):
            del self._queued_tokens[tenant]

    def _ahead(self, now: float, tenant: str) -> tuple[float, float]:
        """Requests and prompt tokens that will be served before a new request of `tenant` is.

        FCFS: everything queued now. Fair policies: a tenant with nothing queued is served almost
        at once (the lift rule puts it level with the others): one request per other backlogged
        weight unit ahead. A backlogged tenant is guaranteed its weight's share of the service:
        its own queue scaled up by 1/share passes first, counting the others' future arrivals.
        """
        total, tokens = float(self._queued_total), self._queued_tokens_total
        if self.policy.scheduler == "fcfs" or total == 0:
            return total, tokens
        weight = self.policy.tenant(tenant).weight
        own = float(self.scheduler.queued(tenant))
        if not own:
            ahead = min(total, self._backlogged_weight / weight)
            return ahead, tokens * ahead / total
        # Its weight's share among the tenants being served: those backlogged now and those served
        # lately (a light tenant is backlogged only for a moment, yet takes its turn every round).
        active = self._active_weight_at(now) + (0.0 if tenant in self._dispatch_counts else weight)
        share = weight / max(self._backlogged_weight, active, weight)
        return (own + 1) / share - 1, self._queued_tokens[tenant] / share

    def _active_weight_at(self, now: float) -> float:
        while self._dispatches and self._dispatches[0][0] < now - RATE_WINDOW_S:
            tenant = self._dispatches.popleft()[1]
            self._dispatch_counts[tenant] -= 1
            if not self._dispatch_counts[tenant]:
                del self._dispatch_counts[tenant]
                self._active_weight -= self.policy.tenant(tenant).weight
        return self._active_weight

    def _admission_inputs(self, now: float, spec: RequestSpec, cls_name: str, predicted: float) -> AdmissionInputs:
        cls = self.policy.slo(cls_name)
        healthy = [e for e in self.engines.values() if e.healthy]
        ahead, ahead_tokens = self._ahead(now, spec.tenant)
        n = max(1, len(healthy))
        running = [self.policy.slo(c).tpot_ms for c, k in self._inflight_tpot.items() if k > 0]
        running_slos = [v for v in running if v is not None]
        return AdmissionInputs(
            prompt_tokens=spec.prompt_tokens, output_tokens=predicted,
            ttft_slo_ms=cls.ttft_ms, tpot_slo_ms=cls.tpot_ms, deadline_s=cls.deadline_s, on_miss=cls.on_miss,
            margin=self.policy.admission_margin, admission=self.policy.admission,
            ahead_requests=ahead / n, ahead_tokens=ahead_tokens / n,
            inflight_tpot_slo_ms=min(running_slos) if running_slos else None,
            engines=tuple(self.engine_view(e, now, ahead / n) for e in healthy),
        )

    def _pump(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while self._queued_total:
            head = self.scheduler.peek()
            if head is None:  # only paused tenants have queued requests
                return actions
            t = self.requests[str(head[1])]
            # A slot in the window and prompt tokens in the engine's prefill meter (a prompt longer
            # than the meter's burst goes when the meter is full, and runs alone).
            free = [e for e in self.engines.values() if e.healthy and len(e.in_flight) < e.window
                    and (e.meter is None or e.meter.wait_for(now, t.spec.prompt_tokens) == 0)]
            if not free:
                return actions  # the head waits: sluice's order is the order that runs
            self.scheduler.pop()
            self._dequeue(t, removed=True)
            views = [self.engine_view(e, now) for e in free]
            forecasts = [forecast(v, 0, 0, t.spec.prompt_tokens, t.predicted_output) for v in views]
            i = min(range(len(views)), key=lambda k: (forecasts[k].ttft_s, views[k].in_flight))
            best, fc = views[i], forecasts[i]
            eng = self.engines[best.name]
            t.engine, t.dispatched_at, t.expected_finish = best.name, now, now + fc.e2e_s
            t.engine_waiting_at_dispatch = max(eng.waiting_tokens, eng.reported_waiting_tokens)
            eng.in_flight[t.spec.rid] = t
            eng.waiting_tokens += t.spec.prompt_tokens
            eng.kv_tokens += t.spec.prompt_tokens + t.predicted_output
            eng.prefilled += t.spec.prompt_tokens
            if eng.meter is not None:
                eng.meter.take(now, t.spec.prompt_tokens)
            eng.dispatched += 1
            eng.recent.append((now, t.spec.prompt_tokens))
            eng.recent_tokens += t.spec.prompt_tokens
            self._dispatches.append((now, t.spec.tenant))
            if t.spec.tenant not in self._dispatch_counts:
                self._dispatch_counts[t.spec.tenant] = 0
                self._active_weight += self.policy.tenant(t.spec.tenant).weight
            self._dispatch_counts[t.spec.tenant] += 1
            t.batch_at_dispatch, t.kv_at_dispatch = len(eng.in_flight), eng.kv_tokens
            self._inflight_tpot[t.slo_class] = self._inflight_tpot.get(t.slo_class, 0) + 1
            cls = self.policy.slo(t.slo_class)
            priority = cls.priority if self.policy.pass_priority else None
            actions.append(Dispatch(t.spec.rid, best.name, priority))
            actions.append(Decision(now, t.spec.rid, t.spec.tenant, "dispatch", self.policy.scheduler, best.name,
                                    self.policy.version,
                                    {"candidates": [v.name for v in views], "queued_s": now - t.arrival,
                                     "counters": self.scheduler.counters(t.spec.tenant)},
                                    {"priority": priority}))
        return actions

    def _rate_limited(self, now: float, spec: RequestSpec, rps: float | None, tpm: float | None) -> tuple[str, float] | None:
        if rps is not None:
            bucket = self._bucket(self._rps, spec.tenant, rps, max(1.0, rps), now)
            wait = bucket.wait_for(now, 1.0)
            if wait > 0:
                return "rate_limited_requests", float(max(1, int(wait + 0.999)))
        if tpm is not None:
            bucket = self._bucket(self._tpm, spec.tenant, tpm / 60.0, tpm, now)
            wait = bucket.wait_for(now, spec.prompt_tokens + 1)
            if wait > 0:
                return "rate_limited_tokens", float(max(1, int(wait + 0.999)))
        return None

    def _take_rate(self, now: float, spec: RequestSpec, rps: float | None, tpm: float | None, predicted: float) -> None:
        if rps is not None:
            self._rps[spec.tenant].take(now, 1.0)
        if tpm is not None:
            self._tpm[spec.tenant].take(now, spec.prompt_tokens + predicted)

    @staticmethod
    def _bucket(buckets: dict[str, TokenBucket], tenant: str, rate: float, burst: float, now: float) -> TokenBucket:
        b = buckets.get(tenant)
        if b is None or b.rate != rate:  # a policy change of the limit starts a fresh bucket
            b = buckets[tenant] = TokenBucket.full(rate, burst, now)
        return b

    def _latency_factor(self, cls_name: str, ttft: float | None, tpot: float | None) -> float:
        cls = self.policy.slo(cls_name)
        factor = 1.0
        if cls.ttft_ms is not None and ttft is not None and ttft > 0:
            factor *= min(1.0, cls.ttft_ms / 1e3 / ttft)
        if cls.tpot_ms is not None and tpot is not None and tpot > 0:
            factor *= min(1.0, cls.tpot_ms / 1e3 / tpot)
        return factor

    def _learn(self, now: float, t: Tracked, eng: EngineState, report: FinishReport, ttft: float | None,
               tpot: float | None) -> None:
        """Feed the predictors with what this request really cost, with the parts of its timings
        that were other requests' work taken out (docs/admission.md, "Learning from outcomes")."""
        self.predictor.observe(t.spec.tenant, report.prompt_tokens, t.spec.max_tokens, t.slo_class,
                               report.completion_tokens)
        computed = max(1, report.prompt_tokens - report.cached_tokens)
        # Per-request timings mix other requests' work into every step; learn step times only from
        # the clean cases where the step composition is known: a prefill on an idle engine (one
        # step of a + b*tokens), a decode with no prefill dispatched meanwhile (steps of
        # c + d*batch + e*kv). Forecast bias under load is corrected by the calibration factors.
        if ttft is not None and t.batch_at_dispatch == 1 and t.engine_waiting_at_dispatch == 0:
            eng.model.observe_prefill(computed, ttft)
        if tpot is not None and eng.dispatched == t.dispatched_at_first_token:
            batch = (t.batch_at_first_token + len(eng.in_flight) + 1) / 2
            eng.model.observe_decode(batch, t.kv_at_dispatch, tpot)
        total = report.prompt_tokens + report.completion_tokens
        self._mean_request_tokens += 0.02 * (total - self._mean_request_tokens)
        if self.errors is not None:
            self.errors.record("output_tokens", t.predicted_output, report.completion_tokens)
            if t.forecast_ttft_s is not None and report.first_token_at is not None:
                self.errors.record("ttft", t.forecast_ttft_s, report.first_token_at - t.arrival)
            if t.forecast_tpot_s is not None and tpot is not None:
                self.errors.record("tpot", t.forecast_tpot_s, tpot)

    def _resize_windows(self) -> None:
        """Per-engine in-flight window: the largest batch whose decode step meets the tightest TPOT
        SLO (with the margin) and whose KV fits, so sluice's queue order is the order that runs."""
        tpots = [c.tpot_ms for c in self.policy.slo_classes.values() if c.tpot_ms is not None]
        for eng in self.engines.values():
            if self.policy.window:
                eng.window = self.policy.window
                continue
            kv_fit = max(1, int(eng.spec.kv_capacity / max(1.0, self._mean_request_tokens)))
            limit = min(eng.spec.max_running, kv_fit)
            budget = self.policy.admission_margin * min(tpots) / 1e3 if tpots else None
            per = self._mean_request_tokens
            p = eng.profile
            if budget is not None and p.prefill_b > 0:
                # the prompt tokens one step may prefill and still end within the TPOT budget,
                # metered in at that many per budget-long step
                batch = max(1, len(eng.in_flight))  # refreshed with every load report
                kv = max(eng.kv_tokens, eng.reported_kv_tokens)
                room = (0.9 * budget - p.decode_time(batch, kv) - p.prefill_a) / p.prefill_b  # 10% headroom
                eng.prefill_budget = min(float(eng.spec.chunk), max(512.0, room))
                rate = eng.prefill_budget / budget
                if eng.meter is None or abs(eng.meter.rate - rate) > 0.05 * rate:
                    eng.meter = TokenBucket(rate, eng.prefill_budget, eng.prefill_budget,
                                            eng.meter.stamp if eng.meter else 0.0)
            else:
                eng.prefill_budget, eng.meter = float(eng.spec.chunk), None
            if budget is not None and eng.profile.decode_time(1, per) > budget:
                # Not even one request meets the SLO by the learned model: trust the profile's window.
                limit = eng.prior_window
            elif budget is not None:
                lo, hi = 1, limit
                while lo < hi:  # largest batch B with decode_time(B, B * tokens) <= budget
                    mid = (lo + hi + 1) // 2
                    if eng.profile.decode_time(mid, mid * per) <= budget:
                        lo = mid
                    else:
                        hi = mid - 1
                limit = lo
            eng.window = max(1, limit)


_REJECT_MESSAGES = {
    "ttft_unattainable": "the time-to-first-token SLO cannot be met at the current load",
    "tpot_unattainable": "the time-per-output-token SLO cannot be met at the current load",
    "protects_running": "admitting the request would push running requests past their SLO",
    "deadline_unattainable": "the request's deadline cannot be met at the current load",
    "no_healthy_engine": "no healthy engine is available",
}


def _shallow(obj: object) -> dict[str, object]:
    """A flat dataclass as a dict (dataclasses.asdict deep-copies every value: 10x slower)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}  # type: ignore[arg-type]


def _inputs_record(inputs: AdmissionInputs, cls_name: str) -> dict[str, object]:
    record = _shallow(inputs)
    record["engines"] = [_shallow(e) for e in inputs.engines]
    record["slo_class"] = cls_name
    return record
