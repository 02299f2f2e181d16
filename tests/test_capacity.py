"""The scaling rule (controlplane/core/capacity.py): pure, monotone in load, stable under a steady
load, never below what the SLO needs by the model; and the signal read from a live core."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.core.capacity import (BURST_RESERVE, Behaviour, CapacityParams, Controller, PoolLoad, Replica, Stabiliser, need,
                                        replica_capacity, replica_window, split_pd)
from controlplane.core.core import DecisionCore
from controlplane.core.events import RequestSpec
from controlplane.predict.output_length import OutputLengthPredictor
from engine_adapter.sim.profile import load_profile
from replay.runner import default_policy, engine_specs

PROFILE = load_profile()
REPLICA = Replica(PROFILE.step, PROFILE.kv_capacity_tokens, PROFILE.max_running_requests)
PARAMS = CapacityParams()
BARE = CapacityParams(burst_reserve=0.0)  # the proportional headroom alone


def load(rps: float, **kw: object) -> PoolLoad:
    base: dict[str, object] = dict(serving=1, latency_rps=rps, deferrable_rps=0.0, mean_prompt=600.0,
                                   mean_output=250.0, tpot_budget_s=0.045)
    base.update(kw)
    return PoolLoad(**base)  # type: ignore[arg-type]


def test_capacity_follows_the_step_model() -> None:
    """At the capacity rate the steady step time of continuous batching (decodes of the batch plus
    the prompts that arrived during the step) is the TPOT budget, and the batch fits the window."""
    p = PROFILE.step
    for prompt, out in ((600, 250), (150, 30), (3000, 400)):
        mu = replica_capacity(REPLICA, 0.04, prompt, out)
        s = 0.04
        for _ in range(200):  # the fixed point s = decode(B, B * (P + O)) + prefill of mu * s prompts
            batch = mu * out * s
            s = p.decode_time(batch, batch * (prompt + out)) + mu * s * (p.prefill_time(prompt) - p.prefill_a)
        w = replica_window(REPLICA, 0.04, prompt + out)
        assert s <= 0.04 * 1.001
        assert math.isclose(s, 0.04, rel_tol=1e-3) or math.isclose(mu * out * s, w, rel_tol=1e-3)
    # a tighter TPOT budget or longer requests: fewer requests per replica
    assert replica_capacity(REPLICA, 0.02, 600, 250) < replica_capacity(REPLICA, 0.04, 600, 250)
    assert replica_capacity(REPLICA, 0.04, 1200, 250) < replica_capacity(REPLICA, 0.04, 600, 250)


rates = st.floats(min_value=0.0, max_value=400.0, allow_nan=False)
currents = st.integers(min_value=0, max_value=40)
slacks = st.lists(st.floats(min_value=0.5, max_value=900.0), max_size=30).map(lambda x: tuple(sorted(x)))


@settings(max_examples=300, deadline=None)
@given(rates, rates, rates, currents, slacks)
def test_need_is_monotone_in_load(a: float, b: float, batch: float, current: int, deferred: tuple[float, ...]) -> None:
    lo, hi = sorted((a, b))
    assert need(load(lo, deferrable_rps=batch, deferred=deferred), REPLICA, PARAMS, current) <= \
        need(load(hi, deferrable_rps=batch, deferred=deferred), REPLICA, PARAMS, current)
    # more deferred work (a request added with any slack) never asks for fewer
    more = tuple(sorted(deferred + (a / 400 * 900 + 0.5,)))
    assert need(load(lo, deferred=deferred), REPLICA, PARAMS, current) <= \
        need(load(lo, deferred=more), REPLICA, PARAMS, current)


@settings(max_examples=300, deadline=None)
@given(rates, currents, st.floats(min_value=0.01, max_value=0.2))
def test_never_below_what_the_slo_needs_by_the_model(rps: float, current: int, budget: float) -> None:
    """Whatever the current count, the recommendation keeps the latency tier within its target
    utilisation of the replicas' SLO capacity (the model's own definition of meeting the SLO)."""
    x = load(rps, tpot_budget_s=budget)
    n = need(x, REPLICA, PARAMS, current)
    mu = replica_capacity(REPLICA, budget, x.mean_prompt, x.mean_output)
    n = min(n, PARAMS.max_replicas)
    assert rps <= n * mu * PARAMS.target_utilisation + 1e-9 or n == PARAMS.max_replicas
    # and the burst reserve: R replicas of load get R + BURST_RESERVE * sqrt(R)
    assert n >= rps / mu + BURST_RESERVE * math.sqrt(rps / mu) - 1e-9 or n == PARAMS.max_replicas
    if rps > 0:
        assert n >= 1


def test_batch_deadlines_add_replicas_only_when_the_headroom_cannot_meet_them() -> None:
    mu = replica_capacity(REPLICA, 0.045, 600, 250)
    rps = 3.0 * mu * PARAMS.target_utilisation  # three replicas' worth of interactive load
    assert need(load(rps), REPLICA, BARE, 0) == 3
    # a little batch work fits in the headroom of those three
    assert need(load(rps, deferrable_rps=0.5 * mu), REPLICA, BARE, 0) == 3
    # a backlog due soon does not
    due = tuple(float(k) * 0.01 + 1.0 for k in range(int(3 * mu)))
    assert need(load(rps, deferred=due), REPLICA, BARE, 0) > 3


def test_backpressure_asks_for_one_more_than_serving() -> None:
    assert need(load(0.1, serving=2, pressure="latency requests refused for capacity"), REPLICA, PARAMS, 2) == 3
    # a cold start in progress (3 provisioned, 2 serving) does not compound
    assert need(load(0.1, serving=2, pressure="KV cache nearly full"), REPLICA, PARAMS, 3) == 3


def test_scale_to_zero_only_after_the_idle_period() -> None:
    idle = load(0.0, in_flight=0)
    assert need(idle, REPLICA, PARAMS, 2) >= 1 if idle.idle_s < PARAMS.idle_to_zero_s else True
    assert need(load(0.0, idle_s=PARAMS.idle_to_zero_s), REPLICA, PARAMS, 2) == 0
    assert need(load(0.0, idle_s=10 * PARAMS.idle_to_zero_s), REPLICA, CapacityParams(min_replicas=1), 2) == 1
    # any demand, even a request refused while nothing serves, asks for one
    assert need(load(0.2, serving=0, idle_s=0.0), REPLICA, PARAMS, 0) == 1


def test_hysteresis_band() -> None:
    mu = replica_capacity(REPLICA, 0.045, 600, 250)
    at = lambda k: k * mu * PARAMS.target_utilisation  # noqa: E731
    assert need(load(at(4) * 1.01), REPLICA, BARE, 4) == 5  # up as soon as the need passes the count
    assert need(load(at(3) * 0.95), REPLICA, BARE, 4) == 4  # not down while within the tolerance
    assert need(load(at(3) * 0.85), REPLICA, BARE, 4) == 3


def test_small_fleets_keep_a_burst_reserve() -> None:
    """Square-root staffing: R replicas of latency load get R + BURST_RESERVE * sqrt(R) at least. A
    burst while a new replica loads (its cold start) is served by the spare; relative to the load
    the spare shrinks as the fleet grows, where the proportional headroom governs again."""
    mu = replica_capacity(REPLICA, 0.045, 600, 250)
    assert BURST_RESERVE == 2.5
    three = 3.0 * mu * PARAMS.target_utilisation  # R = 2.1: three replicas by the proportional headroom
    assert need(load(three), REPLICA, BARE, 0) == 3
    assert need(load(three), REPLICA, PARAMS, 0) == math.ceil(2.1 + 2.5 * math.sqrt(2.1)) == 6
    # R = 42: 60 replicas by the headroom, 42 + 2.5 * 6.5 = 58.2 by the reserve: the headroom governs
    big = 60.0 * mu * PARAMS.target_utilisation
    wide = CapacityParams(max_replicas=100)
    assert need(load(big), REPLICA, wide, 0) == need(load(big), REPLICA, CapacityParams(max_replicas=100,
                                                                                        burst_reserve=0.0), 0) == 60
    # and it scales down through the same tolerance band around the count in force
    assert need(load(three * 0.97), REPLICA, PARAMS, 6) == 6
    assert need(load(1.44 * mu), REPLICA, PARAMS, 6) == 5  # 1.44 + 2.5 * 1.2 = 4.44 < 0.9 * 5
    assert Controller(REPLICA).params.burst_reserve == BURST_RESERVE
    with pytest.raises(ValueError, match=r"burst_reserve must be in \[0, inf\], got -1.0"):
        CapacityParams(burst_reserve=-1.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1.0, max_value=300.0), st.lists(st.floats(min_value=-0.04, max_value=0.04),
                                                            min_size=50, max_size=300), st.integers(0, 30))
def test_no_flapping_under_a_steady_load(rps: float, noise: list[float], start: int) -> None:
    """A steady load measured with noise inside the tolerance: the count moves to its level in one
    direction and then stays (no reversal)."""
    ctl = Stabiliser(Behaviour(down_window_s=60.0))
    ctl.current = start
    seen = []
    for k, e in enumerate(noise):
        seen.append(ctl.update(5.0 * k, need(load(rps * (1 + e)), REPLICA, PARAMS, ctl.current)))
    steps = [b - a for a, b in zip(seen, seen[1:]) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps)


def test_stabiliser_follows_hpa_behaviour() -> None:
    s = Stabiliser(Behaviour(up_window_s=0.0, down_window_s=300.0, period_s=15.0, up_pods=4, up_percent=100.0,
                             down_pods=1, down_percent=50.0))
    s.current = 2
    assert s.update(0.0, 20) == 6  # up: max(4 pods, 100%) per period from 2
    assert s.update(5.0, 20) == 6  # still inside the period that began at 0
    assert s.update(15.0, 20) == 12
    assert s.update(30.0, 1) == 12  # down waits for the window's highest recommendation
    assert s.update(300.0, 1) == 12
    assert s.update(331.0, 1) == 6  # the window's recs are all 1 now; at most 50% per period
    assert s.update(350.0, 1) == 3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10)), min_size=1, max_size=60))
def test_stabiliser_is_monotone_in_its_recommendations(pairs: list[tuple[int, int]]) -> None:
    lo, hi = Stabiliser(), Stabiliser()
    for k, (r, extra) in enumerate(pairs):
        assert lo.update(10.0 * k, r) <= hi.update(10.0 * k, r + extra)


def test_split_pd_keeps_the_ratio() -> None:
    assert split_pd(2.5, 1.0, (1, 2)) == (3, 6)
    assert split_pd(0.5, 5.0, (1, 2)) == (3, 6)
    assert split_pd(0.0, 0.0, (2, 3)) == (0, 0)
    p, d = split_pd(3.2, 7.9, (2, 3))
    assert p / d == 2 / 3 and p >= 3.2 and d >= 7.9


def test_controller_reads_a_live_core() -> None:
    """The signal from a real DecisionCore: demand raises it, an idle pool goes to zero."""
    policy = default_policy("fcfs", admission=True, weights={"a": 1.0})
    core = DecisionCore(policy, engine_specs(PROFILE, 1), OutputLengthPredictor(seed=0, torch_expert=False))
    ctl = Controller(REPLICA, behaviour=Behaviour(down_window_s=10.0), params=CapacityParams(idle_to_zero_s=20.0))
    ctl.start(1, 0.0)
    for k in range(200):  # 40 req/s for 5 s: more than one replica serves at the SLO
        core.arrive(k * 0.025, RequestSpec(f"r{k}", "a", 600, 250))
    rec = ctl.step(core, 5.0)
    assert rec.actual == 1 and rec.desired > 1
    assert rec.desired == min(rec.need, 1 + Behaviour().up_pods)  # HPA's up limit from one: +4 pods a period
    assert rec.load.latency_rps == 40.0
    mu = rec.capacity_rps
    assert rec.desired >= math.ceil(40.0 / (mu * PARAMS.target_utilisation))
    assert rec.to_dict()["load"]["latency_rps"] == 40.0  # type: ignore[index]
    # a pool nobody asks anything of goes to zero after the idle period, not before
    idle = DecisionCore(policy, engine_specs(PROFILE, 2), OutputLengthPredictor(seed=0, torch_expert=False))
    ctl = Controller(REPLICA, behaviour=Behaviour(down_window_s=10.0), params=CapacityParams(idle_to_zero_s=20.0))
    ctl.start(2, 0.0)
    seen = [ctl.step(idle, 5.0 * k).desired for k in range(1, 12)]
    assert seen[0] >= 1 and seen[-1] == 0


def test_the_signal_while_serving(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real server: the capacity rule runs on the driver's cadence; `GET /admin/v1/capacity` and
    /metrics carry desired and actual replicas of the pool."""
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from sluice.server import create_app
    from tests.fake_engine import FakeEngine
    from tests.gateway_fixtures import ADMIN, make_config
    from tests.servers import ServerThread
    from tests.test_gateway import raw, wait_until

    app, sluice = create_app(make_config(tmp_path, ["fake"]), {"fake": FakeEngine()})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with ServerThread(app) as server:
        wait_until(lambda: sluice.pool.capacity is not None and sluice.pool.capacity.last is not None, timeout=15)
        status, _, data = raw(server, "GET", "/admin/v1/capacity", headers=auth)
        doc = json.loads(data)
        assert status == 200 and doc["every_s"] == 5.0
        (pool,) = doc["pools"]
        assert pool["pool"] == sluice.pool.name == "meta-llama/Llama-3.1-8B-Instruct"  # the model pool's name
        assert pool["actual"] == 1 and pool["desired"] >= 1
        assert pool["capacity_rps"] > 0 and "latency_rps" in pool["load"]
        assert doc["behaviour"]["down_window_s"] == 300.0

        def gauges() -> dict[str, float]:
            text = raw(server, "GET", "/metrics", headers=auth)[2].decode()
            return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name in ("sluice_desired_replicas", "sluice_actual_replicas") and s.labels["pool"] == sluice.pool.name}

        wait_until(lambda: len(gauges()) == 2, timeout=15)
        got = gauges()
        assert got["sluice_actual_replicas"] == 1 and got["sluice_desired_replicas"] >= 1
        schema = json.loads(raw(server, "GET", "/admin/v1/openapi.json", headers=auth)[2])
        assert "get" in schema["paths"]["/admin/v1/capacity"]


def test_a_rising_rate_is_met_a_lead_ahead_and_noise_is_not() -> None:
    ctl = Controller(REPLICA, params=CapacityParams(lead_s=60.0))
    ctl.start(1, 0.0)
    ahead = [ctl._ahead(load(10.0 + 1.0 * t), t) for t in range(0, 65, 5)]  # +1 req/s every second
    assert ahead[0].latency_rps == 10.0  # no history yet: the rate as it is
    assert ahead[-1].latency_rps == pytest.approx(70.0 + 60.0)  # the rate a lead (60 s) later
    falling = Controller(REPLICA, params=CapacityParams(lead_s=60.0))
    assert all(falling._ahead(load(100.0 - t), t).latency_rps == 100.0 - t for t in range(0, 65, 5))


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1.0, max_value=300.0), st.lists(st.floats(min_value=-0.04, max_value=0.04),
                                                            min_size=50, max_size=300), st.integers(1, 30))
def test_the_controller_does_not_flap_under_a_steady_load(rps: float, noise: list[float], start: int) -> None:
    ctl = Controller(REPLICA, behaviour=Behaviour(down_window_s=60.0), params=CapacityParams(lead_s=60.0))
    ctl.start(start, 0.0)
    seen = []
    for k, e in enumerate(noise):
        x = ctl._ahead(load(rps * (1 + e)), 5.0 * k)
        seen.append(ctl.stabiliser.update(5.0 * k, need(x, REPLICA, ctl.params, ctl.stabiliser.current)))
    steps = [b - a for a, b in zip(seen, seen[1:]) if b != a]
    assert all(s > 0 for s in steps) or all(s < 0 for s in steps)
