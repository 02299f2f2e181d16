"""Fairness over what tenants asked for, whole run (docs/fairness.md, "Measuring fairness").

- `max_min_fair_shares`: weighted water-filling of a capacity over the tenants' demands.
- `demand_fairness`: Jain's index over delivered / max-min fair share of the offered demand
  (refused requests included in the demand), with the capacity actually delivered.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fairness.service import jain_index


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
