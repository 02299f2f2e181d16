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

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.core.policy import Policy
from engine_adapter.base import StepProfile


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
