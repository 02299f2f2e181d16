"""Fairness metrics, as the VTC artifact computes them (fair_bench/plot/*.py), plus Jain's index
and fairness over what tenants asked for. Pure: numbers in, numbers out.

A replay runner feeds one `Served` record per finished request (tenant, first-token time, end
time, service, optionally arrival time) and, for the service difference between backlogged
tenants, each tenant's backlogged intervals. This module is the entry point: `fairness_summary`,
and every metric re-exported from where it lives:

- `fairness.service`: per-request service, cumulative service curves, Jain's index, shares.
- `fairness.service_difference`: VTC's service difference between backlogged tenants (exact, and
  the pairwise reference).
- `fairness.tick_series`: the artifact's accumulated and windowed measures at ticks.
- `fairness.fair_share`: max-min fair shares and `demand_fairness` over a whole run.
- `fairness.windowed_fairness`: `demand_fairness` per time window over `Asked` records.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fairness.fair_share import DemandFairness, TenantFairness, demand_fairness, max_min_fair_shares
from fairness.service import (Served, ServiceCurve, Share, jain_index, request_service, service_between,
                              service_curves, shares, weighted_jain)
from fairness.service_difference import (ServiceDifference, intersect_intervals, service_difference,
                                         service_difference_pairwise)
from fairness.tick_series import (accumulated_service, accumulated_service_difference, windowed_demand,
                                  windowed_service, windowed_service_difference)
from fairness.windowed_fairness import Asked, WindowedFairness, WindowFairness, asked_totals, windowed_demand_fairness

__all__ = ["Asked", "DemandFairness", "Served", "ServiceCurve", "ServiceDifference", "Share", "TenantFairness",
           "WindowFairness", "WindowedFairness", "accumulated_service", "accumulated_service_difference",
           "asked_totals", "demand_fairness", "fairness_summary", "intersect_intervals", "jain_index",
           "max_min_fair_shares", "request_service", "service_between", "service_curves", "service_difference",
           "service_difference_pairwise", "shares", "weighted_jain", "windowed_demand", "windowed_demand_fairness",
           "windowed_service", "windowed_service_difference"]


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
