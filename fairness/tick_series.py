"""The VTC artifact's measures sampled at ticks (fair_bench/plot/*.py), from `Served` records.

- Accumulated service difference at tick x (artifact plot 6.2): max_i S_i(x)/w_i - min_i S_i(x)/w_i.
- Windowed service rate at tick x: (S_i(x + w/2) - S_i(x - w/2)) / w (artifact: w = 60 s).
- Windowed demand rate: sum of the service of requests arriving in [x - w/2, x + w/2], / w.
- Windowed service difference at tick x (artifact): max_j min(max_k y_k - y_j, d_j - y_j) with
  y the (weight-normalised) service rates and d the demand rates: a tenant that asked for less
  than its share does not count as starved.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fairness.service import Served, service_curves


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
