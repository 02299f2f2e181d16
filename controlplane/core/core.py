"""The decision core: admission, fair queueing and dispatch, driven by timestamped events.

Pure: no I/O, no clock, no await. `now` is passed into every call; decisions come back as actions
(`Dispatch`, `Reject`) plus `Decision` records. The gateway drives it with the wall clock, replay
with a virtual clock: one code path for both.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable

from controlplane.core.adapters import AdapterIndex
from controlplane.core.admission import AdmissionInputs, EngineView, decide, feasible_alone, forecast
from controlplane.core.dispatch import Candidate, DispatchRequest, choose
from controlplane.core.demand import Demand
from controlplane.core.engine_state import EngineState, StepModel, Tracked
from controlplane.core.learning import Costs, ForecastLog, OutputPredictor, learn
from controlplane.core.events import (
    Action,
    Decision,
    Dispatch,
    EngineSpec,
    FinishReport,
    Reject,
    RequestSpec,
    shallow_dict,
)
from controlplane.core.policy import Policy, PolicyError
from controlplane.core.prefix_index import PrefixIndex
from controlplane.core.records import LOAD_REASONS, REJECT_MESSAGES, admission_record
from controlplane.core.rate_limits import RateLimits
from controlplane.core.snapshot import CoreSnapshot, take_snapshot
from controlplane.core.tier_balance import TierBalance
from controlplane.core.tiers import DEFERRABLE, LATENCY, configure_scheduler, tier_of, tiered_queue
from controlplane.core.windows import size_window
from fairness import Outcome, Work


class DecisionCore(TierBalance):
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
        self.scheduler = tiered_queue(policy, lambda tenant: self.policy.tenant(tenant).weight)
        self.rate_limits = RateLimits()
        # heap of queued requests' (deadline, arrival number, rid): ties go by arrival, not by rid
        # (serving's rids are random, replay's ordered: the same decisions need the same tie-break)
        self._deadlines: list[tuple[float, int, str]] = []
        self._arrival_seq = 0
        self.demand = Demand(lambda tenant: self.policy.tenant(tenant).weight)  # who asked, who got what
        self._inflight_tpot: dict[str, int] = {}  # SLO class -> requests running
        self._inflight_deferrable: dict[str, int] = {name: 0 for name in self.engines}  # per engine
        self.costs = Costs()  # what requests have been costing lately (learning.py)
        self.latency_refused_at = -math.inf  # the last refusal of a latency request for lack of capacity
        self.prefix_index = PrefixIndex()  # where each prompt prefix should be cached (dispatch's locality)
        self.adapters = AdapterIndex()  # which LoRA adapters each engine holds (dispatch's `adapter` scorer)
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

        def refuse(code: str, message: str, retry: float | None, **extra: object) -> list[Action]:
            return [
                Reject(spec.rid, code, message, retry),
                Decision(now, spec.rid, spec.tenant, "reject", code, None, version,
                         {"slo_class": cls_name, **extra}, {"retry_after_s": retry}),
            ]

        if tp.paused:
            return refuse("tenant_paused", f"tenant {spec.tenant!r} is paused by the operator", 30.0)
        limited = self.rate_limits.refusal(now, spec.tenant, spec.prompt_tokens, tp.rate_limit_rps, tp.rate_limit_tpm)
        if limited is not None:
            code, wait = limited
            return refuse(code, f"rate limit exceeded for tenant {spec.tenant!r}", wait)

        tier = tier_of(cls)
        self.demand.arrived(now, spec.tenant, tier)
        if self._over_share(now, tier):
            return refuse("over_share", REJECT_MESSAGES["over_share"], 1.0, tier=tier)
        predicted = min(float(spec.max_tokens), max(1.0, self.predictor.predict(
            spec.tenant, spec.prompt_tokens, spec.max_tokens, cls_name).tokens))
        cost = self.costs.prompt_cost(spec.tenant, spec.prompt_tokens)
        inputs = self._admission_inputs(now, spec, cls_name, predicted, tier, cost)
        result = decide(inputs)
        if result.decision == "reject" and tier == LATENCY and result.reason in LOAD_REASONS \
                and feasible_alone(inputs):
            self.latency_refused_at = now
        if result.decision == "reject":
            message = REJECT_MESSAGES.get(result.reason, result.reason)
            return [
                Reject(spec.rid, result.reason, message, result.retry_after_s),
                Decision(now, spec.rid, spec.tenant, "reject", result.reason, result.engine, version,
                         admission_record(inputs, cls_name), shallow_dict(result)),
            ]

        work = Work(int(round(cost)), int(round(predicted)))
        tracked = Tracked(spec, cls_name, now, predicted, work, tier, cost, result.ttft_s, result.tpot_s)
        if cls.deadline_s is not None:
            tracked.deadline = now + cls.deadline_s
            self._arrival_seq += 1
            heapq.heappush(self._deadlines, (tracked.deadline, self._arrival_seq, spec.rid))
        self.requests[spec.rid] = tracked
        self.rate_limits.take(now, spec.tenant, spec.prompt_tokens + predicted, tp.rate_limit_rps, tp.rate_limit_tpm)
        self._enqueue(tracked)
        actions: list[Action] = [Decision(now, spec.rid, spec.tenant, result.decision, result.reason, result.engine,
                                          version, admission_record(inputs, cls_name), shallow_dict(result))]
        # the engines have not changed since admission looked at them (decide, the rate limits, the
        # queues, the scheduler's order and _free_engines touch none: a meter's refill at `now` leaves
        # its view's level as it was): the first dispatch reuses the views without departures
        actions += self._pump(now, {v.name: v for v in inputs.engines if not v.departures})
        return actions

    def first_token(self, now: float, rid: str) -> list[Action]:
        """A prefill is done: the engine's prefill budget has room again."""
        t = self.requests.get(rid)
        if t is None or t.engine is None or t.first_token_at is not None:
            return []
        t.first_token_at = now
        eng = self.engines[t.engine]
        eng.waiting_tokens -= t.prompt_cost
        eng.waiting_attention_s -= t.attention_s
        t.prefilled_at_first_token, t.batch_at_first_token = eng.prefilled, len(eng.in_flight)
        t.dispatched_at_first_token = eng.dispatched
        return self._pump(now)

    def finish(self, now: float, rid: str, report: FinishReport) -> list[Action]:
        t = self.requests.pop(rid, None)
        if t is None or t.engine is None:
            raise KeyError(f"finish for unknown or undispatched request {rid!r}")
        eng = self.engines[t.engine]
        del eng.in_flight[rid]
        eng.finishes.append(now)
        if t.first_token_at is None:
            eng.waiting_tokens -= t.prompt_cost
            eng.waiting_attention_s -= t.attention_s
        eng.kv_tokens -= t.spec.prompt_tokens + t.predicted_output
        self._inflight_tpot[t.slo_class] -= 1
        if t.tier == DEFERRABLE:
            self._inflight_deferrable[t.engine] -= 1
        first = report.first_token_at if report.first_token_at is not None else t.first_token_at
        computed = max(0, report.prompt_tokens - report.cached_tokens)
        actual = Work(computed, report.completion_tokens)
        ttft = first - t.dispatched_at if first is not None and t.dispatched_at is not None else None
        tpot = (now - first) / (report.completion_tokens - 1) if first is not None and report.completion_tokens > 1 else None
        if report.status == "ok":
            learn(self.predictor, self.errors, self.costs, now, t, eng, report, ttft, tpot)
            if t.tier == LATENCY and t.forecast_ttft_s and first is not None:
                self.costs.observe_ttft(first - t.arrival, t.forecast_ttft_s)
        ttft_total = first - t.arrival if first is not None else None
        self.scheduler.tiers[t.tier].scheduler.finish(t.spec.tenant, t.work, Outcome(
            actual, self.policy.slo(t.slo_class).latency_factor(t.spec.prompt_tokens, ttft_total, tpot),
            gpu_seconds=eng.profile.prefill_time(computed, report.cached_tokens) + report.completion_tokens * (
                eng.profile.decode_time(t.batch_at_dispatch, t.kv_at_dispatch) / max(1, t.batch_at_dispatch))))
        self.rate_limits.reconcile(now, t.spec.tenant, t.spec.prompt_tokens + t.predicted_output
                                   - report.prompt_tokens - report.completion_tokens)
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
            *_, rid = heapq.heappop(self._deadlines)
            t = self.requests.get(rid)
            if t is None or t.engine is not None:
                continue
            self._dequeue(t)
            del self.requests[rid]
            actions.append(Reject(rid, "deadline_expired",
                                  "the request's deadline passed before it could be scheduled", None))
            actions.append(Decision(now, rid, t.spec.tenant, "expire", "deadline_expired", None, self.policy.version))
        return actions

    def engine_load(self, now: float, name: str, waiting_tokens: float, kv_tokens: float) -> list[Action]:
        eng = self.engines[name]
        eng.reported_waiting_tokens, eng.reported_kv_tokens = waiting_tokens, kv_tokens
        eng.profile = eng.model.profile()  # re-solving the learned model per request would cost more than it tells
        self._resize_windows()  # the learned step model and request sizes move the windows
        return self.engine_health(now, name, True)

    def engine_adapters(self, now: float, name: str, loaded: Iterable[str], slots: int | None,
                        load_s: float) -> list[Action]:
        """An engine's LoRA adapters as it reports them (core/adapters.py)."""
        self.adapters.report(name, loaded, slots, load_s)
        return []

    def engine_health(self, now: float, name: str, healthy: bool) -> list[Action]:
        self.engines[name].healthy = healthy
        return self._pump(now) if healthy else []

    def engine_up(self, now: float, spec: EngineSpec, model: StepModel) -> list[Action]:
        """An engine joins the pool (an autoscaler started it): it takes work from the next dispatch."""
        if spec.name in self.engines:
            raise ValueError(f"engine {spec.name!r} is already in the pool")
        eng = self.engines[spec.name] = EngineState(spec, model, profile=model.profile())
        self._inflight_deferrable[spec.name] = 0
        self._resize_windows()
        eng.prior_window = eng.window
        return self._pump(now)

    def engine_down(self, now: float, name: str) -> list[Action]:
        """An engine leaves the pool. Only a drained one may (mark it unhealthy first, wait for
        its in-flight requests to finish): the core never loses a running request's state."""
        if self.engines[name].in_flight:
            raise ValueError(f"engine {name!r} still runs {len(self.engines[name].in_flight)} requests")
        del self.engines[name], self._inflight_deferrable[name]
        self.prefix_index.drop(name)
        self.adapters.drop(name)
        return []

    def set_policy(self, now: float, policy: Policy) -> list[Action]:
        """Swap the policy atomically; it governs the very next decision."""
        self.check_policy(policy)
        old, self.policy = self.policy, policy
        if policy.scheduler != old.scheduler:
            queued = self._drain_scheduler()
            self.scheduler = tiered_queue(policy, lambda tenant: self.policy.tenant(tenant).weight)
            for t in queued:
                self.scheduler.push(t.tier, t.spec.tenant, t.spec.rid, t.work, t.prompt_cost)
        else:
            for sched in self.scheduler.schedulers():
                configure_scheduler(sched, policy)
            for q in self.scheduler.tiers.values():
                q.backlogged_weight = sum(policy.tenant(n).weight for n in q.tenant_tokens)
        self.demand.reweigh()
        self._resize_windows()
        return self._pump(now)

    def check_policy(self, policy: Policy) -> None:
        """PolicyError if `policy` is invalid or drops an SLO class that queued or running requests
        belong to (call before recording a change)."""
        policy.validate()
        in_use = {t.slo_class for t in self.requests.values()} - set(policy.slo_classes)
        if in_use:
            raise PolicyError(f"slo_classes: {sorted(in_use)} still have queued or running requests")

    # -- views ------------------------------------------------------------------------------
    def queued(self) -> int:
        return self.scheduler.total

    def in_flight(self) -> int:
        return sum(len(e.in_flight) for e in self.engines.values())

    def snapshot(self, now: float, *, with_tenants: bool = True, also: Iterable[str] = ()) -> CoreSnapshot:
        """What the core knows at `now`, as frozen values (controlplane/core/snapshot.py): its
        readers' contract. The tenants (one pass over all of them) only `with_tenants`: every tenant
        the policy or the queues know, and those named in `also`."""
        return take_snapshot(self, now, with_tenants, also)

    def engine_view(self, eng: EngineState, now: float, ahead: float = 0.0) -> EngineView:
        """The engine as the forecast sees it; `ahead` requests queued before the one forecast."""
        return eng.view(now, self.costs.mean_prompt, self.costs.mean_output, ahead)

    def typical_forecast(self, name: str, now: float) -> tuple[float, float]:
        """TTFT and TPOT (s) a typical new request of the latency tier would see on this engine now."""
        n = max(1, len(self.engines))
        q = self.scheduler.tiers[LATENCY]
        ahead = q.queued / n
        f = forecast(self.engine_view(self.engines[name], now, ahead), ahead, q.tokens / n,
                     self.costs.mean_prompt, self.costs.mean_output)
        return f.ttft_s, f.tpot_s

    # -- internals --------------------------------------------------------------------------
    def _drain_scheduler(self) -> list[Tracked]:
        queued = [t for t in self.requests.values() if t.engine is None]
        queued.sort(key=lambda t: t.arrival)
        return queued

    def _enqueue(self, t: Tracked) -> None:
        self.scheduler.push(t.tier, t.spec.tenant, t.spec.rid, t.work, t.prompt_cost)
        q = self.scheduler.tiers[t.tier]
        self.demand.backlog(t.arrival, t.spec.tenant, t.tier, q.scheduler.queued(t.spec.tenant), q.queued)

    def _dequeue(self, t: Tracked, removed: bool = False) -> None:
        self.scheduler.remove(t.spec.tenant, t.spec.rid, t.prompt_cost, popped=removed)
        q = self.scheduler.tiers[t.tier]
        self.demand.backlog(t.arrival, t.spec.tenant, t.tier, q.scheduler.queued(t.spec.tenant), q.queued)

    def _admission_inputs(self, now: float, spec: RequestSpec, cls_name: str, predicted: float, tier: str,
                          cost: float) -> AdmissionInputs:
        cls = self.policy.slo(cls_name)
        healthy = [e for e in self.engines.values() if e.healthy]
        ahead, ahead_tokens = self.demand.ahead(now, self.scheduler, spec.tenant, tier,
                                                 self.policy.scheduler != "fcfs", self.costs.mean_prompt)
        n = max(1, len(healthy))
        running = [self.policy.slo(c).tpot_s for c, k in self._inflight_tpot.items() if k > 0]
        running_slos = [v for v in running if v is not None]
        return AdmissionInputs(
            prompt_tokens=spec.prompt_tokens, output_tokens=predicted,
            ttft_slo_s=cls.ttft_budget_s(spec.prompt_tokens), tpot_slo_s=cls.tpot_s, deadline_s=cls.deadline_s,
            on_miss=cls.on_miss,
            margin=self.policy.admission_margin, admission=self.policy.admission,
            ahead_requests=ahead / n, ahead_tokens=ahead_tokens / n,
            inflight_tpot_slo_s=min(running_slos) if running_slos else None,
            engines=tuple(self.engine_view(e, now, ahead / n) for e in healthy),
            cached_tokens=spec.prompt_tokens - cost,
            ttft_error=self.costs.ttft_error if tier == LATENCY else 1.0,
        )

    def _pump(self, now: float, fresh: dict[str, EngineView] | None = None) -> list[Action]:
        """Dispatch queued requests while engines are free. `fresh`: views of engines as of `now`,
        still true until the first dispatch changes an engine."""
        actions: list[Action] = []
        while True:
            for q in self.scheduler.order(now, self.demand.active_weight(now), self.policy.admission):
                head = q.scheduler.peek()
                if head is None:  # only paused tenants have queued requests
                    continue
                t = self.requests[str(head[1])]
                free, metered = self._free_engines(now, t)
                if free:
                    break
                if metered:
                    return actions  # it waits for the meter, and nobody takes the meter's tokens first
            else:
                return actions  # every head waits: sluice's order is the order that runs
            q.scheduler.pop()
            self._dequeue(t, removed=True)
            self.scheduler.charge(q, now, q.scheduler.token_cost(t.work))
            self.demand.dispatched(now, t.spec.tenant, t.tier)
            actions += self._dispatch(now, t, free, fresh)
            fresh = None

    def _dispatch(self, now: float, t: Tracked, free: list[EngineState],
                  fresh: dict[str, EngineView] | None = None) -> list[Action]:
        views = [(fresh.get(e.spec.name) if fresh else None) or self.engine_view(e, now) for e in free]
        cached = t.spec.prompt_tokens - t.prompt_cost
        spec, rule = t.spec, self.policy.dispatch
        by_engine = self._expected_cached(t, free)
        lora = self.adapters.costs(spec.adapter, (v.name for v in views)) if spec.adapter else None
        choice = choose([Candidate(v, by_engine[k] if by_engine else cached, True, *lora[k]) if lora
                         else Candidate(v, by_engine[k] if by_engine else cached) for k, v in enumerate(views)],
                        DispatchRequest(spec.prompt_tokens, t.predicted_output), rule.scorers)
        i, fc = choice.index, choice.chosen.forecast
        best = views[i]
        eng = self.engines[best.name]
        if by_engine is not None:  # the prompt tokens it will compute are those this engine lacks
            t.prompt_cost = max(1.0, spec.prompt_tokens - by_engine[i])
        self.prefix_index.add(best.name, spec.prefix_hashes, eng.spec.kv_capacity // max(1, spec.block_tokens))
        if spec.adapter:
            self.adapters.used(best.name, spec.adapter)
        t.engine, t.dispatched_at, t.expected_finish = best.name, now, now + fc.e2e_s
        t.engine_waiting_at_dispatch = max(eng.waiting_tokens, eng.reported_waiting_tokens)
        eng.in_flight[t.spec.rid] = t
        eng.waiting_tokens += t.prompt_cost
        t.attention_s = best.attention(t.prompt_cost, t.spec.prompt_tokens - t.prompt_cost)
        eng.waiting_attention_s += t.attention_s
        eng.kv_tokens += t.spec.prompt_tokens + t.predicted_output
        eng.prefilled += t.prompt_cost
        if eng.meter is not None:
            eng.meter.take(now, t.prompt_cost)
        eng.dispatched += 1
        eng.recent.append((now, t.prompt_cost))
        eng.recent_tokens += t.prompt_cost
        tenant = t.spec.tenant
        if t.tier == DEFERRABLE:
            self._inflight_deferrable[best.name] += 1
        t.batch_at_dispatch, t.kv_at_dispatch = len(eng.in_flight), eng.kv_tokens
        self._inflight_tpot[t.slo_class] = self._inflight_tpot.get(t.slo_class, 0) + 1
        cls = self.policy.slo(t.slo_class)
        priority = cls.priority if self.policy.pass_priority else None
        return [Dispatch(t.spec.rid, best.name, priority),
                Decision(now, t.spec.rid, tenant, "dispatch", self.policy.scheduler, best.name, self.policy.version,
                         {"candidates": [v.name for v in views], "queued_s": now - t.arrival, "tier": t.tier,
                          "counters": self.scheduler.tiers[t.tier].scheduler.counters(tenant),
                          # what dispatch.choose saw, so that the audit can re-derive the engine
                          "engines": [shallow_dict(v) for v in views], "prompt_tokens": t.spec.prompt_tokens,
                          "output_tokens": t.predicted_output, "cached_tokens": cached,
                          **({"engine_cached": by_engine} if by_engine is not None else {}),
                          **({"adapter": spec.adapter, "engine_adapter": lora} if lora is not None else {}),
                          "weights": dict(rule.scorers),
                          "scores": [s.record() if s else None for s in choice.scored]},
                         {"priority": priority})]

    def _expected_cached(self, t: Tracked, free: list[EngineState]) -> list[float] | None:
        """Each engine's expected prefix-cache hit for `t`, from what sluice sent where
        (prefix_index.py); None when the policy estimates from the tenant's hit share instead."""
        spec = t.spec
        if self.policy.dispatch.cache_estimate != "prefix" or not spec.prefix_hashes:
            return None
        return [self.prefix_index.cached_tokens(e.spec.name, spec.prefix_hashes, spec.block_tokens,
                                                spec.prompt_tokens) for e in free]

    def _resize_windows(self) -> None:
        """Every engine's window and prefill meter for the policy and the mean request (windows.py)."""
        per = self.costs.mean_prompt + self.costs.mean_output
        for eng in self.engines.values():
            size_window(eng, self.policy, per)
