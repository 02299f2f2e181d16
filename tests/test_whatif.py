"""What-if (replay/whatif.py, `sluice replay --db`): a window recorded by a real `sluice serve` under
the demo's load, replayed under its recorded policy (fidelity, within a stated tolerance) and under
another one, beside the figures of the rows themselves."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from replay.runner import default_policy
from replay.whatif import WhatIf, format_whatif, what_if, workload_from_requests
from replay.workload import DEFAULT_MAX_TOKENS
from sluice.cli import main
from tests.test_cli_audit import record_store

# How closely the replay under the recorded policy must reproduce the recording, over all requests.
# The recorded run served in real time on a shared CPU (the simulated engine and the gateway wait for
# the event loop; the core's TTFT error quantile learns that slowness and refuses a little more);
# the replay runs the same engine model on a virtual clock. Shares in percentage points, goodput
# as a ratio; TTFT within a factor (docs/replay.md, "What-if").
TOLERANCE = {"admitted_pp": 15.0, "slo_attainment_pp": 15.0, "goodput_ratio": (0.8, 1.25), "ttft_p50_ratio": (1 / 3, 3.0)}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_store(tmp_path_factory.getbasetemp() / "recorded")


@pytest.fixture(scope="module")
def fcfs(store: Path) -> WhatIf:
    return what_if(store, None, None, scheduler="fcfs", admission=False, torch_expert=False)


def _rows(store: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_recorded_figures_are_the_rows(store: Path, fcfs: WhatIf) -> None:
    per_tenant = dict(_rows(store, "SELECT tenant, count(*) FROM requests GROUP BY tenant"))
    ok = dict(_rows(store, "SELECT tenant, count(*) FROM requests WHERE status = 'ok' GROUP BY tenant"))
    good = dict(_rows(store, "SELECT tenant, count(*) FROM requests WHERE slo_met GROUP BY tenant"))
    rec = fcfs.recorded
    assert {t: o.requests for t, o in rec.per_tenant.items()} == per_tenant
    assert {t: o.completed for t, o in rec.per_tenant.items() if o.completed} == ok
    assert {t: o.good for t, o in rec.per_tenant.items() if o.good} == good
    assert set(rec.per_class) == {"interactive", "batch"}  # the dev setup's classes, batchco in batch
    assert rec.per_class["batch"].requests == per_tenant["batchco"]
    # every replay saw every recorded request
    for run in (fcfs.fidelity_run, fcfs.whatif):
        assert run.overall.requests == rec.overall.requests


def test_replay_under_the_recorded_policy_reproduces_the_recording(fcfs: WhatIf) -> None:
    assert fcfs.recorded_policy_source == "v2 from the audit log"  # the admin API's change, most of the window
    assert fcfs.fidelity_run.policy.tenant("acme").weight == 3.0
    f = fcfs.fidelity["all"]
    assert abs(f["admitted_pp"]) <= TOLERANCE["admitted_pp"], fcfs.fidelity
    assert abs(f["slo_attainment_pp"]) <= TOLERANCE["slo_attainment_pp"], fcfs.fidelity
    lo, hi = TOLERANCE["goodput_ratio"]
    assert lo <= f["goodput_ratio"] <= hi, fcfs.fidelity
    lo, hi = TOLERANCE["ttft_p50_ratio"]
    assert lo <= f["ttft_p50_ratio"] <= hi, fcfs.fidelity


def test_the_what_if_runs_the_other_policy(fcfs: WhatIf) -> None:
    assert (fcfs.whatif.policy.scheduler, fcfs.whatif.policy.admission) == ("fcfs", False)
    assert fcfs.whatif.policy.tenants == fcfs.fidelity_run.policy.tenants  # only what was asked changes
    assert fcfs.whatif.overall.rejected == 0  # no admission control: nothing refused at arrival
    text = format_whatif(fcfs)
    for needle in ("recorded", "what-if fcfs v2", "[interactive]", "[batch]", "acme", "batchco", "fidelity", "ref%"):
        assert needle in text


def test_the_replay_never_sees_the_true_output_length() -> None:
    rows = [{"rid": "1", "arrival_ts": 10.5, "prompt_tokens": 100, "completion_tokens": 7, "max_tokens": 50,
             "status": "ok", "tenant": "a", "slo_class": "interactive"},
            {"rid": "2", "arrival_ts": 10.0, "prompt_tokens": 30, "completion_tokens": 0, "max_tokens": 40,
             "status": "rejected", "tenant": "b", "slo_class": None},
            {"rid": "3", "arrival_ts": 11.0, "prompt_tokens": 30, "completion_tokens": 12, "max_tokens": None,
             "status": "ok", "tenant": "b", "slo_class": None},
            {"rid": "4", "arrival_ts": 12.0, "prompt_tokens": 30, "completion_tokens": 2, "max_tokens": 500,
             "status": "aborted", "tenant": "b", "slo_class": None}]
    w, estimated = workload_from_requests(rows)
    assert [(x.timestamp_ms, x.input_length, x.tenant, x.extra["rid"]) for x in w] == [
        (0.0, 30, "b", "2"), (500.0, 100, "a", "1"), (1000.0, 30, "b", "3"), (2000.0, 30, "b", "4")]
    # the core's cap is what the client asked (DEFAULT_MAX_TOKENS when it set none), never the length
    assert [x.output_cap for x in w] == [40, 50, DEFAULT_MAX_TOKENS, 500]
    # the engine stops at the observed length; unfinished requests get their tenant's median
    assert [x.output_length for x in w] == [12, 7, 12, 12] and estimated == 2


def test_a_recorded_policy_missing_from_the_audit_log_needs_a_config(store: Path, tmp_path: Path) -> None:
    copy = tmp_path / "no-log.duckdb"
    shutil.copy(store, copy)
    con = duckdb.connect(str(copy))
    con.execute("DELETE FROM policy_changes")
    con.close()
    with pytest.raises(ValueError, match="--config"):
        what_if(copy, None, None, scheduler="vtc", torch_expert=False)
    given = default_policy("equinox", admission=True, weights={"acme": 2.0})
    w = what_if(copy, None, None, config_policy=given, scheduler="vtc", torch_expert=False)
    assert w.fidelity_run.policy == given and w.whatif.policy.scheduler == "vtc"
    assert "taken from --config" in w.recorded_policy_source


def test_the_cli_writes_json_and_a_report(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (since,) = _rows(store, "SELECT min(arrival_ts) + 2 FROM requests")[0]
    out, report = tmp_path / "whatif.json", tmp_path / "report"
    assert main(["replay", "--db", str(store), "--window", f"{since}:", "--policy", "vtc", "--no-torch",
                 "--json", str(out), "--report", str(report)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["runs"]) == {"recorded", "replayed v2", "what-if vtc+admission v2"}
    (n,) = _rows(store, f"SELECT count(*) FROM requests WHERE arrival_ts >= {since}")[0]
    assert all(r["overall"]["requests"] == n for r in doc["runs"].values())
    assert set(doc["fidelity"]) >= {"all", "[interactive]", "[batch]", "acme"}
    page = (report / "index.html").read_text()
    assert "what-if vtc+admission v2" in page and "replayed v2" in page
    assert "what-if vtc+admission v2" in capsys.readouterr().out
    # live-replay flags do not belong to a what-if: refused, not ignored
    assert main(["replay", "--db", str(store), "--policy", "vtc", "--speedup", "2"]) == 2
