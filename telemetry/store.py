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

The pieces: ``store_file`` opens the file, ``store_writer`` is the writer thread,
``store_maintenance`` the reads and maintenance, ``store_errors`` the errors; this module queues.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb

from .schema import TABLES, coerce_row
from .store_errors import (StoreClosedError, StoreError, StoreLockedError, StoreUnwritableError,
                           StoreWriteError)
from .store_file import check_writable, claim_path, connect_writer, open_read_only, release_path
from .store_maintenance import StoreMaintenance
from .store_writer import LOSSY_TABLES, FaultHook, SyncWrite

__all__ = ["Store", "StoreClosedError", "StoreError", "StoreLockedError", "StoreUnwritableError", "StoreWriteError",
           "open_read_only"]

log = logging.getLogger("sluice.telemetry.store")


class Store(StoreMaintenance):
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
            check_writable(self.path)
        self._key = os.path.realpath(self.path) if self.path != ":memory:" else f":memory:{id(self)}"
        claim_path(self._key, self.path)
        try:
            self._con = connect_writer(self.path, threads, memory_mb)
        except BaseException:
            release_path(self._key)
            raise
        self._init_writer_state()
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
        release_path(self._key)

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
        s = SyncWrite(self._policy_row(row))
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

    def _pending_total(self) -> int:
        return sum(self._pending(t) for t in TABLES) + len(self._sync) + self._spilled

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

