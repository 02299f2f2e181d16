"""`sluice audit` and the CLI of `sluice replay --db`, on a store written by a real `sluice serve`
(the gateway, the embedded simulated H100 and the DuckDB store, on loopback) under the demo's
multi-tenant load, with a policy change through the admin API half-way."""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from replay.live import run_live
from sluice.cli import main
from sluice.demo import demo_workload
from sluice.devsetup import dev_config, dev_state
from sluice.server import create_app
from sluice.store_window import parse_window
from tests.servers import ServerThread
from tests.test_gateway import raw

LOAD_S = 12.0  # of the demo's load: bursts overload the simulated H100, so every kind of decision occurs
_recorded: dict[str, Any] = {}
_lock = threading.Lock()


def record_store(root: Path) -> Path:
    """A store file written by a real server under load, made once per test session (read-only
    afterwards: tests copy it before changing it)."""
    with _lock:
        if "db" not in _recorded:
            _recorded["db"] = _record(root)
        return _recorded["db"]


def _record(root: Path) -> Path:
    config, keys = dev_config(root / "state")
    _, token, _ = dev_state(root / "state")
    app, _ = create_app(config)
    with ServerThread(app) as server:
        async def load() -> None:
            work = demo_workload(LOAD_S, seed=3, scale=1.5)
            half = [w for w in work if w.timestamp_ms < LOAD_S * 500]
            await run_live(server.url, half, keys, request_timeout_s=60)
            status, _, body = raw(server, "PATCH", "/admin/v1/policy", {
                "reason": "acme pays for more", "changes": {"tenants": {"acme": {"weight": 3.0}}}},
                headers={"Authorization": f"Bearer {token}", "X-Sluice-Actor": "ops@test"})
            assert status == 200, body
            rest = [w for w in work if w.timestamp_ms >= LOAD_S * 500]
            t0 = rest[0].timestamp_ms if rest else 0.0
            await run_live(server.url, [_shift(w, t0) for w in rest], keys, request_timeout_s=60)

        asyncio.run(load())
        # while it still serves: its own file cannot be opened, a snapshot through the admin API can
        _recorded["held"] = main(["audit", "--db", config.server.db_path])
        snap = root / "snapshot.duckdb"
        _recorded["snapshot_rc"] = main(["snapshot", "--url", server.url, "--out", str(snap),
                                         "--token-file", str(root / "state" / "admin.token")])
        _recorded["snapshot"] = snap
        _recorded["bad_tables_rc"] = main(["snapshot", "--url", server.url, "--out", str(root / "bad.duckdb"),
                                           "--tables", "decisions,nope",
                                           "--token-file", str(root / "state" / "admin.token")])
        (_recorded["requests_sent"],) = [len(demo_workload(LOAD_S, seed=3, scale=1.5))]
    return Path(config.server.db_path)


def _shift(w: Any, t0: float) -> Any:
    import dataclasses

    return dataclasses.replace(w, timestamp_ms=w.timestamp_ms - t0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_store(tmp_path_factory.getbasetemp() / "recorded")


def test_the_audit_of_a_real_server_s_store_finds_no_mismatch(store: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "audit.json", tmp_path / "report"
    assert main(["audit", "--db", str(store), "--json", str(out), "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "recorded policy v2 from the audit log" in (report / "index.html").read_text()
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["mismatches"] == []
    kinds = doc["by_kind"]
    assert kinds.get("admit", 0) > 0 and kinds.get("dispatch", 0) > 0
    admissions = sum(kinds.get(k, 0) for k in ("admit", "defer", "reject"))
    # every admission and every dispatch re-derived (no rate limits in the dev setup)
    assert doc["rederived"] == admissions and doc["skipped"] == {}
    assert doc["dispatch_rederived"] == kinds["dispatch"]
    # the change made through the admin API is in the timeline, with who, why and what changed
    (start, change) = doc["timeline"]
    assert (start["version"], start["actor"]) == (1, "config")  # the first start's policy, audited too
    assert change["version"] == 2 and change["actor"] == "ops@test" and change["reason"] == "acme pays for more"
    assert change["changes"] == [["tenants.acme.weight", 2.0, 3.0]]
    # every version has its audit row, so every admission is checked against its policy too
    assert set(doc["by_version"]) == {"1", "2"} and doc["unaudited_versions"] == {}
    assert "tenants.acme.weight: 2.0 -> 3.0" in text and "no audit row" not in text and "OK" in text


def test_a_running_server_s_store_is_audited_through_a_snapshot(store: Path, tmp_path: Path) -> None:
    assert _recorded["held"] == 3  # the live file: held by the server's writer
    assert _recorded["snapshot_rc"] == 0
    assert _recorded["bad_tables_rc"] == 1  # an unknown table is refused (400), not skipped
    snap = _recorded["snapshot"]
    out = tmp_path / "audit.json"
    assert main(["audit", "--db", str(snap), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    con = duckdb.connect(str(store), read_only=True)
    try:  # taken after the load, before the server stopped: every decision and request is in it
        (decisions,) = con.execute("SELECT count(*) FROM decisions").fetchone()
        (requests,) = con.execute("SELECT count(*) FROM requests").fetchone()
    finally:
        con.close()
    assert doc["rows"] == decisions > 0 and doc["ok"]
    assert requests == _recorded["requests_sent"]
    con = duckdb.connect(str(snap), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (requests,)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    assert tables == {"policy_changes", "requests", "decisions", "gpu_samples"}  # no spans unless asked


def _tamper(store: Path, tmp_path: Path, kind: str, change: Any) -> tuple[Path, str]:
    """A copy of the store whose first `kind` decision has its outputs changed by `change(outputs)`."""
    copy = tmp_path / "tampered.duckdb"
    shutil.copy(store, copy)
    con = duckdb.connect(str(copy))
    try:
        ts, rid, outputs = con.execute("SELECT ts, rid, outputs FROM decisions WHERE kind = ? ORDER BY ts LIMIT 1",
                                       [kind]).fetchone()
        out = json.loads(outputs)
        change(out)
        con.execute("UPDATE decisions SET outputs = ? WHERE ts = ? AND rid = ? AND kind = ?",
                    [json.dumps(out), ts, rid, kind])
    finally:
        con.close()
    return copy, rid


def test_a_tampered_admission_row_is_named_with_its_differing_field(store: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # an admission whose recorded TTFT forecast was edited after the fact, by far less than a microsecond
    key = {}

    def nudge(out: dict[str, Any]) -> None:
        key["name"] = next(k for k in ("ttft_s", "ttft_ms") if k in out)
        out[key["name"]] *= 1 + 1e-9

    path, rid = _tamper(store, tmp_path, "admit", nudge)
    out = tmp_path / "audit.json"
    assert main(["audit", "--db", str(path), "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert [(m["rid"], m["field"]) for m in doc["mismatches"]] == [(rid, f"outputs.{key['name']}")]
    m = doc["mismatches"][0]
    assert m["recorded"] == pytest.approx(m["derived"] * (1 + 1e-9), rel=1e-12)
    assert "MISMATCH" in capsys.readouterr().out


def test_a_tampered_dispatch_row_is_found(store: Path, tmp_path: Path) -> None:
    # a dispatch whose recorded priority contradicts its policy version (the class's priority)
    path, rid = _tamper(store, tmp_path, "dispatch", lambda out: out.update(priority=99))
    out = tmp_path / "audit.json"
    assert main(["audit", "--db", str(path), "--json", str(out)]) == 1
    mismatches = json.loads(out.read_text())["mismatches"]
    assert [(m["rid"], m["field"], m["recorded"]) for m in mismatches] == [(rid, "outputs.priority", 99)]


def test_a_window_limits_the_audit(store: Path, tmp_path: Path) -> None:
    con = duckdb.connect(str(store), read_only=True)
    try:
        lo, hi = con.execute("SELECT min(ts), max(ts) FROM decisions").fetchone()
        mid = (lo + hi) / 2
        (n_first,) = con.execute("SELECT count(*) FROM decisions WHERE ts < ?", [mid]).fetchone()
    finally:
        con.close()
    out = tmp_path / "audit.json"
    assert main(["audit", "--db", str(store), "--until", repr(mid), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"] == n_first


def test_unreadable_stores_exit_3(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--db", str(tmp_path / "missing.duckdb")]) == 3
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()  # a DuckDB file, but not a sluice store
    assert main(["audit", "--db", str(other)]) == 3
    assert "not a readable sluice store" in capsys.readouterr().err
    # held by a writer (a running server): the message says how to read it anyway
    copy = tmp_path / "held.duckdb"
    shutil.copy(store, copy)
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(["audit", "--db", str(copy)]) == 3
        assert "sluice snapshot" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("window, expected", [
    ("100:200", (100.0, 200.0)), ("100..200", (100.0, 200.0)), (":200", (None, 200.0)), ("100:", (100.0, None)),
    ("2026-12-01T10:00:00:2026-12-01T11:00:00", (1796119200.0, 1796122800.0)),
    ("2026-12-01T10:00:00+01:00..", (1796115600.0, None))])
def test_windows_parse(window: str, expected: tuple[float | None, float | None]) -> None:
    assert parse_window(window) == expected


def test_bad_windows_and_policies_are_usage_errors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(store)
    assert main(["replay", "--db", db, "--window", "yesterday:today", "--policy", "vtc"]) == 2
    assert "SINCE:UNTIL" in capsys.readouterr().err
    assert main(["replay", "--db", db, "--since", "200", "--until", "100", "--policy", "vtc"]) == 2
    assert "ends" in capsys.readouterr().err
    assert main(["replay", "--db", db, "--window", "1:2", "--since", "1", "--policy", "vtc"]) == 2
    assert main(["replay", "--db", db]) == 2
    assert "nothing to change" in capsys.readouterr().err
    assert main(["replay", "--db", db, "--window", "1:2", "--policy", "vtc"]) == 2  # long before the recording
    assert "no request arrived" in capsys.readouterr().err
    assert main(["replay", "--db", db, "--policy", "vtc", "--profile", "a100-nope"]) == 2
    assert "no simulator profile" in capsys.readouterr().err
    assert main(["replay", "--db", db, "--config", "/nonexistent/sluice.toml"]) == 2
    assert main(["replay", "--live", "http://127.0.0.1:9", "--workload", "vtc-overload", "--engines", "2"]) == 2
    assert "--engines belong to the what-if replay" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--db", db, "--policy", "lottery"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay", "--policy", "vtc"])  # no mode
