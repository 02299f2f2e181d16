"""The "mlp" output-length expert: a small MLP trained with torch, served from a numpy snapshot.

Torch is imported lazily, by the trainer only (`prepare()` or the first `train_pending()`):
importing this module, observing and predicting never import it.
"""
from __future__ import annotations

import importlib
import math
import threading
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from controlplane.predict.features import Features


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
            self._trainer = self._new_trainer(torch, data)
        tr = self._trainer
        self._sgd_steps(torch, tr, data, steps)
        tr["steps"] += steps
        tr["version"] += 1
        return self._export_snapshot(torch, tr)

    def _new_trainer(self, torch: Any, data: np.ndarray) -> dict[str, Any]:
        """Torch parameters (from `_init_numpy`), Adam, and the output scale (the mean length seen)."""
        torch.set_num_threads(self.threads)
        scale = float(max(1.0, data[:, 5].mean()))
        params = {
            k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in self._init_numpy().items()
        }
        opt = torch.optim.Adam(list(params.values()), lr=self.lr)
        return {"params": params, "opt": opt, "scale": scale, "steps": 0, "version": 0}

    def _sgd_steps(self, torch: Any, tr: dict[str, Any], data: np.ndarray, steps: int) -> None:
        """`steps` Adam steps on minibatches drawn uniformly from `data` (Poisson NLL, log link)."""
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

    def _export_snapshot(self, torch: Any, tr: dict[str, Any]) -> _Snapshot:
        """The trained weights as an immutable float64 snapshot, the first layer's embedding product precomputed."""
        with torch.no_grad():
            w = {k: v.detach().numpy().astype(np.float64).copy() for k, v in tr["params"].items()}
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
            scale=tr["scale"],
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
