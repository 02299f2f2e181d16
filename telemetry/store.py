"""The DuckDB store: one file, one writer thread, batched Arrow ingest, bounded and counted.

Durability rules (see docs/telemetry.md):

* ``requests``, ``decisions``, ``policy_changes`` and ``gpu_samples`` are *durable* tables: a
  full queue makes the caller wait (up to ``block_timeout_s``); a failed write is retried every
  flush interval for up to ``retry_bound_s``; only past those bounds is a row given up, counted
  in ``stats()["dropped"]`` and appended to the dead-letter file ``<path>.lost.jsonl``.
* ``spans`` and ``span_events`` may be dropped (counted) when their queue is full or after
  ``span_retries`` failed attempts.
* Rows reach the file every ``flush_interval_s`` (or sooner when ``batch_rows`` are pending), so
  after kill -9 at most the last interval is missing; DuckDB replays its WAL on the next open.
* ``record_policy_change_now`` returns only once the row is committed (or raises).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb

try:  # optional: faster JSON for the writer thread's lazily encoded columns
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is optional
    _orjson = None

from .schema import (COLUMN_NAMES, INDEXES, TABLES, TIME_COLUMN, add_missing_columns, coerce_row, ddl, rows_to_arrow,
                     to_json)

log = logging.getLogger("sluice.telemetry.store")

DURABLE_TABLES = ("policy_changes", "requests", "decisions", "gpu_samples")
LOSSY_TABLES = ("spans", "span_events")
WRITE_ORDER = DURABLE_TABLES + LOSSY_TABLES

FaultHook = Callable[[str], None]

# JSON columns whose values may be queued as dicts/lists and are encoded on the writer thread
_LAZY_JSON = {"decisions": ("inputs", "outputs")}


class StoreError(Exception):
    """Base class of the store's errors."""


class StoreLockedError(StoreError):
    """The DuckDB file is held by another process (or another Store in this process)."""


class StoreUnwritableError(StoreError):
    """The store's directory cannot be written (read-only file system, permissions, not a directory)."""


class StoreClosedError(StoreError):
    """The store was closed."""


class StoreWriteError(StoreError):
    """A synchronous write could not be committed."""


_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


class _Sync:
    __slots__ = ("row", "done", "error")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = threading.Event()
        self.error: BaseException | None = None


class Store:
    """The DuckDB file and its single writer.

    Thread-safe: ``record_*`` may be called from any thread (the asyncio gateway, the span
    processor's thread, the OTLP receiver). Reads go through ``cursor()`` (a cursor of the
    writer's own connection: DuckDB allows one writing process, and MVCC lets reads run beside
    the writer).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_interval_s: float = 1.0,
        max_pending: int = 100_000,
        max_pending_spans: int = 200_000,
        batch_rows: int = 50_000,
        block_timeout_s: float = 1.0,
        retry_bound_s: float = 300.0,
        span_retries: int = 3,
        threads: int | None = None,
        memory_mb: int | None = None,
        fault_hook: FaultHook | None = None,
        autostart: bool = True,
    ) -> None:
        self.path = str(path)
        self.flush_interval_s = float(flush_interval_s)
        self.max_pending = int(max_pending)
        self.max_pending_spans = int(max_pending_spans)
        self.batch_rows = int(batch_rows)
        self.block_timeout_s = float(block_timeout_s)
        self.retry_bound_s = float(retry_bound_s)
        self.span_retries = int(span_retries)
        self.fault_hook = fault_hook
        self.dead_letter_path = self.path + ".lost.jsonl" if self.path != ":memory:" else None

        if self.path != ":memory:":
            _check_writable(self.path)
        self._key = os.path.realpath(self.path) if self.path != ":memory:" else f":memory:{id(self)}"
        with _open_paths_lock:
            if self._key in _open_paths:
                raise StoreLockedError(f"{self.path} is already open in this process")
            _open_paths.add(self._key)
        try:
            config: dict[str, Any] = {}
            if threads:
                config["threads"] = int(threads)
            if memory_mb:  # DuckDB's default (80% of RAM) lets a long-running store cache its whole file
                config["memory_limit"] = f"{int(memory_mb)}MB"
            try:
                self._con = duckdb.connect(self.path, config=config)
            except duckdb.IOException as exc:
                msg = str(exc)
                if "lock" in msg.lower():
                    raise StoreLockedError(
                        f"{self.path} is locked by another process (DuckDB allows one writer): {msg}"
                    ) from None
                raise
            existing: dict[str, set[str]] = {}
            for table, column in self._con.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'main'").fetchall():
                existing.setdefault(table, set()).add(column)
            for stmt in ddl() + add_missing_columns(existing):
                self._con.execute(stmt)
            for stmt in INDEXES:
                self._con.execute(stmt)
        except BaseException:
            with _open_paths_lock:
                _open_paths.discard(self._key)
            raise

        self._wcur = self._con.cursor()
        self._cond = threading.Condition()
        self._queues: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self._queued = 0  # rows in self._queues, all tables (kept as a running count)
        self._first_ts: dict[str, float | None] = {t: None for t in TABLES}
        # rows that failed to write: (rows, first_failure_ts, attempts)
        self._retry: dict[str, tuple[list[dict[str, Any]], float, int] | None] = {t: None for t in TABLES}
        self._sync: list[_Sync] = []
        self._tasks: list[tuple[Callable[[duckdb.DuckDBPyConnection], Any], _Task]] = []
        self._written = {t: 0 for t in TABLES}
        self._dropped = {t: 0 for t in TABLES}
        self._retries = {t: 0 for t in TABLES}
        self._failures = 0
        self._flushes = 0
        self._last_error: str | None = None
        self._last_flush_ts: float | None = None
        self._flush_requested = 0
        self._flush_done = 0
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        # rows from callers that must not wait (wait=False) when their queue was full
        self._spill: collections.deque[tuple[str, list[dict[str, Any]], bool]] = collections.deque()
        self._spilled = 0
        self._spill_thread: threading.Thread | None = None
        if autostart:
            self.start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the writer thread (done by the constructor unless ``autostart=False``)."""
        with self._cond:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="sluice-store-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Write everything pending now; True once a full write cycle after the call finished."""
        with self._cond:
            if self._thread is None or self._closed:
                return self._pending_total() == 0
            self._cond.wait_for(lambda: not self._spill and self._spilled == 0, timeout_s)  # spilled rows too
            self._flush_requested += 1
            target = self._flush_requested
            self._cond.notify_all()
            ok = self._cond.wait_for(lambda: self._flush_done >= target or self._closed, timeout_s)
            return bool(ok) and self._pending_total() == 0

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, stop the writer, CHECKPOINT and close the file. Idempotent."""
        with self._cond:
            if self._closed:
                return
            # rows spilled by callers that could not wait go in first (the writer makes room)
            self._cond.wait_for(lambda: not self._spill and self._spilled == 0, timeout_s)
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
        else:  # never started: write what is queued on this thread
            self._cycle()
            self._give_up_remaining("store closed with the write still failing")
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiting = self._sync
            self._sync = []
        for s in waiting:
            s.error = StoreClosedError("store closed")
            s.done.set()
        try:
            self._wcur.execute("CHECKPOINT")
        except duckdb.Error as exc:  # pragma: no cover - reported, never raised on close
            log.warning("checkpoint on close failed: %s", exc)
        self._con.close()
        with _open_paths_lock:
            _open_paths.discard(self._key)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def record_request(self, row: Mapping[str, Any], *, wait: bool = True) -> bool:
        """Queue one complete request row (keys: the ``requests`` columns; ``rid`` required).

        ``wait=False`` (callers on an event loop): never wait for room in a full queue; the row is
        handed to the spill thread, which waits for it (see Durability in docs/telemetry.md).
        """
        if not row.get("rid"):
            raise ValueError("requests: rid is required")
        return self._put("requests", [coerce_row("requests", row)], wait)

    def record_decision(self, row: Mapping[str, Any]) -> bool:
        """Queue one decision row (``ts`` defaults to now; ``inputs``/``outputs`` dicts become JSON)."""
        r = coerce_row("decisions", row)
        r.setdefault("ts", time.time())
        return self._put("decisions", [r])

    def record_decision_fresh(self, ts: float, rid: str, tenant: str | None, kind: str, reason: str | None,
                              engine: str | None, policy_version: int | None, inputs: Any, outputs: Any,
                              *, pool: str | None = None, wait: bool = True) -> bool:
        """Queue one decision from already well-typed values (the serving hot path).

        ``inputs``/``outputs`` may be dicts: they are JSON-encoded on the writer thread, so the
        caller hands them over and must not mutate them afterwards.
        """
        return self._put("decisions", [{"ts": ts, "rid": rid, "tenant": tenant, "kind": kind, "reason": reason,
                                        "engine": engine, "policy_version": policy_version, "inputs": inputs,
                                        "outputs": outputs, "pool": pool}], wait)

    def record_policy_change(self, row: Mapping[str, Any]) -> bool:
        """Queue one audit-log row asynchronously (prefer ``record_policy_change_now``)."""
        return self._put("policy_changes", [self._policy_row(row)])

    def record_policy_change_now(self, row: Mapping[str, Any], timeout_s: float = 10.0) -> None:
        """Write one audit-log row and return only once it is committed.

        Raises ``StoreWriteError`` if it could not be committed within ``timeout_s`` (the caller
        must then not apply the policy), ``StoreClosedError`` if the store is closed.
        """
        s = _Sync(self._policy_row(row))
        with self._cond:
            if self._closed or self._closing:
                raise StoreClosedError("store closed")
            self._sync.append(s)
            self._cond.notify_all()
        if self._thread is None:
            self._cycle()
        if not s.done.wait(timeout_s):
            with self._cond:
                if s in self._sync:
                    self._sync.remove(s)
                    raise StoreWriteError(f"policy change not committed within {timeout_s} s")
            s.done.wait()  # being written right now: wait for the outcome
        if s.error is not None:
            if isinstance(s.error, StoreError):
                raise s.error
            raise StoreWriteError(f"policy change not committed: {s.error}") from s.error

    def record_gpu_sample(self, row: Mapping[str, Any]) -> bool:
        """Queue one GPU sample (keys: the ``gpu_samples`` columns; ``ts`` defaults to now)."""
        r = coerce_row("gpu_samples", row)
        r.setdefault("ts", time.time())
        return self._put("gpu_samples", [r])

    def record_gpu_samples(self, rows: Iterable[Mapping[str, Any]], *, wait: bool = True) -> bool:
        now = time.time()
        batch = []
        for row in rows:
            r = coerce_row("gpu_samples", row)
            r.setdefault("ts", now)
            batch.append(r)
        return self._put("gpu_samples", batch, wait) if batch else True

    def record_spans(self, rows: list[dict[str, Any]], events: list[dict[str, Any]] | None = None) -> bool:
        """Queue span rows and their event rows (as built by tracing/otlp_receiver; not coerced).

        Returns False if the span queue was full and the batch was dropped (counted).
        """
        ok = self._put("spans", rows) if rows else True
        if events:
            self._put("span_events", events)
        return ok

    @staticmethod
    def _policy_row(row: Mapping[str, Any]) -> dict[str, Any]:
        r = coerce_row("policy_changes", row)
        if r.get("version") is None:
            raise ValueError("policy_changes: version is required")
        r.setdefault("ts", time.time())
        return r

    def _put(self, table: str, rows: list[dict[str, Any]], wait: bool = True) -> bool:
        lossy = table in LOSSY_TABLES
        limit = self.max_pending_spans if lossy else self.max_pending
        with self._cond:
            if self._closed or self._closing:
                self._dropped[table] += len(rows)
                if not lossy:
                    log.error("store closed: %d %s rows lost", len(rows), table)
                    self._dead_letter(table, rows, "store closed")
                return False
            if not lossy and not wait and self._pending(table) + len(rows) > limit and self._thread is not None:
                return self._spill_rows(table, rows)
            if not lossy and self._pending(table) + len(rows) > limit and self._thread is not None:
                self._cond.notify_all()
                self._cond.wait_for(
                    lambda: self._pending(table) + len(rows) <= limit or self._closed, self.block_timeout_s
                )
            if self._pending(table) + len(rows) > limit:
                self._dropped[table] += len(rows)
                if not lossy:
                    log.error("store queue for %s full for %.1f s: %d rows lost", table,
                              self.block_timeout_s, len(rows))
                    self._dead_letter(table, rows, "queue full")
                return False
            q = self._queues[table]
            if not q:
                self._first_ts[table] = time.time()
            q.extend(rows)
            self._queued += len(rows)
            if self._queued >= self.batch_rows:
                self._cond.notify_all()
            return True

    def _spill_rows(self, table: str, rows: list[dict[str, Any]]) -> bool:
        """A full durable queue and a caller that must not wait (called with the lock held): the
        spill thread waits for room on its behalf; past ``max_pending`` spilled rows, the rows are
        counted lost and dead-lettered, by the spill thread too (no file I/O for the caller)."""
        if self._spilled + len(rows) > self.max_pending:
            self._dropped[table] += len(rows)
            self._spill.append((table, rows, False))
            ok = False
        else:
            self._spilled += len(rows)
            self._spill.append((table, rows, True))
            ok = True
        if self._spill_thread is None:
            self._spill_thread = threading.Thread(target=self._run_spill, name="sluice-store-spill", daemon=True)
            self._spill_thread.start()
        self._cond.notify_all()
        return ok

    def _run_spill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._spill or self._closed)
                if not self._spill:
                    return
                table, rows, keep = self._spill.popleft()
            if keep:
                self._put(table, rows, True)  # waits for room up to block_timeout_s, then dead-letters
                with self._cond:
                    self._spilled -= len(rows)
                    self._cond.notify_all()
            else:
                log.error("store queue for %s full and %d rows already spilled: %d rows lost", table,
                          self.max_pending, len(rows))
                self._dead_letter(table, rows, "queue full")

    def _pending(self, table: str) -> int:
        retry = self._retry[table]
        return len(self._queues[table]) + (len(retry[0]) if retry else 0)

    def _pending_total(self) -> int:
        return sum(self._pending(t) for t in TABLES) + len(self._sync) + self._spilled

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            with self._cond:
                while not (
                    self._closing
                    or self._sync
                    or self._tasks
                    or self._flush_requested > self._flush_done
                    or self._queued >= self.batch_rows
                ):
                    remaining = next_flush - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                closing = self._closing
                target = self._flush_requested
            next_flush = time.monotonic() + self.flush_interval_s
            try:
                self._cycle()
            except BaseException as exc:  # pragma: no cover - the loop must survive anything
                log.exception("store writer cycle failed")
                self._last_error = repr(exc)
            with self._cond:
                self._flush_done = max(self._flush_done, target)
                self._cond.notify_all()
            if closing:
                self._cycle()  # rows queued during the last cycle, and one more try of failed ones
                self._give_up_remaining("store closed with the write still failing")
                with self._cond:
                    self._flush_done = self._flush_requested
                    self._cond.notify_all()
                return

    def _cycle(self) -> None:
        with self._cond:
            sync, self._sync = self._sync, []
            tasks, self._tasks = self._tasks, []
            batches: dict[str, tuple[list[dict[str, Any]], float | None, int]] = {}
            for t in TABLES:
                retry = self._retry[t]
                self._retry[t] = None
                rows = self._queues[t]
                self._queues[t] = []
                self._first_ts[t] = None
                if retry is not None:
                    batches[t] = (retry[0] + rows, retry[1], retry[2])
                elif rows:
                    batches[t] = (rows, None, 0)
            self._queued = 0
            self._cond.notify_all()  # room in the queues again
        for s in sync:
            self._write_sync(s)
        for table in WRITE_ORDER:
            if table in batches:
                rows, failed_since, attempts = batches[table]
                self._write_batch(table, rows, failed_since, attempts)
        for fn, task in tasks:
            try:
                task.result = fn(self._wcur)
            except BaseException as exc:
                task.error = exc
            task.done.set()
        with self._cond:
            self._flushes += 1
            self._last_flush_ts = time.time()

    def _insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if self.fault_hook is not None:
            self.fault_hook(table)
        _encode_lazy_json(table, rows)
        tbl = rows_to_arrow(table, rows)
        cols = ", ".join(f'"{c}"' for c in COLUMN_NAMES[table])
        name = f"_batch_{table}"
        self._wcur.register(name, tbl)
        try:
            self._wcur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {name}")
        finally:
            self._wcur.unregister(name)

    def _write_sync(self, s: _Sync) -> None:
        error: BaseException | None = None
        for _ in range(3):
            try:
                self._insert("policy_changes", [s.row])
                self._written["policy_changes"] += 1
                error = None
                break
            except Exception as exc:
                error = exc
                self._note_failure("policy_changes", exc)
        s.error = error
        s.done.set()

    def _write_batch(
        self, table: str, rows: list[dict[str, Any]], failed_since: float | None, attempts: int
    ) -> None:
        try:
            self._insert(table, rows)
        except Exception as exc:
            self._note_failure(table, exc)
            if _is_data_error(exc):
                good = self._isolate_bad_rows(table, rows)
                if good and len(good) < len(rows):
                    self._write_batch(table, good, failed_since, attempts)  # the rest, right away
                    return
                rows = good
                if not rows:
                    return
            now = time.time()
            since = failed_since if failed_since is not None else now
            attempts += 1
            lossy = table in LOSSY_TABLES
            if (lossy and attempts >= self.span_retries) or (not lossy and now - since >= self.retry_bound_s):
                with self._cond:
                    self._dropped[table] += len(rows)
                log.error("giving up on %d %s rows after %d attempts: %s", len(rows), table, attempts, exc)
                if not lossy:
                    self._dead_letter(table, rows, f"write failed: {exc}")
                return
            with self._cond:
                self._retries[table] += 1
                # keep the failed rows at the head; they count towards the queue bound
                self._retry[table] = (rows, since, attempts)
            return
        with self._cond:
            self._written[table] += len(rows)

    def _give_up_remaining(self, why: str) -> None:
        with self._cond:
            left = {}
            for t in TABLES:
                retry = self._retry[t]
                rows = (retry[0] if retry else []) + self._queues[t]
                self._retry[t] = None
                self._queues[t] = []
                if rows:
                    left[t] = rows
                    self._dropped[t] += len(rows)
            self._queued = 0
        for t, rows in left.items():
            log.error("%d %s rows lost: %s", len(rows), t, why)
            if t not in LOSSY_TABLES:
                self._dead_letter(t, rows, why)

    def _isolate_bad_rows(self, table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After a data error: keep the rows that convert, give up (counted) on the others."""
        good, bad = [], []
        _encode_lazy_json(table, rows)
        for r in rows:
            try:
                rows_to_arrow(table, [r])
                good.append(r)
            except Exception:
                bad.append(r)
        if bad:
            with self._cond:
                self._dropped[table] += len(bad)
            log.error("%d malformed %s rows given up", len(bad), table)
            if table not in LOSSY_TABLES:
                self._dead_letter(table, bad, "malformed row")
        return good

    def _note_failure(self, table: str, exc: BaseException) -> None:
        with self._cond:
            self._failures += 1
            self._last_error = f"{table}: {type(exc).__name__}: {exc}"
        log.warning("store write to %s failed: %s", table, exc)

    def _dead_letter(self, table: str, rows: list[dict[str, Any]], why: str) -> None:
        if self.dead_letter_path is None:
            return
        try:
            with open(self.dead_letter_path, "a", encoding="utf-8") as fh:
                for r in rows:
                    fh.write(json.dumps({"table": table, "why": why, "row": r}, default=str) + "\n")
        except OSError as exc:  # pragma: no cover - nothing more can be done
            log.error("dead-letter file %s unwritable: %s", self.dead_letter_path, exc)

    # ------------------------------------------------------------------ reading and maintenance

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor of the writer's connection, for reads from any one thread."""
        if self._closed:
            raise StoreClosedError("store closed")
        return self._con.cursor()

    def run_on_writer(self, fn: Callable[[duckdb.DuckDBPyConnection], Any], timeout_s: float = 60.0) -> Any:
        """Run ``fn(cursor)`` on the writer thread between batches and return its result."""
        task = _Task()
        with self._cond:
            if self._closed or self._closing:
                raise StoreClosedError("store closed")
            self._tasks.append((fn, task))
            self._cond.notify_all()
        if self._thread is None:
            self._cycle()
        if not task.done.wait(timeout_s):
            raise StoreWriteError(f"writer task not done within {timeout_s} s")
        if task.error is not None:
            raise task.error
        return task.result

    def prune(self, older_than_s: float, now: float | None = None) -> dict[str, int]:
        """Delete rows older than ``older_than_s`` from every table except ``policy_changes``."""
        cutoff = (time.time() if now is None else now) - older_than_s

        def do(cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
            out = {}
            for table, col in TIME_COLUMN.items():
                row = cur.execute(f"DELETE FROM {table} WHERE {col} < ?", [cutoff]).fetchone()
                out[table] = int(row[0]) if row else 0
            cur.execute("CHECKPOINT")
            return out

        return self.run_on_writer(do)

    def checkpoint(self) -> None:
        self.run_on_writer(lambda cur: cur.execute("CHECKPOINT"))

    def export_parquet(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        """One Parquet file per table (``<dir>/<table>.parquet``) via DuckDB COPY."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.flush()
        out = {}
        cur = self.cursor()
        try:
            for table in TABLES:
                target = d / f"{table}.parquet"
                quoted = str(target).replace("'", "''")
                cur.execute(f"COPY (SELECT * FROM {table}) TO '{quoted}' (FORMAT parquet)")
                out[table] = str(target)
        finally:
            cur.close()
        return out

    def snapshot(self, path: str | os.PathLike[str], tables: Iterable[str] | None = None) -> dict[str, int]:
        """Copy ``tables`` (default: the durable ones, not spans) into a new DuckDB file at ``path``
        (which must not exist), for readers while this store is open: no other process may open a
        file a writer holds. Queued rows are flushed first; the copy is one transaction on the writer
        thread, between batches, so it is one point of the store's history. Rows copied per table."""
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{target} exists")
        names = list(DURABLE_TABLES if tables is None else tables)
        unknown = [t for t in names if t not in TABLES]
        if unknown or not names:
            raise ValueError(f"no such table(s) {unknown or names}; the store has {', '.join(TABLES)}")
        self.flush()

        def do(cur: duckdb.DuckDBPyConnection) -> dict[str, int]:
            quoted = str(target).replace("'", "''")
            cur.execute(f"ATTACH '{quoted}' AS sluice_snapshot")
            try:
                cur.execute("BEGIN TRANSACTION")
                out = {}
                for table in names:
                    cur.execute(f"CREATE TABLE sluice_snapshot.{table} AS SELECT * FROM main.{table}")
                    out[table] = int(cur.execute(f"SELECT count(*) FROM sluice_snapshot.{table}").fetchone()[0])
                cur.execute("COMMIT")
                return out
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            finally:
                cur.execute("DETACH sluice_snapshot")

        return self.run_on_writer(do)

    def stats(self) -> dict[str, Any]:
        """Counters per table and the writer's health; ``lag_s`` is the age of the oldest pending row."""
        with self._cond:
            now = time.time()
            firsts = [ts for ts in self._first_ts.values() if ts is not None]
            firsts += [r[1] for r in self._retry.values() if r is not None]
            return {
                "pending": {t: self._pending(t) for t in TABLES},
                "written": dict(self._written),
                "dropped": dict(self._dropped),
                "retries": dict(self._retries),
                "write_failures": self._failures,
                "flushes": self._flushes,
                "last_flush_ts": self._last_flush_ts,
                "last_error": self._last_error,
                "lag_s": max(0.0, now - min(firsts)) if firsts else 0.0,
                "spilled": self._spilled,
                "closed": self._closed,
            }


def _encode_lazy_json(table: str, rows: list[dict[str, Any]]) -> None:
    """JSON text for the dict/list values queued by ``record_decision_fresh`` (in place, idempotent)."""
    cols = _LAZY_JSON.get(table)
    if cols:
        for r in rows:
            for c in cols:
                v = r.get(c)
                if v is not None and not isinstance(v, str):
                    r[c] = _json_text(v)


def _json_text(value: Any) -> str:
    """``schema.to_json``'s text (NaN and infinities as null, other values through str), via orjson
    when it is installed."""
    if _orjson is not None:
        try:
            return _orjson.dumps(value, default=str, option=_orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return to_json(value)


class _Task:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _is_data_error(exc: BaseException) -> bool:
    import pyarrow as pa

    return isinstance(exc, (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, duckdb.ConversionException))


def _check_writable(path: str) -> None:
    """Raise StoreUnwritableError unless the file's directory takes new files (DuckDB's WAL and the
    dead-letter file go there) and an existing file can be opened for writing."""
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".sluice-write-check-"):
            pass
        if os.path.exists(path):
            with open(path, "r+b"):
                pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise StoreUnwritableError(f"{path}: cannot write to {directory} ({why}); the store needs a writable "
                                   "directory for its file, its write-ahead log and its dead-letter file") from None


def open_read_only(path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a store file no process is writing (for offline analysis)."""
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise StoreLockedError(f"{path} is locked by a writer: {exc}") from None
        raise
