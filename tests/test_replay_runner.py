"""Virtual-time replay: the decision core and SimCores on a virtual clock (replay/runner.py) and
`sluice simulate` (replay/simulate.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.core.policy import Policy, SLOClassPolicy, TenantPolicy
from replay.loaders import LengthTable, poisson_workload, vtc_overload
from replay.report import EXPIRED, OK, REJECTED
from replay.runner import default_policy, run_virtual
from replay.tables import format_result
from replay.simulate import format_side_by_side, simulate_main
from replay.workload import WorkloadRequest, merge, write_workload

# The simulated H100 serves about 48 req/s of 256/256 requests (measured in bench/bench_fairness.py);
# 24 + 48 req/s is ~1.5x that.
OVERLOAD = vtc_overload(30.0, rates=(24.0, 48.0))


def _light() -> list[WorkloadRequest]:
    lengths = LengthTable.constant(300, 60)
    return merge(poisson_workload(lengths, 2.0, duration_s=20, seed=1, tenant="a"),
                 poisson_workload(lengths, 1.0, duration_s=20, seed=2, tenant="b"))


def test_deterministic_for_a_seed_with_the_torch_expert() -> None:
    w = vtc_overload(4.0, rates=(20.0, 40.0))
    runs = [run_virtual(w, "vtc", seed=3, train_every=32) for _ in range(2)]
    assert [r.to_dict() for r in runs[0].records] == [r.to_dict() for r in runs[1].records]
    assert runs[0].fairness["service_difference"] == runs[1].fairness["service_difference"]
    assert runs[0].status_counts()[OK] == len(w)


def test_repeat_runs_without_the_torch_expert_are_identical() -> None:
    a = run_virtual(_light(), "fcfs", torch_expert=False)
    b = run_virtual(_light(), "fcfs", torch_expert=False)
    assert [r.first_token_s for r in a.records] == [r.first_token_s for r in b.records]


def test_conservation_every_request_ends_exactly_once() -> None:
    # a paused tenant (rejections), a batch tenant deferred with a short deadline under overload
    # (expiries), and an interactive tenant (completions)
    policy = Policy(scheduler="equinox", admission=False,
                    slo_classes={"interactive": SLOClassPolicy(0.5, 0.05),
                                 "batch": SLOClassPolicy(None, None, 3.0, "defer")},
                    tenants={"a": TenantPolicy(1.0), "bulk": TenantPolicy(1.0, "batch"),
                             "gone": TenantPolicy(1.0, paused=True)})
    lengths = LengthTable.constant(256, 256)
    w = merge(poisson_workload(lengths, 40.0, duration_s=10, seed=5, tenant="a"),
              poisson_workload(lengths, 60.0, duration_s=10, seed=6, tenant="bulk"),
              poisson_workload(lengths, 2.0, duration_s=10, seed=7, tenant="gone"))
    r = run_virtual(w, policy, torch_expert=False)
    counts = r.status_counts()
    assert sum(counts.values()) == len(w) == len(r.records)
    assert {rec.status for rec in r.records} <= {OK, REJECTED, EXPIRED}
    assert counts[OK] > 0 and counts[REJECTED] > 0 and counts[EXPIRED] > 0
    assert len({rec.rid for rec in r.records}) == len(w)
    for rec in r.records:
        if rec.status == OK:
            assert rec.dispatch_s is not None and rec.first_token_s is not None and rec.finish_s is not None
            assert rec.arrival_s <= rec.dispatch_s <= rec.first_token_s <= rec.finish_s
            assert rec.output_tokens == rec.requested_output_tokens
        else:
            assert rec.first_token_s is None and rec.output_tokens == 0
        if rec.status == EXPIRED:
            assert rec.tenant == "bulk" and rec.decision == "defer" and rec.reason == "deadline_expired"
        assert (rec.status == REJECTED) == (rec.tenant == "gone")
    # the engine saw exactly the completed requests
    assert sum(e["finished"] for e in r.engines.values()) == counts[OK]
    per = r.per_tenant
    assert sum(o.requests for o in per.values()) == len(w)
    assert r.overall.completed + r.overall.rejected + r.overall.expired == len(w)


def test_fcfs_at_a_tiny_load_meets_every_slo() -> None:
    r = run_virtual(_light(), "fcfs", torch_expert=False)
    assert r.status_counts()[OK] == len(r.records)
    assert all(rec.slo_met for rec in r.records)
    assert r.overall.slo_attainment_admitted == 1.0
    assert r.overall.ttft_p99_s is not None and r.overall.ttft_p99_s < 0.5
    assert r.overall.tpot_p50_s is not None and r.overall.tpot_p50_s < 0.05
    text = format_result(r, "light")
    assert "light" in text and f"Jain over fair shares of demand {r.fairness['jain_demand']:.3f}" in text


def test_admission_protects_admitted_interactive_requests_under_overload() -> None:
    off = run_virtual(OVERLOAD, default_policy("equinox", admission=False), torch_expert=False)
    on = run_virtual(OVERLOAD, default_policy("equinox", admission=True), torch_expert=False)
    assert off.overall.rejected == 0 and on.overall.rejected > 0
    att_off, att_on = off.overall.slo_attainment_admitted, on.overall.slo_attainment_admitted
    assert att_off is not None and att_on is not None
    assert att_on >= 0.85 and att_off <= 0.5 and att_on > att_off + 0.3
    assert on.overall.goodput_rps > 1.3 * off.overall.goodput_rps


def test_vtc_equalises_backlogged_tenants_and_fcfs_does_not() -> None:
    vtc = run_virtual(OVERLOAD, "vtc", torch_expert=False)
    fcfs = run_virtual(OVERLOAD, "fcfs", torch_expert=False)
    for r in (vtc, fcfs):
        assert r.fairness["all_backlogged_s"] > 5.0  # both tenants queued for most of the run
    v = {t: o.share_ratio_backlogged for t, o in vtc.per_tenant.items()}
    f = {t: o.share_ratio_backlogged for t, o in fcfs.per_tenant.items()}
    assert all(x is not None and abs(x - 1.0) < 0.1 for x in v.values()), v
    assert f["client0"] is not None and f["client0"] < 0.8 and f["client1"] > 1.2, f  # FCFS serves 1:2
    assert vtc.fairness["service_difference"] < fcfs.fairness["service_difference"] / 3
    assert vtc.fairness["jain_backlogged"] > 0.99 > fcfs.fairness["jain_backlogged"]


def test_weighted_vtc_tracks_weights() -> None:
    lengths = LengthTable.constant(256, 256)
    w = merge(*[poisson_workload(lengths, 16.0 * (i + 1), duration_s=25, seed=10 + i, tenant=f"t{i}") for i in range(3)])
    r = run_virtual(w, default_policy("vtc", weights={"t0": 1.0, "t1": 2.0, "t2": 3.0}), torch_expert=False)
    ratios = {t: o.share_ratio_backlogged for t, o in r.per_tenant.items()}
    assert all(x is not None and abs(x - 1.0) < 0.1 for x in ratios.values()), ratios


def test_horizon_cuts_the_run_and_counts_the_rest_as_cancelled() -> None:
    r = run_virtual(OVERLOAD, "fcfs", torch_expert=False, horizon_s=5.0)
    counts = r.status_counts()
    assert counts["cancelled"] > 0 and sum(counts.values()) == len(OVERLOAD)
    assert all(rec.finish_s is None or rec.finish_s <= 5.0 for rec in r.records)


def test_json_output_is_plain_json() -> None:
    r = run_virtual(_light(), "wrr", torch_expert=False)
    doc = json.loads(json.dumps(r.to_dict(requests=True)))
    assert doc["statuses"]["ok"] == len(r.records)
    assert set(doc["per_tenant"]) == {"a", "b"}
    assert doc["report"]["overall"]["completed"] == len(r.records)
    assert len(doc["requests"]) == len(r.records)
    assert doc["forecast"]["ttft"]["count"] == len(r.records)


def test_two_engines_share_the_load() -> None:
    r = run_virtual(OVERLOAD, "vtc", engines=2, torch_expert=False)
    assert set(r.engines) == {"sim-0", "sim-1"}
    assert all(e["finished"] > len(OVERLOAD) / 4 for e in r.engines.values())
    assert r.status_counts()[OK] == len(OVERLOAD)


def test_simulate_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.jsonl"
    write_workload(path, _light())
    out = tmp_path / "out.json"
    assert simulate_main(["--workload", str(path), "--policy", "fcfs,vtc", "--no-torch", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fcfs" in text and "vtc" in text and "tenant" in text
    doc = json.loads(out.read_text())
    assert set(doc["runs"]) == {"fcfs", "vtc"}
    assert doc["runs"]["vtc"]["statuses"]["ok"] == len(_light())
    assert simulate_main(["--workload", str(tmp_path / "missing.jsonl"), "--policy", "fcfs"]) == 2
    assert simulate_main(["--workload", str(path), "--policy", "nope"]) == 2


def test_side_by_side_lists_every_tenant_of_every_run() -> None:
    a = run_virtual(_light(), "fcfs", torch_expert=False)
    text = format_side_by_side({"fcfs": a, "fcfs again": a})
    assert text.count("fcfs again") == 2 and "\na " in text and "\nb " in text
