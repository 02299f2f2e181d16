"""Output-length prediction: a mixture of experts gated by each expert's recent error.

Features of a request: tenant, prompt_tokens, max_tokens, slo_class and an optional free-form hint
(an application or endpoint name, say). The target is the *mean* output length in tokens: fairness
charges it ahead and admission uses it for KV and decode-time forecasts.

Experts (names as they appear in `Prediction.by_expert`):

- "tenant": per-tenant running statistics. An EWMA mean whose step is max(1/n, alpha) (an exact
  running mean for the first 1/alpha observations, then exponential forgetting; VTC's predictor is
  the same with alpha = 1/5), shrunk toward the global mean for tenants with few observations;
  p50/p90 kept by stochastic approximation in log space for display. An unseen tenant gets the
  global mean.
- "bucket": a table keyed by floor(log2(prompt_tokens + 1)), kept globally and per tenant; the
  tenant's cell is shrunk toward the global cell. Abstains when the global cell is empty.
- "mlp": a small torch MLP on a hashed embedding of (tenant, slo_class, hint) plus
  log(1 + prompt_tokens) and log(1 + max_tokens), with a log link and a Poisson loss (whose minimiser
  is the conditional mean). `observe()` only appends to a bounded buffer; `train_pending()` trains
  (in serving, from a background thread; in replay, inline every `train_every` observations, so the
  result is deterministic for a seed). Inference runs in numpy on an immutable weight snapshot that
  training swaps in with one attribute assignment, so `predict()` may run while another thread trains.

Gating: when a request finishes, every expert that can answer is scored on it *before* it learns
from it: err_i <- err_i + beta * (|p_i - actual| - err_i), with beta = max(1/n, gate_alpha). Scores are
kept at three levels: global, per tenant, and per (tenant, prompt bucket); a request uses the most
specific level that has `min_scored` samples for that expert. An expert is cold (weight 0) until it
has been scored `min_scored` times globally. Among warm experts that answer,

    weight_i = err_i^-power / sum_j err_j^-power        (inverse-error weighting, power 8)

A high power makes the gate close to "the best expert in this context" while still blending experts
of similar error; on the Azure conversation trace power 8 beat 1, 2 and 4 (docs/predictors.md).
If no answering expert is warm, they share equally; if none answers, the prior `default_tokens` is
used. Every expert's output and the mixture are clamped to [1, max_tokens].

Pure: no clock, no I/O, no asyncio; torch is imported lazily by the MLP expert's trainer only.
Where things live: the features and the expert interface in features.py, the running statistics in
running_stats.py, the tenant and bucket experts in table_experts.py, the MLP expert in mlp_expert.py;
this module holds the gate and the predictor that mixes them.
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from controlplane.predict.features import Expert, Features, log2_bucket, sanitized_features
from controlplane.predict.mlp_expert import MLPExpert
from controlplane.predict.table_experts import BucketExpert, TenantExpert
from fairness.value import value

EXPERTS = ("tenant", "bucket", "mlp")


@value
class Prediction:
    tokens: float  # the mixture, clamped to [1, max_tokens]
    by_expert: dict[str, float] = field(default_factory=dict)  # each answering expert, clamped
    weights: dict[str, float] = field(default_factory=dict)  # gate weights, sum to 1


class _GateScore:
    __slots__ = ("alpha", "n", "err")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.n = 0
        self.err = 0.0

    def update(self, abs_err: float) -> None:
        self.n += 1
        self.err += max(1.0 / self.n, self.alpha) * (abs_err - self.err)


class OutputLengthPredictor:
    """Mixture of experts for a request's output length (tokens). See the module docstring.

    seed: seeds the MLP's initial weights and minibatch sampling (same seed, same inputs, same
        predictions, provided training happens at the same points: `train_every` in replay).
    torch_expert: include the MLP expert (trained only when `train_pending` runs, or inline).
    train_every: if set, `observe()` calls `train_pending(train_steps)` after every `train_every`
        observations (replay); serving leaves it None and trains from a background thread.
    min_scored, gate_alpha, gate_power, gate_by_bucket: the gate (module docstring).
    default_tokens: the answer before any expert can answer (clamped to max_tokens).
    tenant_alpha, bucket_alpha: EWMA floor of the running means (effective memory ~ 2/alpha).
    mlp_options: keyword arguments of MLPExpert (buffer_size, batch_size, passes, lr, hidden, ...).
    """

    def __init__(
        self,
        seed: int = 0,
        torch_expert: bool = True,
        *,
        train_every: int | None = None,
        train_steps: int = 64,
        min_scored: int = 20,
        gate_alpha: float = 0.05,
        gate_power: float = 8.0,
        default_tokens: float = 256.0,
        tenant_alpha: float = 0.03,
        bucket_alpha: float = 0.03,
        mlp_options: dict[str, Any] | None = None,
        gate_by_bucket: bool = True,
    ) -> None:
        if train_every is not None and train_every < 1:
            raise ValueError(f"train_every must be >= 1 or None, got {train_every}")
        self.seed = seed
        self.train_every = train_every
        self.train_steps = train_steps
        self.min_scored = min_scored
        self.gate_alpha = gate_alpha
        self.gate_power = gate_power
        self.gate_by_bucket = gate_by_bucket
        self.default_tokens = default_tokens
        self.tenant_expert = TenantExpert(alpha=tenant_alpha)
        self.bucket_expert = BucketExpert(alpha=bucket_alpha)
        self.mlp: MLPExpert | None = MLPExpert(seed, **(mlp_options or {})) if torch_expert else None
        self.experts: list[Expert] = [self.tenant_expert, self.bucket_expert]
        if self.mlp is not None:
            self.experts.append(self.mlp)
        self._gate: dict[str, _GateScore] = {e.name: _GateScore(gate_alpha) for e in self.experts}
        self._tenant_gate: dict[tuple[str, str], _GateScore] = {}
        self._cell_gate: dict[tuple[str, str, int], _GateScore] = {}
        self._mixture_err = _GateScore(gate_alpha)
        self.observations = 0

    # -- public API -------------------------------------------------------------------------------
    def predict(
        self,
        tenant: str,
        prompt_tokens: int,
        max_tokens: int,
        slo_class: str | None = None,
        hint: str | None = None,
    ) -> Prediction:
        f = sanitized_features(tenant, prompt_tokens, max_tokens, slo_class, hint)
        by_expert = self._expert_predictions(f)
        return self._mix(f, by_expert)

    def observe(
        self,
        tenant: str,
        prompt_tokens: int,
        max_tokens: int,
        slo_class: str | None,
        actual_tokens: float,
        hint: str | None = None,
    ) -> None:
        if not math.isfinite(actual_tokens) or actual_tokens < 0:
            return
        f = sanitized_features(tenant, prompt_tokens, max_tokens, slo_class, hint)
        actual = float(actual_tokens)
        by_expert = self._expert_predictions(f)
        mix = self._mix(f, by_expert)
        self._mixture_err.update(abs(mix.tokens - actual))
        self._score_experts(f, by_expert, actual)
        for e in self.experts:
            e.observe(f, actual)
        self.observations += 1
        if self.train_every is not None and self.observations % self.train_every == 0:
            self.train_pending(self.train_steps)

    def train_pending(self, max_steps: int = 64) -> int:
        """Train the MLP expert on newly observed data (see MLPExpert.train_pending). Thread-safe
        with respect to `predict` and `observe`; returns the minibatch steps taken."""
        return 0 if self.mlp is None else self.mlp.train_pending(max_steps)

    def prepare(self) -> bool:
        """Import what the MLP expert trains with (MLPExpert.prepare); False without the expert or torch."""
        return self.mlp is not None and self.mlp.prepare()

    def state(self) -> dict[str, Any]:
        experts: dict[str, Any] = {}
        for e in self.experts:
            g = self._gate[e.name]
            experts[e.name] = {
                "scored": g.n,
                "abs_error": g.err if g.n else None,
                "warm": g.n >= self.min_scored,
                **e.state(),
            }
        return {
            "observations": self.observations,
            "mixture_abs_error": self._mixture_err.err if self._mixture_err.n else None,
            "min_scored": self.min_scored,
            "gate_power": self.gate_power,
            "experts": experts,
        }

    # -- internals -------------------------------------------------------------------------------
    def _expert_predictions(self, f: Features) -> dict[str, float]:
        out: dict[str, float] = {}
        hi = float(f.max_tokens)
        for e in self.experts:
            p = e.predict(f)
            if p is not None and math.isfinite(p):
                out[e.name] = min(max(p, 1.0), hi)
        return out

    def _score_experts(self, f: Features, by_expert: dict[str, float], actual: float) -> None:
        """Update each answering expert's error at the three gate levels (global, tenant, cell)."""
        for name, p in by_expert.items():
            err = abs(p - actual)
            self._gate[name].update(err)
            key = (name, f.tenant)
            g = self._tenant_gate.get(key)
            if g is None:
                g = self._tenant_gate[key] = _GateScore(self.gate_alpha)
            g.update(err)
            if self.gate_by_bucket:
                ck = (name, f.tenant, log2_bucket(f.prompt_tokens))
                cg = self._cell_gate.get(ck)
                if cg is None:
                    cg = self._cell_gate[ck] = _GateScore(self.gate_alpha)
                cg.update(err)

    def _score(self, name: str, f: Features) -> _GateScore:
        tenant = f.tenant
        if self.gate_by_bucket:
            c = self._cell_gate.get((name, tenant, log2_bucket(f.prompt_tokens)))
            if c is not None and c.n >= self.min_scored:
                return c
        t = self._tenant_gate.get((name, tenant))
        if t is not None and t.n >= self.min_scored:
            return t
        return self._gate[name]

    def _mix(self, f: Features, by_expert: dict[str, float]) -> Prediction:
        hi = float(f.max_tokens)
        if not by_expert:
            v = min(max(self.default_tokens, 1.0), hi)
            return Prediction(v, {"prior": v}, {"prior": 1.0})
        raw: dict[str, float] = {}
        for name in by_expert:
            s = self._score(name, f)
            if s.n >= self.min_scored:
                raw[name] = (s.err + 1e-6) ** -self.gate_power
        if raw:
            total = sum(raw.values())
            weights = {name: raw.get(name, 0.0) / total for name in by_expert}
        else:  # nobody is warm yet: those that answer share equally
            weights = {name: 1.0 / len(by_expert) for name in by_expert}
        v = sum(weights[n] * p for n, p in by_expert.items())
        return Prediction(min(max(v, 1.0), hi), by_expert, weights)

