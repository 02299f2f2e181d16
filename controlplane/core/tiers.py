"""Two fair queues, one per tier of SLO classes, and the rule that interleaves them.

A class with a latency target that is refused when unattainable (interactive) belongs to the
*latency* tier; a class that is deferred until a deadline (batch) to the *deferrable* tier. Each
tier is its own fair queue (the policy's scheduler: fcfs, vtc, equinox or wrr) over its tenants.

Why two: in one fair queue a batch tenant's 12k-token prompt is as likely to be next as an
interactive request, and once dispatched it holds a window slot and the prefill meter for seconds,
so admission refuses the interactive tenants, who are then never backlogged, and the batch tenants
take everything (fairness inverts). Instead each tier gets its weighted share:

- each tier's *share* is the summed weight of its active tenants (that sent a request within the
  last RATE_WINDOW_S, refused ones too, or have one queued) over that of both tiers;
- each tier's *service* is the token cost (w_p * prompt + w_q * predicted output) it dispatched,
  decayed with time constant HORIZON_S;
- without admission, the next request comes from the tier whose service / share is lower (the
  latency tier on ties), so over the horizon each tier gets its weighted share;
- with admission, the latency tier goes first (its queue is bounded by admission: what could not
  start within its TTFT was refused), and is held to its share from the other side: while it is
  ahead of its share and the deferrable tier *starves* (its head has waited a quarter of its
  deadline, or it has been backlogged for a few seconds while the latency tier had STARVING_BEHIND
  times its service per unit of weight), new
  latency requests are refused (`over_share`, tier_balance.py), and a starving deferrable
  request is dispatched even into a prefill queue that a latency request would wait behind (the
  latency tier's forecasts then see that queue);
- while the latency tier is refusing requests for lack of capacity (not ones that no engine could
  serve in time even idle), a deferrable tier ahead of its share dispatches nothing: its requests
  wait (they have a deadline, not a TTFT), and the capacity goes to the refused tier.

So refusals fall on the tier furthest above its fair share. Within a tier, the policy's scheduler
chooses. The core also keeps window slots and prefill headroom free for the latency tier
(`TierBalance._leaves_room`, tier_balance.py), so an interactive request rarely waits for a long batch request.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from controlplane.core.policy import Policy, SLOClassPolicy
from fairness import Scheduler, Work, make_scheduler

LATENCY, DEFERRABLE = "latency", "deferrable"
TIERS = (LATENCY, DEFERRABLE)
HORIZON_S = 30.0  # decay time constant of each tier's service
# The deferrable tier starves when the latency tier has had this many times its service per unit of
# weight. Waiting for its head to age a quarter of its deadline was not enough: a fair queue (VTC)
# keeps rotating the head, so on a mix of bursty interactive and batch tenants at 1.5x the batch
# tier got a tenth of its share until the interactive load ended, and its waits hid behind the run's end.
STARVING_BEHIND = 2.0


def tier_of(cls: SLOClassPolicy) -> str:
    return DEFERRABLE if cls.on_miss == "defer" else LATENCY


@dataclass(slots=True)
class Tier:
    name: str
    scheduler: Scheduler
    queued: int = 0
    tokens: float = 0.0  # prompt tokens queued
    tenant_tokens: dict[str, float] = field(default_factory=dict)
    backlogged_weight: float = 0.0  # weight of the tenants with requests queued
    service: float = 0.0  # decayed token cost dispatched
    stamp: float = 0.0

    def weight(self, active: Mapping[str, float]) -> float:
        """Its weight for sharing between tiers: of its tenants that asked lately (`active`, per
        tier) or have requests queued, whichever is more."""
        return max(active[self.name], self.backlogged_weight, 1e-9)

    def served(self, now: float) -> float:
        if now > self.stamp:
            self.service *= math.exp(-(now - self.stamp) / HORIZON_S)
            self.stamp = now
        return self.service


class TieredQueue:
    """The core's queue: push, remove and pop by tier; the reads the admin API and metrics use
    (`queued`, `backlogged`, `counters`, `tenants`) span both tiers."""

    def __init__(self, make: Callable[[], Scheduler], weight: Callable[[str], float]) -> None:
        self.tiers = {name: Tier(name, make()) for name in TIERS}
        self._weight = weight
        self._tier_of_key: dict[Hashable, str] = {}

    # -- queue operations ------------------------------------------------------------------
    def push(self, tier: str, tenant: str, key: Hashable, work: Work, prompt_tokens: float) -> None:
        q = self.tiers[tier]
        if q.scheduler.queued(tenant) == 0:
            q.backlogged_weight += self._weight(tenant)
        q.scheduler.push(tenant, key, work)
        self._tier_of_key[key] = tier
        q.queued += 1
        q.tokens += prompt_tokens
        q.tenant_tokens[tenant] = q.tenant_tokens.get(tenant, 0.0) + prompt_tokens

    def remove(self, tenant: str, key: Hashable, prompt_tokens: float, *, popped: bool = False) -> None:
        """Take a queued request out (`popped`: the scheduler already dequeued it)."""
        q = self.tiers[self._tier_of_key.pop(key)]
        if not popped:
            q.scheduler.remove(tenant, key)
        q.queued -= 1
        q.tokens -= prompt_tokens
        q.tenant_tokens[tenant] -= prompt_tokens
        if q.scheduler.queued(tenant) == 0:
            q.backlogged_weight -= self._weight(tenant)
            del q.tenant_tokens[tenant]

    def order(self, now: float, active: Mapping[str, float], latency_first: bool) -> list[Tier]:
        """Tiers with queued requests, the one to serve first first (module docstring)."""
        ready = [q for q in self.tiers.values() if q.queued]
        if len(ready) < 2:
            return ready
        lat, dfr = ready
        if not latency_first and self.ahead_of_share(lat, now, active):
            return [dfr, lat]
        return [lat, dfr]

    def other(self, q: Tier) -> Tier:
        return self.tiers[DEFERRABLE if q.name == LATENCY else LATENCY]

    def ahead_of_share(self, q: Tier, now: float, active: Mapping[str, float], by: float = 1.0) -> bool:
        """Whether tier `q` has had more than `by` times the other tier's service per unit of weight."""
        other = self.other(q)
        return q.served(now) / q.weight(active) > by * other.served(now) / other.weight(active)

    def charge(self, tier: Tier, now: float, cost: float) -> None:
        tier.served(now)
        tier.service += cost

    # -- reads ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The policy's scheduler (both tiers run the same one)."""
        return self.tiers[LATENCY].scheduler.name

    def __len__(self) -> int:
        return sum(len(q.scheduler) for q in self.tiers.values())

    @property
    def total(self) -> int:
        return sum(q.queued for q in self.tiers.values())

    def queued(self, tenant: str) -> int:
        return sum(q.scheduler.queued(tenant) for q in self.tiers.values())

    def queued_by_tenant(self) -> dict[str, int]:
        """Every tenant the queues know (the policy's among them), with its queued requests: one
        pass, for readers of many tenants at once (`queued(tenant)` costs a call per tier)."""
        out: dict[str, int] = {}
        for q in self.tiers.values():
            for name, state in q.scheduler.tenants.items():
                out[name] = out.get(name, 0) + len(state.queue)
        return out

    def backlogged(self) -> list[str]:
        seen: dict[str, None] = {}
        for q in self.tiers.values():
            seen.update(dict.fromkeys(q.scheduler.backlogged()))
        return list(seen)

    def counters(self, tenant: str) -> dict[str, float]:
        """The tenant's counters in the tier it has queued or been served in (latency first)."""
        for q in self.tiers.values():
            if tenant in q.scheduler.tenants and (q.scheduler.queued(tenant) or q.scheduler.tenants[tenant].user):
                return q.scheduler.counters(tenant)
        return self.tiers[LATENCY].scheduler.counters(tenant)

    @property
    def tenants(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for q in self.tiers.values():
            out.update(q.scheduler.tenants)
        return out

    def schedulers(self) -> list[Scheduler]:
        return [q.scheduler for q in self.tiers.values()]


def tiered_queue(policy: Policy, weight_of: Callable[[str], float]) -> TieredQueue:
    """The two tiers' queues, each a `policy.scheduler` over its tenants (`weight_of`: a tenant's
    weight in the policy in force)."""
    params = {"alpha": policy.holistic_alpha} if policy.scheduler == "equinox" else {}

    def make() -> Scheduler:
        scheduler = make_scheduler(policy.scheduler, None, **params)  # weights: configure_scheduler
        configure_scheduler(scheduler, policy)
        return scheduler

    return TieredQueue(make, weight_of)


def configure_scheduler(scheduler: Scheduler, policy: Policy) -> None:
    """A tenant's weight lives in the policy; the schedulers' copies are made here only, and
    the tiers' weight sums (`Tier.backlogged_weight`, `Demand`'s active weights) are recomputed from
    the policy by `DecisionCore.set_policy`: every weight the core uses is the policy's."""
    for name, tp in policy.tenants.items():
        scheduler.set_weight(name, tp.weight)
        scheduler.set_paused(name, tp.paused)
    if hasattr(scheduler, "set_alpha"):
        scheduler.set_alpha(policy.holistic_alpha)
