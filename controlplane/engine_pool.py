"""The engines one decision core decides for, with that core, its driver and its controllers.

`EnginePool.open` asks each engine what it is (`info()`: KV capacity, step profile, context window,
model) and only then builds the rest, so nothing in a pool is ever missing: the core planned from
those infos, the driver that routes the core's actions to the tickets (`TicketSink`), the capacity
rule's controller (docs/capacity.md) and, with `[server] clock_control`, the frequency rule's
(`ClockSteering`, docs/frequency.md). The serving runtime opens one pool per model when it starts
(`Sluice.start`: the engines that declare the same model, controlplane/model_pools.py), each with
its own core, so fairness and admission hold per pool; nothing here assumes a pool is the only one.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controlplane.core.capacity import CapacityParams, Controller, Replica
from controlplane.core.core import DecisionCore
from controlplane.core.learning import ForecastLog
from controlplane.core.frequency import FrequencyController, FrequencyParams
from controlplane.core.policy import Policy
from controlplane.driver import DEFAULT_PROFILE, ClockSteering, Driver, engine_model
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.recorder import Recorder
from controlplane.tickets import Ticket, TicketSink
from engine_adapter.base import Engine, EngineError, EngineInfo, EngineLoad

__all__ = ["EnginePool"]


@dataclass(slots=True)
class EnginePool:
    name: str  # the model its engines serve (controlplane/model_pools.py)
    engines: Mapping[str, Engine]
    infos: dict[str, EngineInfo]  # what each engine reported at the start
    core: DecisionCore
    driver: Driver
    capacity: Controller | None  # desired replicas on the driver's cadence (None: a pool without engines)
    steering: ClockSteering | None  # SLO-aware SM clocks (None: every engine keeps its clock)
    clock_status: dict[str, str] = field(default_factory=dict)  # how each engine's last clock change went
    loads: dict[str, EngineLoad] = field(default_factory=dict)  # each engine's last load report (admin state)

    @classmethod
    async def open(cls, name: str, engines: Mapping[str, Engine], policy: Policy, predictor: OutputLengthPredictor,
                   forecasts: ForecastLog, tickets: dict[str, Ticket], recorder: Recorder | None,
                   clock: Callable[[], float], *,
                   clock_control: FrequencyParams | None = None,
                   set_clock: Callable[[str, float], str] | None = None,
                   capacity_params: CapacityParams | None = None) -> EnginePool:
        """`policy`: the pool's own (`Policy.for_pool`). Raises RuntimeError naming an engine that
        does not answer `info()`."""
        infos = {}
        for engine_name, engine in engines.items():
            try:
                infos[engine_name] = await engine.info()
            except EngineError as exc:
                raise RuntimeError(f"engine {engine_name!r} is not reachable: {exc}") from None
        core = DecisionCore(policy, [engine_model(e, info) for e, info in infos.items()], predictor, forecasts)
        clocks = _EngineClocks(engines, set_clock)
        steering = None
        if clock_control is not None:
            from engine_adapter.clock import ClockModel

            steering = ClockSteering(core, {
                e: FrequencyController(e, infos[e].profile or DEFAULT_PROFILE,
                                       getattr(engine, "clock_model", None) or ClockModel(),  # a real GPU: H100-class
                                       clock_control)
                for e, engine in engines.items()}, clocks)
        driver = Driver(core, TicketSink(tickets, recorder, steering, name))
        snap = core.snapshot(clock(), with_tenants=False).engines
        first = next(iter(snap.values()), None)
        capacity = None
        if first is not None:
            capacity = Controller(Replica(first.profile, first.kv_capacity, first.max_running),
                                  params=capacity_params or CapacityParams(), pool=name)
            capacity.start(len(snap), clock())
        return cls(name, engines, infos, core, driver, capacity, steering, clocks.status)

    def context_window(self) -> int | None:
        """The smallest context window of the engines (any of them may serve a request), if known."""
        windows = [info.context_length for info in self.infos.values() if info.context_length]
        return min(windows) if windows else None


class _EngineClocks:
    """Serving's side of `ClockSteering`: a simulated engine sets its own clock, a real one's GPU
    goes through `set_clock(engine, mhz)` (NVML, a dry run where not permitted)."""

    __slots__ = ("engines", "set_clock", "status")

    def __init__(self, engines: Mapping[str, Engine], set_clock: Callable[[str, float], str] | None) -> None:
        self.engines = engines
        self.set_clock = set_clock
        self.status: dict[str, str] = {}

    def __call__(self, now: float, name: str, mhz: float) -> None:
        engine = self.engines[name]
        if hasattr(engine, "set_frequency"):
            engine.set_frequency(mhz)
            self.status[name] = "simulated"
        elif self.set_clock is not None:
            self.status[name] = self.set_clock(name, mhz)
        else:
            self.status[name] = "dry run: no clock actuator"
