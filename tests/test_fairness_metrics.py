"""Fairness metrics: Jain's index, service curves, VTC's service differences, max-min fair shares,
fairness over what tenants asked for (whole run and windowed), and purity."""
from __future__ import annotations

import ast
import math
import pathlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairness.metrics import (
    Asked,
    ServiceCurve,
    Served,
    accumulated_service_difference,
    asked_totals,
    demand_fairness,
    fairness_summary,
    jain_index,
    max_min_fair_shares,
    request_service,
    service_between,
    service_difference,
    service_difference_pairwise,
    shares,
    weighted_jain,
    windowed_demand,
    windowed_demand_fairness,
    windowed_service,
    windowed_service_difference,
)


def test_jain_index_known_values() -> None:
    assert jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain_index([1, 2]) == pytest.approx(9 / 10)
    assert jain_index([]) == 1.0 and jain_index([0, 0]) == 1.0
    assert weighted_jain({"a": 10, "b": 20}, {"a": 1, "b": 2}) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        jain_index([1, -1])


def test_request_service_and_shares() -> None:
    assert request_service(100, 50) == 200
    assert request_service(100, 50, w_p=2, w_q=1) == 250
    s = shares({"a": 100.0, "b": 300.0}, {"a": 1, "b": 3})
    assert s["a"].share == pytest.approx(0.25) and s["a"].ratio == pytest.approx(1.0)
    assert s["b"].weight_share == pytest.approx(0.75)


def test_service_curve_spreads_uniformly_and_jumps_for_instants() -> None:
    c = ServiceCurve([Served("a", 0, 10, 100), Served("a", 5, 15, 50), Served("a", 20, 20, 7)])
    assert c.at(-1) == 0 and c.at(0) == 0
    assert c.at(5) == pytest.approx(50)
    assert c.at(10) == pytest.approx(125)
    assert c.at(15) == pytest.approx(150)
    assert c.before(20) == pytest.approx(150) and c.at(20) == pytest.approx(157)
    assert c.total == pytest.approx(157)
    assert list(np.round(c.at(np.array([2.5, 12.5])), 6)) == [25.0, 137.5]
    assert service_between([Served("a", 0, 10, 100), Served("b", 0, 1, 4)], 5, 10) == {"a": 50.0, "b": 0.0}
    with pytest.raises(ValueError):
        Served("a", 2, 1, 1)


responses_st = st.lists(
    st.builds(lambda t, s, d, v: Served(t, s, s + d, v), st.sampled_from("abc"),
              st.integers(0, 50).map(float), st.sampled_from([0.0, 1.0, 2.5, 7.0, 20.0]),
              st.integers(0, 100).map(float)),
    min_size=1, max_size=12,
)


def _brute_curve(rs: list[Served], tenant: str, t: float) -> float:
    total = 0.0
    for r in rs:
        if r.tenant != tenant:
            continue
        if r.end == r.start:
            total += r.service if t >= r.start else 0.0
        else:
            total += r.service * max(0.0, min(t, r.end) - r.start) / (r.end - r.start)
    return total


@settings(max_examples=50, deadline=None)
@given(responses_st, st.lists(st.floats(-5, 80), min_size=1, max_size=10))
def test_service_curve_matches_the_artifact_formula(rs: list[Served], ts: list[float]) -> None:
    curve = ServiceCurve([r for r in rs if r.tenant == "a"])
    for t in ts:
        assert curve.at(t) == pytest.approx(_brute_curve(rs, "a", t), abs=1e-6)


@settings(max_examples=30, deadline=None)
@given(responses_st, st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40)), min_size=1, max_size=2),
       st.lists(st.tuples(st.integers(0, 60), st.integers(1, 40)), min_size=1, max_size=2))
def test_service_difference_matches_a_fine_grid(rs: list[Served], ia: list, ib: list) -> None:
    """The exact max over the knots equals a brute force over a grid containing every knot."""
    back = {"a": [(float(s), float(s + d)) for s, d in ia], "b": [(float(s), float(s + d)) for s, d in ib]}
    got = service_difference(rs, back, {"a": 1.0, "b": 2.0})
    # brute force: both backlogged on [lo, hi); service in [t1, t2) = left limits
    knots = sorted({x for r in rs for x in (r.start, r.end)} | {x for iv in back.values() for p in iv for x in p})
    # the supremum may sit just after a jump: sample right after every knot as well
    grid = sorted(set(knots) | {(x + y) / 2 for x, y in zip(knots, knots[1:], strict=False)}
                  | {x + 1e-7 for x in knots})

    def left(tenant: str, t: float) -> float:
        return _brute_curve(rs, tenant, t - 1e-9)

    def cover(iv: list, t1: float, t2: float) -> bool:  # [t1, t2] inside the union of [lo, hi]
        t = t1
        for lo, hi in sorted(iv) * 2:  # twice: intervals may chain in any order
            if lo <= t <= hi:
                t = max(t, hi)
        return t >= t2

    def both(t1: float, t2: float) -> bool:
        return cover(back["a"], t1, t2) and cover(back["b"], t1, t2)

    best = 0.0
    for i, t1 in enumerate(grid):
        for t2 in grid[i + 1:]:
            if both(t1, t2):
                d = abs((left("a", t2) - left("a", t1)) / 1.0 - (left("b", t2) - left("b", t1)) / 2.0)
                best = max(best, d)
    assert got.value == pytest.approx(best, abs=1e-4)


def test_service_difference_simple_case_and_pair() -> None:
    rs = [Served("a", 0, 10, 100), Served("b", 0, 10, 40)]
    d = service_difference(rs, {"a": [(0, 10)], "b": [(0, 5)]})
    assert d.value == pytest.approx(30) and d.tenants == ("a", "b") and d.interval == (0.0, 5.0)
    assert service_difference(rs, {"a": [(0, 10)], "b": [(10, 20)]}).value == 0  # never both backlogged
    assert service_difference(rs, {"a": [(0, 10)], "b": [(0, 10)]}, {"a": 2.5}).value == pytest.approx(0)


def _artifact_windowed(rs: list[Served], ticks: list[float], window: float) -> list[float]:
    """A transcription of get_service_diff_over_time / get_req_rate_over_time from the VTC
    artifact (plot_6.2_work_diff.py), on Served records with positive durations."""
    users = sorted({r.tenant for r in rs})
    y = {u: [] for u in users}
    req = {u: [] for u in users}
    for u in users:
        for x in ticks:
            lo, hi = x - window / 2, x + window / 2
            s = sum(r.service * max(min(hi, r.end) - max(lo, r.start), 0) / (r.end - r.start)
                    for r in rs if r.tenant == u)
            y[u].append(s / window)
            req[u].append(sum(r.service for r in rs if r.tenant == u and lo <= r.arrival <= hi) / window)
    out = []
    for i in range(len(ticks)):
        m = max(y[u][i] for u in users)
        out.append(max(min(m - y[u][i], req[u][i] - y[u][i]) for u in users))
    return out


def test_windowed_measures_match_the_artifact() -> None:
    rng = random.Random(7)
    rs = []
    for _ in range(300):
        arrival = rng.uniform(0, 600)
        start = arrival + rng.uniform(0, 5)
        rs.append(Served(rng.choice("abcd"), start, start + rng.uniform(0.5, 30), rng.randint(10, 900), arrival))
    ticks = [600 / 20 * i for i in range(1, 20)]
    ours = windowed_service_difference(rs, ticks, 60.0)
    assert ours == pytest.approx(_artifact_windowed(rs, ticks, 60.0), abs=1e-6)
    ws, wd = windowed_service(rs, ticks, 60.0), windowed_demand(rs, ticks, 60.0)
    assert set(ws) == set(wd) == set("abcd")
    acc = accumulated_service_difference(rs, ticks)
    for i, x in enumerate(ticks):
        vals = [_brute_curve(rs, u, x) for u in "abcd"]
        assert acc[i] == pytest.approx(max(vals) - min(vals), abs=1e-6)


def test_fairness_summary_for_a_replay_runner() -> None:
    rs = [Served("a", 0, 10, 100, 0), Served("b", 0, 10, 200, 0)]
    out = fairness_summary(rs, {"a": 1, "b": 2}, {"a": [(0, 10)], "b": [(0, 10)]}, ticks=[5.0], window=10)
    assert out["jain"] == pytest.approx(1.0)
    assert out["service_difference"].value == pytest.approx(0)  # type: ignore[union-attr]
    assert out["accumulated_difference"]["max"] == pytest.approx(0)  # type: ignore[index]


# -- the service difference for any number of tenants -------------------------------------------
def test_service_difference_across_epochs_of_other_tenants() -> None:
    """a and b are both backlogged on [0, 20) while c comes and goes: the pair's interval spans
    three constant-backlog epochs, and its difference accumulates over all of them."""
    rs = [Served("a", 0, 20, 200), Served("b", 0, 20, 100), Served("c", 5, 10, 30)]
    back = {"a": [(0, 20)], "b": [(0, 20)], "c": [(5, 10)]}
    for fn in (service_difference, service_difference_pairwise):
        d = fn(rs, back)
        # a gets 10/s, b 5/s, c 6/s on [5, 10): a - b over [0, 20) = 100; a - c on [5, 10) = 20
        assert d.value == pytest.approx(100) and d.tenants == ("a", "b") and d.interval == (0.0, 20.0)
    d = service_difference(rs, back, {"a": 2.0})  # a/2 = b: now c vs a or b on [5, 10): 30 - 25
    assert d.value == pytest.approx(5) and d.tenants in {("c", "a"), ("c", "b")} and d.interval == (5.0, 10.0)
    assert d.upper_bound == pytest.approx(5)
    assert service_difference(rs, {"a": [(0, 20)]}).value == 0  # one backlogged tenant: no pair


def _random_run(rng: random.Random, tenants: int, requests: int, spans: int) -> tuple[list[Served], dict]:
    rs = []
    for _ in range(requests):
        start = rng.choice([rng.uniform(0, 100), float(rng.randint(0, 100))])
        dur = rng.choice([0.0, rng.uniform(0.1, 15), float(rng.randint(1, 10))])
        rs.append(Served(f"t{rng.randrange(tenants)}", start, start + dur, float(rng.randint(0, 100))))
    back = {}
    for t in range(tenants):
        iv = []
        for _ in range(rng.randint(0, spans)):
            a = rng.choice([rng.uniform(0, 100), float(rng.randint(0, 100))])
            iv.append((a, a + rng.choice([rng.uniform(0.5, 60), float(rng.randint(1, 50))])))
        back[f"t{t}"] = iv
    return rs, back


def _attained(rs: list[Served], w: dict[str, float], pair: tuple[str, str], interval: tuple[float, float]
              ) -> list[float]:
    """The normalised difference of the reported pair over the reported interval, for each reading
    of its ends: left limits or right values (a jump at an end is in or out). The reported value
    must be one of the four (the largest can overshoot: a jump just past a backlogged span's end)."""
    f, g = pair
    cf, cg = ServiceCurve([r for r in rs if r.tenant == f]), ServiceCurve([r for r in rs if r.tenant == g])
    t1, t2 = interval
    return [(e2(cf, t2) - e1(cf, t1)) / w.get(f, 1.0) - (e2(cg, t2) - e1(cg, t1)) / w.get(g, 1.0)
            for e1 in (ServiceCurve.at, ServiceCurve.before) for e2 in (ServiceCurve.at, ServiceCurve.before)]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 7), st.integers(1, 40), st.integers(1, 5))
def test_fast_service_difference_equals_the_pairwise_reference(seed: int, tenants: int, requests: int,
                                                              spans: int) -> None:
    rng = random.Random(seed)
    rs, back = _random_run(rng, tenants, requests, spans)
    w = {f"t{i}": rng.choice([0.5, 1.0, 3.0]) for i in range(tenants)}
    ref = service_difference_pairwise(rs, back, w)
    fast = service_difference(rs, back, w)
    assert fast.value == pytest.approx(ref.value, rel=1e-9, abs=1e-6)
    assert fast.upper_bound == fast.value
    if fast.value > 0:
        assert fast.tenants is not None and fast.interval is not None
        assert fast.value in [pytest.approx(v, rel=1e-9, abs=1e-6) for v in _attained(rs, w, fast.tenants, fast.interval)]
    capped = service_difference(rs, back, w, max_pairs=1)  # a bound when the pairs run out
    assert capped.value <= ref.value + 1e-6 and capped.upper_bound + 1e-6 >= ref.value


def test_fast_service_difference_on_many_tenants_skips_most_pairs() -> None:
    rng = random.Random(3)
    rs, back = _random_run(rng, 40, 800, 4)
    ref, fast = service_difference_pairwise(rs, back), service_difference(rs, back)
    assert fast.value == pytest.approx(ref.value, rel=1e-9)
    assert fast.pairs_evaluated is not None and fast.pairs_evaluated < ref.pairs_evaluated == 40 * 39 // 2


# -- max-min fair shares and fairness over what tenants asked for --------------------------------
def test_max_min_fair_shares_by_hand() -> None:
    demand = {"a": 10.0, "b": 50.0, "c": 100.0, "idle": 0.0}
    # a is satisfied (10 < 90/4 per weight); 80 left for b and c at weights 1:2 -> 80/3 each per weight
    got = max_min_fair_shares(demand, {"c": 2.0}, 90.0)
    assert got == pytest.approx({"a": 10.0, "b": 80 / 3, "c": 160 / 3, "idle": 0.0})
    # 130: a 10, then b (50 <= 120/3 per weight? no: 40) -> b and c at level 40: b 40, c 80
    assert max_min_fair_shares(demand, {"c": 2.0}, 130.0) == pytest.approx({"a": 10, "b": 40, "c": 80, "idle": 0})
    assert max_min_fair_shares(demand, None, 500.0) == demand  # enough for everyone: demands exactly
    assert max_min_fair_shares(demand, None, 0.0) == {t: 0.0 for t in demand}
    assert max_min_fair_shares({}, None, 10.0) == {}
    for bad in (({"a": -1.0}, None, 1.0), ({"a": 1.0}, None, -1.0), ({"a": 1.0}, {"a": 0.0}, 1.0),
                ({"a": math.nan}, None, 1.0), ({"a": 1.0}, None, math.inf)):
        with pytest.raises(ValueError):
            max_min_fair_shares(*bad)  # type: ignore[arg-type]


def _progressive_filling(demand: dict[str, float], weights: dict[str, float], capacity: float) -> dict[str, float]:
    """Max-min by progressive filling, step by step (the textbook definition), as a reference."""
    fair = {t: 0.0 for t in demand}
    left, active = capacity, {t for t, d in demand.items() if d > 0}
    while active and left > 1e-12:
        wsum = sum(weights[t] for t in active)
        step = min(left / wsum, min((demand[t] - fair[t]) / weights[t] for t in active))
        for t in list(active):
            fair[t] += step * weights[t]
            left -= step * weights[t]
            if fair[t] >= demand[t] - 1e-12:
                active.discard(t)
    return fair


demands_st = st.dictionaries(st.sampled_from("abcdefg"), st.one_of(st.just(0.0), st.floats(0.01, 1000)), max_size=7)
weights_st = st.dictionaries(st.sampled_from("abcdefg"), st.sampled_from([0.25, 1.0, 2.0, 5.0]))


@settings(max_examples=300, deadline=None)
@given(demands_st, weights_st, st.floats(0, 3000), st.floats(0, 500))
def test_max_min_fair_share_properties(demand: dict[str, float], weights: dict[str, float], capacity: float,
                                       more: float) -> None:
    w = {t: weights.get(t, 1.0) for t in demand}
    got = max_min_fair_shares(demand, weights, capacity)
    tol = 1e-9 * (1 + capacity + sum(demand.values()))
    assert sum(got.values()) == pytest.approx(min(capacity, sum(demand.values())), abs=tol)
    assert all(-tol <= got[t] <= demand[t] + tol for t in demand)
    for i in demand:
        for j in demand:
            if got[i] < demand[i] - tol:  # i is held back: nobody has more per weight than i
                assert got[j] / w[j] <= got[i] / w[i] + tol
            if demand[i] / w[i] <= demand[j] / w[j]:  # asked for less per weight: never gets more
                assert got[i] / w[i] <= got[j] / w[j] + tol
    assert got == pytest.approx(_progressive_filling(demand, w, capacity), abs=1e-6 * (1 + capacity))
    bigger = max_min_fair_shares(demand, weights, capacity + more)
    assert all(bigger[t] >= got[t] - tol for t in demand)  # more capacity never takes from anyone


def test_demand_fairness_by_hand() -> None:
    fz = demand_fairness({"a": 10, "b": 50, "c": 100}, {"a": 10, "b": 20, "c": 60}, {"c": 2})
    # C = 90: fair shares 10, 80/3, 160/3 (above); ratios 1, 0.75, 1.125
    assert fz.capacity == 90
    assert {t: x.ratio for t, x in fz.tenants.items()} == pytest.approx({"a": 1.0, "b": 0.75, "c": 1.125})
    assert fz.tenants["b"].fair_share == pytest.approx(80 / 3) and fz.tenants["b"].demand == 50
    assert fz.jain == pytest.approx(2.875 ** 2 / (3 * (1 + 0.75 ** 2 + 1.125 ** 2)))
    assert (fz.min_ratio, fz.min_tenant) == (pytest.approx(0.75), "b")


def test_demand_fairness_counts_refusals_and_measures_the_policy_not_the_demand_skew() -> None:
    demand = {"heavy": 900.0, "light": 100.0}  # skewed demand, 400 delivered in all
    fair = demand_fairness(demand, {"heavy": 300.0, "light": 100.0})  # light fully served: max-min
    assert fair.jain == pytest.approx(1.0) and fair.min_ratio == pytest.approx(1.0)
    assert weighted_jain({"heavy": 300.0, "light": 100.0}) == pytest.approx(0.8)  # the old measure: skew
    # the same capacity, light refused half the time: ratios 350/300 and 50/100
    refused = demand_fairness(demand, {"heavy": 350.0, "light": 50.0})
    assert refused.jain == pytest.approx((7 / 6 + 0.5) ** 2 / (2 * ((7 / 6) ** 2 + 0.25)))
    assert (refused.min_ratio, refused.min_tenant) == (pytest.approx(0.5), "light")


def test_demand_fairness_edge_cases() -> None:
    nothing = demand_fairness({"a": 10.0, "b": 5.0}, {})  # nothing delivered: no one got less than another
    assert nothing.jain == 1.0 and nothing.capacity == 0 and nothing.tenants["a"].ratio == 1.0
    idle = demand_fairness({"a": 10.0, "idle": 0.0}, {"a": 4.0})  # a tenant that asked for nothing
    assert idle.tenants["idle"].ratio is None and idle.jain == 1.0 and idle.min_tenant == "a"
    empty = demand_fairness({}, {})
    assert empty.jain == 1.0 and empty.min_ratio is None and empty.min_tenant is None
    with pytest.raises(ValueError):
        demand_fairness({"a": 1.0}, {"a": -1.0})


@settings(max_examples=200, deadline=None)
@given(demands_st, weights_st, st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_demand_fairness_properties(demand: dict[str, float], weights: dict[str, float], load: float,
                                    seed: int) -> None:
    capacity = load * sum(demand.values())
    shares_ = max_min_fair_shares(demand, weights, capacity)
    exact = demand_fairness(demand, shares_, weights)  # delivering the max-min shares is perfectly fair
    assert exact.jain == pytest.approx(1.0)
    assert all(x.ratio == pytest.approx(1.0) for x in exact.tenants.values() if x.ratio is not None)
    # any other split of that capacity within the demands: index in (0, 1], someone at or below 1
    rng = random.Random(seed)
    got = {t: d * rng.random() for t, d in demand.items()}
    fz = demand_fairness(demand, got, weights)
    assert 0 < fz.jain <= 1 + 1e-12
    if fz.min_ratio is not None:
        assert fz.min_ratio <= 1 + 1e-9


# -- windowed ---------------------------------------------------------------------------------------
def test_windowed_demand_fairness_by_hand() -> None:
    """a and b ask for 60 each at 0; a is served on [0, 20], b on [20, 40]. Over the run both got all
    they asked (Jain 1); per 20 s window b waited: window 1: demand 60/60, delivered 60/0, shares
    30/30, ratios 2 and 0 -> Jain 1/2; window 2: only b is owed (60), gets 60 -> 1."""
    asked = [Asked("a", 0, 60, 0, 20), Asked("b", 0, 60, 20, 40)]
    assert demand_fairness(*asked_totals(asked)).jain == pytest.approx(1.0)
    wf = windowed_demand_fairness(asked, window=20)
    assert [(x.start, x.end, x.demand) for x in wf.windows] == [(0, 20, 120), (20, 40, 60)]
    assert [x.fairness.jain for x in wf.windows] == pytest.approx([0.5, 1.0])
    assert wf.windows[1].fairness.tenants["a"].ratio is None  # a owed nothing in window 2
    assert wf.jain == pytest.approx((120 * 0.5 + 60 * 1.0) / 180)  # weighted by demand owed
    assert (wf.min_jain, wf.min_ratio, wf.min_tenant, wf.min_window) == (0.5, 0.0, "b", 0.0)


def test_windowed_demand_carries_backlog_refusals_and_uncounted_service() -> None:
    asked = [
        Asked("a", 0, 30, 0, 30),  # served across both windows: 20 in the first, 10 in the second
        Asked("b", 5, 40),  # refused on arrival: demand in the first window only
        Asked("b", 12, 20, 15, 25, counted=False),  # served late (missed its SLO): owed, not delivered
        Asked("c", 8, 50, until=math.inf),  # still waiting at the end: owed in every window
        Asked("c", 19, 10, until=21),  # aborted at 21: owed in both windows
    ]
    wf = windowed_demand_fairness(asked, window=20, end=40)
    w1, w2 = (x.fairness.tenants for x in wf.windows)
    assert {t: x.demand for t, x in w1.items()} == pytest.approx({"a": 30, "b": 60, "c": 60})
    assert {t: x.delivered for t, x in w1.items()} == pytest.approx({"a": 20, "b": 0, "c": 0})
    # second window: a's last third; b's late request has 10 of 20 left; c's waiting 50 and aborted 10
    assert {t: x.demand for t, x in w2.items()} == pytest.approx({"a": 10, "b": 10, "c": 60})
    assert {t: x.delivered for t, x in w2.items()} == pytest.approx({"a": 10, "b": 0, "c": 0})


def test_windowed_refusal_exactly_on_an_edge_and_instant_service() -> None:
    asked = [Asked("a", 10, 5, until=10), Asked("a", 5, 7, until=10), Asked("b", 10, 3, 10, 10)]
    wf = windowed_demand_fairness(asked, window=5, start=0, end=15)
    by_start = {x.start: x.fairness.tenants for x in wf.windows}
    # [5, 10): a owes 7 (refused at 10); [10, 15]: a owes 5 (arrived and refused at 10), b's
    # instantaneous response at 10 is owed and delivered there
    assert by_start[5.0]["a"].demand == 7 and "b" in by_start[5.0] and by_start[5.0]["b"].demand == 0
    assert by_start[10.0]["a"].demand == 5 and by_start[10.0]["b"].demand == 3
    assert by_start[10.0]["b"].delivered == 3


asked_st = st.lists(
    st.builds(
        lambda t, arr, svc, kind, d1, d2, counted: (
            Asked(t, arr, svc, arr + d1, arr + d1 + d2, counted=counted) if kind == "served"
            else Asked(t, arr, svc, until=None if kind == "refused" else arr + d1)),
        st.sampled_from("abcd"), st.integers(0, 100).map(float), st.integers(0, 100).map(float),
        st.sampled_from(["served", "served", "refused", "aborted"]), st.sampled_from([0.0, 1.0, 7.5, 30.0]),
        st.sampled_from([0.0, 2.0, 25.0]), st.booleans()),
    min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(asked_st, st.sampled_from([5.0, 20.0, 60.0]), weights_st)
def test_windowed_demand_fairness_properties(asked: list[Asked], window: float, weights: dict[str, float]) -> None:
    wf = windowed_demand_fairness(asked, weights, window)
    delivered = 0.0
    for x in wf.windows:
        for tf in x.fairness.tenants.values():
            assert tf.delivered <= tf.demand + 1e-9  # one cannot be served what one has not asked for
        delivered += x.fairness.capacity
    counted = sum(a.service for a in asked if a.served and a.counted)
    assert delivered == pytest.approx(counted)  # the windows partition the run
    assert 0 < wf.jain <= 1 + 1e-12 and wf.min_jain <= wf.jain + 1e-12
    # one window over the whole run is the whole-run measure
    whole = windowed_demand_fairness(asked, weights, window=1e6)
    assert whole.jain == pytest.approx(demand_fairness(*asked_totals(asked), weights).jain)


def test_asked_validation() -> None:
    for bad in (dict(start=1.0), dict(start=1.0, end=0.5), dict(start=-1.0, end=2.0), dict(until=-1.0)):
        with pytest.raises(ValueError):
            Asked("a", 0.0, 1.0, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        windowed_demand_fairness([Asked("a", 0, 1)], window=0)


FORBIDDEN = {"controlplane", "engine_adapter", "telemetry", "tui", "replay", "asyncio", "time", "socket",
             "duckdb", "aiohttp", "datetime", "random", "os", "threading"}
# value.py reads one switch from the environment when it is imported (SLUICE_FROZEN_VALUES, set by
# tests/conftest.py), and nothing else of os
ALLOWED = {"value.py": {"os"}}


@pytest.mark.parametrize("path", sorted(pathlib.Path(__file__).parent.parent.joinpath("fairness").glob("*.py")),
                         ids=lambda p: p.name)
def test_fairness_is_pure(path: pathlib.Path) -> None:
    """No I/O, clock, asyncio or sibling packages in fairness/ (belt and braces with import-linter)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN - ALLOWED.get(path.name, set()), f"{path.name} imports {name}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            assert node.attr == "environ", f"{path.name} uses os.{node.attr}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, f"{path.name} calls {node.func.id}"
