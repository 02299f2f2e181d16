"""Streaming statistics behind the table experts and the gate: a running mean whose step is
max(1/n, alpha), a log-space quantile, and shrinkage of a local mean toward a global one."""
from __future__ import annotations

import math


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


def shrunk_mean(local: RunningMean | None, glob: float, k: float) -> float:
    """The local mean shrunk toward `glob` with strength k: (w * local + k * glob) / (w + k)."""
    if local is None or local.n == 0:
        return glob
    w = local.weight
    return (w * local.mean + k * glob) / (w + k)
