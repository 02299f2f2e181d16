"""Fairness over what tenants asked for, per time window, from `Asked` records (docs/fairness.md,
"Measuring fairness"): `demand_fairness` in each window over the demand outstanding there,
aggregated as a demand-weighted mean. `asked_totals` gives the whole-run numbers."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fairness.fair_share import DemandFairness, demand_fairness
from fairness.service import Served, ServiceCurve


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
    edges, closed = _window_edges(rs, window, start, end)
    by: dict[str, list[Asked]] = {}
    for r in rs:
        by.setdefault(r.tenant, []).append(r)
    names = sorted(by)
    dem = np.zeros((len(names), len(edges) - 1))
    got = np.zeros((len(names), len(edges) - 1))
    for k, name in enumerate(names):
        dem[k], got[k] = _tenant_windows(name, by[name], edges, closed)
    return _aggregate(_score_windows(names, dem, got, edges, weights))


def _window_edges(rs: list[Asked], window: float, start: float | None,
                  end: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The window edges from start to end, and which edges are closed (only the last: the last
    window holds its end)."""
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
    closed[-1] = True
    return edges, closed


def _upto(curve: ServiceCurve, edges: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Service in (-inf, e) per edge; (-inf, e] at a closed one."""
    return np.where(closed, curve.at(edges), curve.before(edges))


def _tenant_windows(name: str, requests: list[Asked], edges: np.ndarray,
                    closed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One tenant's (demand, delivered) per window: demand outstanding in the window (arrived
    before its end, less what was discharged before its start), delivered service counted."""
    items = sorted(requests, key=lambda r: r.arrival)
    arr = np.array([r.arrival for r in items])
    cum = np.concatenate([[0.0], np.cumsum([r.service for r in items])])
    arrived = cum[np.where(closed, np.searchsorted(arr, edges, "right"), np.searchsorted(arr, edges, "left"))]
    served = [r for r in items if r.served]
    progress = _upto(ServiceCurve(Served(name, r.start, r.end, r.service)  # type: ignore[arg-type]
                                  for r in served), edges, closed)
    counted = _upto(ServiceCurve(Served(name, r.start, r.end, r.service)  # type: ignore[arg-type]
                                 for r in served if r.counted), edges, closed)
    left = _discharged_unserved(items, edges)
    return np.maximum(arrived[1:] - (progress + left)[:-1], 0.0), counted[1:] - counted[:-1]


def _discharged_unserved(items: list[Asked], edges: np.ndarray) -> np.ndarray:
    """Service of unserved requests no longer owed, per edge. An unserved request is discharged
    before edge e once e > until, or e == until > arrival (one refused exactly at e on arrival is
    still demand in the window starting at e)."""
    left = np.zeros(len(edges))
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
    return left


def _score_windows(names: list[str], dem: np.ndarray, got: np.ndarray, edges: np.ndarray,
                   weights: Mapping[str, float] | None) -> list[WindowFairness]:
    """`demand_fairness` of every window in which some tenant had demand."""
    windows = []
    for j in range(dem.shape[1]):
        total = float(dem[:, j].sum())
        if total <= 0:
            continue
        fz = demand_fairness({t: float(dem[k, j]) for k, t in enumerate(names)},
                             {t: float(got[k, j]) for k, t in enumerate(names)}, weights)
        windows.append(WindowFairness(float(edges[j]), float(edges[j + 1]), total, fz))
    return windows


def _aggregate(windows: list[WindowFairness]) -> WindowedFairness:
    """Demand-weighted mean and worst of the windows where something was delivered."""
    scored = [x for x in windows if x.fairness.capacity > 0]
    if not scored:
        return WindowedFairness(tuple(windows), 1.0, 1.0, None, None, None)
    worst = min((x.fairness.min_ratio, x.fairness.min_tenant, x.start) for x in scored)
    return WindowedFairness(tuple(windows),
                            sum(x.demand * x.fairness.jain for x in scored) / sum(x.demand for x in scored),
                            min(x.fairness.jain for x in scored), worst[0], worst[1], worst[2])
