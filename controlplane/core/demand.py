"""Demand: who has asked lately and who has been getting the dispatches, and the wait it implies.

The core's forecasts need what the queue alone does not say: which tenants are active (asked within
RATE_WINDOW_S, refused ones too: a tier's share follows what its tenants ask for), how fast each
tier has been dispatching, and what share of the dispatches a backlogged tenant has really been
getting (over SHARE_WINDOW_S). `Demand.ahead` turns that and the queue into the requests and prompt
tokens that will be served before a new request. Pure: time is passed in.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from controlplane.core.engine_state import RATE_WINDOW_S
from controlplane.core.tiers import DEFERRABLE, TIERS, Tier, TieredQueue

# The window of the measured dispatch shares and tier rates: half a batch deadline (120 s) or so,
# long enough to average over bursts (20 s refused 39 % of a steady batch tenant at 1x on ServeGen
# m-small, 60 s 25 %), short enough to see a sustained overload well within the deadline.
SHARE_WINDOW_S = 60.0
MIN_BACKLOG_S = 3.0  # how long a tenant must have been backlogged before its share says anything


class Demand:
    def __init__(self, weight_of: Callable[[str], float]) -> None:
        self.weight_of = weight_of  # the policy's weight of a tenant (read at every change)
        self._arrivals: deque[tuple[float, str, str]] = deque()  # (time, tenant, tier)
        self._counts: dict[tuple[str, str], int] = {}  # arrivals per (tenant, tier) in the window
        self.tier_arrivals = {tier: 0 for tier in TIERS}
        self._active = {tier: 0.0 for tier in TIERS}  # weight of the tenants that asked lately, per tier
        self._dispatches: deque[tuple[float, str, str]] = deque()
        self._dispatched: dict[str, int] = {}  # per tenant, in the share window
        self._tier_dispatched = {tier: 0 for tier in TIERS}
        self._backlogged_since: dict[tuple[str, str], float] = {}

    # -- arrivals ------------------------------------------------------------------------------
    def arrived(self, now: float, tenant: str, tier: str) -> None:
        self.active_weight(now)
        self._arrivals.append((now, tenant, tier))
        if (tenant, tier) not in self._counts:
            self._counts[tenant, tier] = 0
            self._active[tier] += self.weight_of(tenant)
        self._counts[tenant, tier] += 1
        self.tier_arrivals[tier] += 1

    def active_weight(self, now: float) -> dict[str, float]:
        """Per tier, the summed weight of the tenants that asked within RATE_WINDOW_S of `now`."""
        while self._arrivals and self._arrivals[0][0] < now - RATE_WINDOW_S:
            _, tenant, tier = self._arrivals.popleft()
            self._counts[tenant, tier] -= 1
            self.tier_arrivals[tier] -= 1
            if not self._counts[tenant, tier]:
                del self._counts[tenant, tier]
                self._active[tier] -= self.weight_of(tenant)
        return self._active

    def arrivals_of(self, tenant: str, tier: str) -> int:
        return self._counts.get((tenant, tier), 0)

    def reweigh(self) -> None:
        """The weights changed (a new policy): sum the active tenants' weights again."""
        self._active = {tier: sum(self.weight_of(n) for n, k in self._counts if k == tier) for tier in self._active}

    # -- dispatches and backlogs ---------------------------------------------------------------
    def dispatched(self, now: float, tenant: str, tier: str) -> None:
        self._expire(now)
        self._dispatches.append((now, tenant, tier))
        self._dispatched[tenant] = self._dispatched.get(tenant, 0) + 1
        self._tier_dispatched[tier] += 1

    def backlog(self, now: float, tenant: str, tier: str, queued: int, tier_queued: int) -> None:
        """The tenant's queue in `tier` now holds `queued` requests, the whole tier `tier_queued`."""
        for key, n in (((tenant, tier), queued), (("", tier), tier_queued)):  # "": the tier as a whole
            if not n:
                self._backlogged_since.pop(key, None)
            else:
                self._backlogged_since.setdefault(key, now)

    def backlogged_for(self, now: float, tier: str) -> float:
        """Seconds `tier` has had requests queued without a break (0 if none is queued)."""
        since = self._backlogged_since.get(("", tier))
        return 0.0 if since is None else now - since

    def tier_rate(self, now: float, tier: str) -> float:
        """Requests/s dispatched from `tier` over the share window."""
        self._expire(now)
        return self._tier_dispatched[tier] / SHARE_WINDOW_S

    def measured_share(self, now: float, tenant: str, tier: str) -> float | None:
        """The tenant's share of all dispatches over the share window, if it has been backlogged in
        `tier` for MIN_BACKLOG_S at least (before that, what it got says only what it asked for).
        Smoothed by one dispatch, so a tenant that got nothing has a small share, not none."""
        since = self._backlogged_since.get((tenant, tier))
        if since is None or now - since < MIN_BACKLOG_S:
            return None
        self._expire(now)
        return (self._dispatched.get(tenant, 0) + 1) / (len(self._dispatches) + 1)

    def _expire(self, now: float) -> None:
        while self._dispatches and self._dispatches[0][0] < now - SHARE_WINDOW_S:
            _, tenant, tier = self._dispatches.popleft()
            self._tier_dispatched[tier] -= 1
            self._dispatched[tenant] -= 1
            if not self._dispatched[tenant]:
                del self._dispatched[tenant]

    # -- the wait ------------------------------------------------------------------------------
    def ahead(self, now: float, queues: TieredQueue, tenant: str, tier: str, fair: bool,
              mean_prompt: float) -> tuple[float, float]:
        """Requests and prompt tokens that will be served before a new request of `tenant` is.

        Within its tier: FCFS, everything queued now. Fair policies: a tenant with nothing queued
        is served almost at once (the lift rule puts it level with the others): one request per
        other backlogged weight unit ahead; a backlogged tenant, see `_backlogged_ahead`. While the
        other tier is backlogged it takes its share of the dispatches meanwhile (tiers.py), which
        stretches the wait by 1 / this tier's share. A deferrable tenant backlogged for
        MIN_BACKLOG_S is forecast from the share of the dispatches it has really been getting,
        when that is the longer wait: at 3x load a batch tenant sending 72 % of all requests was
        forecast a 52 s wait from its modelled share and waited 110 s, and half of its admitted
        requests missed their deadline.
        """
        q = queues.tiers[tier]
        total, tokens = float(q.queued), q.tokens
        if fair and total:
            own = float(q.scheduler.queued(tenant))
            if not own:
                ahead = min(total, q.backlogged_weight / self.weight_of(tenant))
                total, tokens = ahead, tokens * ahead / total
            else:
                total, tokens = self._backlogged_ahead(now, tenant, q, own, mean_prompt)
        other = queues.other(q)
        if other.queued:
            active = self.active_weight(now)
            mine = q.weight(active)
            stretch = (mine + other.weight(active)) / mine
            total, tokens = total * stretch, tokens * stretch
        measured = self.measured_share(now, tenant, tier) if tier == DEFERRABLE else None
        if measured is not None:
            waited = (q.scheduler.queued(tenant) + 1) / measured - 1
            if waited > total:
                own = float(q.scheduler.queued(tenant))
                total, tokens = waited, _tokens_ahead(q, tenant, own, waited, mean_prompt)
        return total, tokens

    def _backlogged_ahead(self, now: float, tenant: str, q: Tier, own: float,
                          mean_prompt: float) -> tuple[float, float]:
        """Requests and tokens ahead of a new request of a tenant with `own` requests queued.

        Its weight's share among the tenants being served (those backlogged now and those that
        asked lately: a light tenant is backlogged only for a moment, yet takes its turn every
        round) is guaranteed: its own queue scaled up by 1/share passes first. A deferrable request
        (a deadline of minutes, so a long queue) also counts on what the others leave: they cannot
        take more than they ask for (max-min), measured by their share of the tier's recent
        arrivals (without it, a heavy batch tenant among many light ones was refused at 0.8x load).
        And the others put ahead no more than they ask for meanwhile: what they have queued, plus
        their arrivals while the queue drains at the tier's recent dispatch rate (a few light
        tenants that asked lately otherwise counted as a dozen requests ahead, and at 0.8x load
        15 % of interactive requests were refused that would have met their SLO).
        """
        weight = self.weight_of(tenant)
        share = weight / max(q.backlogged_weight, self.active_weight(now)[q.name], weight)
        asked = self.tier_arrivals[q.name]
        mine = self.arrivals_of(tenant, q.name)
        if q.name == DEFERRABLE and asked:
            share = max(share, mine / asked)
        modelled = (own + 1) / share - 1
        rate = self.tier_rate(now, q.name)
        drain_s = (q.queued + 1) / rate if rate > 0 else math.inf
        asked_meanwhile = q.queued + (asked - mine) / RATE_WINDOW_S * drain_s
        ahead = asked_meanwhile if asked_meanwhile < modelled else modelled  # (NaN without a rate: modelled)
        return ahead, _tokens_ahead(q, tenant, own, ahead, mean_prompt)


def _tokens_ahead(q: Tier, tenant: str, own: float, ahead: float, mean_prompt: float) -> float:
    """The prompt tokens of `ahead` requests served before a new one of `tenant` (`own` of them its
    own): its own queued prompts, then the others' as queued, then the mean prompt for each they ask
    meanwhile. (Its own prompts scaled up by 1 / share made a backlogged tenant of short prompts
    look as if everyone sent short prompts: it was admitted where a tenant below its fair share was
    refused; tests/test_fair_admission.py.)"""
    mine = q.tenant_tokens.get(tenant, 0.0)
    others = q.queued - own
    from_queue = min(others, max(0.0, ahead - own))
    tokens = mine + (q.tokens - mine) * from_queue / others if others > 0 else mine
    return tokens + max(0.0, ahead - own - max(0.0, others)) * mean_prompt

