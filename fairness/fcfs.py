"""First come, first served across all tenants: the baseline with no fairness at all."""
from __future__ import annotations

import heapq
from collections.abc import Hashable

from fairness.base import Scheduler, TenantState, Work


class FCFS(Scheduler):
    name = "fcfs"

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__(weights)
        self._seq = 0
        self._order: list[tuple[int, str]] = []  # heap of (arrival seq, tenant) of queue heads
        self._head_seq: dict[str, int] = {}
        self._seqs: dict[Hashable, int] = {}

    def push(self, tenant: str, key: Hashable, predicted: Work) -> None:
        self._seq += 1
        self._seqs[key] = self._seq
        was_empty = not self.tenant(tenant).queue
        super().push(tenant, key, predicted)
        if was_empty:
            self._index_head(self.tenants[tenant])

    def pop(self) -> tuple[str, Hashable, Work] | None:
        popped = super().pop()
        if popped is not None:
            tenant, key, _ = popped
            self._seqs.pop(key, None)
            self._index_head(self.tenants[tenant])
        return popped

    def remove(self, tenant: str, key: Hashable) -> bool:
        removed = super().remove(tenant, key)
        if removed:
            self._seqs.pop(key, None)
            self._index_head(self.tenants[tenant])
        return removed

    def set_paused(self, name: str, paused: bool) -> None:
        super().set_paused(name, paused)
        self._index_head(self.tenant(name))

    def _index_head(self, state: TenantState) -> None:
        if state.queue and not state.paused:
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
