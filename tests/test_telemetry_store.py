"""The DuckDB store: ingest, durability rules, faults, locking, kill -9, retention, Parquet."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from telemetry.store import Store, StoreLockedError, StoreWriteError, open_read_only

ROOT = Path(__file__).resolve().parents[1]


def request_row(i: int, **over):
    row = {
        "rid": f"r{i}", "trace_id": f"{i:032x}", "tenant": "acme", "slo_class": "interactive",
        "model": "m", "engine": "sim-0", "stream": True, "status": "ok", "http_status": 200,
        "decision": "admit", "reason": "fits", "finish_reason": "stop", "arrival_ts": 1000.0 + i,
        "dispatch_ts": 1000.1 + i, "first_token_ts": 1000.2 + i, "finish_ts": 1001.0 + i,
        "queue_ms": 100.0, "ttft_ms": 200.0, "tpot_ms": 20.0, "e2e_ms": 1000.0, "prompt_tokens": 100,
        "cached_tokens": 10, "completion_tokens": 40, "max_tokens": 64, "predicted_output_tokens": 38.5,
        "predicted_ttft_ms": 180.0, "predicted_tpot_ms": 21.0, "policy_version": 1, "slo_met": True,
    }
    row.update(over)
    return row


def count(store: Store, table: str) -> int:
    cur = store.cursor()
    try:
        return cur.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        cur.close()


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "t.duckdb", flush_interval_s=0.05)
    yield s
    s.close()


def test_rows_of_every_table_round_trip(store):
    store.record_request(request_row(1))
    store.record_decision({"ts": 5.0, "rid": "r1", "tenant": "acme", "kind": "admit", "reason": "fits",
                           "engine": "sim-0", "policy_version": 1, "inputs": {"queue": [1, 2]},
                           "outputs": {"engine": "sim-0"}})
    store.record_policy_change({"version": 2, "ts": 6.0, "actor": "ops", "reason": "r", "before": {"a": 1},
                                "after": {"a": 2}})
    store.record_gpu_sample({"ts": 7.0, "gpu": 0, "name": "H100", "simulated": True, "power_w": 400.5,
                             "energy_j": 1e6, "sm_clock_mhz": 1980, "utilization": 0.9,
                             "memory_used_bytes": 7 * 10**10, "memory_total_bytes": 8 * 10**10})
    store.record_spans([{"trace_id": "a" * 32, "span_id": "b" * 16, "name": "s", "start_ts": 1.0}],
                       [{"trace_id": "a" * 32, "span_id": "b" * 16, "ts": 1.5, "name": "e"}])
    assert store.flush()
    cur = store.cursor()
    req = cur.execute("SELECT rid, stream, slo_met, prompt_tokens, predicted_output_tokens FROM requests").fetchall()
    assert req == [("r1", True, True, 100, 38.5)]
    inputs = cur.execute("SELECT inputs FROM decisions").fetchone()[0]
    assert json.loads(inputs) == {"queue": [1, 2]}
    assert cur.execute("SELECT json_extract(after, '$.a')::INT FROM policy_changes").fetchone()[0] == 2
    assert cur.execute("SELECT memory_used_bytes FROM gpu_samples").fetchone()[0] == 7 * 10**10
    assert count(store, "spans") == 1 and count(store, "span_events") == 1
    st = store.stats()
    assert st["written"]["requests"] == 1 and st["pending"]["requests"] == 0
    assert st["dropped"] == {t: 0 for t in st["dropped"]}
    assert st["last_error"] is None


def test_caller_mistakes_raise_at_the_call_site(store):
    with pytest.raises(ValueError, match="unknown column"):
        store.record_request({"rid": "x", "tennant": "a"})
    with pytest.raises(ValueError, match="rid is required"):
        store.record_request({"tenant": "a"})
    with pytest.raises(ValueError, match="prompt_tokens"):
        store.record_request({"rid": "x", "prompt_tokens": "many"})
    with pytest.raises(ValueError, match="version is required"):
        store.record_policy_change_now({"actor": "x"})


def test_policy_change_now_is_committed_on_return(tmp_path):
    s = Store(tmp_path / "p.duckdb", flush_interval_s=60.0)  # no periodic flush would help
    try:
        s.record_policy_change_now({"version": 7, "actor": "ops", "reason": "why", "before": {}, "after": {"x": 1}})
        assert count(s, "policy_changes") == 1
    finally:
        s.close()


def test_policy_change_now_raises_when_it_cannot_commit(tmp_path):
    def fail(table):
        raise OSError("disk on fire")

    s = Store(tmp_path / "p.duckdb", fault_hook=fail)
    try:
        with pytest.raises(StoreWriteError, match="disk on fire"):
            s.record_policy_change_now({"version": 1})
    finally:
        s.fault_hook = None
        s.close()


def test_full_durable_queue_waits_then_counts_loss_and_dead_letters(tmp_path):
    s = Store(tmp_path / "q.duckdb", max_pending=3, block_timeout_s=0.01, autostart=False)
    results = [s.record_request(request_row(i)) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert s.stats()["dropped"]["requests"] == 2
    lost = [json.loads(line) for line in Path(s.dead_letter_path).read_text().splitlines()]
    assert [x["row"]["rid"] for x in lost] == ["r3", "r4"] and lost[0]["table"] == "requests"
    s.close()  # writes the three that were accepted
    con = open_read_only(tmp_path / "q.duckdb")
    assert con.execute("SELECT count(*) FROM requests").fetchone()[0] == 3
    con.close()


def test_full_span_queue_drops_and_counts(tmp_path):
    s = Store(tmp_path / "s.duckdb", max_pending_spans=2, autostart=False)
    span = {"trace_id": "a" * 32, "span_id": "b" * 16, "name": "s"}
    assert s.record_spans([span, span])
    assert not s.record_spans([span])
    assert s.stats()["dropped"]["spans"] == 1
    s.close()


def test_write_failures_are_retried_and_counted(tmp_path):
    failures = {"left": 2}

    def flaky(table):
        if table == "requests" and failures["left"] > 0:
            failures["left"] -= 1
            raise duckdb.IOException("injected write failure")

    s = Store(tmp_path / "f.duckdb", flush_interval_s=0.01, fault_hook=flaky)
    try:
        for i in range(10):
            s.record_request(request_row(i))
        for _ in range(50):
            if s.flush():
                break
        st = s.stats()
        assert st["written"]["requests"] == 10 and st["pending"]["requests"] == 0
        assert st["retries"]["requests"] == 2 and st["write_failures"] == 2
        assert st["dropped"]["requests"] == 0
        assert "injected write failure" in st["last_error"]
        assert count(s, "requests") == 10
    finally:
        s.close()


def test_past_the_retry_bound_rows_are_counted_lost_not_silently(tmp_path):
    def broken(table):
        raise duckdb.IOException("injected: disk gone")

    s = Store(tmp_path / "b.duckdb", retry_bound_s=0.0, span_retries=1, fault_hook=broken)
    try:
        s.record_request(request_row(1))
        s.record_spans([{"trace_id": "a" * 32, "span_id": "b" * 16, "name": "s"}])
        s.flush()
        st = s.stats()
        assert st["dropped"]["requests"] == 1 and st["dropped"]["spans"] == 1
        lost = [json.loads(line) for line in Path(s.dead_letter_path).read_text().splitlines()]
        assert [x["row"]["rid"] for x in lost] == ["r1"]  # durable rows are dead-lettered
        s.record_request(request_row(2))  # the process stays up and keeps accepting rows
    finally:
        s.fault_hook = None
        s.close()


def test_malformed_span_rows_are_isolated(store):
    good = {"trace_id": "a" * 32, "span_id": "b" * 16, "name": "good", "start_ts": 1.0}
    bad = {"trace_id": "a" * 32, "span_id": "c" * 16, "name": "bad", "start_ts": "not a number"}
    store.record_spans([good, bad, dict(good, span_id="d" * 16)])
    store.flush()
    assert count(store, "spans") == 2
    assert store.stats()["dropped"]["spans"] == 1


def test_prune_by_age_keeps_the_audit_log(store):
    store.record_request(request_row(1, arrival_ts=100.0))
    store.record_request(request_row(2, arrival_ts=900.0))
    store.record_decision({"ts": 100.0, "kind": "admit"})
    store.record_policy_change({"version": 1, "ts": 100.0})
    store.flush()
    deleted = store.prune(older_than_s=500.0, now=1000.0)
    assert deleted["requests"] == 1 and deleted["decisions"] == 1
    assert count(store, "requests") == 1 and count(store, "policy_changes") == 1


def test_export_parquet_one_file_per_table(store, tmp_path):
    for i in range(3):
        store.record_request(request_row(i))
    files = store.export_parquet(tmp_path / "pq")
    assert set(files) == {"requests", "decisions", "policy_changes", "gpu_samples", "spans", "span_events"}
    assert pq.read_table(files["requests"]).num_rows == 3


def test_second_open_in_this_process_is_refused(store):
    with pytest.raises(StoreLockedError):
        Store(store.path)


def test_open_locked_by_another_process_raises_store_locked_error(store):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from telemetry.store import Store, StoreLockedError
        try:
            Store({store.path!r})
        except StoreLockedError as exc:
            print("LOCKED", exc)
            sys.exit(3)
        sys.exit(0)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "locked by another process" in proc.stdout


def test_kill_9_loses_at_most_the_unflushed_tail(tmp_path):
    path = tmp_path / "k.duckdb"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from telemetry.store import Store
        s = Store({str(path)!r}, flush_interval_s=0.05)
        i = 0
        while True:
            for _ in range(200):
                s.record_request({{"rid": f"r{{i}}", "tenant": "t", "arrival_ts": float(i)}})
                i += 1
            s.record_spans([{{"trace_id": "a" * 32, "span_id": f"{{i:016x}}", "name": "x"}}])
            if s.flush():
                print("flushed", i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    flushed = 0
    try:
        for line in proc.stdout:
            flushed = int(line.split()[1])
            if flushed >= 2000:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert flushed >= 2000
    s = Store(path)  # opens cleanly, replaying the WAL
    try:
        n = count(s, "requests")
        assert n >= flushed
        cur = s.cursor()
        # whatever made it in is whole: no gaps among the committed rids
        assert cur.execute("SELECT count(DISTINCT rid) FROM requests").fetchone()[0] == n
    finally:
        s.close()
