"""Equinox-style holistic fairness: a user counter U and a resource counter R per tenant.

Inspired by Equinox (Wei et al., "Holistic Fair Scheduling in Serving Large Language Models",
arXiv 2508.16646); the paper's exact formulas are not public, these are ours (docs/fairness.md):

- U: (w_p * computed input + w_q * output) * latency factor / weight. Charged ahead at dispatch
  from the prediction with latency factor 1, reconciled at finish with the Outcome's tokens and
  latency factor in [0, 1].
- R: GPU-seconds (or joules with resource="joules") / weight. Charged ahead with the predicted
  GPU time (`Work.gpu_seconds`, else gpu_s_per_input_token * in + gpu_s_per_output_token * out),
  reconciled at finish with `Outcome.gpu_seconds` (or `Outcome.joules`).
- H = alpha * U / mean(U) + (1 - alpha) * R / mean(R), means over backlogged tenants (a term
  whose mean is 0 counts 0). The backlogged tenant with the lowest H is served.
- Lift (VTC's rule, on both counters): a tenant becoming backlogged gets U = max(U, min U) and
  R = max(R, min R) over the other backlogged tenants, or the counters of the tenant that left
  the backlog last when no other is backlogged.

Selection. For 0 < alpha < 1 and both means positive, H = (alpha / mean U) * (U + k * R) with
k = (1 - alpha) * mean(U) / (alpha * mean(R)), so argmin H = argmin (U + k * R). The running sums
of U and R over backlogged tenants are kept in O(1), and a heap with lazy invalidation is keyed
on U + k0 * R for a snapshot k0; it is rebuilt (O(T)) when |k - k0| > tolerance * k0. Between
rebuilds the chosen tenant's H exceeds the true minimum by at most
    tolerance / (1 - tolerance) * (1 - alpha) * (max R - min R) / mean(R)
(over backlogged tenants). tolerance=0 makes the choice exact (and every decision O(T) when k
moves). alpha = 1 keys on U (VTC's order), alpha = 0 on R; both are exact.
"""
from __future__ import annotations

from fairness.base import Scheduler, TenantState
from fairness.lazy_heap import LazyHeap


class Equinox(Scheduler):
    name = "equinox"
    lift = True
    lift_resource = True
    latency_aware = True

    def __init__(self, weights: dict[str, float] | None = None, alpha: float = 0.5, w_p: float = 1.0,
                 w_q: float = 2.0, *, tolerance: float = 0.01, **accounting: float | str) -> None:
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self.tolerance = float(tolerance)
        self._sel = LazyHeap()  # key: U + k0 * R (mode "U") or R (mode "R")
        self._min_u = LazyHeap()
        self._min_r = LazyHeap()
        self._mode = "U"
        self._k = 0.0
        self.rebuilds = 0  # how many times the selection heap was re-keyed (for benchmarks)
        self.set_alpha(alpha)
        super().__init__(weights, w_p=w_p, w_q=w_q, **accounting)  # type: ignore[arg-type]

    def set_alpha(self, alpha: float) -> None:
        """Change the U/R balance; takes effect at the next decision (the heap is re-keyed)."""
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        self.alpha = self.display_alpha = float(alpha)

    # -- indexing ------------------------------------------------------------------------
    def _key(self, state: TenantState) -> float:
        return state.resource if self._mode == "R" else state.user + self._k * state.resource

    def _on_active(self, state: TenantState) -> None:
        self._sel.set(state.name, self._key(state), state.order)
        self._min_u.set(state.name, state.user, state.order)
        self._min_r.set(state.name, state.resource, state.order)

    _on_counters = _on_active

    def _on_idle(self, state: TenantState) -> None:
        self._sel.discard(state.name)
        self._min_u.discard(state.name)
        self._min_r.discard(state.name)

    def _min_active(self) -> tuple[float, float]:
        top_u, top_r = self._min_u.top(), self._min_r.top()
        assert top_u is not None and top_r is not None
        return top_u[0], top_r[0]

    # -- selection -----------------------------------------------------------------------
    def _target(self) -> tuple[str, float]:
        """The (mode, k) that makes the heap key order equal H's order now."""
        a = self.alpha
        if a >= 1:
            return "U", 0.0
        if a <= 0:
            return "R", 0.0
        m_user, m_res = self.means()
        if a * m_res <= 0:  # every backlogged R is 0 (or so small it underflows): any finite k orders by U
            return ("U", self._k) if self._mode == "U" else ("U", 0.0)
        if m_user <= 0:  # every backlogged U is 0: order by R
            return ("U", self._k) if self._mode == "U" and self._k > 0 else ("R", 0.0)
        return "U", (1 - a) * m_user / (a * m_res)

    def _select(self) -> TenantState | None:
        if not self._n_active:
            return None
        mode, k = self._target()
        if mode != self._mode or (mode == "U" and abs(k - self._k) > self.tolerance * self._k):
            self._rebuild(mode, k)
        top = self._sel.top()
        return self.tenants[top[1]] if top is not None else None

    def _rebuild(self, mode: str, k: float) -> None:
        self._mode, self._k = mode, k
        self.rebuilds += 1
        active = [self.tenants[n] for n in self._sel.current]
        # exact sums, so rounding in the running sums never accumulates across rebuilds
        self._sum_user = sum(t.user for t in active)
        self._sum_resource = sum(t.resource for t in active)
        self._sel.rebuild((t.name, self._key(t), t.order) for t in active)

    def selection_error_bound(self) -> float:
        """The documented bound on H(chosen) - min H at this moment (O(T); for tests/audit)."""
        if self._mode != "U" or not 0 < self.alpha < 1:
            return 0.0
        m_user, m_res = self.means()
        if m_res <= 0 or m_user <= 0:
            return 0.0
        active = [self.tenants[n] for n in self._sel.current]
        spread = max(t.resource for t in active) - min(t.resource for t in active)
        k = (1 - self.alpha) * m_user / (self.alpha * m_res)
        return (self.alpha / m_user) * abs(k - self._k) * spread

    def counters(self, tenant: str) -> dict[str, float]:
        c = super().counters(tenant)
        c["alpha"] = self.alpha
        return c
