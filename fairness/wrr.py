"""Weighted round robin: deficit round robin (Shreedhar & Varghese, SIGCOMM'95) over tenants.

Backlogged tenants form a ring. Each time a tenant reaches the front of the ring it receives its
quantum, Q * weight, in weighted tokens; it dispatches head requests while the head's cost
(w_p * input + w_q * predicted output) fits its deficit, then goes to the back. A tenant that
leaves the backlog forfeits its deficit. Q = max(quantum, largest request cost seen / smallest
weight seen, 1); quantum defaults to 0, i.e. Q tracks the largest request, the finest granularity
at which one visit still always covers any head request, so a decision is O(1) amortised.
At finish the deficit of a still-backlogged tenant absorbs the prediction error
(actual cost - charged cost), so shares hold in actual tokens.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from fairness.base import Outcome, Scheduler, TenantState, Work


class WRR(Scheduler):
    name = "wrr"

    def __init__(self, weights: dict[str, float] | None = None, quantum: float = 0.0,
                 **accounting: float | str) -> None:
        if not quantum >= 0:
            raise ValueError(f"quantum must be non-negative, got {quantum!r}")
        self.quantum = float(quantum)
        self._ring: deque[tuple[str, int]] = deque()
        self._ring_seq: dict[str, int] = {}
        self._seq = 0
        self._deficit: dict[str, float] = {}
        self._visiting: str | None = None  # the front tenant that already got this visit's quantum
        self._max_cost = 0.0
        self._min_weight = 1.0
        super().__init__(weights, **accounting)  # type: ignore[arg-type]

    def tenant(self, name: str) -> TenantState:
        state = self.tenants.get(name)
        if state is None:
            state = super().tenant(name)
            self._min_weight = min(self._min_weight, state.weight)
        return state

    def set_weight(self, name: str, weight: float) -> None:
        super().set_weight(name, weight)
        self._min_weight = min(self._min_weight, float(weight))

    def push(self, tenant: str, key: Hashable, predicted: Work) -> None:
        cost = self.token_cost(predicted)
        if cost > self._max_cost:
            self._max_cost = cost
        super().push(tenant, key, predicted)

    def quantum_of(self, state: TenantState) -> float:
        return max(self.quantum, self._max_cost / self._min_weight, 1.0) * state.weight

    def _on_active(self, state: TenantState) -> None:
        self._seq += 1
        self._ring_seq[state.name] = self._seq
        self._ring.append((state.name, self._seq))
        self._deficit[state.name] = 0.0

    def _on_idle(self, state: TenantState) -> None:
        self._ring_seq.pop(state.name, None)
        self._deficit.pop(state.name, None)
        if self._visiting == state.name:
            self._visiting = None

    def _select(self) -> TenantState | None:
        ring = self._ring
        while ring:
            name, seq = ring[0]
            if self._ring_seq.get(name) != seq:
                ring.popleft()  # stale: the tenant left the backlog since
                continue
            state = self.tenants[name]
            if self._visiting != name:
                self._visiting = name
                self._deficit[name] += self.quantum_of(state)
            if self.token_cost(state.queue[0][1]) <= self._deficit[name]:
                return state
            self._visiting = None  # the visit ends: to the back of the ring
            ring.rotate(-1)
        return None

    def _charge(self, state: TenantState, predicted: Work) -> None:
        super()._charge(state, predicted)
        if state.name in self._deficit:
            self._deficit[state.name] -= self.token_cost(predicted)

    def finish(self, tenant: str, predicted: Work, outcome: Outcome, *, progressed: int = 0) -> None:
        super().finish(tenant, predicted, outcome, progressed=progressed)
        if tenant in self._deficit:
            charged = self.w_p * predicted.input_tokens + self.w_q * predicted.output_tokens
            self._deficit[tenant] -= self.token_cost(outcome.work) - charged

    def counters(self, tenant: str) -> dict[str, float]:
        c = super().counters(tenant)
        c["deficit"] = self._deficit.get(tenant, 0.0)
        return c
