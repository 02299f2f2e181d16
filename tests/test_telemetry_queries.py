"""Queries over the store, read beside the running writer."""

from __future__ import annotations

import pytest

from telemetry import queries
from telemetry.store import Store, open_read_only


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "q.duckdb", flush_interval_s=0.05)
    # acme: 4 ok (ttft 100..400), 1 rejected; beta: 1 ok that missed its SLO, 1 aborted
    for i, ttft in enumerate([100.0, 200.0, 300.0, 400.0]):
        s.record_request({"rid": f"a{i}", "tenant": "acme", "status": "ok", "arrival_ts": 100.0 + i, "ttft_ms": ttft,
                          "tpot_ms": 20.0 + i, "slo_met": True, "prompt_tokens": 10, "completion_tokens": 5,
                          "cached_tokens": 2, "trace_id": "ab" * 16 if i == 0 else None})
    s.record_request({"rid": "a9", "tenant": "acme", "status": "rejected", "arrival_ts": 105.0, "http_status": 429})
    s.record_request({"rid": "b0", "tenant": "beta", "status": "ok", "arrival_ts": 101.5, "ttft_ms": 900.0,
                      "slo_met": False, "prompt_tokens": 7, "completion_tokens": 3})
    s.record_request({"rid": "b1", "tenant": "beta", "status": "aborted", "arrival_ts": 200.0})
    s.record_spans(
        [
            {"trace_id": "ab" * 16, "span_id": "02" * 8, "parent_span_id": "01" * 8, "name": " Req a0", "start_ts": 2.0,
             "service": "sglang", "attributes": '{"gen_ai.usage.input_tokens": 10}'},
            {"trace_id": "ab" * 16, "span_id": "01" * 8, "name": "chat m", "start_ts": 1.0, "service": "sluice"},
            {"trace_id": "ab" * 16, "span_id": "03" * 8, "parent_span_id": "02" * 8, "name": "prefill", "start_ts": 3.0},
            {"trace_id": "cd" * 16, "span_id": "04" * 8, "name": "other trace", "start_ts": 1.0},
        ],
        [{"trace_id": "ab" * 16, "span_id": "03" * 8, "ts": 3.5, "name": "schedule", "attributes": '{"batch": 2}'}],
    )
    for v in (1, 2, 3):
        s.record_policy_change({"version": v, "ts": 10.0 * v, "actor": "ops", "reason": f"r{v}",
                                "before": {"w": v - 1}, "after": {"w": v}})
    s.record_decision({"ts": 100.0, "rid": "a0", "kind": "admit", "inputs": {"forecast_ms": 90}})
    s.flush()
    yield s
    s.close()


def test_tenant_summary(store):
    rows = {r["tenant"]: r for r in queries.tenant_summary(store, 0.0, 150.0)}
    acme, beta = rows["acme"], rows["beta"]
    assert (acme["requests"], acme["ok"], acme["rejected"]) == (5, 4, 1)
    assert acme["ttft_p50_ms"] == pytest.approx(250.0) and acme["ttft_p99_ms"] == pytest.approx(397.0)
    assert acme["tpot_p50_ms"] == pytest.approx(21.5)
    assert acme["attainment"] == 1.0 and acme["prompt_tokens"] == 40 and acme["cached_tokens"] == 8
    assert (beta["requests"], beta["aborted"], beta["attainment"]) == (1, 0, 0.0)  # b1 is outside the window


def test_recent_requests_newest_first_and_filtered(store):
    assert [r["rid"] for r in queries.recent_requests(store, limit=3)] == ["b1", "a9", "a3"]
    assert [r["rid"] for r in queries.recent_requests(store, tenant="beta")] == ["b1", "b0"]
    assert [r["rid"] for r in queries.recent_requests(store, status="rejected")] == ["a9"]


def test_trace_is_ordered_by_start_with_depth_and_events(store):
    t = queries.trace(store, "AB" * 16)
    assert [(s["name"], s["depth"]) for s in t["spans"]] == [("chat m", 0), (" Req a0", 1), ("prefill", 2)]
    assert t["spans"][1]["attributes"] == {"gen_ai.usage.input_tokens": 10}
    assert t["spans"][2]["events"] == [{"name": "schedule", "ts": 3.5, "attributes": {"batch": 2}}]
    assert queries.trace_for_request(store, "a0")["trace_id"] == "ab" * 16
    assert queries.trace_for_request(store, "a1") is None


def test_policy_timeline_and_replay_rows(store):
    timeline = queries.policy_timeline(store, limit=2)
    assert [c["version"] for c in timeline] == [3, 2] and timeline[0]["after"] == {"w": 3}
    replay = queries.requests_for_replay(store, 100.0, 102.0)
    assert [r["rid"] for r in replay] == ["a0", "a1", "b0"]
    audit = queries.decisions_for_audit(store, 0.0)
    assert audit[0]["inputs"] == {"forecast_ms": 90}


def test_queries_on_a_read_only_connection_after_close(store, tmp_path):
    path = store.path
    store.close()
    con = open_read_only(path)
    try:
        assert len(queries.recent_requests(con)) == 7
    finally:
        con.close()
