"""One driver, two clocks: the glue between the pure decision core and whatever runs the engines.

The serving runtime (`controlplane/service.py`: asyncio, an injected clock, real or simulated
engines) and virtual-time replay (`replay/runner.py`: a discrete-event loop over simulated engines)
drive the same `DecisionCore`. What they must do the same way is written here, once:

- the cadence: the core's `tick` every TICK_EVERY_S, an engine-load report every LOAD_EVERY_S,
  the capacity rule every CAPACITY_EVERY_S and the frequency rule every FREQUENCY_EVERY_S (right
  after the load reports of that instant, which it reads),
  at the instants k * period of the clock (`next_tick`, `next_load`), so both clocks tick at the
  same instants;
- the order at one instant: engine events and arrivals first, then the tick, then the load
  reports (replay handles them in that order; serving's cadence yields once before it ticks, and
  polls after the tick's dispatches have reached their engines);
- routing the core's actions (`Driver`): each event goes to the core with its time, and each
  `Decision`, `Dispatch` and `Reject` that comes back goes to the side's `ActionSink`, in order;
- what a load report tells the core (`Driver.engine_load`);
- an engine's `EngineSpec` and step-time model from what the engine reports (`engine_model`);
- the `decisions` row (`decision_row`): what the store writes and replay's `record_decisions` keeps;
- whether a finished request met its SLO class (`slo_met`);
- the frequency rule on each engine (`ClockSteering`): when it is evaluated, from what, and the
  `clock` decision row of each change (the side only sets the clock).

The core's `Policy` comes straight from the configuration (`Config.policy`, controlplane/config.py).

Pure like the core: no asyncio, no clock, no I/O. A new piece of glue that both sides need (a
controller's cadence, a new event) belongs here, not in either driver loop.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from controlplane.core.core import DecisionCore
from controlplane.core.events import Action, Decision, Dispatch, EngineSpec, FinishReport, Reject, RequestSpec
from controlplane.core.frequency import FrequencyController, clock_inputs
from controlplane.core.policy import Policy, SLOClassPolicy
from controlplane.predict.step_time import StepTimeModel
from engine_adapter.base import EngineInfo, EngineLoad, StepProfile

__all__ = [
    "DECISION_COLUMNS",
    "DEFAULT_PROFILE",
    "CAPACITY_EVERY_S",
    "FREQUENCY_EVERY_S",
    "LOAD_EVERY_S",
    "TICK_EVERY_S",
    "ActionSink",
    "ClockSteering",
    "Driver",
    "decision_row",
    "engine_model",
    "next_capacity",
    "next_frequency",
    "next_load",
    "next_on_grid",
    "next_tick",
    "slo_met",
]

TICK_EVERY_S = 0.05  # the core's tick: deadlines expire and the prefill meters refill at this grain
LOAD_EVERY_S = 0.5  # each engine's load report
CAPACITY_EVERY_S = 5.0  # the capacity rule (controlplane/core/capacity.py): desired replicas per pool
FREQUENCY_EVERY_S = 1.0  # the frequency rule (controlplane/core/frequency.py): each engine's SM clock

# A step-time prior for engines that report none (a real SGLang server): H100-class, 8B model.
DEFAULT_PROFILE = StepProfile(prefill_a=0.008, prefill_b=0.00006, decode_c=0.007, decode_d=0.00005, decode_e=2e-8)

DECISION_COLUMNS = ("ts", "rid", "tenant", "kind", "reason", "engine", "policy_version", "inputs", "outputs")


# -- cadence ----------------------------------------------------------------------------------------

def next_on_grid(t: float, period: float) -> float:
    """The first instant k * period (k an integer) strictly after `t`.

    On a fixed grid rather than `t + period`, so that a serving loop that wakes a little late does
    not drift, and the wall clock and the virtual clock meet the same instants.
    """
    k = math.floor(t / period) - 1  # the division may round either way: start below and step up
    while k * period <= t:
        k += 1
    return k * period


def next_tick(t: float) -> float:
    return next_on_grid(t, TICK_EVERY_S)


def next_load(t: float) -> float:
    return next_on_grid(t, LOAD_EVERY_S)


def next_capacity(t: float) -> float:
    return next_on_grid(t, CAPACITY_EVERY_S)


def next_frequency(t: float) -> float:
    return next_on_grid(t, FREQUENCY_EVERY_S)


# -- actions ----------------------------------------------------------------------------------------

class ActionSink(Protocol):
    """What one side does with the core's actions (serving: tickets; replay: simulated engines)."""

    def dispatch(self, now: float, action: Dispatch) -> None: ...
    def reject(self, now: float, action: Reject) -> None: ...
    def decision(self, record: Decision) -> None: ...


class Driver:
    """Feeds events to the core with their time and routes every action that comes back."""

    __slots__ = ("core", "sink")

    def __init__(self, core: DecisionCore, sink: ActionSink) -> None:
        self.core = core
        self.sink = sink

    def apply(self, now: float, actions: Iterable[Action]) -> None:
        sink = self.sink
        for action in actions:
            if isinstance(action, Decision):
                sink.decision(action)
            elif isinstance(action, Dispatch):
                sink.dispatch(now, action)
            else:
                sink.reject(now, action)

    def arrive(self, now: float, spec: RequestSpec) -> None:
        self.apply(now, self.core.arrive(now, spec))

    def first_token(self, now: float, rid: str) -> None:
        self.apply(now, self.core.first_token(now, rid))

    def finish(self, now: float, rid: str, report: FinishReport) -> None:
        self.apply(now, self.core.finish(now, rid, report))

    def abort(self, now: float, rid: str, reason: str) -> None:
        self.apply(now, self.core.abort(now, rid, reason=reason))

    def tick(self, now: float) -> None:
        self.apply(now, self.core.tick(now))

    def engine_load(self, now: float, name: str, load: EngineLoad) -> None:
        """An engine's load report: the prompt tokens it still has to compute and its KV in use, and
        the LoRA adapters it holds when it says."""
        self.apply(now, self.core.engine_load(now, name, load.waiting_uncached_tokens, load.used_tokens))
        a = load.adapters
        if a is not None:
            self.apply(now, self.core.engine_adapters(now, name, a.loaded, a.slots, a.load_s))

    def engine_health(self, now: float, name: str, healthy: bool) -> None:
        self.apply(now, self.core.engine_health(now, name, healthy))

    def set_policy(self, now: float, policy: Policy) -> None:
        self.apply(now, self.core.set_policy(now, policy))

    def engine_up(self, now: float, name: str, info: EngineInfo) -> None:
        """An engine started by an autoscaler joins the pool, planned as `engine_model` plans it."""
        self.apply(now, self.core.engine_up(now, *engine_model(name, info)))

    def engine_down(self, now: float, name: str) -> None:
        self.apply(now, self.core.engine_down(now, name))


class ClockSteering:
    """The frequency rule (controlplane/core/frequency.py) on each engine, as both sides run it:
    every engine at the frequency instants (`evaluate`, right after that instant's load reports,
    which it reads), and between them the engine just dispatched to (`dispatched`: a raise only,
    so only below f_max; at f_max a dispatch costs nothing, not even a snapshot). The inputs come
    from the core's snapshot. A change goes to the side's `actuate(now, engine, mhz)` (serving: the
    engine or its GPU; replay: the simulated engine), then comes back as a `clock` decision for the
    side to apply (`Driver.apply`)."""

    __slots__ = ("actuate", "controllers", "core")

    def __init__(self, core: DecisionCore, controllers: Mapping[str, FrequencyController],
                 actuate: Callable[[float, str, float], None]) -> None:
        self.core = core
        self.controllers = controllers
        self.actuate = actuate

    def evaluate(self, now: float) -> list[Decision]:
        return self._steer(now, list(self.controllers), dispatched=False)

    def dispatched(self, now: float, engine: str) -> list[Decision]:
        ctl = self.controllers.get(engine)
        return self._steer(now, [engine], dispatched=True) if ctl is not None and ctl.can_raise else []

    def _steer(self, now: float, engines: list[str], *, dispatched: bool) -> list[Decision]:
        snap = self.core.snapshot(now, with_tenants=False)
        out = []
        for name in engines:
            ctl, x = self.controllers[name], clock_inputs(snap, name)
            choice = ctl.on_dispatch(x, now) if dispatched else ctl.step(x, now)
            if choice is not None and choice.changed:
                self.actuate(now, name, choice.target_mhz)
                out.append(ctl.decision(choice, snap.policy.version))
        return out


# -- what the core is built from --------------------------------------------------------------------

def engine_model(name: str, info: EngineInfo) -> tuple[EngineSpec, StepTimeModel]:
    """The core's plan of an engine from what it reports: its KV capacity, its step-time profile
    (DEFAULT_PROFILE when it reports none) as the prior of an online `StepTimeModel`, and its
    chunked-prefill size and running-request cap when its info carries them (SGLang's names);
    otherwise EngineSpec's defaults."""
    p = info.profile or DEFAULT_PROFILE
    limits: dict[str, int] = {}
    for attr, key in (("chunked_prefill_size", "chunk"), ("max_running_requests", "max_running")):
        value = getattr(info, attr, None)
        if value:
            limits[key] = int(value)
    spec = EngineSpec(name, info.max_total_tokens, p.prefill_a, p.prefill_b, p.decode_c, p.decode_d, p.decode_e,
                      **limits)
    return spec, StepTimeModel(p)


# -- what comes out ---------------------------------------------------------------------------------

def decision_row(d: Decision, *, as_json: bool = False) -> dict[str, Any]:
    """One row of the `decisions` table (DECISION_COLUMNS). `inputs` and `outputs` are the core's
    fresh dicts (the store encodes them on its writer thread), or JSON text with `as_json`."""
    inputs: Any = d.inputs
    outputs: Any = d.outputs
    if as_json:
        inputs, outputs = json.dumps(inputs, default=str), json.dumps(outputs, default=str)
    return {"ts": d.ts, "rid": d.rid, "tenant": d.tenant, "kind": d.kind, "reason": d.reason, "engine": d.engine,
            "policy_version": d.policy_version, "inputs": inputs, "outputs": outputs}


def slo_met(cls: SLOClassPolicy, prompt_tokens: float, ttft_s: float | None, tpot_s: float | None,
            e2e_s: float | None) -> bool:
    """Whether a completed request met every bound of its SLO class: TTFT within the class's budget
    for its prompt, TPOT (undefined for a one-token answer: nothing to miss), and the deadline."""
    budget = cls.ttft_budget_s(prompt_tokens)
    if budget is not None and (ttft_s is None or ttft_s > budget):
        return False
    if cls.tpot_s is not None and tpot_s is not None and tpot_s > cls.tpot_s:
        return False
    return cls.deadline_s is None or (e2e_s is not None and e2e_s <= cls.deadline_s)
