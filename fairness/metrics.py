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

Fairness over what tenants asked for (docs/fairness.md, "Measuring fairness"):

- `max_min_fair_shares`: weighted water-filling of a capacity over the tenants' demands.
- `demand_fairness`: Jain's index over delivered / max-min fair share of the offered demand
  (refused requests included in the demand), with the capacity actually delivered.
- `windowed_demand_fairness`: the same per time window over `Asked` records (demand outstanding
  in the window), aggregated as a demand-weighted mean.
- `service_difference`: VTC's service difference for any number of tenants, exact, with
  per-tenant bounds that skip most pairs; `service_difference_pairwise` is the O(pairs) reference.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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


# -- fairness over what tenants asked for ------------------------------------------------------

def _check_weights(names: Iterable[str], weights: Mapping[str, float] | None) -> dict[str, float]:
    w = {t: float((weights or {}).get(t, 1.0)) for t in names}
    bad = {t: x for t, x in w.items() if not (x > 0 and math.isfinite(x))}
    if bad:
        raise ValueError(f"weights must be positive and finite, got {bad}")
    return w


def max_min_fair_shares(demand: Mapping[str, float], weights: Mapping[str, float] | None,
                        capacity: float) -> dict[str, float]:
    """Weighted max-min fair (water-filling) allocation of `capacity` over the tenants' demands.

    share_i = min(d_i, L * w_i), with the level L the largest for which sum_i share_i <= capacity:
    L = +inf (every share is its demand) when capacity >= sum_i d_i, otherwise the unique L with
    sum_i min(d_i, L * w_i) = capacity. Equivalently: no tenant gets more than it asked for, and
    capacity a tenant does not use is split among the others in proportion to their weights.
    A tenant below its demand has the largest share/weight of all. Weights missing from
    `weights` (or None) are 1. O(T log T): tenants in increasing d_i / w_i are satisfied in turn
    while d_i / w_i <= (capacity left) / (weight left); the rest get L * w_i.
    """
    if not (capacity >= 0 and math.isfinite(capacity)):
        raise ValueError(f"capacity must be non-negative and finite, got {capacity!r}")
    bad = {t: d for t, d in demand.items() if not (d >= 0 and math.isfinite(d))}
    if bad:
        raise ValueError(f"demands must be non-negative and finite, got {bad}")
    w = _check_weights(demand, weights)
    out = {t: 0.0 for t in demand}
    asking = sorted((d / w[t], t) for t, d in demand.items() if d > 0)
    left, wsum = float(capacity), sum(w[t] for _, t in asking)
    for k, (per_weight, t) in enumerate(asking):
        level = left / wsum
        if per_weight > level:  # nobody from here on is satisfied: all sit at the level
            for _, r in asking[k:]:
                out[r] = level * w[r]
            break
        out[t] = float(demand[t])
        left -= out[t]
        wsum -= w[t]
    return out


@dataclass(frozen=True, slots=True)
class TenantFairness:
    demand: float  # service asked for (refused requests included)
    fair_share: float  # weighted max-min fair share of the delivered capacity
    delivered: float  # service counted as delivered
    ratio: float | None  # delivered / fair_share; None for a tenant that asked for nothing


@dataclass(frozen=True, slots=True)
class DemandFairness:
    tenants: dict[str, TenantFairness]
    capacity: float  # sum of delivered service, all tenants
    jain: float  # Jain's index over the ratios of tenants that asked for something
    min_ratio: float | None  # the worst-served tenant's ratio (None when nobody asked)
    min_tenant: str | None


def demand_fairness(demand: Mapping[str, float], delivered: Mapping[str, float],
                    weights: Mapping[str, float] | None = None) -> DemandFairness:
    """Fairness over what tenants asked for, refusals included.

    demand[i]: the service of every request tenant i sent (w_p*prompt + w_q*output), refused
    ones too; delivered[i]: the service it received (of completed requests, or of those that met
    their SLO: the caller chooses). With C = sum_i delivered_i (the capacity actually delivered):

        fair_i  = max_min_fair_shares(demand, weights, C)[i]
        ratio_i = delivered_i / fair_i                 (1.0 when C = 0: nobody got anything)
        jain    = (sum ratio_i)^2 / (n * sum ratio_i^2)   over the n tenants with demand_i > 0

    1.0 means every tenant got exactly its max-min fair share; a refusal lowers the refused
    tenant's delivered service but not its demand, so it counts against the policy. When
    delivered_i <= demand_i for all i, sum fair_i = C and the ratios average 1 weighted by fair
    share, so a ratio below 1 is always matched by one above. Tenants with zero demand have no
    ratio and are left out of the index (their delivered service, if any, still counts in C).
    min_ratio / min_tenant: the smallest ratio and its tenant (the first by name on ties).
    For one SLO class, pass that class's demand and delivered service."""
    names = sorted(set(demand) | set(delivered))
    bad = {t: x for t, x in delivered.items() if not (x >= 0 and math.isfinite(x))}
    if bad:
        raise ValueError(f"delivered service must be non-negative and finite, got {bad}")
    d = {t: float(demand.get(t, 0.0)) for t in names}
    got = {t: float(delivered.get(t, 0.0)) for t in names}
    capacity = sum(got.values())
    fair = max_min_fair_shares(d, weights, capacity)
    tenants: dict[str, TenantFairness] = {}
    for t in names:
        ratio = None if d[t] <= 0 else (got[t] / fair[t] if fair[t] > 0 else 1.0)
        tenants[t] = TenantFairness(d[t], fair[t], got[t], ratio)
    ratios = [(x.ratio, t) for t, x in tenants.items() if x.ratio is not None]
    worst = min(ratios) if ratios else None
    return DemandFairness(tenants, capacity, jain_index(r for r, _ in ratios),
                          worst[0] if worst else None, worst[1] if worst else None)


@dataclass(frozen=True, slots=True)
class Asked:
    """One request a tenant sent, whatever became of it, for `windowed_demand_fairness`.

    service: what it asked for (w_p*prompt + w_q*output). If it was served, start/end are its
    first and last token (service delivered uniformly over [start, end], as in `Served`) and
    `counted` says whether that service counts as delivered (the caller's choice: every
    completion, or only those that met their SLO). If it was never served, start = end = None and
    `until` is when it stopped being owed: refused or aborted (None: refused on arrival), or
    math.inf for one still waiting at the end of the run."""

    tenant: str
    arrival: float
    service: float
    start: float | None = None
    end: float | None = None
    until: float | None = None
    counted: bool = True

    def __post_init__(self) -> None:
        if self.service < 0:
            raise ValueError(f"service must be non-negative, got {self.service!r}")
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end are both given (served) or both None (not served)")
        if self.start is not None and self.end is not None and not self.arrival <= self.start <= self.end:
            raise ValueError(f"need arrival <= start <= end, got {self.arrival!r}, {self.start!r}, {self.end!r}")
        if self.until is not None and not self.until >= self.arrival:
            raise ValueError(f"until {self.until!r} is before arrival {self.arrival!r}")

    @property
    def served(self) -> bool:
        return self.start is not None


def asked_totals(asked: Iterable[Asked]) -> tuple[dict[str, float], dict[str, float]]:
    """(demand, delivered) per tenant over a whole run, for `demand_fairness`: demand sums every
    request's service; delivered sums the service of served requests with `counted`."""
    demand: dict[str, float] = {}
    delivered: dict[str, float] = {}
    for a in asked:
        demand[a.tenant] = demand.get(a.tenant, 0.0) + a.service
        delivered.setdefault(a.tenant, 0.0)
        if a.served and a.counted:
            delivered[a.tenant] += a.service
    return demand, delivered


@dataclass(frozen=True, slots=True)
class WindowFairness:
    start: float
    end: float
    demand: float  # sum over tenants of the demand outstanding in the window (its weight)
    fairness: DemandFairness


@dataclass(frozen=True, slots=True)
class WindowedFairness:
    windows: tuple[WindowFairness, ...]  # those in which some tenant had demand, in time order
    jain: float  # demand-weighted mean of the windows' Jain indices (1.0 with no window)
    min_jain: float  # the worst window's index
    min_ratio: float | None  # the worst tenant-window ratio
    min_tenant: str | None
    min_window: float | None  # start of the window where it happened


def windowed_demand_fairness(asked: Iterable[Asked], weights: Mapping[str, float] | None = None,
                             window: float = 60.0, start: float | None = None,
                             end: float | None = None) -> WindowedFairness:
    """`demand_fairness` in each window [e_k, e_k+1) of length `window` from `start` (default:
    the first arrival) to `end` (default: the last arrival, end or finite `until`); the last
    window ends at `end` and is closed. Over a whole run a tenant may be served late but fully;
    per window it is not.

    In window [a, b), for tenant i:
        delivered_i = service of its `counted` requests delivered in [a, b)
                      (uniform over [start, end]; an instantaneous one counts at its instant)
        demand_i    = outstanding at a + arrived in [a, b)
                    = sum of service of its requests that arrived before b
                      - what was discharged before a: service delivered before a (counted or
                        not) + the service of unserved requests whose `until` is before a
                        (at a for one that arrived before a)
    i.e. the work the tenant had asked for and could have been given in the window. Demand
    counted by arrival alone would make a request that arrives at 59.9 s and is served at 60.1 s
    look starved in one window and over-served in the next, even on an idle engine; this
    definition carries it over. A refused request is demand in the window where it is refused
    only. Since delivered_i <= demand_i, C = sum delivered <= sum demand and the window's fair
    shares fill C exactly.

    Aggregate over the windows where something was delivered (C_k > 0; in the others every share
    is 0 and the index says nothing; goodput does): jain = sum_k D_k * jain_k / sum_k D_k, with
    D_k = sum_i demand_i in window k: a window weighs by how much work was owed in it, so
    contended windows dominate and lightly loaded ones (index near 1) cannot dilute them.
    min_jain, min_ratio / min_tenant / min_window report the worst window and tenant-window.
    `windows` lists every window with some demand, C_k = 0 included. Windows much longer than a request's latency keep the in-flight
    edge effect small (a request running across e_k is outstanding demand in both windows).
    """
    if not (window > 0 and math.isfinite(window)):
        raise ValueError(f"window must be positive and finite, got {window!r}")
    rs = list(asked)
    if not rs:
        return WindowedFairness((), 1.0, 1.0, None, None, None)
    t0 = min(r.arrival for r in rs) if start is None else float(start)
    if end is None:
        ends = [r.arrival for r in rs] + [r.end for r in rs if r.end is not None]
        ends += [r.until for r in rs if r.until is not None and math.isfinite(r.until)]
        t1 = max(ends)
    else:
        t1 = float(end)
    if t1 < t0:
        raise ValueError(f"end {t1!r} is before start {t0!r}")
    n = max(1, math.ceil((t1 - t0) / window))
    edges = np.minimum(t0 + window * np.arange(n + 1), t1)
    edges[-1] = t1
    closed = np.zeros(n + 1, dtype=bool)
    closed[-1] = True  # the last window holds its end
    by: dict[str, list[Asked]] = {}
    for r in rs:
        by.setdefault(r.tenant, []).append(r)
    names = sorted(by)
    dem = np.zeros((len(names), n))
    got = np.zeros((len(names), n))

    def upto(curve: ServiceCurve) -> np.ndarray:  # service in (-inf, e) per edge; (-inf, e] at the last
        return np.where(closed, curve.at(edges), curve.before(edges))

    for k, name in enumerate(names):
        items = sorted(by[name], key=lambda r: r.arrival)
        arr = np.array([r.arrival for r in items])
        cum = np.concatenate([[0.0], np.cumsum([r.service for r in items])])
        arrived = cum[np.where(closed, np.searchsorted(arr, edges, "right"), np.searchsorted(arr, edges, "left"))]
        served = [r for r in items if r.served]
        progress = upto(ServiceCurve(Served(name, r.start, r.end, r.service)  # type: ignore[arg-type]
                                     for r in served))
        counted = upto(ServiceCurve(Served(name, r.start, r.end, r.service)  # type: ignore[arg-type]
                                    for r in served if r.counted))
        # an unserved request is discharged before edge e once e > until, or e == until > arrival
        # (one refused exactly at e on arrival is still demand in the window starting at e)
        left = np.zeros(n + 1)
        sides: tuple[tuple[bool, Literal["left", "right"]], ...] = ((True, "right"), (False, "left"))
        for later, side in sides:
            gone = sorted((r.until, r.service) for r in items
                          if not r.served and r.until is not None and (r.until > r.arrival) == later)
            if not later:
                gone += [(r.arrival, r.service) for r in items if not r.served and r.until is None]
                gone.sort()
            if gone:
                cut = np.concatenate([[0.0], np.cumsum([x for _, x in gone])])
                left += cut[np.searchsorted(np.array([u for u, _ in gone]), edges, side)]
        dem[k] = np.maximum(arrived[1:] - (progress + left)[:-1], 0.0)
        got[k] = counted[1:] - counted[:-1]

    windows = []
    for j in range(n):
        total = float(dem[:, j].sum())
        if total <= 0:
            continue
        fz = demand_fairness({t: float(dem[k, j]) for k, t in enumerate(names)},
                             {t: float(got[k, j]) for k, t in enumerate(names)}, weights)
        windows.append(WindowFairness(float(edges[j]), float(edges[j + 1]), total, fz))
    scored = [x for x in windows if x.fairness.capacity > 0]
    if not scored:
        return WindowedFairness(tuple(windows), 1.0, 1.0, None, None, None)
    worst = min((x.fairness.min_ratio, x.fairness.min_tenant, x.start) for x in scored)
    return WindowedFairness(tuple(windows),
                            sum(x.demand * x.fairness.jain for x in scored) / sum(x.demand for x in scored),
                            min(x.fairness.jain for x in scored), worst[0], worst[1], worst[2])


@dataclass(frozen=True, slots=True)
class ServiceDifference:
    value: float  # the maximum weight-normalised service difference (found, attained by `tenants`)
    tenants: tuple[str, str] | None  # the pair that attains it (the first is the one served more)
    interval: tuple[float, float] | None  # [t1, t2) that attains it
    upper_bound: float | None = None  # the true maximum is in [value, upper_bound]; == value when exact
    pairs_evaluated: int | None = None  # pairs whose difference was computed exactly


def intersect_intervals(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The overlaps of two sorted lists of disjoint intervals."""
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


def service_difference_pairwise(
    responses: Iterable[Served],
    backlogged: Mapping[str, Iterable[tuple[float, float]]],
    weights: Mapping[str, float] | None = None,
) -> ServiceDifference:
    """The reference for `service_difference`: every pair, every common backlogged interval.

    For each pair (f, g) and each interval [lo, hi) in which both were backlogged, D = S_f/w_f -
    S_g/w_g is evaluated at lo, at every knot of both curves inside (left limit, then right value:
    a jump at t is service in [t, t2)) and at hi (left limit: [t1, hi) excludes hi); the largest
    |D(t2) - D(t1)| with t1 <= t2 comes from the running min and max. Exact for piecewise-linear
    service. O(sum over pairs of common intervals x (knots_f + knots_g)): it scans both curves'
    knots again for every common interval."""
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
            for lo, hi in intersect_intervals(spans[f], spans[g]):
                inner = np.concatenate([cf.knots, cg.knots, [lo]])
                inner = np.unique(inner[(inner >= lo) & (inner < hi)])
                pts = np.concatenate([np.repeat(inner, 2), [hi]])
                side_right = np.zeros(len(pts), dtype=bool)
                side_right[1::2][: len(inner)] = True
                d = (np.where(side_right, cf.at(pts), cf.before(pts)) / wf
                     - np.where(side_right, cg.at(pts), cg.before(pts)) / wg)
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
    n = len(names)
    return ServiceDifference(best.value, best.tenants, best.interval, best.value, n * (n - 1) // 2)


_BLOCKS = 64  # time blocks for the pair bounds: finer is tighter and costs O(T x BLOCKS) memory
_BATCH = 256  # candidate pairs bounded together (vectorised) before any is computed exactly


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, lengths)), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: np.ndarray = np.repeat(starts, lengths) + (np.arange(total) - offsets)
    return out


class _Normalised:
    """One backlogged tenant on the global point grid: its spans as grid indices and S/w there.

    The grid: every time tau_j (all knots, all span ends) gives two points, 2j = S(tau_j-) (left
    limit) and 2j+1 = S(tau_j) (right value). A span [lo, hi) covers points 2*j(lo) .. 2*j(hi)
    inclusive, i.e. lo-, lo, every knot inside (both sides), hi-: the points `service_difference_
    pairwise` evaluates for any interval inside the span."""

    def __init__(self, curve: ServiceCurve, weight: float, spans: list[tuple[float, float]],
                 times: np.ndarray) -> None:
        self.curve, self.weight, self.spans = curve, weight, spans
        lo = np.searchsorted(times, [a for a, _ in spans])
        hi = np.searchsorted(times, [b for _, b in spans])
        self.lengths = 2 * (hi - lo) + 1
        self.idx = _ranges(2 * lo, self.lengths)  # point indices, span after span
        self.first = np.cumsum(self.lengths) - self.lengths  # where each span starts in idx

    def values(self, times: np.ndarray) -> np.ndarray:
        t = times[self.idx // 2]
        right = (self.idx % 2).astype(bool)
        return np.where(right, self.curve.at(t), self.curve.before(t)) / self.weight


def _rise_and_drop(y: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """Over the spans (consecutive runs of y): the largest y(t) - y(s) and y(s) - y(t), s <= t."""
    rise = drop = 0.0
    for a, n in zip(first.tolist(), lengths.tolist(), strict=True):
        seg = y[a:a + n]
        rise = max(rise, float(np.max(seg - np.minimum.accumulate(seg))))
        drop = max(drop, float(np.max(np.maximum.accumulate(seg) - seg)))
    return rise, drop


def _pair_difference(f: str, g: str, nf: _Normalised, ng: _Normalised
                     ) -> tuple[float, tuple[str, str], tuple[float, float]] | None:
    """Exact max over the common backlogged intervals of (max D - min D), D = S_f/w_f - S_g/w_g,
    on `service_difference_pairwise`'s points; one pass over both curves' knots for all the
    intervals together. (max - min over an interval is max |D(t2) - D(t1)|, t1 <= t2.)"""
    common = intersect_intervals(nf.spans, ng.spans)
    if not common:
        return None
    lo = np.array([a for a, _ in common])
    hi = np.array([b for _, b in common])
    m = len(common)
    kn = np.union1d(nf.curve.knots, ng.curve.knots)
    seg = np.searchsorted(lo, kn, side="right") - 1
    safe = np.maximum(seg, 0)
    keep = (seg >= 0) & (kn > lo[safe]) & (kn < hi[safe])  # strictly inside; lo is added below
    inner_t = np.concatenate([lo, kn[keep]])
    inner_s = np.concatenate([np.arange(m), seg[keep]])
    # each inner time twice (left limit, right value), then hi (left limit); the intervals are
    # disjoint and do not touch, so sorting by (time, side) keeps each interval contiguous
    t = np.concatenate([inner_t, inner_t, hi])
    right = np.concatenate([np.zeros(len(inner_t), bool), np.ones(len(inner_t), bool), np.zeros(m, bool)])
    s = np.concatenate([inner_s, inner_s, np.arange(m)])
    order = np.lexsort((right, t))
    t, right, s = t[order], right[order], s[order]
    d = (np.where(right, nf.curve.at(t), nf.curve.before(t)) / nf.weight
         - np.where(right, ng.curve.at(t), ng.curve.before(t)) / ng.weight)
    starts = np.searchsorted(s, np.arange(m))
    spread = np.maximum.reduceat(d, starts) - np.minimum.reduceat(d, starts)
    k = int(np.argmax(spread))
    a, b = int(starts[k]), int(starts[k + 1]) if k + 1 < m else len(d)
    i_max, i_min = a + int(np.argmax(d[a:b])), a + int(np.argmin(d[a:b]))
    if i_min <= i_max:  # D rose: f was served more over [t(i_min), t(i_max))
        return float(spread[k]), (f, g), (float(t[i_min]), float(t[i_max]))
    return float(spread[k]), (g, f), (float(t[i_max]), float(t[i_min]))


def _blocked_bound(hi_f: np.ndarray, lo_f: np.ndarray, hi_g: np.ndarray, lo_g: np.ndarray,
                   joint: np.ndarray) -> np.ndarray:
    """Per row (a pair f, g): an upper bound of max |D(t) - D(s)| over s < t in one common
    interval, from the max (hi) and min (lo) of y_f and y_g in each block of the grid (-inf / +inf
    where the tenant has no point) and joint[:, k]: both have a span reaching across the boundary
    between blocks k and k + 1.
    s, t in one block b: (hi_f - lo_f)[b] + (hi_g - lo_g)[b]. s in block i < j holding t, which
    needs a span of each across every boundary from i to j - 1, in the direction where f gains:
    (hi_f[j] - lo_f[i]) + (hi_g[i] - lo_g[j]) = A[j] + C[i] with A = hi_f - lo_g, C = hi_g - lo_f,
    maximised with a running max of C that restarts at a boundary not jointly crossed; and the
    same with f and g swapped. Empty blocks give -inf terms, never NaN (-inf - +inf = -inf)."""
    out: np.ndarray = np.max((hi_f - lo_f) + (hi_g - lo_g), axis=1)
    for a, c in ((hi_f - lo_g, hi_g - lo_f), (hi_g - lo_f, hi_f - lo_g)):
        running = np.full(len(out), -np.inf)
        for j in range(1, a.shape[1]):
            running = np.where(joint[:, j - 1], np.maximum(running, c[:, j - 1]), -np.inf)
            out = np.maximum(out, a[:, j] + running)
    return out


def service_difference(
    responses: Iterable[Served],
    backlogged: Mapping[str, Iterable[tuple[float, float]]],
    weights: Mapping[str, float] | None = None,
    *,
    max_pairs: int | None = None,
) -> ServiceDifference:
    """VTC's measure for any number of tenants: the largest |W_f(t1,t2)/w_f - W_g(t1,t2)/w_g| over
    pairs of tenants and intervals [t1, t2) in which both were backlogged (`backlogged[tenant]`:
    [start, end) intervals). The same value as `service_difference_pairwise` (to within 1e-9 of
    the largest normalised cumulative service: floating rounding), without computing every pair.

    Why it is exact. Let N_i = S_i/w_i on the grid of points (every knot and span end, as left
    limit and right value: the points the reference evaluates) and let c be ANY function of the
    grid. For a pair (f, g) and a common interval I (inside one span of f and one span of g),
    D = N_f - N_g = y_f - y_g with y_i = N_i - c, so for points s <= t in I
        D(t) - D(s) = (y_f(t) - y_f(s)) + (y_g(s) - y_g(t)),
    and the pair's value, max over I of max D - min D, is at most any bound of the right side in
    both directions. Two bounds, from per-tenant numbers only:
      1. rise_f + drop_g (and rise_g + drop_f), rise_i / drop_i the largest increase / decrease of
         y_i between two ordered points of one of i's spans;
      2. a blocked bound (`_blocked_bound`): the grid cut into BLOCKS runs of points, with y_i's
         max and min per block and which block boundaries a span of i crosses; s and t in one
         block, or in blocks i < j with both tenants' spans crossing every boundary between.
    Ordered pairs are visited best-first by bound 1 (a heap over the tenants sorted by rise and by
    drop), BATCH at a time; each batch is filtered by bound 2 (vectorised) and the survivors are
    computed exactly (`_pair_difference`: one pass over both curves for all common intervals),
    largest bound 2 first. The search stops when the largest remaining bound 1 is <= the best
    difference found, and a pair is skipped when its bound 2 is: no skipped pair can exceed it.

    Why it is fast. c only decides how tight the bounds are. We take c = the virtual time of the
    backlogged tenants: on each grid step it grows by the mean increment of N_i over the tenants
    backlogged there; y_i is then tenant i's lead over the average backlogged tenant. Bound 1
    separates tenants that run ahead from those that fall behind; bound 2 confines a tenant that
    is backlogged briefly (most tenants, when there are many) to the blocks where it was, so its
    pairs with steadily served tenants are bounded by what happened there, not over the whole run.
    Cost: O(K log K) for the grid (K times); O(P) for c, the bounds and the blocks, P = sum over
    tenants of the grid points inside its spans <= 2K x T; O(BLOCKS) per pair taken from the heap,
    O(knots_f + knots_g + spans_f + spans_g) per pair computed exactly. How many pairs are
    computed depends on the data (on the synthetic overload runs of bench/bench_fairness.py: a few
    for VTC at 100 tenants); in the worst case, all of them. `max_pairs` caps the exact
    computations: the result is then value (attained by the reported pair) <= true maximum <=
    upper_bound (the largest bound left).
    """
    curves = service_curves(responses)
    w = weights or {}
    spans = {t: _merge(iv) for t, iv in backlogged.items()}
    names = sorted(t for t, sp in spans.items() if sp)
    if len(names) < 2:
        return ServiceDifference(0.0, None, None, 0.0, 0)
    empty = ServiceCurve(())
    cv = {t: curves.get(t, empty) for t in names}
    times = np.unique(np.concatenate([c.knots for c in cv.values()]
                                     + [np.array(spans[t], dtype=float).ravel() for t in names]))
    npts = 2 * len(times)
    norm = {t: _Normalised(cv[t], float(w.get(t, 1.0)), spans[t], times) for t in names}

    # c: per grid step p -> p + 1, the mean increment of N over the tenants whose span holds it
    inc_sum = np.zeros(npts)
    count = np.zeros(npts)
    for t in names:
        nt = norm[t]
        v = nt.values(times)
        inner = np.ones(len(v), dtype=bool)
        inner[nt.first + nt.lengths - 1] = False  # a span's last point starts no step of that span
        steps = nt.idx[inner]
        inc_sum[steps] += (np.roll(v, -1) - v)[inner]  # no duplicate indices within one tenant
        count[steps] += 1
    c = np.concatenate([[0.0], np.cumsum(np.divide(inc_sum, count, out=np.zeros(npts), where=count > 0))])
    rise, drop = {}, {}
    scale = 0.0
    # per tenant and block of the grid (BLOCKS equal runs of points): max and min of y there
    blocks = min(_BLOCKS, npts)
    hi_y = np.full((len(names), blocks), -np.inf)
    lo_y = np.full((len(names), blocks), np.inf)
    across = np.zeros((len(names), max(blocks - 1, 1)), dtype=bool)  # a span crosses boundary k
    for k, t in enumerate(names):
        nt = norm[t]
        v = nt.values(times)
        scale = max(scale, float(np.max(np.abs(v))))
        y = v - c[nt.idx]
        rise[t], drop[t] = _rise_and_drop(y, nt.first, nt.lengths)
        blk = nt.idx * blocks // npts  # non-decreasing: idx is
        starts = np.flatnonzero(np.concatenate([[True], blk[1:] != blk[:-1]]))
        hi_y[k, blk[starts]] = np.maximum.reduceat(y, starts)
        lo_y[k, blk[starts]] = np.minimum.reduceat(y, starts)
        first_blk, last_blk = blk[nt.first], blk[nt.first + nt.lengths - 1]
        crossed = np.zeros(blocks, dtype=np.int64)  # +1 at a span's first block, -1 at its last
        np.add.at(crossed, first_blk, 1)
        np.add.at(crossed, last_blk, -1)
        across[k] = np.cumsum(crossed)[:-1] > 0 if blocks > 1 else False
    tol = 1e-9 * max(scale, float(np.max(np.abs(c))), 1.0)
    row = {t: k for k, t in enumerate(names)}

    by_rise = sorted(names, key=lambda t: (-rise[t], t))
    by_drop = sorted(names, key=lambda t: (-drop[t], t))
    heap = [(-(rise[by_rise[0]] + drop[by_drop[0]]), 0, 0)]  # ordered pair (by_rise[a], by_drop[b])
    done: set[tuple[str, str]] = set()
    best: tuple[float, tuple[str, str] | None, tuple[float, float] | None] = (0.0, None, None)
    evaluated = 0
    bound_left = 0.0
    while heap and bound_left == 0.0:
        batch: list[tuple[str, str]] = []  # candidates by the per-tenant bound, not seen yet
        while heap and len(batch) < _BATCH:
            neg, a, b = heap[0]
            if -neg <= best[0] + tol:
                break
            heapq.heappop(heap)
            if b + 1 < len(names):
                heapq.heappush(heap, (-(rise[by_rise[a]] + drop[by_drop[b + 1]]), a, b + 1))
            if b == 0 and a + 1 < len(names):
                heapq.heappush(heap, (-(rise[by_rise[a + 1]] + drop[by_drop[0]]), a + 1, 0))
            f, g = by_rise[a], by_drop[b]
            key = (f, g) if f < g else (g, f)
            if f != g and key not in done:
                done.add(key)
                batch.append(key)
        if not batch:
            break
        fi = np.array([row[f] for f, _ in batch])
        gi = np.array([row[g] for _, g in batch])
        bounds = _blocked_bound(hi_y[fi], lo_y[fi], hi_y[gi], lo_y[gi], across[fi] & across[gi])
        for k in np.argsort(-bounds, kind="stable").tolist():
            if bounds[k] <= best[0] + tol:
                break  # the rest of the batch is no larger
            if max_pairs is not None and evaluated >= max_pairs:
                bound_left = max(float(bounds[k]), -heap[0][0] if heap else 0.0)
                break
            evaluated += 1
            f, g = batch[k]
            got = _pair_difference(f, g, norm[f], norm[g])
            if got is not None and got[0] > best[0]:
                best = got
    return ServiceDifference(best[0], best[1], best[2], max(best[0], bound_left), evaluated)


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
    spread: list[float] = (m.max(axis=0) - m.min(axis=0)).tolist()
    return spread


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
    bound: list[float] = np.max(np.minimum(ym.max(axis=0) - ym, dm - ym), axis=0).tolist()
    return bound


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
