"""Fairness metrics: Jain's index, service curves, VTC's service differences, and purity."""
from __future__ import annotations

import ast
import pathlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairness.metrics import (
    ServiceCurve,
    Served,
    accumulated_service_difference,
    fairness_summary,
    jain_index,
    request_service,
    service_between,
    service_difference,
    shares,
    weighted_jain,
    windowed_demand,
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


FORBIDDEN = {"controlplane", "engine_adapter", "telemetry", "tui", "replay", "asyncio", "time", "socket",
             "duckdb", "aiohttp", "datetime", "random", "os", "threading"}


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
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, f"{path.name} calls {node.func.id}"
