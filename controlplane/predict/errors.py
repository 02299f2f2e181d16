"""Forecast error accounting: how wrong were the TTFT, TPOT and output-length predictions?

Pure: no clock, no I/O, no numpy. The decision core records (predicted, actual) pairs when a
request's truth is known (first token, finish) and the admin API / Prometheus read `summary()`.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from statistics import median

KINDS: tuple[str, ...] = ("ttft", "tpot", "output_tokens", "prompt_tokens")


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Errors over the last `window` records of one kind.

    median_ape: median of |predicted - actual| / |actual| (a fraction: 0.25 is 25 %), over records
                whose actual is non-zero; None when there are none.
    bias:       mean of (predicted - actual), in the kind's unit (seconds or tokens); positive means
                the predictor over-forecasts. None when count is 0.
    mae:        mean of |predicted - actual|. None when count is 0.
    count:      records in the window.
    """

    count: int
    median_ape: float | None
    bias: float | None
    mae: float | None


class ForecastErrors:
    """Sliding windows (one per kind) of (predicted, actual) pairs.

    `record()` ignores pairs with a non-finite value (they are counted in `dropped`) so that a bad
    measurement never takes the caller down; an unknown kind is a programming error (ValueError).
    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._pairs: dict[str, deque[tuple[float, float]]] = {k: deque(maxlen=window) for k in KINDS}
        self._total: dict[str, int] = {k: 0 for k in KINDS}
        self.dropped = 0

    def record(self, kind: str, predicted: float, actual: float) -> None:
        pairs = self._pairs.get(kind)
        if pairs is None:
            raise ValueError(f"unknown forecast kind {kind!r}; known: {list(KINDS)}")
        p, a = float(predicted), float(actual)
        if not (math.isfinite(p) and math.isfinite(a)):
            self.dropped += 1
            return
        pairs.append((p, a))
        self._total[kind] += 1

    def stats(self, kind: str) -> ErrorStats:
        pairs = self._pairs.get(kind)
        if pairs is None:
            raise ValueError(f"unknown forecast kind {kind!r}; known: {list(KINDS)}")
        n = len(pairs)
        if n == 0:
            return ErrorStats(0, None, None, None)
        apes = [abs(p - a) / abs(a) for p, a in pairs if a != 0.0]
        bias = sum(p - a for p, a in pairs) / n
        mae = sum(abs(p - a) for p, a in pairs) / n
        return ErrorStats(n, median(apes) if apes else None, bias, mae)

    def summary(self) -> dict[str, ErrorStats]:
        return {k: self.stats(k) for k in KINDS}

    def state(self) -> dict[str, object]:
        """JSON-friendly view for the admin API and the console."""
        out: dict[str, object] = {"window": self.window, "dropped": self.dropped}
        for k, s in self.summary().items():
            out[k] = {
                "count": s.count,
                "total": self._total[k],
                "median_ape": s.median_ape,
                "bias": s.bias,
                "mae": s.mae,
            }
        return out
