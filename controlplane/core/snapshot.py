"""What the decision core knows at one instant, as frozen values: the core's read contract.

Everything outside `controlplane/core` that reads the core's state (the admin API's `/state`, the
Prometheus gauges, `/health`, the capacity rule, replay's results) reads a `CoreSnapshot` from
`DecisionCore.snapshot(now)` instead of reaching into its engines, queues or counters, so the
core's internals can change without breaking its readers.

Cheap by construction: one pass over the tenants, the engines and the requests in flight, and one
typical forecast per engine (the admin API takes one a second). The tenants' full views (counters,
fair shares) only when asked for; every tenant's queue length always.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controlplane.core.engine_state import RATE_WINDOW_S
from controlplane.core.policy import Policy
from controlplane.core.tiers import DEFERRABLE
from engine_adapter.base import StepProfile

if TYPE_CHECKING:
    from controlplane.core.core import DecisionCore


@dataclass(frozen=True, slots=True)
class TenantSnapshot:
    name: str
    weight: float  # the policy's
    slo_class: str
    paused: bool
    queued: int  # requests in sluice's queues (both tiers)
    in_flight: int  # dispatched, not finished
    fair_share: float  # weight / the summed weight of the backlogged tenants; 0 when not backlogged
    counters: Mapping[str, float]  # the fairness policy's: user (U), resource (R), holistic (H), weight


@dataclass(frozen=True, slots=True)
class TierSnapshot:
    name: str  # "latency" or "deferrable" (controlplane/core/tiers.py)
    queued: int
    queued_tokens: float  # prompt tokens queued
    backlogged_weight: float  # of the tenants with requests queued
    arrivals_per_s: float  # over the last RATE_WINDOW_S, refused requests included (demand)


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    name: str
    healthy: bool
    in_flight: int
    window: int  # the in-flight window the core keeps it to
    kv_tokens: float  # the larger of the core's count and the engine's own report
    kv_capacity: int
    max_running: int
    profile: StepProfile  # the learned step-time model's estimate
    forecast_ttft_s: float  # what a typical new latency-tier request would see on it now
    forecast_tpot_s: float
    waiting_tokens: float  # prompt tokens dispatched to it without a first token yet (the larger of
                           # the core's count and the engine's own report)
    prompt_rate: float  # prompt tokens/s dispatched to it over the core's rate window
    chunk: int  # its per-step token budget (chunked prefill)


@dataclass(frozen=True, slots=True)
class CoreSnapshot:
    now: float
    policy: Policy  # in force (frozen)
    tenants: Mapping[str, TenantSnapshot]  # every tenant the policy or the queues know, and any asked for
                                           # (empty when taken without them)
    queued_by_tenant: Mapping[str, int]  # every tenant the queues know: its queued requests (always there)
    tiers: Mapping[str, TierSnapshot]
    engines: Mapping[str, EngineSnapshot]
    queued: int
    in_flight: int
    mean_prompt_tokens: float  # learned means of what requests cost (computed prompt, output)
    mean_output_tokens: float
    ttft_error: float  # the tracked 90th percentile of actual / forecast TTFT that admission applies
    latency_refused_at: float  # the last refusal of a latency request for lack of capacity (-inf: never)
    deferred_slack_s: tuple[float, ...]  # queued deferrable requests' seconds to their deadline, ascending

    @property
    def scheduler(self) -> str:
        return self.policy.scheduler

    def healthy_engines(self) -> list[EngineSnapshot]:
        return [e for e in self.engines.values() if e.healthy]


def take_snapshot(core: DecisionCore, now: float, with_tenants: bool, also: Iterable[str]) -> CoreSnapshot:
    """`DecisionCore.snapshot`: one pass over the requests, the engines and (`with_tenants`) the tenants."""
    core.demand.active_weight(now)  # ages the arrival window to `now`
    running: dict[str, int] = {}
    deferred = []
    for t in core.requests.values():
        if t.engine is not None:
            running[t.spec.tenant] = running.get(t.spec.tenant, 0) + 1
        elif t.tier == DEFERRABLE and t.deadline is not None:
            deferred.append(t.deadline - now)
    tiers = {name: TierSnapshot(name, q.queued, q.tokens, q.backlogged_weight,
                                core.demand.tier_arrivals[name] / RATE_WINDOW_S)
             for name, q in core.scheduler.tiers.items()}
    engines = {}
    for name, e in core.engines.items():
        ttft, tpot = core.typical_forecast(name, now)
        engines[name] = EngineSnapshot(name, e.healthy, len(e.in_flight), e.window,
                                       max(e.kv_tokens, e.reported_kv_tokens), e.spec.kv_capacity,
                                       e.spec.max_running, e.profile, ttft, tpot,
                                       max(e.waiting_tokens, e.reported_waiting_tokens), e.rates(now)[0],
                                       e.spec.chunk)
    queued = core.scheduler.queued_by_tenant()
    tenants = _tenant_snapshots(core, queued, running, also) if with_tenants else {}
    return CoreSnapshot(now, core.policy, tenants, queued, tiers, engines, core.scheduler.total,
                        sum(running.values()), core.costs.mean_prompt, core.costs.mean_output, core.costs.ttft_error,
                        core.latency_refused_at, tuple(sorted(deferred)))


def _tenant_snapshots(core: DecisionCore, queued: dict[str, int], running: dict[str, int],
                      also: Iterable[str]) -> dict[str, TenantSnapshot]:
    policy, queues = core.policy, core.scheduler
    backlogged = set(queues.backlogged())
    backlogged_weight = sum(policy.tenant(n).weight for n in backlogged) or 1.0
    out = {}
    for name in dict.fromkeys([*queued, *policy.tenants, *also]):
        tp = policy.tenant(name)
        out[name] = TenantSnapshot(name, tp.weight, tp.slo_class, tp.paused, queued.get(name, 0),
                                   running.get(name, 0), tp.weight / backlogged_weight if name in backlogged
                                   else 0.0, queues.counters(name))
    return out
