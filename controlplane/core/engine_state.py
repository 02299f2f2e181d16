"""What the decision core tracks per request and per engine between events.

`Tracked`: a request from its arrival to its finish (queued, then dispatched to an engine).
`EngineState`: an engine's in-flight requests, the prompt tokens it still has to prefill, its KV,
its window and prefill meter (sized by `windows.py`), and its recent dispatch and finish rates.
"""
from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.core.admission import EngineView, TokenBucket
from controlplane.core.events import EngineSpec, RequestSpec
from engine_adapter.base import StepProfile
from fairness import Work

RATE_WINDOW_S = 5.0  # the window of the recent rates (arrivals, dispatches, finishes)


class StepModel(Protocol):
    def prefill_time(self, tokens: float, context: float = 0.0) -> float: ...
    def decode_time(self, batch: float, kv_tokens: float) -> float: ...
    def observe_prefill(self, tokens: float, seconds: float, context: float = 0.0) -> Any: ...
    def observe_decode(self, batch: float, kv_tokens: float, seconds: float) -> None: ...
    def profile(self) -> StepProfile: ...


@dataclass(slots=True)
class Tracked:
    spec: RequestSpec
    slo_class: str
    arrival: float
    predicted_output: float
    work: Work
    tier: str
    prompt_cost: float  # prompt tokens expected to be computed (not served from the prefix cache)
    forecast_ttft_s: float | None
    forecast_tpot_s: float | None
    deadline: float | None = None
    attention_s: float = 0.0  # its prefill's attention seconds on the engine it runs on
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
    profile: StepProfile  # the model's estimate, refreshed with each load report
    healthy: bool = True
    in_flight: dict[str, Tracked] = field(default_factory=dict)
    waiting_tokens: float = 0.0  # dispatched prompt tokens without a first token yet
    waiting_attention_s: float = 0.0  # their attention seconds (the quadratic part of prefill)
    kv_tokens: float = 0.0  # prompt + predicted output of in-flight requests
    reported_waiting_tokens: float = 0.0  # from the engine's own load report
    reported_kv_tokens: float = 0.0
    window: int = 1
    prior_window: int = 1  # the window the engine's own profile gives: a floor when learning goes wrong
    prefill_budget: float = 8192.0  # prompt tokens per step that keep a step within the TPOT budget
    meter: TokenBucket | None = None  # meters prompt tokens in at prefill_budget per TPOT budget
    prefilled: float = 0.0  # cumulative prompt tokens dispatched
    dispatched: int = 0  # cumulative requests dispatched
    finishes: deque[float] = field(default_factory=deque)  # times of the finishes over the last RATE_WINDOW_S
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (time, prompt tokens) of dispatches
    recent_tokens: float = 0.0

    def rates(self, now: float) -> tuple[float, float]:
        """(prompt tokens/s, requests/s) dispatched over the last RATE_WINDOW_S."""
        while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent_tokens -= self.recent.popleft()[1]
        return self.recent_tokens / RATE_WINDOW_S, len(self.recent) / RATE_WINDOW_S

    def view(self, now: float, mean_prompt: float, mean_output: float, ahead: float = 0.0) -> EngineView:
        """The engine as the forecast sees it; `ahead` requests queued before the one forecast, and
        requests of `mean_prompt` computed and `mean_output` output tokens on average. Advances the
        rate windows to `now` (and changes nothing else)."""
        p = self.profile
        batch = max(1, min(self.window, len(self.in_flight) + 1))
        kv = max(self.kv_tokens, self.reported_kv_tokens)
        prefill_rate, dispatch_rate = self.rates(now)
        m = self.meter
        meter = (min(m.burst, m.level + max(0.0, now - m.stamp) * m.rate), m.rate) if m else (0.0, 0.0)
        view = EngineView(self.spec.name, self.window, len(self.in_flight),
                          max(self.waiting_tokens, self.reported_waiting_tokens), kv, 0.0, prefill_rate,
                          dispatch_rate, (), p.prefill_a, p.prefill_b, p.decode_c, p.decode_d, p.decode_e,
                          self.spec.chunk, self.prefill_budget, *meter, p.prefill_f, max(0.0, self.waiting_attention_s))
        step = view.step_time(batch, kv)
        departures: tuple[float, ...] = ()
        if ahead >= view.free_slots and self.in_flight:  # only a queued request needs them
            need = min(len(self.in_flight), int(ahead - view.free_slots) + 1)
            departures = soonest_departures(self.in_flight.values(), now, step, need)
        while self.finishes and self.finishes[0] < now - RATE_WINDOW_S:
            self.finishes.popleft()
        mean_service = view.prefill_through(mean_prompt, batch, kv) + mean_output * step
        return view.with_queue(departures, mean_service, len(self.finishes) / RATE_WINDOW_S)


def soonest_departures(in_flight: Iterable[Tracked], now: float, step: float, need: int) -> tuple[float, ...]:
    """The `need` soonest predicted departures (seconds from `now`, ascending) of the requests in
    flight, each from its progress at today's pace and at least one `step` away. One pass without a
    call per request (this runs for every queued arrival over the whole window): the floor at `step`
    is monotone, so it is applied to the chosen values only."""
    raw = [t.expected_finish - now if t.first_token_at is None
           else (t.predicted_output - 1 - (now - t.first_token_at) / step) * step for t in in_flight]
    soonest = sorted(raw)[:need] if 4 * need >= len(raw) else heapq.nsmallest(need, raw)
    return tuple(step if r < step else r for r in soonest)
