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
"""
from __future__ import annotations

import importlib
import math
import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

EXPERTS = ("tenant", "bucket", "mlp")


@dataclass(frozen=True, slots=True)
class Prediction:
    tokens: float  # the mixture, clamped to [1, max_tokens]
    by_expert: dict[str, float] = field(default_factory=dict)  # each answering expert, clamped
    weights: dict[str, float] = field(default_factory=dict)  # gate weights, sum to 1


@dataclass(frozen=True, slots=True)
class Features:
    tenant: str
    prompt_tokens: int
    max_tokens: int
    slo_class: str | None = None
    hint: str | None = None


class Expert(Protocol):
    name: str

    def predict(self, f: Features) -> float | None: ...

    def observe(self, f: Features, actual: float) -> None: ...

    def state(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------------------------
# Running statistics
# --------------------------------------------------------------------------------------------


class RunningMean:
    """EWMA with step max(1/n, alpha): the exact mean at first, exponential forgetting later."""

    __slots__ = ("alpha", "n", "mean")

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.n = 0
        self.mean = 0.0

    def update(self, x: float) -> None:
        self.n += 1
        self.mean += max(1.0 / self.n, self.alpha) * (x - self.mean)

    @property
    def weight(self) -> float:
        """Effective number of samples behind the mean (at most ~ 2/alpha - 1)."""
        return min(float(self.n), 2.0 / self.alpha - 1.0)


class LogQuantile:
    """Streaming quantile by stochastic approximation in log space (steps of `step` in log units)."""

    __slots__ = ("tau", "step", "value")

    def __init__(self, tau: float, step: float = 0.05) -> None:
        self.tau = tau
        self.step = step
        self.value: float | None = None

    def update(self, x: float) -> None:
        lx = math.log(max(x, 1.0))
        if self.value is None:
            self.value = lx
        else:
            self.value += self.step * (self.tau - (1.0 if lx < self.value else 0.0))

    def get(self) -> float | None:
        return None if self.value is None else math.exp(self.value)


def _shrink(local: RunningMean | None, glob: float, k: float) -> float:
    if local is None or local.n == 0:
        return glob
    w = local.weight
    return (w * local.mean + k * glob) / (w + k)


# --------------------------------------------------------------------------------------------
# Expert (a): per-tenant statistics
# --------------------------------------------------------------------------------------------


class _TenantStats:
    __slots__ = ("mean", "p50", "p90")

    def __init__(self, alpha: float) -> None:
        self.mean = RunningMean(alpha)
        self.p50 = LogQuantile(0.5)
        self.p90 = LogQuantile(0.9)


class TenantExpert:
    name = "tenant"

    def __init__(self, alpha: float = 0.03, shrink: float = 2.0) -> None:
        self.alpha = alpha
        self.shrink = shrink
        self.global_mean = RunningMean(alpha)
        self.tenants: dict[str, _TenantStats] = {}

    def predict(self, f: Features) -> float | None:
        if self.global_mean.n == 0:
            return None
        t = self.tenants.get(f.tenant)
        return _shrink(t.mean if t else None, self.global_mean.mean, self.shrink)

    def observe(self, f: Features, actual: float) -> None:
        self.global_mean.update(actual)
        t = self.tenants.get(f.tenant)
        if t is None:
            t = self.tenants[f.tenant] = _TenantStats(self.alpha)
        t.mean.update(actual)
        t.p50.update(actual)
        t.p90.update(actual)

    def state(self) -> dict[str, Any]:
        return {
            "global_mean": self.global_mean.mean if self.global_mean.n else None,
            "tenants": {
                name: {"count": t.mean.n, "mean": t.mean.mean, "p50": t.p50.get(), "p90": t.p90.get()}
                for name, t in sorted(self.tenants.items())
            },
        }


# --------------------------------------------------------------------------------------------
# Expert (b): prompt-length bucket table
# --------------------------------------------------------------------------------------------


def log2_bucket(prompt_tokens: int) -> int:
    return int(prompt_tokens + 1).bit_length() - 1  # floor(log2(prompt_tokens + 1))


class BucketExpert:
    name = "bucket"

    def __init__(self, alpha: float = 0.03, shrink: float = 5.0) -> None:
        self.alpha = alpha
        self.shrink = shrink
        self.global_cells: dict[int, RunningMean] = {}
        self.tenant_cells: dict[tuple[str, int], RunningMean] = {}

    def predict(self, f: Features) -> float | None:
        b = log2_bucket(f.prompt_tokens)
        g = self.global_cells.get(b)
        if g is None:
            return None
        return _shrink(self.tenant_cells.get((f.tenant, b)), g.mean, self.shrink)

    def observe(self, f: Features, actual: float) -> None:
        b = log2_bucket(f.prompt_tokens)
        g = self.global_cells.get(b)
        if g is None:
            g = self.global_cells[b] = RunningMean(self.alpha)
        g.update(actual)
        t = self.tenant_cells.get((f.tenant, b))
        if t is None:
            t = self.tenant_cells[(f.tenant, b)] = RunningMean(self.alpha)
        t.update(actual)

    def state(self) -> dict[str, Any]:
        return {
            "global": {
                f"{(1 << b) - 1}-{(1 << (b + 1)) - 2}": {"count": c.n, "mean": c.mean}
                for b, c in sorted(self.global_cells.items())
            },
            "tenant_cells": len(self.tenant_cells),
        }


# --------------------------------------------------------------------------------------------
# Expert (c): a small MLP trained with torch, served from a numpy snapshot
# --------------------------------------------------------------------------------------------


def _hash(field_name: str, value: str | None, buckets: int) -> int:
    return zlib.crc32(f"{field_name}\x00{value or ''}".encode()) % buckets


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Immutable inference weights (numpy, float64). Swapped in whole, never mutated."""

    e1: np.ndarray  # (hash_buckets, hidden): emb @ w1[:emb_dim], precomputed for inference
    w1p: np.ndarray  # (hidden,): w1 row of log prompt
    w1m: np.ndarray  # (hidden,): w1 row of log max_tokens
    b1: np.ndarray
    w2: np.ndarray  # (hidden, hidden)
    b2: np.ndarray
    w3: np.ndarray  # (hidden,)
    b3: float
    scale: float  # tokens = scale * exp(output)
    version: int
    steps: int


class MLPExpert:
    """Hashed (tenant, slo_class, hint) embedding + log prompt + log max_tokens -> 2 ReLU layers -> log mean.

    Loss: Poisson NLL with a log link on tokens/scale, minimised by the conditional mean.
    """

    name = "mlp"
    LOG_SCALE = 8.0  # log1p(tokens) / LOG_SCALE keeps the numeric inputs near [0, 1.5]

    def __init__(
        self,
        seed: int = 0,
        *,
        buffer_size: int = 8192,
        min_samples: int = 64,
        batch_size: int = 64,
        passes: float = 16.0,
        lr: float = 3e-3,
        hash_buckets: int = 1024,
        emb_dim: int = 8,
        hidden: int = 32,
        threads: int = 1,
    ) -> None:
        self.seed = seed
        self.buffer_size = buffer_size
        self.min_samples = min_samples
        self.batch_size = batch_size
        self.passes = passes
        self.lr = lr
        self.hash_buckets = hash_buckets
        self.emb_dim = emb_dim
        self.hidden = hidden
        self.threads = threads
        self._buf: deque[tuple[int, int, int, float, float, float]] = deque(maxlen=buffer_size)
        self._buf_lock = threading.Lock()  # observe (core thread) vs train_pending (trainer thread)
        self._train_lock = threading.Lock()  # one training at a time
        self._pending = 0.0  # new samples not yet trained on
        self._snap: _Snapshot | None = None  # None until the first training
        self._trainer: Any = None  # torch state, created lazily by the training thread
        self._rng = np.random.default_rng(seed)
        self.error: str | None = None  # set if torch is unavailable

    # -- features -------------------------------------------------------------------------------
    def _row(self, f: Features) -> tuple[int, int, int, float, float]:
        hb = self.hash_buckets
        return (
            _hash("tenant", f.tenant, hb),
            _hash("slo", f.slo_class, hb),
            _hash("hint", f.hint, hb),
            math.log1p(f.prompt_tokens) / self.LOG_SCALE,
            math.log1p(f.max_tokens) / self.LOG_SCALE,
        )

    # -- inference (any thread) -------------------------------------------------------------------
    def predict(self, f: Features) -> float | None:
        s = self._snap  # one atomic read: the whole forward pass uses the same weights
        if s is None:
            return None
        t, c, h, lp, lm = self._row(f)
        z = s.e1[t] + s.e1[c] + s.e1[h] + (lp * s.w1p + lm * s.w1m + s.b1)
        np.maximum(z, 0.0, out=z)
        z = z @ s.w2 + s.b2
        np.maximum(z, 0.0, out=z)
        out = float(z @ s.w3) + s.b3
        return s.scale * math.exp(min(max(out, -12.0), 12.0))

    # -- data (core thread) -----------------------------------------------------------------------
    def observe(self, f: Features, actual: float) -> None:
        row = (*self._row(f), float(actual))
        with self._buf_lock:
            self._buf.append(row)
            self._pending += 1

    @property
    def pending(self) -> int:
        return int(self._pending)

    @property
    def version(self) -> int:
        s = self._snap
        return 0 if s is None else s.version

    # -- training (trainer thread, or inline in replay) ----------------------------------------
    def prepare(self) -> bool:
        """Import torch and what the first training step imports (the optimizer pulls in
        torch._dynamo): seconds of imports, which serving does on its trainer thread once it
        serves, not before (the expert is cold until its first training anyway; the others answer
        meanwhile). Replay need not call it: its inline training imports on first use. False when
        torch is missing: the expert stays cold and `error` says why."""
        if self.error is not None:
            return False
        for name in ("torch", "torch.optim", "torch._dynamo"):
            try:
                importlib.import_module(name)
            except Exception as exc:  # an optional part missing: training reports its own errors
                if name == "torch":
                    self.error = f"torch unavailable: {exc}"
                    return False
        return True

    def train_pending(self, max_steps: int) -> int:
        """Train on what was observed since the last call: ceil(passes * new / batch_size) minibatch
        steps, at most `max_steps`, sampled uniformly from the buffer. Returns the steps taken."""
        if max_steps <= 0 or self.error is not None:
            return 0
        with self._train_lock:
            with self._buf_lock:
                if len(self._buf) < self.min_samples or self._pending <= 0:
                    return 0
                data = np.array(self._buf, dtype=np.float64)
                pending = self._pending
            steps = min(max_steps, max(1, math.ceil(self.passes * pending / self.batch_size)))
            try:
                snap = self._train(data, steps)
            except ImportError as exc:  # torch missing: the expert stays cold, the others serve
                self.error = f"torch unavailable: {exc}"
                return 0
            with self._buf_lock:
                self._pending = max(0.0, self._pending - steps * self.batch_size / self.passes)
            self._snap = snap  # atomic swap
            return steps

    def _init_numpy(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        d_in = self.emb_dim + 2
        return {
            "emb": rng.normal(0.0, 0.1, (self.hash_buckets, self.emb_dim)),
            "w1": rng.uniform(-1, 1, (d_in, self.hidden)) * math.sqrt(6.0 / d_in),
            "b1": np.zeros(self.hidden),
            "w2": rng.uniform(-1, 1, (self.hidden, self.hidden)) * math.sqrt(6.0 / self.hidden),
            "b2": np.zeros(self.hidden),
            "w3": rng.uniform(-1, 1, (self.hidden,)) * math.sqrt(1.0 / self.hidden),
            "b3": np.zeros(1),
        }

    def _train(self, data: np.ndarray, steps: int) -> _Snapshot:
        import torch  # lazy: importing controlplane.predict never pays for torch

        if self._trainer is None:
            torch.set_num_threads(self.threads)
            scale = float(max(1.0, data[:, 5].mean()))
            params = {
                k: torch.tensor(v, dtype=torch.float32, requires_grad=True)
                for k, v in self._init_numpy().items()
            }
            opt = torch.optim.Adam(list(params.values()), lr=self.lr)
            self._trainer = {"params": params, "opt": opt, "scale": scale, "steps": 0, "version": 0}
        tr = self._trainer
        params, opt, scale = tr["params"], tr["opt"], tr["scale"]
        ids = torch.from_numpy(data[:, 0:3].astype(np.int64))
        num = torch.from_numpy(data[:, 3:5].astype(np.float32))
        y = torch.from_numpy((data[:, 5] / scale).astype(np.float32))
        n = len(data)
        for _ in range(steps):
            idx = torch.from_numpy(self._rng.integers(0, n, self.batch_size))
            e = params["emb"][ids[idx]].sum(dim=1)
            x = torch.cat([e, num[idx]], dim=1)
            z = torch.relu(x @ params["w1"] + params["b1"])
            z = torch.relu(z @ params["w2"] + params["b2"])
            out = (z @ params["w3"] + params["b3"]).clamp(-12.0, 12.0)
            loss = (torch.exp(out) - y[idx] * out).mean()  # Poisson NLL, log link
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        tr["steps"] += steps
        tr["version"] += 1
        with torch.no_grad():
            w = {k: v.detach().numpy().astype(np.float64).copy() for k, v in params.items()}
        w1 = w["w1"]
        return _Snapshot(
            e1=w["emb"] @ w1[: self.emb_dim],
            w1p=w1[-2].copy(),
            w1m=w1[-1].copy(),
            b1=w["b1"],
            w2=w["w2"],
            b2=w["b2"],
            w3=w["w3"],
            b3=float(w["b3"][0]),
            scale=scale,
            version=tr["version"],
            steps=tr["steps"],
        )

    def state(self) -> dict[str, Any]:
        s = self._snap
        return {
            "trained": s is not None,
            "version": 0 if s is None else s.version,
            "steps": 0 if s is None else s.steps,
            "buffer": len(self._buf),
            "pending": self.pending,
            "error": self.error,
        }


# --------------------------------------------------------------------------------------------
# The mixture
# --------------------------------------------------------------------------------------------


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
        f = _features(tenant, prompt_tokens, max_tokens, slo_class, hint)
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
        f = _features(tenant, prompt_tokens, max_tokens, slo_class, hint)
        actual = float(actual_tokens)
        by_expert = self._expert_predictions(f)
        mix = self._mix(f, by_expert)
        self._mixture_err.update(abs(mix.tokens - actual))
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


def _features(
    tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None, hint: str | None
) -> Features:
    p = int(prompt_tokens) if math.isfinite(prompt_tokens) else 0
    m = int(max_tokens) if math.isfinite(max_tokens) else 1
    return Features(str(tenant), max(0, p), max(1, m), slo_class, hint)
