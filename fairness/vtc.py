"""VTC: the virtual token counter (Sheng et al., "Fairness in Serving Large Language Models",
OSDI'24), with length prediction as in the artifact's `vtc_pred_len_req_queue.py`.

- Next request: the head of the backlogged (queued, not paused) tenant with the lowest counter;
  ties go to the tenant that became backlogged first.
- Dispatch: counter += (w_p * input + w_q * predicted_output) / weight.
- Decode (optional, `progress`): output tokens beyond the prediction are charged w_q / weight each.
- Finish: reconcile with the truth: counter += (w_p * (in - in_pred) + w_q * (out - max(progressed,
  out_pred))) / weight: the excess beyond the prediction is charged, a shortfall refunded, and
  the input is the computed (not prefix-cached) count.
- Lift: when a tenant becomes backlogged, counter = max(counter, min counter of the other
  backlogged tenants); when no other tenant is backlogged, max(counter, counter of the tenant
  that left the backlog last) (the paper's Algorithm 1; the artifact's code leaves the counter
  unchanged in that case, which lets a tenant bank credit across an idle period).

Decisions are O(log T): a heap of counters with lazy invalidation.
"""
from __future__ import annotations

from fairness.base import Scheduler, TenantState
from fairness.lazy_heap import LazyHeap


class VTC(Scheduler):
    name = "vtc"
    lift = True
    lift_resource = False  # VTC's rule is for its one counter; R is kept for display only
    latency_aware = False
    display_alpha = 1.0  # H = U / mean(U)

    def __init__(self, weights: dict[str, float] | None = None, w_p: float = 1.0, w_q: float = 2.0,
                 **accounting: float | str) -> None:
        self._heap = LazyHeap()
        super().__init__(weights, w_p=w_p, w_q=w_q, **accounting)  # type: ignore[arg-type]

    def _on_active(self, state: TenantState) -> None:
        self._heap.set(state.name, state.user, state.order)

    _on_counters = _on_active

    def _on_idle(self, state: TenantState) -> None:
        self._heap.discard(state.name)

    def _min_active(self) -> tuple[float, float]:
        top = self._heap.top()
        assert top is not None
        return top[0], 0.0  # R is not lifted under VTC

    def _select(self) -> TenantState | None:
        top = self._heap.top()
        return self.tenants[top[1]] if top is not None else None

    def counters(self, tenant: str) -> dict[str, float]:
        c = super().counters(tenant)
        c["virtual"] = c["user"]
        return c
