"""Model pools in virtual-time replay (docs/replay.md): the cores a `VirtualRun` decides with.

Serving opens one core per model pool (controlplane/engine_pool.py); a replay with
`engines={pool: n}` does the same: each pool a `DecisionCore` over its own simulated engines
(sim-0, sim-1, ... numbered across the pools in order), deciding by `Policy.for_pool` (the tenants'
per-pool weights), with its own driver and, with clock control, its own `ClockSteering`. With
several pools each pool's actions reach the run through a `PoolSink`, which marks its decision rows
with the pool; with one, the run is the sink, exactly as before pools.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from controlplane.core.core import DecisionCore
from controlplane.core.events import Decision, Dispatch, EngineSpec, Reject
from controlplane.core.frequency import FrequencyController, FrequencyParams
from controlplane.core.policy import Policy
from controlplane.driver import ActionSink, ClockSteering, Driver, engine_model
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.predict.step_time import StepTimeModel
from engine_adapter.base import EngineInfo
from engine_adapter.sim.profile import SimProfile
from replay.workload import WorkloadRequest

__all__ = ["PoolSink", "build_pools", "check_workload", "engine_specs"]


class _Run(ActionSink, Protocol):
    def decision(self, d: Decision, pool: str | None = None) -> None: ...
    def set_clock(self, now: float, engine: str, mhz: float) -> None: ...


def engine_specs(profile: SimProfile, engines: int, first: int = 0) -> list[tuple[EngineSpec, StepTimeModel]]:
    """What `Sluice.start` builds (`driver.engine_model`) from the `info()` of `engines` simulated
    engines named sim-<first>, sim-<first + 1>, ... (SimEngine.info reports this)."""
    return [engine_model(f"sim-{i}", EngineInfo(f"sim-{i}", "sim", profile.model, None, profile.kv_capacity_tokens,
                                                 True, profile.step)) for i in range(first, first + engines)]


def check_workload(workload: Sequence[WorkloadRequest], policy: Policy, pools: Sequence[str]) -> None:
    """Every request's SLO class (its own, else its tenant's) must exist in the policy, and its
    model name a pool: an unknown one is an error that names it, never silently something else."""
    for k, w in enumerate(workload):
        name = w.slo_class or policy.tenant(w.tenant).slo_class
        if name not in policy.slo_classes:
            raise ValueError(f"workload request {k} (tenant {w.tenant!r}): unknown slo_class {name!r}; "
                             f"the policy's classes are {sorted(policy.slo_classes)}")
        if w.model is not None and len(pools) > 1 and w.model not in pools:
            raise ValueError(f"workload request {k} (tenant {w.tenant!r}): model {w.model!r} names no pool; "
                             f"the pools are {list(pools)}")


class PoolSink:
    """One pool's actions to the run, its decision rows marked with the pool (several pools only)."""

    __slots__ = ("pool", "run")

    def __init__(self, run: _Run, pool: str) -> None:
        self.run, self.pool = run, pool

    def dispatch(self, now: float, a: Dispatch) -> None:
        self.run.dispatch(now, a)

    def reject(self, now: float, a: Reject) -> None:
        self.run.reject(now, a)

    def decision(self, d: Decision) -> None:
        self.run.decision(d, self.pool)


def build_pools(run: _Run, policy: Policy, counts: Mapping[str, int], profile: SimProfile, names: Sequence[str],
                predictor: OutputLengthPredictor, errors: ForecastErrors, clock_control: FrequencyParams | None
                ) -> tuple[dict[str, Driver], dict[str, str], dict[str, ClockSteering]]:
    """Each pool's driver (over its core), each engine's pool, and each pool's frequency rule (none
    without `clock_control`: every engine stays at f_max; else planning with the engine's prior step
    profile at f_max, as serving does with what the engine reports)."""
    drivers: dict[str, Driver] = {}
    engine_pool: dict[str, str] = {}
    steerings: dict[str, ClockSteering] = {}
    actuate: Callable[[float, str, float], Any] = run.set_clock
    first = 0
    for pool, n in counts.items():
        core = DecisionCore(policy.for_pool((pool,)), engine_specs(profile, n, first), predictor, errors)
        drivers[pool] = Driver(core, run if len(counts) == 1 else PoolSink(run, pool))
        mine = names[first:first + n]
        engine_pool.update(dict.fromkeys(mine, pool))
        first += n
        if clock_control is not None:
            steerings[pool] = ClockSteering(core, {
                name: FrequencyController(name, profile.step, profile.clock, clock_control) for name in mine}, actuate)
    return drivers, engine_pool, steerings
