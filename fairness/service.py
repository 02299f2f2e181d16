"""Per-request service, tenants' cumulative service curves, and shares of service (Jain, shares).

- Service of a response: w_p * prompt + w_q * output (VTC: 1 and 2), spread uniformly over
  [first token, end]. A response with end == start delivers its service at that instant.
- S_i(t): tenant i's cumulative service up to t (`ServiceCurve`).
- Jain's index: (sum x)^2 / (n * sum x^2), on weight-normalised service.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


def request_service(prompt_tokens: float, output_tokens: float, w_p: float = 1.0, w_q: float = 2.0) -> float:
    """VTC's service of one response: w_p * prompt + w_q * output."""
    return w_p * prompt_tokens + w_q * output_tokens


@dataclass(frozen=True, slots=True)
class Served:
    """One finished request: its service is delivered uniformly over [start, end].

    start: time of the first token; end: time of the last; arrival (optional): when it was
    requested, for demand rates."""

    tenant: str
    start: float
    end: float
    service: float
    arrival: float | None = None

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"end {self.end!r} is before start {self.start!r}")
        if self.service < 0:
            raise ValueError(f"service must be non-negative, got {self.service!r}")


class ServiceCurve:
    """Cumulative service S(t) of one tenant: piecewise linear, with jumps for instantaneous
    responses; `at(t)` is right-continuous (service in (-inf, t]), `before(t)` the left limit."""

    def __init__(self, responses: Iterable[Served]) -> None:
        starts, ends, services = [], [], []
        for r in responses:
            starts.append(r.start)
            ends.append(r.end)
            services.append(r.service)
        s = np.asarray(starts, dtype=float)
        e = np.asarray(ends, dtype=float)
        v = np.asarray(services, dtype=float)
        knots, inverse = np.unique(np.concatenate([s, e]), return_inverse=True)
        n = len(s)
        instant = e == s
        rate = np.where(instant, 0.0, v / np.where(instant, 1.0, e - s))
        jump = np.bincount(inverse[:n], weights=np.where(instant, v, 0.0), minlength=len(knots))
        dslope = (np.bincount(inverse[:n], weights=rate, minlength=len(knots))
                  - np.bincount(inverse[n:], weights=rate, minlength=len(knots)))
        slope = np.cumsum(dslope)  # slope on [knot i, knot i+1)
        slope[np.abs(slope) < 1e-12 * max(1.0, float(rate.max(initial=0.0)))] = 0.0
        # the running sum on Python floats (the same IEEE operations as on numpy scalars, in the
        # same order, without a numpy scalar per element)
        ks, sl, jp = knots.tolist(), slope.tolist(), jump.tolist()
        right: list[float] = []
        left: list[float] = []
        acc = 0.0
        for i in range(len(ks)):
            if i:
                acc += sl[i - 1] * (ks[i] - ks[i - 1])
            left.append(acc)
            acc += jp[i]
            right.append(acc)
        self.knots = knots
        self._left = np.array(left, dtype=float)
        self._right = np.array(right, dtype=float)
        self._slope = slope

    @property
    def total(self) -> float:
        return float(self._right[-1]) if len(self.knots) else 0.0

    def at(self, t: float | np.ndarray) -> np.ndarray | float:
        return self._eval(t, "right")

    def before(self, t: float | np.ndarray) -> np.ndarray | float:
        return self._eval(t, "left")

    def _eval(self, t: float | np.ndarray, side: str) -> np.ndarray | float:
        arr = np.asarray(t, dtype=float)
        if not len(self.knots):
            out = np.zeros_like(arr)
        else:
            idx = np.searchsorted(self.knots, arr, side=side) - 1  # type: ignore[call-overload]
            safe = np.maximum(idx, 0)
            out = np.where(idx < 0, 0.0, self._right[safe] + self._slope[safe] * (arr - self.knots[safe]))
        return float(out) if out.ndim == 0 else out


def service_curves(responses: Iterable[Served]) -> dict[str, ServiceCurve]:
    by_tenant: dict[str, list[Served]] = {}
    for r in responses:
        by_tenant.setdefault(r.tenant, []).append(r)
    return {t: ServiceCurve(rs) for t, rs in by_tenant.items()}


def jain_index(values: Iterable[float]) -> float:
    """(sum x)^2 / (n * sum x^2): 1 when all equal, 1/n when one gets everything. 1.0 for no
    values or all zeros (nothing to be unfair about)."""
    xs = [float(x) for x in values]
    if any(x < 0 or math.isnan(x) for x in xs):
        raise ValueError("Jain's index needs non-negative values")
    sq = sum(x * x for x in xs)
    return 1.0 if not xs or sq == 0 else sum(xs) ** 2 / (len(xs) * sq)


def weighted_jain(service: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Jain's index over weight-normalised service, service_i / w_i."""
    w = weights or {}
    return jain_index(s / w.get(t, 1.0) for t, s in service.items())


@dataclass(frozen=True, slots=True)
class Share:
    service: float
    share: float  # service / total service
    weight_share: float  # weight / total weight
    ratio: float  # share / weight_share: 1 is exactly the weighted fair share


def shares(service: Mapping[str, float], weights: Mapping[str, float] | None = None) -> dict[str, Share]:
    """Each tenant's share of the service against its share of the weights."""
    w = {t: (weights or {}).get(t, 1.0) for t in service}
    total_s, total_w = sum(service.values()), sum(w.values())
    out = {}
    for t, s in service.items():
        share = s / total_s if total_s > 0 else 0.0
        wshare = w[t] / total_w if total_w > 0 else 0.0
        out[t] = Share(s, share, wshare, share / wshare if wshare > 0 else 0.0)
    return out


def service_between(responses: Iterable[Served], t1: float, t2: float) -> dict[str, float]:
    """Service each tenant received in [t1, t2] (uniform spreading; instants in (t1, t2])."""
    return {t: float(c.at(t2)) - float(c.at(t1)) for t, c in service_curves(responses).items()}
