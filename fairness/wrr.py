"""Weighted round robin: deficit round robin (Shreedhar & Varghese, SIGCOMM'95) over tenants.

Backlogged tenants form a ring. Each time a tenant reaches the front of the ring it receives its
quantum, Q * weight, in weighted tokens; it dispatches head requests while the
head's cost (w_p * input + w_q * predicted output) fits its deficit, then goes to the back. A head
larger than the deficit waits for later visits, the deficit growing by a quantum each time (DRR's
rule). A tenant that leaves the backlog forfeits its deficit.

Q = quantum when given (> 0); otherwise Q = max(typical / min weight seen, 1) (so that the
lightest tenant's quantum is about one typical request), where `typical` is the 90th
percentile (TYPICAL_QUANTILE) of the costs of the last 64 requests pushed (TYPICAL_WINDOW),
nearest rank below: the sorted window's element at index floor(0.9 * (n - 1)), n <= 64 the
costs seen so far. A quantum of about one typical request keeps rounds fine-grained; one huge
request moves that element by one rank at most, so it cannot make every later visit a giant
burst (a quantum of the largest cost ever seen did: fairness then stayed coarse for the rest of
the run), and the quantum follows a change of request sizes within 64 requests.

Cost. Most heads fit one visit, so a decision is O(1) amortised. When a whole pass over the ring
dispatches nothing (every head exceeds its deficit), the rounds that would all fail are skipped at
once: with k_i = ceil((cost of i's head - deficit_i) / quantum_i) more visits needed by tenant i
and m = min k_i, every tenant receives (m - 1) quanta (exactly what m - 1 more failing rounds
would give it) and the next pass dispatches; a decision never costs more than two passes.
At finish the deficit of a still-backlogged tenant absorbs the prediction error
(actual cost - charged cost), so shares hold in actual tokens.
"""
from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Hashable

from fairness.base import Outcome, Scheduler, TenantState, Work

TYPICAL_QUANTILE = 0.9
TYPICAL_WINDOW = 64


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
        self._recent: deque[float] = deque()  # the last TYPICAL_WINDOW costs, in push order
        self._sorted: list[float] = []  # the same, sorted
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
        self._recent.append(cost)
        insort(self._sorted, cost)
        if len(self._recent) > TYPICAL_WINDOW:  # O(window) list shifts: a constant
            del self._sorted[bisect_left(self._sorted, self._recent.popleft())]
        super().push(tenant, key, predicted)

    @property
    def typical_cost(self) -> float:
        """The 90th percentile of the last 64 pushed costs (0 before the first push)."""
        xs = self._sorted
        return xs[int(TYPICAL_QUANTILE * (len(xs) - 1))] if xs else 0.0

    def quantum_of(self, state: TenantState) -> float:
        base = self.quantum if self.quantum > 0 else max(self.typical_cost / self._min_weight, 1.0)
        return base * state.weight

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
        failed = 0  # consecutive visits without a dispatch, in this call
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
            failed += 1
            if failed == len(self._ring_seq):  # a whole round without a dispatch
                self._skip_rounds()
                failed = 0
        return None

    def _skip_rounds(self) -> None:
        """Give every backlogged tenant the quanta of the rounds in which nobody could dispatch."""
        need = {}
        for name in self._ring_seq:
            state = self.tenants[name]
            q = self.quantum_of(state)
            need[name] = (q, math.ceil((self.token_cost(state.queue[0][1]) - self._deficit[name]) / q))
        rounds = min(k for _, k in need.values()) - 1
        if rounds > 0:
            for name, (q, _) in need.items():
                self._deficit[name] += rounds * q

    def _charge(self, state: TenantState, predicted: Work) -> None:
        super()._charge(state, predicted)
        if state.name in self._deficit:
            self._deficit[state.name] -= self.token_cost(predicted)

    def finish(self, tenant: str, predicted: Work, outcome: Outcome, *, progressed: int = 0) -> None:
        super().finish(tenant, predicted, outcome, progressed=progressed)
        if tenant in self._deficit:
            charged = self.w_p * predicted.input_tokens + self.w_q * predicted.output_tokens
            self._deficit[tenant] -= self.token_cost(outcome.work) - charged
