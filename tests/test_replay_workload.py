"""The canonical workload JSONL: parsing, writing, errors and helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.workload import (
    ALL_TENANTS,
    WorkloadFormatError,
    WorkloadRequest,
    by_tenant,
    merge,
    offered_load,
    read_workload,
    scale_rate,
    window,
    with_tenant,
    write_workload,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MOONCAKE = SHARED / "traces" / "synthetic_trace.jsonl"


def test_mooncake_lines_are_a_single_tenant_workload():
    lines = [
        '{"timestamp": 0, "input_length": 40160, "output_length": 6, "hash_ids": [0, 1, 2]}',
        '{"timestamp": 25, "input_length": 812, "output_length": 140, "hash_ids": [0, 7]}',
    ]
    reqs = read_workload(lines)
    assert [r.tenant for r in reqs] == ["default", "default"]
    assert reqs[0].hash_ids == [0, 1, 2]
    assert reqs[1].timestamp_ms == 25 and reqs[1].input_length == 812 and reqs[1].output_length == 140
    assert all(r.slo_class is None and r.extra == {} for r in reqs)


def test_round_trip_keeps_unknown_fields(tmp_path):
    lines = [
        '{"timestamp": 1250, "input_length": 812, "output_length": 140, "tenant": "acme", '
        '"slo_class": "interactive", "hash_ids": [17, 18], "session_id": "s-1", "meta": {"k": [1, 2]}}',
        '{"timestamp": 10.5, "input_length": 3, "output_length": 0, "turn": 2}',
    ]
    reqs = read_workload(lines)
    assert reqs[0].timestamp_ms == 10.5  # sorted by timestamp
    assert reqs[0].extra == {"turn": 2}
    assert reqs[1].extra == {"session_id": "s-1", "meta": {"k": [1, 2]}}
    path = tmp_path / "w.jsonl"
    assert write_workload(path, reqs) == 2
    again = read_workload(path)
    assert again == reqs
    written = [json.loads(x) for x in path.read_text().splitlines()]
    assert written[1]["session_id"] == "s-1" and written[1]["meta"] == {"k": [1, 2]}
    assert written[1]["slo_class"] == "interactive" and written[1]["hash_ids"] == [17, 18]
    assert "slo_class" not in written[0] and "hash_ids" not in written[0]
    assert written[1]["timestamp"] == 1250 and isinstance(written[1]["timestamp"], int)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ('{"timestamp": 1, "input_length": 2', "invalid JSON"),
        ('[1, 2, 3]', "expected a JSON object"),
        ('{"input_length": 2, "output_length": 3}', "'timestamp'"),
        ('{"timestamp": -5, "input_length": 2, "output_length": 3}', "'timestamp'"),
        ('{"timestamp": "soon", "input_length": 2, "output_length": 3}', "'timestamp'"),
        ('{"timestamp": 1, "input_length": 2.5, "output_length": 3}', "'input_length'"),
        ('{"timestamp": 1, "input_length": -1, "output_length": 3}', "'input_length'"),
        ('{"timestamp": 1, "input_length": 2, "output_length": true}', "'output_length'"),
        ('{"timestamp": 1, "input_length": 2, "output_length": 3, "tenant": 7}', "'tenant'"),
        ('{"timestamp": 1, "input_length": 2, "output_length": 3, "tenant": ""}', "'tenant'"),
        ('{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": [1, "x"]}', "'hash_ids'"),
        ('{"timestamp": 1, "input_length": 2, "output_length": 3, "slo_class": 5}', "'slo_class'"),
    ],
)
def test_malformed_line_names_its_line(bad, fragment):
    good = '{"timestamp": 0, "input_length": 1, "output_length": 1}'
    with pytest.raises(WorkloadFormatError) as info:
        read_workload([good, "", good, bad, good])
    assert info.value.line == 4
    assert "line 4" in str(info.value)
    assert fragment in str(info.value)


def test_malformed_file_names_its_path(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 1, "output_length": 1}\nnot json\n')
    with pytest.raises(WorkloadFormatError, match=r"broken\.jsonl:line 2: invalid JSON"):
        read_workload(p)


def test_integral_floats_are_accepted_as_lengths():
    (r,) = read_workload(['{"timestamp": 0, "input_length": 12.0, "output_length": 3}'])
    assert r.input_length == 12 and isinstance(r.input_length, int)


def test_extra_colliding_with_canonical_field_is_refused(tmp_path):
    r = WorkloadRequest(0, 1, 1, extra={"tenant": "x"})
    with pytest.raises(ValueError, match="collides"):
        write_workload(tmp_path / "x.jsonl", [r])


def _reqs():
    return [
        WorkloadRequest(0, 100, 10, "a"),
        WorkloadRequest(500, 200, 20, "b"),
        WorkloadRequest(1000, 300, 30, "a"),
        WorkloadRequest(2000, 400, 40, "a"),
    ]


def test_scale_rate_compresses_and_stretches_time():
    fast = scale_rate(_reqs(), 2.0)
    assert [r.timestamp_ms for r in fast] == [0, 250, 500, 1000]
    slow = scale_rate(_reqs(), 0.5)
    assert [r.timestamp_ms for r in slow] == [0, 1000, 2000, 4000]
    assert [r.input_length for r in fast] == [100, 200, 300, 400]
    with pytest.raises(ValueError):
        scale_rate(_reqs(), 0)


def test_window_rebases_by_default():
    w = window(_reqs(), 500, 2000)
    assert [(r.timestamp_ms, r.input_length) for r in w] == [(0, 200), (500, 300)]
    w2 = window(_reqs(), 500, None, rebase=False)
    assert [r.timestamp_ms for r in w2] == [500, 1000, 2000]


def test_by_tenant_with_tenant_and_merge():
    groups = by_tenant(_reqs())
    assert list(groups) == ["a", "b"]
    assert [r.input_length for r in groups["a"]] == [100, 300, 400]
    retagged = with_tenant(_reqs(), "z", "batch")
    assert {(r.tenant, r.slo_class) for r in retagged} == {("z", "batch")}
    merged = merge([WorkloadRequest(5, 1, 1, "x")], [WorkloadRequest(1, 1, 1, "y"), WorkloadRequest(9, 1, 1, "y")])
    assert [r.tenant for r in merged] == ["y", "x", "y"]


def test_offered_load_per_tenant():
    load = offered_load(_reqs())  # duration: 0 .. last arrival = 2 s
    assert load["a"].requests == 3
    assert load["a"].request_rate == pytest.approx(1.5)
    assert load["a"].input_tokens_per_s == pytest.approx(400.0)
    assert load["b"].output_tokens_per_s == pytest.approx(10.0)
    assert load[ALL_TENANTS].request_rate == pytest.approx(2.0)
    assert load[ALL_TENANTS].mean_output_length == pytest.approx(25.0)
    explicit = offered_load(_reqs(), duration_s=4.0)
    assert explicit["a"].request_rate == pytest.approx(0.75)
    assert math.isnan(offered_load([WorkloadRequest(0, 1, 1)])[ALL_TENANTS].request_rate)


_req = st.builds(
    WorkloadRequest,
    timestamp_ms=st.one_of(st.integers(0, 10**9), st.floats(0, 1e9, allow_nan=False)),
    input_length=st.integers(0, 200_000),
    output_length=st.integers(0, 10_000),
    tenant=st.text(min_size=1, max_size=12),
    slo_class=st.none() | st.sampled_from(["interactive", "batch"]),
    hash_ids=st.none() | st.lists(st.integers(-(2**40), 2**40), max_size=5),
    extra=st.dictionaries(st.text(min_size=1, max_size=8).filter(
        lambda k: k not in ("timestamp", "input_length", "output_length", "tenant", "slo_class", "hash_ids")),
        st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()), max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_req, max_size=8))
def test_round_trip_property(reqs):
    lines = [json.dumps(r.to_json()) for r in reqs]
    back = read_workload(lines)
    expected = sorted(reqs, key=lambda r: r.timestamp_ms)
    assert [r.to_json() for r in back] == [r.to_json() for r in expected]


@pytest.mark.skipif(not MOONCAKE.exists(), reason=f"{MOONCAKE} not present (shared traces absent)")
def test_real_mooncake_trace_loads_as_single_tenant():
    reqs = read_workload(MOONCAKE)
    assert len(reqs) == 3993  # SOURCES.md
    assert {r.tenant for r in reqs} == {"default"}
    assert all(r.hash_ids for r in reqs)
    mean_in = sum(r.input_length for r in reqs) / len(reqs)
    assert mean_in == pytest.approx(15325, rel=0.01)
    assert reqs[-1].timestamp_ms / 1000 == pytest.approx(1022, abs=2)
