"""Admission: forecast a request's TTFT and TPOT on each engine and decide admit / defer / reject.

Everything here is a pure function of an explicit `AdmissionInputs`, which the core records with
each decision, so an audit can re-derive any decision bit for bit (`decide(inputs) == outputs`).

The forecast is a small queueing model over SGLang's chunked-prefill scheduler (docs/admission.md):
- a decode step with batch B over K KV tokens takes  s = c + d*B + e*K;
- a step carries up to `chunk - B` prefill tokens and then costs  s + a + b*tokens;
- prefilling T tokens therefore takes  max(1, T/(chunk-B)) * (s + a) + b*T (the engine's chunk,
  not sluice's meter budget: once in, a prompt is prefilled chunk by chunk);
- a request's own prefill computes only its prompt minus the expected prefix-cache hit (the
  tenant's recent hit share); its KV holds the whole prompt;
- attention makes prefill quadratic: T new tokens after C cached ones cost f*T*(C + T/2) more
  (`StepProfile.prefill_f`); the engine's queue carries its own (`waiting_attention_s`), and the
  queue ahead in sluice is costed as requests of its mean prompt length;
- a busy engine first finishes the step in progress: half a step on average;
- the k-th request ahead of a full window waits for the k-th predicted departure of the requests
  in flight (past the last one, further departures come at rate window / mean_service), or, if
  sooner, the geometric mean of that and k departures at the rate requests have been finishing
  lately: a departure predicted from progress inherits the step model's error on the whole
  decode (10 % of a 5 s decode is half a second), the observed rate does not but is optimistic
  when departures come in bursts;
- prefill of other requests rides in the decode steps: at a prefill rate of L tokens/s and R
  requests/s, a step takes  (s + a*min(1, R*s)) / (1 - b*L);
- with a TPOT SLO, sluice meters prompt tokens into the engine (a token bucket of `budget` tokens
  per TPOT budget): the prompt tokens ahead wait for the meter;
TTFT = max(slot wait + own prefill, meter wait + own prefill, prefill of the engine's queue plus
its own) (without a meter: the queue ahead counts in the last term),
TPOT = that step time at the batch the request joins, e2e = TTFT + predicted output * TPOT.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fairness.value import value


@value
class EngineView:
    """One engine as the forecast sees it at decision time."""

    name: str
    window: int
    in_flight: int
    waiting_tokens: float  # prompt tokens dispatched to the engine and not yet prefilled
    kv_tokens: float  # KV tokens held by in-flight requests
    mean_service_s: float  # predicted service time of one request at the current batch
    prefill_rate: float  # prompt tokens/s dispatched to this engine lately
    dispatch_rate: float  # requests/s dispatched to this engine lately
    departures: tuple[float, ...]  # sorted predicted seconds until in-flight requests finish (as many as needed)
    prefill_a: float
    prefill_b: float
    decode_c: float
    decode_d: float
    decode_e: float
    chunk: int
    prefill_budget: float  # prompt tokens sluice lets into one step (keeps the step within TPOT)
    meter_level: float  # prompt tokens the prefill meter would let in now (negative: in debt)
    meter_rate: float  # tokens/s the meter refills at (0: no meter)
    prefill_f: float = 0.0  # attention: seconds per new token x context token
    waiting_attention_s: float = 0.0  # attention seconds of the prompts the engine has yet to prefill
    departure_rate: float = 0.0  # requests/s that finished on this engine lately

    def with_queue(self, departures: tuple[float, ...], mean_service_s: float, departure_rate: float) -> EngineView:
        """This view with what its queue needs (dataclasses.replace costs 3x this on the hot path)."""
        return EngineView(self.name, self.window, self.in_flight, self.waiting_tokens, self.kv_tokens, mean_service_s,
                          self.prefill_rate, self.dispatch_rate, departures, self.prefill_a, self.prefill_b,
                          self.decode_c, self.decode_d, self.decode_e, self.chunk, self.prefill_budget,
                          self.meter_level, self.meter_rate, self.prefill_f, self.waiting_attention_s, departure_rate)

    @property
    def free_slots(self) -> int:
        return max(0, self.window - self.in_flight)

    def decode_step(self, batch: float, kv_tokens: float) -> float:
        return self.decode_c + self.decode_d * batch + self.decode_e * kv_tokens

    def step_time(self, batch: float, kv_tokens: float) -> float:
        """A decode step with the other requests' prefill riding in it (the TPOT a request sees)."""
        s = self.decode_step(batch, kv_tokens)
        with_prefill = min(1.0, self.dispatch_rate * s)
        step = (s + self.prefill_a * with_prefill) / max(0.1, 1.0 - self.prefill_b * self.prefill_rate)
        if self.meter_rate > 0:  # sluice's meter lets no step carry more than the budget
            step = min(step, s + self.prefill_a + self.prefill_b * self.prefill_budget)
        return step

    def prefill_through(self, tokens: float, batch: float, kv_tokens: float, attention_s: float = 0.0) -> float:
        """Seconds until `tokens` prompt tokens are prefilled, whose attention costs `attention_s`."""
        s = self.decode_step(batch, kv_tokens)
        steps = max(1.0, tokens / max(1.0, self.chunk - batch))
        busy = 0.5 * s if self.in_flight else 0.0
        return busy + steps * (s + self.prefill_a) + self.prefill_b * tokens + attention_s

    def attention(self, tokens: float, context: float = 0.0) -> float:
        return self.prefill_f * tokens * (context + tokens / 2)

    def meter_wait(self, tokens: float) -> float:
        """Seconds until sluice's prefill meter lets `tokens` more prompt tokens in."""
        if self.meter_rate <= 0:
            return 0.0
        return max(0.0, (tokens - self.meter_level) / self.meter_rate)

    def slot_wait(self, ahead: float) -> float:
        """Seconds until a window slot frees for a request with `ahead` requests before it."""
        if ahead < self.free_slots:
            return 0.0
        j = int(ahead - self.free_slots)
        if j < len(self.departures):
            wait = self.departures[j]
        else:
            last = self.departures[-1] if self.departures else 0.0
            wait = last + (j - len(self.departures) + 1) * self.mean_service_s / max(self.window, 1)
        if self.departure_rate > 0:  # a steady window drains at the rate requests have been finishing
            # the geometric mean: the rate alone is optimistic when departures come in bursts
            wait = min(wait, math.sqrt(wait * (j + 1) / self.departure_rate))
        return wait


@value
class Forecast:
    engine: str
    ttft_s: float
    tpot_s: float
    e2e_s: float
    slot_wait_s: float


def forecast(
    engine: EngineView, ahead_requests: float, ahead_tokens: float, prompt_tokens: float, output_tokens: float,
    cached_tokens: float = 0.0,
) -> Forecast:
    batch = min(engine.in_flight + 1, max(engine.window, 1))
    kv = engine.kv_tokens + prompt_tokens + output_tokens / 2
    computed = max(1.0, prompt_tokens - cached_tokens)
    slot_wait = engine.slot_wait(ahead_requests)
    own_attention = engine.attention(computed, cached_tokens)
    own = engine.prefill_through(computed, batch, kv, own_attention)
    queue_attention = engine.waiting_attention_s + own_attention
    if engine.meter_rate > 0:  # the queue ahead goes through sluice's meter, then the engine
        metered = engine.meter_wait(ahead_tokens + min(computed, engine.prefill_budget))
        engine_queue = engine.prefill_through(engine.waiting_tokens + computed, batch, kv, queue_attention)
        ttft = max(slot_wait + own, metered + own, engine_queue)
    else:
        ahead_attention = ahead_requests * engine.attention(ahead_tokens / max(1.0, ahead_requests))
        everything = engine.prefill_through(engine.waiting_tokens + ahead_tokens + computed, batch, kv,
                                            queue_attention + ahead_attention)
        ttft = max(slot_wait + own, everything)
    tpot = engine.step_time(batch, kv)
    return Forecast(engine.name, ttft, tpot, ttft + output_tokens * tpot, slot_wait)


@value
class AdmissionInputs:
    prompt_tokens: float
    output_tokens: float  # predicted
    ttft_slo_s: float | None  # the class's TTFT budget for this prompt
    tpot_slo_s: float | None
    deadline_s: float | None
    on_miss: str  # "reject" | "defer"
    margin: float
    admission: bool  # admission control on; when off, everything is admitted
    ahead_requests: float  # queued requests that will run before this one, per engine
    ahead_tokens: float  # their prompt tokens, per engine
    inflight_tpot_slo_s: float | None  # the tightest TPOT SLO among requests already running
    engines: tuple[EngineView, ...]  # healthy engines only
    cached_tokens: float = 0.0  # of the prompt, expected from the prefix cache
    ttft_error: float = 1.0  # the recent 90th percentile of actual / forecast TTFT (an uncertainty margin)


@value
class AdmissionResult:
    decision: str  # "admit" | "defer" | "reject"
    reason: str
    engine: str | None
    ttft_s: float | None  # the forecast on `engine`
    tpot_s: float | None
    e2e_s: float | None
    retry_after_s: float | None = None


def decide(x: AdmissionInputs) -> AdmissionResult:
    if not x.engines:
        return AdmissionResult("reject", "no_healthy_engine", None, None, None, None, retry_after_s=5.0)
    forecasts = [forecast(e, x.ahead_requests, x.ahead_tokens, x.prompt_tokens, x.output_tokens, x.cached_tokens)
                 for e in x.engines]
    best = min(forecasts, key=lambda f: (f.ttft_s, f.e2e_s))
    queued = best.slot_wait_s > 0

    def result(decision: str, reason: str, retry_after: float | None = None) -> AdmissionResult:
        return AdmissionResult(decision, reason, best.engine, best.ttft_s, best.tpot_s, best.e2e_s,
                               retry_after_s=retry_after)

    if not x.admission:
        return result("defer" if queued else "admit", "admission_off")
    if x.deadline_s is not None and best.e2e_s > x.margin * x.deadline_s:
        return result("reject", "deadline_unattainable", _retry_after(best.e2e_s - x.margin * x.deadline_s))
    if x.ttft_slo_s is not None and best.ttft_s * x.ttft_error > x.margin * x.ttft_slo_s:
        if x.on_miss == "defer":
            return result("defer", "ttft_unattainable_deferred")
        return result("reject", "ttft_unattainable", _retry_after(best.ttft_s - x.margin * x.ttft_slo_s))
    tpot_slos = [v for v in (x.tpot_slo_s, x.inflight_tpot_slo_s) if v is not None]
    if tpot_slos and best.tpot_s > x.margin * min(tpot_slos):
        own = x.tpot_slo_s is not None and min(tpot_slos) == x.tpot_slo_s
        reason = "tpot_unattainable" if own else "protects_running"
        if x.on_miss == "defer":
            return result("defer", reason + "_deferred")
        engine = next(e for e in x.engines if e.name == best.engine)
        return result("reject", reason, _retry_after(engine.mean_service_s / max(engine.window, 1)))
    return result("defer" if queued else "admit", "queued_within_slo" if queued else "within_slo")


def feasible_alone(x: AdmissionInputs) -> bool:
    """Whether the request would meet its TTFT on an idle engine (else its refusal says
    nothing about load)."""
    if x.ttft_slo_s is None:
        return True
    idle = [replace(v, in_flight=0, waiting_tokens=0.0, kv_tokens=0.0, waiting_attention_s=0.0, meter_rate=0.0)
            for v in x.engines]
    return any(forecast(v, 0, 0, x.prompt_tokens, x.output_tokens, x.cached_tokens).ttft_s
               <= x.margin * x.ttft_slo_s for v in idle)


def _retry_after(seconds: float) -> float:
    """Whole seconds (HTTP's Retry-After unit), at least 1."""
    return float(max(1, math.ceil(seconds)))


@dataclass(slots=True)
class TokenBucket:
    """A rate limit: `rate` units per second, bursts up to `burst`. Pure: time is passed in."""

    rate: float
    burst: float
    level: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, now: float, amount: float) -> float:
        """Seconds until `amount` is available (0 if it is now)."""
        self._refill(now)
        missing = min(amount, self.burst) - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, now: float, amount: float) -> None:
        self._refill(now)
        self.level -= amount  # may go negative: reconciled charges (tokens/min) are paid back later

    def give(self, now: float, amount: float) -> None:
        self._refill(now)
        self.level = min(self.burst, self.level + amount)
