"""What the core learns from finished requests (docs/admission.md, "Learning from outcomes").

`Costs` holds what requests have been costing lately: the mean computed prompt and output (they
size the windows and the mean service time), each tenant's prefix-cache hit share (a new request's
expected hit), the latency tier's service time (its window reserve) and the 90th percentile of
actual / forecast TTFT (admission's uncertainty margin). `learn` feeds a finished request to them, to
the output-length predictor and to the engine's step model (`learn_step_times`: only from the
requests whose step composition is known). Pure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from controlplane.core.engine_state import EngineState, Tracked
from controlplane.core.events import FinishReport
from controlplane.core.tiers import LATENCY


class Prediction(Protocol):
    tokens: float


class OutputPredictor(Protocol):
    def predict(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None) -> Prediction: ...
    def observe(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None, actual: int) -> None: ...


class ForecastLog(Protocol):
    def record(self, kind: str, predicted: float, actual: float) -> None: ...


TTFT_ERROR_QUANTILE = 0.9
TTFT_ERROR_MAX = 3.0


@dataclass(slots=True)
class Costs:
    mean_prompt: float = 512.0  # EWMA of the prompt tokens a request computes (cache hits not)
    mean_output: float = 512.0  # EWMA of its output tokens
    latency_service_s: float = 1.0  # EWMA of a latency-tier request's dispatch to finish
    # the 90th percentile of actual / forecast TTFT of admitted latency requests, tracked online (a
    # quantile by stochastic gradient): admission holds forecast x this to the budget
    ttft_error: float = 1.0
    hit_rate: dict[str, float] = field(default_factory=dict)  # per tenant: EWMA of the prefix-cache hit share

    def prompt_cost(self, tenant: str, prompt_tokens: float) -> float:
        """The prompt tokens a new request of `tenant` is expected to compute (its hits are not)."""
        return max(1.0, prompt_tokens * (1.0 - self.hit_rate.get(tenant, 0.0)))

    def observe(self, tenant: str, report: FinishReport, latency_service_s: float | None) -> None:
        """A request finished as `report` says (`latency_service_s`: if it was a latency-tier one)."""
        computed = max(1, report.prompt_tokens - report.cached_tokens)
        self.mean_prompt += 0.02 * (computed - self.mean_prompt)
        self.mean_output += 0.02 * (report.completion_tokens - self.mean_output)
        if report.prompt_tokens > 0:
            hit = self.hit_rate.get(tenant, 0.0)
            self.hit_rate[tenant] = hit + 0.1 * (report.cached_tokens / report.prompt_tokens - hit)
        if latency_service_s is not None:
            self.latency_service_s += 0.05 * (latency_service_s - self.latency_service_s)

    def observe_ttft(self, actual_s: float, forecast_s: float) -> None:
        """One admitted latency request's actual and forecast TTFT (its arrival to first token)."""
        below = 1.0 if actual_s / forecast_s <= self.ttft_error else 0.0
        step = 0.02 * (TTFT_ERROR_QUANTILE - below)
        self.ttft_error = min(TTFT_ERROR_MAX, max(1.0, self.ttft_error + step))


def learn_step_times(eng: EngineState, t: Tracked, report: FinishReport, ttft: float | None,
                     tpot: float | None) -> None:
    """Per-request timings mix other requests' work into every step; learn step times only from the
    clean cases where the step composition is known: a prefill on an idle engine (one step of
    a + b*tokens), a decode with no prefill dispatched meanwhile (steps of c + d*batch + e*kv)."""
    computed = max(1, report.prompt_tokens - report.cached_tokens)
    if ttft is not None and t.batch_at_dispatch == 1 and t.engine_waiting_at_dispatch == 0:
        eng.model.observe_prefill(computed, ttft, context=report.cached_tokens)
    if tpot is not None and eng.dispatched == t.dispatched_at_first_token:
        batch = (t.batch_at_first_token + len(eng.in_flight) + 1) / 2
        eng.model.observe_decode(batch, t.kv_at_dispatch, tpot)


def learn(predictor: OutputPredictor, errors: ForecastLog | None, costs: Costs, now: float, t: Tracked,
          eng: EngineState, report: FinishReport, ttft: float | None, tpot: float | None) -> None:
    """Feed the predictors with what a finished request really cost, with the parts of its timings
    that were other requests' work taken out."""
    predictor.observe(t.spec.tenant, report.prompt_tokens, t.spec.max_tokens, t.slo_class, report.completion_tokens)
    learn_step_times(eng, t, report, ttft, tpot)
    costs.observe(t.spec.tenant, report, now - t.dispatched_at
                  if t.tier == LATENCY and t.dispatched_at is not None else None)
    if errors is not None:
        errors.record("output_tokens", t.predicted_output, report.completion_tokens)
        if t.forecast_ttft_s is not None and report.first_token_at is not None:
            errors.record("ttft", t.forecast_ttft_s, report.first_token_at - t.arrival)
        if t.forecast_tpot_s is not None and tpot is not None:
            errors.record("tpot", t.forecast_tpot_s, tpot)
