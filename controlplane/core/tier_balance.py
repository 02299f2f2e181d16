"""How the decision core shares the engines between its two tiers (tiers.py): the latency tier
runs first, keeps a reserve of window slots and a short prefill queue, and is held to its weighted
share while the deferrable tier starves (docs/admission.md, "Two tiers of SLO classes").

A mixin of `DecisionCore` (core.py), apart only to keep each module about one thing: it reads the
core's state, declared below, and changes none of it beyond advancing its windows (arrivals,
tier service) to `now`.
"""
from __future__ import annotations

import math

from controlplane.core.demand import MIN_BACKLOG_S, Demand
from controlplane.core.engine_state import RATE_WINDOW_S, EngineState, Tracked
from controlplane.core.learning import Costs
from controlplane.core.policy import Policy
from controlplane.core.tiers import DEFERRABLE, LATENCY, STARVING_BEHIND, TieredQueue, tier_of


class TierBalance:
    policy: Policy
    scheduler: TieredQueue
    demand: Demand
    costs: Costs
    engines: dict[str, EngineState]
    requests: dict[str, Tracked]
    _inflight_deferrable: dict[str, int]
    latency_refused_at: float

    def _latency_reserve(self, eng: EngineState, now: float) -> int:
        """Window slots deferrable requests leave free on `eng` for the latency tier: its expected
        concurrency (Little's law: recent arrival rate x mean service time) plus one for the next
        arrival, but never more than the latency tier's weighted share of the window."""
        active = self.demand.active_weight(now)
        if eng.window <= 1 or not active[LATENCY]:
            return 0
        rate = self.demand.tier_arrivals[LATENCY] / RATE_WINDOW_S / max(1, len(self.engines))
        need = math.ceil(rate * self.costs.latency_service_s) + 1
        w_lat = self.scheduler.tiers[LATENCY].weight(active)
        w_dfr = self.scheduler.tiers[DEFERRABLE].weight(active)
        return min(need, max(1, int(eng.window * w_lat / (w_lat + w_dfr))))

    def _deferrable_starving(self, now: float) -> bool:
        """Whether the deferrable tier starves: backlogged for MIN_BACKLOG_S, it has had less than
        1 / STARVING_BEHIND of the latency tier's service per unit of weight; or its head has
        waited a quarter of its deadline."""
        head = self.scheduler.tiers[DEFERRABLE].scheduler.peek()
        if head is None:
            return False
        if self.demand.backlogged_for(now, DEFERRABLE) >= MIN_BACKLOG_S and self.scheduler.ahead_of_share(
                self.scheduler.tiers[LATENCY], now, self.demand.active_weight(now), by=STARVING_BEHIND):
            return True  # (not in its first seconds, when any latency service is "twice" none)
        t = self.requests[str(head[1])]
        return t.deadline is not None and now - t.arrival >= 0.25 * (t.deadline - t.arrival)

    def _over_share(self, now: float, tier: str) -> bool:
        """With admission, the latency tier runs first; it is held to its weighted share by refusing
        its new requests while it is ahead of that share and the deferrable tier is starving."""
        return (self.policy.admission and tier == LATENCY and self._deferrable_starving(now)
                and self.scheduler.ahead_of_share(self.scheduler.tiers[LATENCY], now, self.demand.active_weight(now)))

    def _leaves_room(self, e: EngineState, now: float, t: Tracked) -> bool:
        """Whether a deferrable request may go to `e` now and leave the latency tier what it needs:
        its reserve of window slots, and a prefill queue short enough that a latency request
        arriving next still gets its first token within half of its TTFT budget (a longer prompt
        goes only when the engine has nothing else to prefill)."""
        if self._inflight_deferrable[e.spec.name] >= e.window - self._latency_reserve(e, now):
            return False
        if now - self.latency_refused_at < RATE_WINDOW_S and self.scheduler.ahead_of_share(
                self.scheduler.tiers[DEFERRABLE], now, self.demand.active_weight(now)):
            return False
        if not self.demand.active_weight(now)[LATENCY] or e.profile.prefill_b <= 0:
            return True
        if self._deferrable_starving(now):  # it gets its share; the latency tier's admission sees the queue
            return True
        ttfts = [c.ttft_s for c in self.policy.slo_classes.values() if c.ttft_s is not None and tier_of(c) == LATENCY]
        if not ttfts:
            return True
        waiting = max(e.waiting_tokens, e.reported_waiting_tokens)
        room = 0.5 * self.policy.admission_margin * min(ttfts) / e.profile.prefill_b
        return waiting <= 0 or waiting + t.prompt_cost <= room

    def _free_engines(self, now: float, t: Tracked) -> tuple[list[EngineState], bool]:
        """Engines `t` may be dispatched to now: a slot in the window (deferrable requests leave the
        latency reserve free) and prompt tokens in the prefill meter (a prompt longer than the
        meter's burst goes when the meter is full, and runs alone). Also: whether only the meter
        held it back (then nothing else may take the meter's tokens first)."""
        free, metered = [], False
        for e in self.engines.values():
            if not e.healthy or len(e.in_flight) >= e.window:
                continue
            if t.tier == DEFERRABLE and not self._leaves_room(e, now, t):
                continue
            if e.meter is not None and e.meter.wait_for(now, t.prompt_cost) > 0:
                metered = True
                continue
            free.append(e)
        return free, metered and not free
