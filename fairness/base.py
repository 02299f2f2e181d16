"""Per-tenant queues and the scheduler interface every fairness policy implements.

Pure: no I/O, no clock, no asyncio. Callers pass everything in (times, predictions, outcomes),
so serving and replay drive the very same objects.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Work:
    """Tokens a request costs: prompt tokens actually computed (not prefix-cached) and output."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished request really cost, reported at finish to reconcile the charge."""

    work: Work
    latency_factor: float = 1.0  # in [0, 1]: 1 when every token met the SLO
    gpu_seconds: float = 0.0  # the request's attributed share of engine step time
    joules: float | None = None


@dataclass(slots=True)
class TenantState:
    name: str
    weight: float = 1.0
    queue: deque[tuple[Hashable, Work]] = field(default_factory=deque)
    paused: bool = False


class Scheduler:
    """Per-tenant FIFO queues; subclasses choose which backlogged tenant goes next.

    Protocol for the caller: `push` on arrival, `pop` when an engine slot is free (the predicted
    work is charged then), `finish` with the truth to reconcile, `remove` for a request that
    leaves the queue without running (abort, deadline).
    """

    name = "base"

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.tenants: dict[str, TenantState] = {}
        for tenant, weight in (weights or {}).items():
            self.set_weight(tenant, weight)

    # -- tenants -------------------------------------------------------------------------
    def tenant(self, name: str) -> TenantState:
        state = self.tenants.get(name)
        if state is None:
            state = self.tenants[name] = TenantState(name)
        return state

    def set_weight(self, name: str, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        self.tenant(name).weight = float(weight)

    def set_paused(self, name: str, paused: bool) -> None:
        self.tenant(name).paused = paused

    # -- queue operations ----------------------------------------------------------------
    def push(self, tenant: str, key: Hashable, predicted: Work) -> None:
        state = self.tenant(tenant)
        if not state.queue:
            self._on_backlogged(state)
        state.queue.append((key, predicted))

    def pop(self) -> tuple[str, Hashable, Work] | None:
        state = self._select()
        if state is None:
            return None
        key, predicted = state.queue.popleft()
        self._charge(state, predicted)
        return state.name, key, predicted

    def remove(self, tenant: str, key: Hashable) -> bool:
        state = self.tenants.get(tenant)
        if state is None:
            return False
        for i, (k, _) in enumerate(state.queue):
            if k == key:
                del state.queue[i]
                return True
        return False

    def finish(self, tenant: str, predicted: Work, outcome: Outcome) -> None:
        """Reconcile a dispatched request's charge with what it really cost."""

    # -- views ---------------------------------------------------------------------------
    def queued(self, tenant: str) -> int:
        state = self.tenants.get(tenant)
        return len(state.queue) if state else 0

    def backlogged(self) -> list[str]:
        return [t.name for t in self.tenants.values() if t.queue and not t.paused]

    def __len__(self) -> int:
        return sum(len(t.queue) for t in self.tenants.values())

    def counters(self, tenant: str) -> dict[str, float]:
        """Policy-specific counters for display and audit."""
        return {}

    # -- policy hooks --------------------------------------------------------------------
    def _select(self) -> TenantState | None:
        raise NotImplementedError  # every concrete policy overrides this

    def _on_backlogged(self, state: TenantState) -> None:
        """Called when a tenant's queue goes from empty to non-empty (VTC's lift point)."""

    def _charge(self, state: TenantState, predicted: Work) -> None:
        """Charge the predicted work when a request is dispatched."""
