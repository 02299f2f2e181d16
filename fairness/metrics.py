"""Fairness metrics, as the VTC artifact computes them (fair_bench/plot/*.py), plus Jain's index.

Pure: numbers in, numbers out. A replay runner feeds one `Served` record per finished request
(tenant, first-token time, end time, service, optionally arrival time) and, for the service
difference between backlogged tenants, each tenant's backlogged intervals.

- Service of a response: w_p * prompt + w_q * output (VTC: 1 and 2), spread uniformly over
  [first token, end]. A response with end == start delivers its service at that instant.
- S_i(t): tenant i's cumulative service up to t (`ServiceCurve`).
- Service difference between backlogged tenants (VTC's fairness measure, weight-normalised):
  max over pairs (f, g) and t1 < t2 with f and g both backlogged throughout [t1, t2) of
  |(S_f(t2) - S_f(t1)) / w_f - (S_g(t2) - S_g(t1)) / w_g|.
- Accumulated service difference at tick x (artifact plot 6.2): max_i S_i(x)/w_i - min_i S_i(x)/w_i.
- Windowed service rate at tick x: (S_i(x + w/2) - S_i(x - w/2)) / w (artifact: w = 60 s).
- Windowed demand rate: sum of the service of requests arriving in [x - w/2, x + w/2], / w.
- Windowed service difference at tick x (artifact): max_j min(max_k y_k - y_j, d_j - y_j) with
  y the (weight-normalised) service rates and d the demand rates: a tenant that asked for less
  than its share does not count as starved.
- Jain's index: (sum x)^2 / (n * sum x^2), on weight-normalised service.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
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
        right = np.empty(len(knots))
        left = np.empty(len(knots))
        acc = 0.0
        for i in range(len(knots)):
            if i:
                acc += slope[i - 1] * (knots[i] - knots[i - 1])
            left[i] = acc
            acc += jump[i]
            right[i] = acc
        self.knots = knots
        self._left = left
        self._right = right
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


@dataclass(frozen=True, slots=True)
class ServiceDifference:
    value: float  # the maximum weight-normalised service difference
    tenants: tuple[str, str] | None  # the pair that attains it (the first is the one served more)
    interval: tuple[float, float] | None  # [t1, t2) that attains it


def _intersect(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def service_difference(
    responses: Iterable[Served],
    backlogged: Mapping[str, Iterable[tuple[float, float]]],
    weights: Mapping[str, float] | None = None,
) -> ServiceDifference:
    """VTC's measure: the largest |W_f(t1,t2)/w_f - W_g(t1,t2)/w_g| over pairs of tenants and
    intervals [t1, t2) in which both were backlogged (`backlogged[tenant]`: [start, end)
    intervals). Exact for piecewise-linear service: D = S_f/w_f - S_g/w_g is evaluated at every
    knot of both curves in the common interval (left and right limits) and at its ends.
    O(pairs * knots)."""
    curves = service_curves(responses)
    w = weights or {}
    spans = {t: _merge(iv) for t, iv in backlogged.items()}
    names = sorted(spans)
    best = ServiceDifference(0.0, None, None)
    empty = ServiceCurve(())
    for x, f in enumerate(names):
        cf, wf = curves.get(f, empty), w.get(f, 1.0)
        for g in names[x + 1:]:
            cg, wg = curves.get(g, empty), w.get(g, 1.0)
            for lo, hi in _intersect(spans[f], spans[g]):
                inner = np.concatenate([cf.knots, cg.knots, [lo]])
                inner = np.unique(inner[(inner >= lo) & (inner < hi)])
                # points in time order: lo and each knot inside (left limit, then right value: a
                # jump at t is service in [t, t2)), then hi (left limit: [t1, hi) excludes hi)
                pts = np.concatenate([np.repeat(inner, 2), [hi]])
                side_right = np.zeros(len(pts), dtype=bool)
                side_right[1::2][: len(inner)] = True
                d = (np.where(side_right, cf.at(pts), cf.before(pts)) / wf
                     - np.where(side_right, cg.at(pts), cg.before(pts)) / wg)
                # largest |D(t2) - D(t1)| with t1 <= t2: compare with the running min and max
                run_min = np.minimum.accumulate(d)
                run_max = np.maximum.accumulate(d)
                up, down = d - run_min, run_max - d
                i_up, i_down = int(np.argmax(up)), int(np.argmax(down))
                if up[i_up] >= down[i_down]:
                    value, i2, pair = float(up[i_up]), i_up, (f, g)
                    i1 = int(np.argmin(d[: i2 + 1]))
                else:
                    value, i2, pair = float(down[i_down]), i_down, (g, f)
                    i1 = int(np.argmax(d[: i2 + 1]))
                if value > best.value:
                    best = ServiceDifference(value, pair, (float(pts[i1]), float(pts[i2])))
    return best


def accumulated_service(responses: Iterable[Served], ticks: Sequence[float]) -> dict[str, list[float]]:
    """S_i(x) at each tick, per tenant."""
    t = np.asarray(ticks, dtype=float)
    return {name: np.atleast_1d(c.at(t)).tolist() for name, c in service_curves(responses).items()}


def accumulated_service_difference(responses: Iterable[Served], ticks: Sequence[float],
                                   weights: Mapping[str, float] | None = None) -> list[float]:
    """At each tick: max_i S_i(x)/w_i - min_i S_i(x)/w_i over the tenants present (artifact plot 6.2)."""
    w = weights or {}
    acc = accumulated_service(responses, ticks)
    if not acc:
        return [0.0] * len(ticks)
    m = np.array([np.asarray(v) / w.get(name, 1.0) for name, v in acc.items()])
    return (m.max(axis=0) - m.min(axis=0)).tolist()


def windowed_service(responses: Iterable[Served], ticks: Sequence[float], window: float = 60.0) -> dict[str, list[float]]:
    """Service rate per tenant in [x - window/2, x + window/2] at each tick."""
    t = np.asarray(ticks, dtype=float)
    out = {}
    for name, c in service_curves(responses).items():
        out[name] = np.atleast_1d((c.at(t + window / 2) - c.at(t - window / 2)) / window).tolist()
    return out


def windowed_demand(responses: Iterable[Served], ticks: Sequence[float], window: float = 60.0) -> dict[str, list[float]]:
    """Requested service rate per tenant: service of requests arriving in [x - w/2, x + w/2], / w.
    Responses without an arrival time are not counted."""
    by: dict[str, list[tuple[float, float]]] = {}
    for r in responses:
        by.setdefault(r.tenant, [])
        if r.arrival is not None:
            by[r.tenant].append((r.arrival, r.service))
    out = {}
    for name, items in by.items():
        items.sort()
        times = np.array([a for a, _ in items], dtype=float)
        cum = np.concatenate([[0.0], np.cumsum([s for _, s in items])])
        rates = []
        for x in ticks:
            lo = np.searchsorted(times, x - window / 2, side="left")
            hi = np.searchsorted(times, x + window / 2, side="right")
            rates.append(float(cum[hi] - cum[lo]) / window)
        out[name] = rates
    return out


def windowed_service_difference(responses: Iterable[Served], ticks: Sequence[float], window: float = 60.0,
                                weights: Mapping[str, float] | None = None) -> list[float]:
    """VTC artifact's windowed measure at each tick: max_j min(max_k y_k - y_j, d_j - y_j), with
    y the weight-normalised service rates and d the weight-normalised demand rates."""
    rs = list(responses)
    w = weights or {}
    y = windowed_service(rs, ticks, window)
    d = windowed_demand(rs, ticks, window)
    if not y:
        return [0.0] * len(ticks)
    names = sorted(y)
    ym = np.array([np.asarray(y[n]) / w.get(n, 1.0) for n in names])
    dm = np.array([np.asarray(d[n]) / w.get(n, 1.0) for n in names])
    return np.max(np.minimum(ym.max(axis=0) - ym, dm - ym), axis=0).tolist()


def fairness_summary(
    responses: Iterable[Served],
    weights: Mapping[str, float] | None = None,
    backlogged: Mapping[str, Iterable[tuple[float, float]]] | None = None,
    ticks: Sequence[float] | None = None,
    window: float = 60.0,
) -> dict[str, object]:
    """The numbers a replay report shows: total service, shares, weighted Jain, the backlogged
    service difference (when intervals are given) and, at ticks, the artifact's accumulated and
    windowed differences with their max / mean / variance."""
    rs = list(responses)
    total = {t: c.total for t, c in service_curves(rs).items()}
    out: dict[str, object] = {
        "service": total,
        "shares": shares(total, weights),
        "jain": weighted_jain(total, weights),
    }
    if backlogged is not None:
        out["service_difference"] = service_difference(rs, backlogged, weights)
    if ticks is not None and len(ticks):
        for name, series in (("accumulated_difference", accumulated_service_difference(rs, ticks, weights)),
                             ("windowed_difference", windowed_service_difference(rs, ticks, window, weights))):
            out[name] = {"max": max(series), "mean": float(np.mean(series)), "var": float(np.var(series)),
                         "series": series}
    return out
