"""Per-tenant queues, tenant accounting and the scheduler interface every fairness policy implements.

Pure: no I/O, no clock, no asyncio. Callers pass everything in (times, predictions, outcomes),
so serving and replay drive the very same objects.

Accounting shared by every policy (the formulas are stated exactly in docs/fairness.md):

- user counter U: weighted tokens / weight, charged ahead at dispatch from the prediction
  (w_p * input + w_q * output), reconciled at finish with the truth (computed input tokens, actual
  output tokens, and, for latency-aware policies, the latency factor of the Outcome);
- resource counter R: GPU-seconds (or joules) / weight, charged ahead with the predicted GPU time
  (`Work.gpu_seconds`, or estimated from tokens) and reconciled at finish.

Policies decide whether the counters are lifted when a tenant becomes backlogged (VTC, Equinox)
and which counters drive the choice.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from fairness.value import value

#: default GPU-seconds per computed prompt token and per output token, used to estimate a
#: request's GPU time when the prediction does not carry one (rough H100 / 8B-class figures:
#: prefill ~20k tokens/s; a decode step of ~12 ms shared by a batch of ~64)
GPU_S_PER_INPUT_TOKEN = 5e-5
GPU_S_PER_OUTPUT_TOKEN = 2e-4
#: default board power used to turn GPU-seconds into joules when joules are not reported
DEFAULT_WATTS = 700.0

RESOURCE_UNITS = ("gpu_seconds", "joules")


@value
class Work:
    """Tokens a request costs: prompt tokens actually computed (not prefix-cached) and output.

    `gpu_seconds` is optional: a predicted GPU time for the request. Policies with a resource
    counter charge it ahead when present and estimate it from the tokens otherwise.
    """

    input_tokens: int
    output_tokens: int
    gpu_seconds: float | None = None


@value
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
    # the tie-break between equal scores: when it last became backlogged (registration before
    # that), so equal counters are served first come, first served
    order: int = 0
    active: bool = False  # backlogged: queue non-empty and not paused (maintained by Scheduler)
    user: float = 0.0  # U
    resource: float = 0.0  # R


class Scheduler(ABC):
    """Per-tenant FIFO queues; subclasses choose which backlogged tenant goes next.

    Protocol for the caller: `push` on arrival, `pop` when an engine slot is free (the predicted
    work is charged then), optionally `progress` while it decodes, `finish` with the truth to
    reconcile, `remove` for a request that leaves the queue without running (abort, deadline).
    Request keys must be unique among queued requests.

    Accounting keywords (every policy accepts them):
      w_p, w_q: token prices (VTC: input 1, output 2);
      resource: "gpu_seconds" (default) or "joules", the unit of the resource counter R;
      gpu_s_per_input_token, gpu_s_per_output_token: the estimate of a request's GPU time when
        `Work.gpu_seconds` is None; watts: converts GPU-seconds to joules when needed.
    """

    name = "base"
    #: lift U (and R when `lift_resource`) when a tenant becomes backlogged (VTC's rule)
    lift = False
    lift_resource = False
    #: scale U's reconcile by Outcome.latency_factor
    latency_aware = False
    #: alpha of the holistic score shown by `counters` (Equinox uses its own alpha)
    display_alpha = 0.5

    def __init__(
        self,
        weights: dict[str, float] | None = None,
        *,
        w_p: float = 1.0,
        w_q: float = 2.0,
        resource: str = "gpu_seconds",
        gpu_s_per_input_token: float = GPU_S_PER_INPUT_TOKEN,
        gpu_s_per_output_token: float = GPU_S_PER_OUTPUT_TOKEN,
        watts: float = DEFAULT_WATTS,
    ) -> None:
        if w_p < 0 or w_q < 0:
            raise ValueError(f"token prices must be non-negative, got w_p={w_p!r}, w_q={w_q!r}")
        if resource not in RESOURCE_UNITS:
            raise ValueError(f"resource must be one of {RESOURCE_UNITS}, got {resource!r}")
        if gpu_s_per_input_token < 0 or gpu_s_per_output_token < 0 or not watts > 0:
            raise ValueError("GPU-time coefficients must be non-negative and watts positive")
        self.w_p = float(w_p)
        self.w_q = float(w_q)
        self.resource_unit = resource
        self.gpu_s_per_input_token = float(gpu_s_per_input_token)
        self.gpu_s_per_output_token = float(gpu_s_per_output_token)
        self.watts = float(watts)
        self.tenants: dict[str, TenantState] = {}
        self._where: dict[Hashable, str] = {}  # queued key -> tenant
        self._orders = 0  # the last tie-break order handed out (TenantState.order)
        # running sums over backlogged tenants, for the means of the holistic score
        self._n_active = 0
        self._sum_user = 0.0
        self._sum_resource = 0.0
        self._last_left: str | None = None  # the tenant that most recently left the backlog
        for tenant, weight in (weights or {}).items():
            self.set_weight(tenant, weight)

    # -- tenants -------------------------------------------------------------------------
    def tenant(self, name: str) -> TenantState:
        state = self.tenants.get(name)
        if state is None:
            self._orders += 1
            state = self.tenants[name] = TenantState(name, order=self._orders)
        return state

    def set_weight(self, name: str, weight: float) -> None:
        """Change a weight. Counters already hold weight-normalised service and are not rescaled;
        charges from now on, including the reconcile of requests in flight, use the new weight."""
        if not weight > 0:
            raise ValueError(f"weight must be positive, got {weight!r}")
        self.tenant(name).weight = float(weight)

    def set_paused(self, name: str, paused: bool) -> None:
        """A paused tenant keeps its queue but is never selected; for the lift rule it has left
        the backlog, and resuming it is becoming backlogged again (no credit for the pause)."""
        state = self.tenant(name)
        state.paused = bool(paused)
        self._refresh(state)

    # -- queue operations ----------------------------------------------------------------
    def push(self, tenant: str, key: Hashable, predicted: Work) -> None:
        if key in self._where:
            raise ValueError(f"request key {key!r} is already queued (tenant {self._where[key]!r})")
        state = self.tenant(tenant)
        state.queue.append((key, predicted))
        self._where[key] = tenant
        if not state.active:
            self._refresh(state)

    def peek(self) -> tuple[str, Hashable, Work] | None:
        """What `pop` would return now, without dequeuing or charging it."""
        state = self._select()
        if state is None:
            return None
        key, predicted = state.queue[0]
        return state.name, key, predicted

    def pop(self) -> tuple[str, Hashable, Work] | None:
        state = self._select()
        if state is None:
            return None
        key, predicted = state.queue.popleft()
        del self._where[key]
        self._charge(state, predicted)
        if not state.queue:
            self._refresh(state)
        return state.name, key, predicted

    def remove(self, tenant: str, key: Hashable) -> bool:
        if self._where.get(key) != tenant:
            return False
        state = self.tenants[tenant]
        for i, (k, _) in enumerate(state.queue):
            if k == key:
                del state.queue[i]
                del self._where[key]
                if not state.queue:
                    self._refresh(state)
                elif i == 0 and state.active:
                    self._on_head_changed(state)
                return True
        return False  # pragma: no cover - _where and the queues always agree

    def progress(self, tenant: str, predicted: Work, before: int, after: int) -> None:
        """Optional, while a dispatched request decodes: its output grew from `before` to `after`
        tokens. Output beyond the prediction is charged as it is generated (VTC's per-token
        charge); pass the last `after` as `progressed=` to `finish`."""
        excess = max(after, predicted.output_tokens) - max(before, predicted.output_tokens)
        if excess:
            state = self.tenant(tenant)
            self._add(state, self.w_q * excess / state.weight, 0.0)

    def finish(self, tenant: str, predicted: Work, outcome: Outcome, *, progressed: int = 0) -> None:
        """Reconcile a dispatched request's charge with what it really cost.

        U += (lf * (w_p*in + w_q*out) - (w_p*in_pred + w_q*max(progressed, out_pred))) / weight
        R += (actual resource - predicted resource) / weight
        where lf is the latency factor for latency-aware policies and 1 otherwise.
        """
        state = self.tenant(tenant)
        actual = outcome.work
        factor = min(1.0, max(0.0, outcome.latency_factor)) if self.latency_aware else 1.0
        charged = self.w_p * predicted.input_tokens + self.w_q * max(progressed, predicted.output_tokens)
        delivered = factor * (self.w_p * actual.input_tokens + self.w_q * actual.output_tokens)
        d_res = self.actual_resource(outcome) - self.predicted_resource(predicted)
        self._add(state, (delivered - charged) / state.weight, d_res / state.weight)

    # -- costs ---------------------------------------------------------------------------
    def token_cost(self, work: Work) -> float:
        """w_p * input + w_q * output (not divided by the weight)."""
        return self.w_p * work.input_tokens + self.w_q * work.output_tokens

    def predicted_resource(self, work: Work) -> float:
        """Predicted GPU-seconds (or joules) of a request, not divided by the weight."""
        if work.gpu_seconds is not None:
            seconds = work.gpu_seconds
        else:
            seconds = (self.gpu_s_per_input_token * work.input_tokens
                       + self.gpu_s_per_output_token * work.output_tokens)
        return seconds * self.watts if self.resource_unit == "joules" else seconds

    def actual_resource(self, outcome: Outcome) -> float:
        if self.resource_unit == "joules":
            return outcome.joules if outcome.joules is not None else outcome.gpu_seconds * self.watts
        return outcome.gpu_seconds

    # -- views ---------------------------------------------------------------------------
    def queued(self, tenant: str) -> int:
        state = self.tenants.get(tenant)
        return len(state.queue) if state else 0

    def backlogged(self) -> list[str]:
        return [t.name for t in self.tenants.values() if t.active]

    def __len__(self) -> int:
        return len(self._where)

    def means(self) -> tuple[float, float]:
        """(mean U, mean R) over backlogged tenants; (0, 0) when none is backlogged."""
        n = self._n_active
        return (self._sum_user / n, self._sum_resource / n) if n else (0.0, 0.0)

    def holistic(self, tenant: str, alpha: float | None = None) -> float:
        """H = a*U/mean(U) + (1-a)*R/mean(R), means over backlogged tenants; a term whose mean
        is 0 counts 0."""
        a = self.display_alpha if alpha is None else alpha
        state = self.tenants.get(tenant)
        if state is None:
            return 0.0
        m_user, m_res = self.means()
        h = a * state.user / m_user if m_user > 0 and a > 0 else 0.0
        if m_res > 0 and a < 1:
            h += (1 - a) * state.resource / m_res
        return h

    def counters(self, tenant: str) -> dict[str, float]:
        """Counters for display and audit: user (U), resource (R), holistic (H), weight."""
        state = self.tenants.get(tenant)
        if state is None:
            return {"user": 0.0, "resource": 0.0, "holistic": 0.0, "weight": 1.0}
        return {"user": state.user, "resource": state.resource, "holistic": self.holistic(tenant),
                "weight": state.weight}

    # -- internals -----------------------------------------------------------------------
    def _refresh(self, state: TenantState) -> None:
        """Bring `state.active` in line with its queue and pause flag, running the hooks."""
        active = bool(state.queue) and not state.paused
        if active == state.active:
            return
        if active:
            self._on_backlogged(state)  # sees the others only: state is not active yet
            # Ties go to the tenant backlogged longest: by registration order, a newcomer lifted to
            # the floor would overtake a tenant already waiting there, and with many light tenants
            # a queued request could be overtaken without bound (its TTFT forecast with it).
            self._orders += 1
            state.order = self._orders
            state.active = True
            self._n_active += 1
            self._sum_user += state.user
            self._sum_resource += state.resource
            self._on_active(state)
        else:
            state.active = False
            self._n_active -= 1
            if self._n_active == 0:
                self._sum_user = self._sum_resource = 0.0
            else:
                self._sum_user -= state.user
                self._sum_resource -= state.resource
            self._last_left = state.name
            self._on_idle(state)

    def _add(self, state: TenantState, d_user: float, d_resource: float) -> None:
        """Every counter change goes through here, so the running sums stay right."""
        state.user += d_user
        state.resource += d_resource
        if state.active:
            self._sum_user += d_user
            self._sum_resource += d_resource
            self._on_counters(state)

    def _set_counters(self, state: TenantState, user: float, resource: float) -> None:
        self._add(state, user - state.user, resource - state.resource)

    def _lift_targets(self, state: TenantState) -> tuple[float, float] | None:
        """(U floor, R floor) for a tenant becoming backlogged: the minimum over the other
        backlogged tenants, or, when none is, the counters of the tenant that left the backlog
        last. None when there is nothing to lift to."""
        if self._n_active:
            return self._min_active()
        last = self.tenants.get(self._last_left) if self._last_left is not None else None
        if last is None or last is state:
            return None
        return last.user, last.resource

    def _min_active(self) -> tuple[float, float]:
        """(min U, min R) over backlogged tenants. O(T) here; policies override it with heaps."""
        act = [t for t in self.tenants.values() if t.active]
        return min(t.user for t in act), min(t.resource for t in act)

    # -- policy hooks --------------------------------------------------------------------
    @abstractmethod
    def _select(self) -> TenantState | None:
        """The backlogged, unpaused tenant to serve next (each policy's rule)."""

    def _on_backlogged(self, state: TenantState) -> None:
        """The tenant is becoming backlogged (called before it counts as active): VTC's lift point."""
        if not self.lift:
            return
        floor = self._lift_targets(state)
        if floor is None:
            return
        user = max(state.user, floor[0])
        resource = max(state.resource, floor[1]) if self.lift_resource else state.resource
        self._set_counters(state, user, resource)

    # Index hooks: no-ops here, overridden only by the policies that keep an index (not abstract)
    def _on_active(self, state: TenantState) -> None:  # noqa: B027
        """The tenant has just become backlogged (it counts in the sums now): index it."""

    def _on_idle(self, state: TenantState) -> None:  # noqa: B027
        """The tenant left the backlog (queue empty or paused): drop it from indexes."""

    def _on_counters(self, state: TenantState) -> None:  # noqa: B027
        """A backlogged tenant's counters changed: re-index it."""

    def _on_head_changed(self, state: TenantState) -> None:  # noqa: B027
        """The head of a backlogged tenant's queue was removed without being dispatched."""

    def _charge(self, state: TenantState, predicted: Work) -> None:
        """Charge the predicted work when a request is dispatched:
        U += (w_p*in + w_q*out)/weight, R += predicted resource/weight."""
        self._add(state, self.token_cost(predicted) / state.weight,
                  self.predicted_resource(predicted) / state.weight)
