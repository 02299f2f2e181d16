"""The measured side of a backlogged tenant's wait (controlplane/core/demand.py) and the
core's uses of it: the bound on what other tenants put ahead, the measured share of a deferrable
tenant, and the deferrable tier's starvation by service share."""
from __future__ import annotations

import pytest

from controlplane.core.events import RequestSpec
from controlplane.core.demand import MIN_BACKLOG_S, SHARE_WINDOW_S, Demand
from controlplane.core.policy import SLOClassPolicy, TenantPolicy
from controlplane.core.tiers import DEFERRABLE, LATENCY
from fairness import Work
from tests.core_helpers import make_core, make_policy


def test_a_share_is_measured_only_after_the_tenant_has_waited() -> None:
    s = Demand(lambda tenant: 1.0)
    s.backlog(0.0, "a", DEFERRABLE, 1, 1)
    for i in range(9):
        s.dispatched(0.1 * i, "b", DEFERRABLE)
    s.dispatched(1.0, "a", DEFERRABLE)
    assert s.measured_share(MIN_BACKLOG_S - 0.1, "a", DEFERRABLE) is None
    assert s.measured_share(MIN_BACKLOG_S, "a", DEFERRABLE) == pytest.approx((1 + 1) / (10 + 1))
    assert s.measured_share(MIN_BACKLOG_S, "a", LATENCY) is None  # backlogged in the other tier only
    s.backlog(4.0, "a", DEFERRABLE, 0, 0)  # its queue emptied: what it gets now says only what it asks
    assert s.measured_share(5.0, "a", DEFERRABLE) is None


def test_shares_and_tier_rates_forget_what_left_the_window() -> None:
    s = Demand(lambda tenant: 1.0)
    s.backlog(0.0, "a", DEFERRABLE, 3, 3)
    for i in range(10):
        s.dispatched(float(i), "b", LATENCY)
    assert s.tier_rate(9.0, LATENCY) == pytest.approx(10 / SHARE_WINDOW_S)
    assert s.tier_rate(9.0, DEFERRABLE) == 0.0
    late = 9.0 + SHARE_WINDOW_S + 0.5  # everything before 9.5 has left
    assert s.tier_rate(late, LATENCY) == 0.0
    assert s.measured_share(late, "a", DEFERRABLE) == 1.0  # smoothed: nobody got anything


def _ahead(core, now: float, tenant: str, tier: str) -> tuple[float, float]:
    return core.demand.ahead(now, core.scheduler, tenant, tier, True, core.costs.mean_prompt)


def _queue(core, tenant: str, tier: str, n: int, now: float = 0.0) -> None:
    for i in range(n):
        core.scheduler.push(tier, tenant, f"{tenant}-{tier}-{i}", Work(500, 50), 500.0)
        core.demand.backlog(now, tenant, tier, core.scheduler.tiers[tier].scheduler.queued(tenant), core.scheduler.tiers[tier].queued)


def test_light_tenants_that_asked_lately_put_ahead_only_what_they_ask_for_meanwhile() -> None:
    tenants = {f"t{i}": TenantPolicy(1.0) for i in range(8)}
    core = make_core(make_policy(scheduler="vtc", tenants=tenants))
    now = 4.0
    for i in range(1, 8):  # seven light tenants each asked once lately (and were served at once)
        core.demand.arrived(now - 1.0, f"t{i}", LATENCY)
    core.demand.arrived(now - 1.0, "t0", LATENCY)
    _queue(core, "t0", LATENCY, 2)
    # without a dispatch rate the guaranteed share alone counts: 1/8, so (2 + 1) x 8 - 1 ahead
    assert _ahead(core, now, "t0", LATENCY)[0] == pytest.approx(23.0)
    for i in range(50):  # the tier dispatched 2.5 requests/s lately
        core.demand.dispatched(now - 19.0 + 0.38 * i, "t1", LATENCY)
    drain = (2 + 1) / (50 / SHARE_WINDOW_S)
    ahead, tokens = _ahead(core, now, "t0", LATENCY)
    assert ahead == pytest.approx(2 + 7 / 5.0 * drain)  # its 2 queued + 7 arrivals per 5 s while they drain
    assert tokens == pytest.approx(1000 + (ahead - 2) * core.costs.mean_prompt)


def test_a_deferrable_tenant_that_has_waited_is_forecast_from_what_it_really_got() -> None:
    core = make_core(make_policy(scheduler="vtc", tenants={"bulk": TenantPolicy(1.0, "batch"),
                                                          "other": TenantPolicy(1.0, "batch")}))
    _queue(core, "bulk", DEFERRABLE, 9, now=0.0)
    core.demand.arrived(0.0, "bulk", DEFERRABLE)
    before = _ahead(core, 1.0, "bulk", DEFERRABLE)[0]
    for i in range(19):  # it got 1 of the last 20 dispatches while backlogged
        core.demand.dispatched(1.0 + 0.1 * i, "other", DEFERRABLE)
    core.demand.dispatched(3.0, "bulk", DEFERRABLE)
    assert _ahead(core, MIN_BACKLOG_S - 0.5, "bulk", DEFERRABLE)[0] == before  # not backlogged long enough yet
    measured = (1 + 1) / (20 + 1)
    assert _ahead(core, MIN_BACKLOG_S + 0.5, "bulk", DEFERRABLE)[0] == pytest.approx((9 + 1) / measured - 1)


def test_the_deferrable_tier_starves_when_the_latency_tier_had_twice_its_service_per_weight() -> None:
    policy = make_policy(scheduler="vtc", admission=True, slo_classes={"interactive": SLOClassPolicy(0.5, 0.05),
                                                       "batch": SLOClassPolicy(None, None, 600.0, "defer")})
    core = make_core(policy)
    now = 10.0
    core.demand.arrived(now, "a", LATENCY)
    for i in range(400):  # the batch tenant fills what the window leaves it and queues the rest
        core.arrive(now, RequestSpec(f"b{i}", "bulk", 500, 50))
    lat, dfr = core.scheduler.tiers[LATENCY], core.scheduler.tiers[DEFERRABLE]
    assert dfr.queued  # its head has waited nothing of its 600 s deadline
    lat.service, dfr.service = 2100.0, 1000.0
    assert not core._deferrable_starving(now)  # in its first seconds any latency service is "twice" none
    later = now + MIN_BACKLOG_S  # (both tiers' service decays alike meanwhile)
    lat.service = 1900.0
    assert not core._deferrable_starving(later)  # 1.9x: behind, but not starving
    lat.service = 2100.0
    assert core._deferrable_starving(later)  # 2.1x
    assert core._over_share(later, LATENCY)  # new latency requests are refused while it is so far ahead


def test_the_tokens_ahead_of_a_backlogged_tenant_are_its_own_then_the_others_as_queued() -> None:
    core = make_core(make_policy(scheduler="vtc", tenants={"a": TenantPolicy(1.0), "b": TenantPolicy(1.0)}))
    core.scheduler.push(LATENCY, "a", "a-0", Work(100, 50), 100.0)
    for i in range(3):
        core.scheduler.push(LATENCY, "b", f"b-{i}", Work(2000, 50), 2000.0)
    # no dispatch rate yet: its guaranteed share (1/2) alone counts, (1 + 1) x 2 - 1 = 3 requests ahead
    ahead, tokens = _ahead(core, 1.0, "a", LATENCY)
    assert ahead == pytest.approx(3.0)
    # its own 100 tokens, then two of b's 2,000-token prompts (not its own short prompt scaled up: 200)
    assert tokens == pytest.approx(100 + 2 * 2000)


def test_a_deferrable_tenants_measured_wait_counts_the_mean_prompt_for_what_others_ask_meanwhile() -> None:
    core = make_core(make_policy(scheduler="vtc", tenants={"bulk": TenantPolicy(1.0, "batch"),
                                                          "other": TenantPolicy(1.0, "batch")}))
    _queue(core, "bulk", DEFERRABLE, 9, now=0.0)
    core.demand.arrived(0.0, "bulk", DEFERRABLE)
    for i in range(19):
        core.demand.dispatched(1.0 + 0.1 * i, "other", DEFERRABLE)
    core.demand.dispatched(3.0, "bulk", DEFERRABLE)
    ahead, tokens = _ahead(core, MIN_BACKLOG_S + 0.5, "bulk", DEFERRABLE)
    assert ahead == pytest.approx((9 + 1) / (2 / 21) - 1)
    # its own 9 x 500 queued tokens, and the mean prompt for each other request served meanwhile
    assert tokens == pytest.approx(9 * 500 + (ahead - 9) * core.costs.mean_prompt)
