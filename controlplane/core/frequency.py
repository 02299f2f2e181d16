"""The SM clock each engine should run at: a pure frequency rule (GreenLLM) and its hysteresis.

Same discipline as the core: no I/O, no clock, no await, no random; `now` is an argument. The
serving runtime and replay evaluate it on the driver's cadence (`driver.FREQUENCY_EVERY_S`), right
after the engines' load reports, from the core's snapshot (`clock_inputs`), so a clock change in
serving and in `sluice simulate --clock-control` is the same decision; each change is a decision
row (kind "clock") with the inputs that produced it.

The rule, per engine (docs/simulator.md has the clock model, engine_adapter/clock.py):

1. By the engine's step profile at f_max and the clock model, forecast at a candidate clock f what
   a typical new latency request would see (`forecast_at`): a steady continuous-batching step
   (the running batch's decode, slowed by the decode factor, plus the prompt tokens arriving during
   the step, slowed as compute: s = decode + a + rho * s), its TTFT (the step in progress, then the
   prompt tokens already waiting and its own, in chunks beside the decodes) and TPOT (the step,
   plus the waiting tokens' prefill spread over a typical answer).
2. The SLO floor (f_max while the engine runs its whole in-flight window: throughput-bound, a
   slower step is a longer queue): the lowest clock (on NVML's 15 MHz grid) at which TTFT and TPOT stay within
   `margin` of the tightest latency class's budgets and prefill keeps at most `max_utilisation` of
   the engine's time. Every term grows as f falls, so the floor is found by bisection.
3. The energy floor: among the clocks at or above the SLO floor, the one that minimises the dynamic
   energy of this engine's mix of work (prefill share rho, decode the rest): GreenLLM's objective
   P_active(f) * busy(f) + P_idle * (D - busy(f)), whose idle part does not depend on f. Below it
   the clock-independent power (HBM, uncore) is paid for longer than the lower clock saves.
4. Hysteresis (`FrequencyController`): a higher clock applies at once (the SLO first; between
   evaluations too, when a dispatch leaves the clock in force short: `on_dispatch`); a lower one
   only when the last `down_after` evaluations all asked for at least `band_mhz` less, and then
   the highest of them (HPA's scale-down stabilisation), so a steady or jittering load settles.
5. The prefill guard (`guard_clock`): while a long prompt or a burst waits (more than 0.6 of a chunk
   of prompt tokens), the clock in force is at least the lowest at which a short answer decoding
   beside their prefill keeps its TPOT within the margin; raised on the dispatch itself, held at its
   highest while the backlog lasts, dropped by the next evaluation without one (no down window: it
   guards the tokens, not the load).

Not an oracle: the inputs are what serving knows (requests in flight, KV, prompt tokens waiting and
dispatched lately, the mean prompt, the SLO classes). The profile is the engine's prior at f_max,
not the core's learned model, which learns whatever clock was in force.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.core.events import Decision, shallow_dict
from controlplane.core.snapshot import CoreSnapshot
from controlplane.core.tiers import LATENCY, tier_of
from engine_adapter.base import StepProfile
from engine_adapter.clock import ClockModel

__all__ = ["ClockChoice", "ClockForecast", "ClockInputs", "FrequencyController", "FrequencyParams", "choose_clock",
           "clock_inputs", "forecast_at", "guard_clock", "rederive", "rederive_guard"]

NVML_STEP_MHZ = 15.0  # the clock granularity NVML accepts on Volta and newer
SHORT_OUTPUT = 8.0  # tokens: FrequencyParams.short_output


@dataclass(frozen=True, slots=True)
class FrequencyParams:
    margin: float = 0.6  # forecast TTFT and TPOT at the chosen clock stay within this share of the budgets
    max_utilisation: float = 0.8  # prefill may take at most this share of the engine's time
    step_mhz: float = NVML_STEP_MHZ
    # evaluations in a row that must ask for a lower clock before it is lowered: a load whose
    # jitter repeats within this many evaluations never lowers and raises the clock in turn
    down_after: int = 8
    band_mhz: float = 60.0  # a lower clock is taken only when it is at least this much lower
    # the prefill guard (`guard_clock`): while more than `guard_chunks` of the engine's chunk of
    # prompt tokens wait (a long prompt, or a burst), a short answer (at most `short_output` tokens)
    # decoding beside their prefill must keep its TPOT within the margin
    short_output: float = SHORT_OUTPUT
    guard_chunks: float = 0.6


@dataclass(frozen=True, slots=True)
class ClockInputs:
    """What the rule reads for one engine at one instant (all of it known to serving)."""

    engine: str
    batch: int  # requests in flight on the engine
    kv_tokens: float
    waiting_tokens: float  # prompt tokens dispatched to it without a first token yet, and its share of the queue
    prompt_rate: float  # prompt tokens/s dispatched to it over the core's rate window
    mean_prompt: float
    chunk: int  # the engine's per-step token budget
    ttft_budget_s: float | None  # the tightest latency class's TTFT budget for a typical prompt
    tpot_budget_s: float | None
    mean_output: float = 512.0  # tokens: the backlog's prefill steps spread over a typical answer
    window: int = 0  # the in-flight window the core keeps the engine to (0: unknown)

    def to_dict(self) -> dict[str, object]:
        return shallow_dict(self)


@dataclass(frozen=True, slots=True)
class ClockForecast:
    mhz: float
    step_s: float
    ttft_s: float
    tpot_s: float
    utilisation: float  # share of the engine's time spent on prefill
    energy: float  # dynamic energy of the mix per unit of work, relative to f_max (1.0 there)

    def to_dict(self) -> dict[str, object]:
        return shallow_dict(self)


@dataclass(frozen=True, slots=True)
class ClockChoice:
    """One evaluation: the clock the rule wants, the one in force after hysteresis, and why."""

    engine: str
    ts: float
    target_mhz: float  # in force after this evaluation
    wanted_mhz: float  # the rule's clock before hysteresis
    slo_floor_mhz: float
    energy_floor_mhz: float
    previous_mhz: float
    reason: str
    guard_mhz: float  # the prefill guard's clock (f_min: none); target_mhz is at least this
    inputs: ClockInputs
    forecast: ClockForecast  # at target_mhz

    @property
    def changed(self) -> bool:
        return self.target_mhz != self.previous_mhz

    def to_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "ts": self.ts, "target_mhz": self.target_mhz, "wanted_mhz": self.wanted_mhz,
                "slo_floor_mhz": self.slo_floor_mhz, "energy_floor_mhz": self.energy_floor_mhz,
                "previous_mhz": self.previous_mhz, "reason": self.reason, "guard_mhz": self.guard_mhz,
                "inputs": self.inputs.to_dict(),
                "forecast": self.forecast.to_dict()}


def forecast_at(x: ClockInputs, p: StepProfile, clock: ClockModel, mhz: float, answer: float = math.inf
                ) -> ClockForecast:
    """What a typical new latency request would see on this engine at SM clock `mhz`, by the model;
    its TPOT for an answer of min(`answer`, the mean answer) tokens."""
    pre, dec = clock.prefill_scale(mhz), clock.decode_scale(mhz)
    # seconds per prompt token at f_max, the attention of a typical prompt included
    per_token = p.prefill_b + p.prefill_f * x.mean_prompt / 2
    batch = x.batch + 1  # the new request decodes beside the running ones
    decode = p.decode_time(batch, x.kv_tokens + x.mean_prompt) * dec
    rho = x.prompt_rate * per_token * pre
    fixed = decode + (p.prefill_a * pre if x.prompt_rate > 0 else 0.0)
    step = fixed / (1.0 - rho) if rho < 1.0 else math.inf
    # its prompt behind the tokens already waiting, in chunks of what the decodes leave of the budget
    tokens = x.waiting_tokens + x.mean_prompt
    steps = math.ceil(tokens / max(1, x.chunk - batch))
    ttft = step + steps * (decode + p.prefill_a * pre) + tokens * per_token * pre
    # TPOT: the steady step, plus the prompt tokens already waiting, which the next steps prefill
    # beside this request's decodes, spread over its answer (a short answer feels them most)
    backlog = (math.ceil(x.waiting_tokens / max(1, x.chunk - batch)) * p.prefill_a
               + x.waiting_tokens * per_token) * pre
    tpot = step + backlog / max(1.0, min(answer, x.mean_output) - 1)
    # dynamic energy per unit of work relative to f_max: the prefill share at its power and time,
    # the rest decode
    share = min(1.0, x.prompt_rate * per_token)
    base = share * clock.dynamic_w(clock.f_max_mhz, True) + (1 - share) * clock.dynamic_w(clock.f_max_mhz, False)
    energy = (share * clock.dynamic_w(mhz, True) * pre + (1 - share) * clock.dynamic_w(mhz, False) * dec) / base \
        if base > 0 else 1.0
    return ClockForecast(mhz, step, ttft, tpot, rho, energy)


_NO_MARGIN = FrequencyParams(margin=1.0, max_utilisation=1.0)


def _meets(f: ClockForecast, x: ClockInputs, params: FrequencyParams) -> bool:
    if f.utilisation > params.max_utilisation:
        return False
    if x.tpot_budget_s is not None and f.tpot_s > params.margin * x.tpot_budget_s:
        return False
    return x.ttft_budget_s is None or f.ttft_s <= params.margin * x.ttft_budget_s


def _grid(clock: ClockModel, step: float) -> list[float]:
    """The clocks the rule may pick, ascending: f_max - k * step down to f_min."""
    n = int((clock.f_max_mhz - clock.f_min_mhz) // step)
    return [clock.f_max_mhz - k * step for k in range(n, -1, -1)]


def _lowest(grid: list[float], meets: Callable[[float], bool]) -> int:
    """The index of the lowest clock of `grid` that `meets`, given that grid[-1] does (monotone in f)."""
    lo, hi = 0, len(grid) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(grid[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def choose_clock(x: ClockInputs, p: StepProfile, clock: ClockModel, params: FrequencyParams
                 ) -> tuple[float, float, float, str]:
    """(wanted clock, SLO floor, energy floor, why) for one engine, before hysteresis."""
    grid = _grid(clock, params.step_mhz)
    if x.window and x.batch >= x.window:  # throughput-bound: a slower step is a longer queue
        return grid[-1], grid[-1], grid[-1], "saturated: the engine runs its whole in-flight window"
    if not _meets(forecast_at(x, p, clock, grid[-1]), x, params):
        return grid[-1], grid[-1], grid[-1], "the SLO is not met with margin even at the maximum clock"
    lo = _lowest(grid, lambda f: _meets(forecast_at(x, p, clock, f), x, params))
    floor = grid[lo]
    best = min(grid[lo:], key=lambda f: (forecast_at(x, p, clock, f).energy, f))
    energy_floor = min(grid, key=lambda f: (forecast_at(x, p, clock, f).energy, f))
    if best > floor:
        why = f"energy: below {best:.0f} MHz this mix costs more energy per unit of work"
    elif lo == 0:
        why = "the SLO holds with margin at the minimum clock"
    else:
        why = f"SLO: below {floor:.0f} MHz the forecast TTFT or TPOT leaves the margin"
    return best, floor, energy_floor, why


def guard_clock(x: ClockInputs, p: StepProfile, clock: ClockModel, params: FrequencyParams) -> tuple[float, str]:
    """The prefill guard (f_min: none) and why: while more than `guard_chunks` of a chunk of prompt
    tokens wait, the lowest clock at which a short answer (`short_output` tokens) decoding beside
    their prefill keeps its TPOT within the margin. The SLO floor spreads that prefill over the
    learned mean answer, which a long prompt's chunks beside short answers overrun (Azure code:
    prompts of thousands of tokens, 20-token answers, a mean that starts at 512 and learns at 2 %
    a completion). The controller holds the highest guard while the backlog lasts and drops it at
    the next evaluation without one (`FrequencyController.guard_held_mhz`)."""
    grid = _grid(clock, params.step_mhz)
    if x.tpot_budget_s is None or x.waiting_tokens <= params.guard_chunks * x.chunk:
        return grid[0], ""
    budget = params.margin * x.tpot_budget_s

    def meets(f: float) -> bool:
        return forecast_at(x, p, clock, f, params.short_output).tpot_s <= budget

    if not meets(grid[-1]):
        return grid[-1], f"guard: {x.waiting_tokens:.0f} prompt tokens waiting, short answers' TPOT"
    guard = grid[_lowest(grid, meets)]
    return guard, f"guard: below {guard:.0f} MHz a short answer's TPOT beside {x.waiting_tokens:.0f} waiting prompt tokens leaves the margin"


@dataclass(slots=True)
class FrequencyController:
    """The rule plus its hysteresis for one engine. `profile`: the engine's step profile at f_max."""

    engine: str
    profile: StepProfile
    clock: ClockModel
    params: FrequencyParams = field(default_factory=FrequencyParams)
    current_mhz: float = 0.0  # in force: the held clock or the prefill guard, the higher (0: f_max)
    # the rule's clock after hysteresis, where the prefill guard lifts the clock in force above it
    # (0: the clock in force is the held one)
    held_mhz: float = 0.0
    # the prefill guard in force: the highest it asked while the prompt backlog lasted (a guard
    # that followed each evaluation flapped with the batch beside a steady backlog: 33 changes in
    # 40 evaluations, batch 0 and 5 in turn); it lapses with the backlog
    guard_held_mhz: float = 0.0
    _asks: deque[float] = field(default_factory=deque)
    last: ClockChoice | None = None

    def __post_init__(self) -> None:
        if self.current_mhz <= 0:
            self.current_mhz = self.clock.f_max_mhz

    def step(self, x: ClockInputs, now: float) -> ClockChoice:
        want, floor, efloor, why = choose_clock(x, self.profile, self.clock, self.params)
        guard, gwhy = guard_clock(x, self.profile, self.clock, self.params)
        asks = self._asks
        asks.append(want)
        while len(asks) > max(1, self.params.down_after):
            asks.popleft()
        held = self.held_mhz or self.current_mhz
        if want > held:
            held = want
            asks.clear()
        elif len(asks) >= self.params.down_after and max(asks) <= held - self.params.band_mhz \
                and asks[-1] <= asks[0] + self.params.band_mhz:  # not while the asks climb: a load building up
            held = max(asks)
            asks.clear()
        self.guard_held_mhz = max(self.guard_held_mhz, guard) if gwhy else 0.0
        before, target = self.current_mhz, max(held, self.guard_held_mhz)
        if self.guard_held_mhz > held:
            why = gwhy if self.guard_held_mhz == guard else \
                f"guard: held at {self.guard_held_mhz:.0f} MHz while {x.waiting_tokens:.0f} prompt tokens wait"
        action = "raise" if target > before else "lower" if target < before else "hold"
        self.held_mhz, self.current_mhz = (held if self.guard_held_mhz > held else 0.0), target
        self.last = ClockChoice(self.engine, now, target, want, floor, efloor, before, f"{action}: {why}", guard, x,
                                forecast_at(x, self.profile, self.clock, target))
        return self.last

    @property
    def can_raise(self) -> bool:
        """Below f_max: only then can a dispatch change anything (`on_dispatch`)."""
        return self.current_mhz < self.clock.f_max_mhz

    def on_dispatch(self, x: ClockInputs, now: float) -> ClockChoice | None:
        """Between evaluations: a dispatch after which the clock in force would miss the SLO itself
        (the budgets without the margin), or that lifts the prefill guard above it, raises the
        clock at once (a burst does not wait for the cadence); never lowers it. The SLO without the
        margin: each such raise holds the clock up for a whole down window, so only a real
        shortfall is worth one; the guard's lapses at the next evaluation, so it keeps the margin."""
        if not self.can_raise:
            return None
        if _meets(forecast_at(x, self.profile, self.clock, self.current_mhz), x, _NO_MARGIN) \
                and guard_clock(x, self.profile, self.clock, self.params)[0] <= self.current_mhz:
            return None
        return self.step(x, now)

    def decision(self, c: ClockChoice, policy_version: int) -> Decision:
        """The decision row of a clock change (kind "clock"): everything that produced it (the
        inputs, the step profile and clock model planned with, the parameters), so an audit
        recomputes it from the row alone, and the forecast at the new clock."""
        inputs: dict[str, object] = {**c.inputs.to_dict(), "previous_mhz": c.previous_mhz,
                                     "params": shallow_dict(self.params), "profile": shallow_dict(self.profile),
                                     "clock": shallow_dict(self.clock)}
        outputs: dict[str, object] = {"target_mhz": c.target_mhz, "wanted_mhz": c.wanted_mhz, "guard_mhz": c.guard_mhz,
                                      "slo_floor_mhz": c.slo_floor_mhz, "energy_floor_mhz": c.energy_floor_mhz,
                                      **{f"forecast_{k}": v for k, v in c.forecast.to_dict().items()}}
        return Decision(c.ts, "", "", "clock", c.reason, c.engine, policy_version, inputs, outputs)


def _from_row(inputs: Mapping[str, Any]) -> tuple[ClockInputs, StepProfile, ClockModel, FrequencyParams]:
    x = ClockInputs(**{k: inputs[k] for k in ClockInputs.__dataclass_fields__})
    return x, StepProfile(**inputs["profile"]), ClockModel(**inputs["clock"]), FrequencyParams(**inputs["params"])


def rederive(inputs: Mapping[str, Any]) -> float:
    """The clock a `clock` decision row's inputs ask for (its outputs' `wanted_mhz`): the audit."""
    return choose_clock(*_from_row(inputs))[0]


def rederive_guard(inputs: Mapping[str, Any]) -> float:
    """The prefill guard a `clock` decision row's inputs give (its outputs' `guard_mhz`)."""
    return guard_clock(*_from_row(inputs))[0]


def clock_inputs(snap: CoreSnapshot, name: str) -> ClockInputs:
    """The rule's inputs for engine `name` from the decision core's snapshot (its read contract)."""
    eng = snap.engines[name]
    latency = [c for c in snap.policy.slo_classes.values() if tier_of(c) == LATENCY]
    mean_prompt = snap.mean_prompt_tokens
    ttfts = [b for b in (c.ttft_budget_s(mean_prompt) for c in latency) if b is not None]
    tpots = [c.tpot_s for c in latency if c.tpot_s is not None]
    # a new request also waits behind the latency tier's queue in sluice (its share per engine, as
    # the core's typical forecast counts it): a pool short of throughput shows here first
    queued = snap.tiers[LATENCY].queued_tokens / max(1, len(snap.engines))
    return ClockInputs(
        engine=name, batch=eng.in_flight, kv_tokens=eng.kv_tokens, waiting_tokens=eng.waiting_tokens + queued,
        prompt_rate=eng.prompt_rate, mean_prompt=mean_prompt, chunk=eng.chunk,
        ttft_budget_s=min(ttfts) if ttfts else None, tpot_budget_s=min(tpots) if tpots else None,
        mean_output=snap.mean_output_tokens, window=eng.window)
