"""First come, first served across all tenants: the baseline with no fairness at all.

The counters (U, R) are still kept, for display and comparison; they never drive the order.
"""
from __future__ import annotations

import heapq
from collections.abc import Hashable

from fairness.base import Scheduler, TenantState, Work


class FCFS(Scheduler):
    name = "fcfs"

    def __init__(self, weights: dict[str, float] | None = None, **accounting: float | str) -> None:
        self._seq = 0
        self._order: list[tuple[int, str]] = []  # heap of (arrival seq, tenant) of queue heads
        self._head_seq: dict[str, int] = {}
        self._seqs: dict[Hashable, int] = {}
        super().__init__(weights, **accounting)  # type: ignore[arg-type]

    def push(self, tenant: str, key: Hashable, predicted: Work) -> None:
        if key in self._where:
            raise ValueError(f"request key {key!r} is already queued (tenant {self._where[key]!r})")
        self._seq += 1
        self._seqs[key] = self._seq
        super().push(tenant, key, predicted)

    def pop(self) -> tuple[str, Hashable, Work] | None:
        popped = super().pop()
        if popped is not None:
            tenant, key, _ = popped
            del self._seqs[key]
            self._index_head(self.tenants[tenant])
        return popped

    def remove(self, tenant: str, key: Hashable) -> bool:
        removed = super().remove(tenant, key)
        if removed:
            del self._seqs[key]
        return removed

    def _on_active(self, state: TenantState) -> None:
        self._index_head(state)

    def _on_idle(self, state: TenantState) -> None:
        self._head_seq.pop(state.name, None)

    def _on_head_changed(self, state: TenantState) -> None:
        self._index_head(state)

    def _index_head(self, state: TenantState) -> None:
        if state.active:
            seq = self._seqs[state.queue[0][0]]
            if self._head_seq.get(state.name) != seq:
                self._head_seq[state.name] = seq
                heapq.heappush(self._order, (seq, state.name))
        else:
            self._head_seq.pop(state.name, None)

    def _select(self) -> TenantState | None:
        while self._order:
            seq, tenant = self._order[0]
            if self._head_seq.get(tenant) == seq:
                return self.tenants[tenant]
            heapq.heappop(self._order)  # stale entry: the head moved or the tenant was paused
        return None
