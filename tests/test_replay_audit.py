"""Audit (replay/audit.py): recorded decisions re-derived bit for bit, tampering detected, the DuckDB
path, and a recorded window replayed under another policy."""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane.core.policy import apply_patch
from replay.audit import audit_db, audit_decisions, policies_from_changes
from replay.loaders import vtc_overload
from replay.outcomes import VirtualResult
from replay.rederive import rederive
from replay.runner import default_policy, run_virtual
from telemetry.store import Store

# a fixed window small enough that the 8 s run below fills it: queueing (defer) happens too
POLICY = dataclasses.replace(default_policy("equinox", admission=True), window=64)


@pytest.fixture(scope="module")
def recorded() -> VirtualResult:
    # ~1.5x the simulated H100's capacity: admits, defers, rejects and dispatches
    return run_virtual(vtc_overload(8.0, rates=(24.0, 48.0)), POLICY, torch_expert=False, record_decisions=True)


def _rows(result: VirtualResult) -> list[dict[str, Any]]:
    return copy.deepcopy(result.decisions)


def test_a_recorded_run_re_derives_with_zero_mismatches(recorded: VirtualResult) -> None:
    rows = _rows(recorded)
    kinds = {r["kind"] for r in rows}
    assert {"admit", "defer", "reject", "dispatch"} <= kinds
    rep = audit_decisions(rows, {1: POLICY})
    assert rep.ok, rep.format()
    assert rep.rows == len(rows)
    assert rep.rederived == sum(r["kind"] in ("admit", "defer", "reject") for r in rows)
    assert rep.policy_checked == rep.rederived
    assert rep.dispatch_rederived == sum(r["kind"] == "dispatch" for r in rows)
    assert "0 mismatch" in rep.format()


def _first(rows: list[dict[str, Any]], kind: str) -> int:
    return next(i for i, r in enumerate(rows) if r["kind"] == kind)


@pytest.mark.parametrize("tamper", ["output_value", "kind", "reason", "input_load", "engine"])
def test_a_tampered_record_is_detected(recorded: VirtualResult, tamper: str) -> None:
    rows = _rows(recorded)
    if tamper == "output_value":
        i = _first(rows, "admit")
        out = json.loads(rows[i]["outputs"])
        out["ttft_s"] = out["ttft_s"] * (1 + 1e-12)  # one ulp-scale nudge is enough
        rows[i]["outputs"] = json.dumps(out)
        field = "outputs.ttft_s"
    elif tamper == "kind":
        i = _first(rows, "reject")
        rows[i]["kind"] = "admit"  # a refused request recorded as admitted
        field = "kind"
    elif tamper == "reason":
        i = _first(rows, "defer")
        rows[i]["reason"] = "within_slo"
        field = "reason"
    elif tamper == "input_load":
        # the recorded engine load no longer supports the recorded decision
        i = _first(rows, "admit")
        inp = json.loads(rows[i]["inputs"])
        inp["engines"][0]["waiting_tokens"] += 1e6
        rows[i]["inputs"] = json.dumps(inp)
        field = "outputs.ttft_s"
    else:
        i = _first(rows, "dispatch")
        rows[i]["engine"] = "sim-9"
        field = "engine"
    rep = audit_decisions(rows, {1: POLICY})
    assert not rep.ok
    assert any(m.index == i and m.field == field for m in rep.mismatches), rep.format()


def test_inputs_that_contradict_the_policy_version_are_detected(recorded: VirtualResult) -> None:
    rows = _rows(recorded)
    i = _first(rows, "admit")
    inp = json.loads(rows[i]["inputs"])
    inp["margin"] = 1.0  # consistent with its outputs? decide() may agree, but v1's margin is 0.8
    rows[i]["inputs"] = json.dumps(inp)
    rep = audit_decisions(rows, {1: POLICY})
    assert any(m.index == i and m.field == "inputs.margin" for m in rep.mismatches)
    # without the policy log that check cannot run, and the report says so by its counts
    assert audit_decisions(_rows(recorded), None).policy_checked == 0


def test_rederive_rejects_incomplete_inputs() -> None:
    with pytest.raises(ValueError):
        rederive({"prompt_tokens": 10})


def test_unrederivable_rows_are_counted_not_passed() -> None:
    rows = [{"kind": "expire", "rid": "x", "inputs": "{}", "outputs": "{}", "policy_version": 1, "reason": "d"},
            {"kind": "reject", "rid": "y", "tenant": "t", "reason": "rate_limited_requests",
             "inputs": json.dumps({"slo_class": "interactive"}), "outputs": "{}", "policy_version": 1}]
    rep = audit_decisions(rows, {1: POLICY})
    assert rep.rederived == 0 and sum(rep.skipped.values()) == 2
    # the policy of v1 sets no rate limit for tenant t: the refusal contradicts it
    assert [m.field for m in rep.mismatches] == ["reason"]


def _request_row(rec: Any, t0: float) -> dict[str, Any]:
    d = rec.to_dict()
    def ms(x: float | None) -> float | None:
        return None if x is None else x * 1e3

    return {"rid": rec.rid, "trace_id": None, "tenant": rec.tenant, "slo_class": rec.slo_class, "model": "m",
            "engine": rec.engine, "stream": True, "status": rec.status, "http_status": 200 if rec.status == "ok" else 429,
            "decision": rec.decision, "reason": rec.reason, "finish_reason": None, "error": None,
            "arrival_ts": t0 + rec.arrival_s, "dispatch_ts": None, "first_token_ts": None,
            "finish_ts": None if rec.finish_s is None else t0 + rec.finish_s, "queue_ms": ms(d["queue_s"]),
            "ttft_ms": ms(d["ttft_s"]), "tpot_ms": ms(d["tpot_s"]), "e2e_ms": ms(d["e2e_s"]),
            "prompt_tokens": rec.input_tokens, "cached_tokens": rec.cached_tokens,
            "completion_tokens": rec.output_tokens, "max_tokens": rec.requested_output_tokens,
            "predicted_output_tokens": rec.predicted_output_tokens, "predicted_ttft_ms": None,
            "predicted_tpot_ms": None, "policy_version": 1, "slo_met": rec.slo_met}


def test_audit_db_reads_a_store_file_read_only(recorded: VirtualResult, tmp_path: Path) -> None:
    path = tmp_path / "sluice.duckdb"
    v2 = apply_patch(POLICY, {"admission_margin": 0.7})
    store = Store(path, flush_interval_s=0.05)
    try:
        store.record_policy_change_now({"version": 2, "ts": 1.0, "actor": "test", "reason": "tighter",
                                        "before": json.dumps(POLICY.to_dict()), "after": json.dumps(v2.to_dict())})
        for row in recorded.decisions:
            store.record_decision(row)
        tampered = dict(recorded.decisions[_first(recorded.decisions, "admit")])
        tampered["ts"] = 1e6
        tampered["policy_version"] = 2  # recorded under v2, but its inputs carry v1's margin
        store.record_decision(tampered)
        t0 = 1_000.0
        for rec in recorded.records:
            store.record_request(_request_row(rec, t0))
        assert store.flush(30)
    finally:
        store.close()
    assert set(policies_from_changes([{"before": json.dumps(POLICY.to_dict()),
                                       "after": json.dumps(v2.to_dict())}])) == {1, 2}
    rep = audit_db(path, until=1e5)
    assert rep.ok, rep.format()
    assert rep.rows == len(recorded.decisions) and rep.policy_checked == rep.rederived > 0
    rep_all = audit_db(path)
    assert [m.field for m in rep_all.mismatches] == ["inputs.margin"]


def test_a_dispatch_to_another_free_engine_is_found_only_by_re_deriving_it() -> None:
    run = run_virtual(vtc_overload(6.0, rates=(30.0, 60.0)), POLICY, engines=2, torch_expert=False,
                      record_decisions=True)
    rows = _rows(run)
    i = next(k for k, r in enumerate(rows) if r["kind"] == "dispatch" and len(json.loads(r["inputs"])["candidates"]) > 1)
    chosen = rows[i]["engine"]
    other = next(c for c in json.loads(rows[i]["inputs"])["candidates"] if c != chosen)
    assert audit_decisions(rows, {1: POLICY}).ok
    rows[i]["engine"] = other  # still a candidate: only choose_engine() on the recorded views tells
    rep = audit_decisions(rows, {1: POLICY})
    assert [(m.index, m.field, m.recorded, m.derived) for m in rep.mismatches] == [(i, "engine", other, chosen)]
