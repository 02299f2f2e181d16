"""Each engine's in-flight window and prefill meter, so that sluice's queue order is the order
that runs (docs/admission.md, "Windows and dispatch", "The prefill meter").

With admission, the window is the largest batch whose decode step meets the tightest TPOT SLO
(with the margin) and whose KV fits, and a meter lets prompt tokens in at the rate that keeps
each step within that budget. Without admission nothing is promised, so nothing throttles the
engine: the window is what its KV and batch cap hold. Pure.
"""
from __future__ import annotations

from controlplane.core.admission import TokenBucket
from controlplane.core.engine_state import EngineState
from controlplane.core.policy import Policy
from engine_adapter.base import StepProfile


def largest_batch(p: StepProfile, budget_s: float, per_request_tokens: float, limit: int) -> int:
    """The largest batch B <= `limit` with decode_time(B, B x tokens) within `budget_s` (1 if none)."""
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if p.decode_time(mid, mid * per_request_tokens) <= budget_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


def size_window(eng: EngineState, policy: Policy, per_request_tokens: float) -> None:
    """Set `eng`'s window, prefill budget and meter for `policy` and requests of
    `per_request_tokens` (prompt + output) on average."""
    if policy.window:
        eng.window = policy.window
        return
    per = per_request_tokens
    tpots = [c.tpot_s for c in policy.slo_classes.values() if c.tpot_s is not None]
    kv_fit = max(1, int(eng.spec.kv_capacity / max(1.0, per)))
    limit = min(eng.spec.max_running, kv_fit)
    budget = policy.admission_margin * min(tpots) if tpots and policy.admission else None
    p = eng.profile
    if budget is not None and p.prefill_b > 0:
        # the prompt tokens one step may prefill and still end within the TPOT budget,
        # metered in at that many per budget-long step
        batch = max(1, len(eng.in_flight))  # refreshed with every load report
        kv = max(eng.kv_tokens, eng.reported_kv_tokens)
        room = (0.9 * budget - p.decode_time(batch, kv) - p.prefill_a) / p.prefill_b  # 10% headroom
        eng.prefill_budget = min(float(eng.spec.chunk), max(512.0, room))
        rate = eng.prefill_budget / budget
        if eng.meter is None or abs(eng.meter.rate - rate) > 0.05 * rate:
            eng.meter = TokenBucket(rate, eng.prefill_budget, eng.prefill_budget,
                                    eng.meter.stamp if eng.meter else 0.0)
    else:
        eng.prefill_budget, eng.meter = float(eng.spec.chunk), None
    if budget is not None and p.decode_time(1, per) > budget:
        # Not even one request meets the SLO by the learned model: trust the profile's window.
        limit = eng.prior_window
    elif budget is not None:
        limit = largest_batch(p, budget, per, limit)
    eng.window = max(1, limit)
