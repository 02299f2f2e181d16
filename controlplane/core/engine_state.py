"""What the decision core tracks per request and per engine between events.

`Tracked`: a request from its arrival to its finish (queued, then dispatched to an engine).
`EngineState`: an engine's in-flight requests, the prompt tokens it still has to prefill, its KV,
its window and prefill meter (sized by `windows.py`), and its recent dispatch and finish rates.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.core.admission import TokenBucket
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
