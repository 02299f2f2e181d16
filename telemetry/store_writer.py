"""The store's writer thread: it takes the queued rows every flush interval (or once ``batch_rows``
are pending), inserts them per table as Arrow batches, retries failed writes within their bounds and
gives up (counted, dead-lettered for durable tables) past them. A mixin of ``Store``, which queues."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import duckdb

try:  # optional: faster JSON for the writer thread's lazily encoded columns
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is optional
    _orjson = None

from .schema import COLUMN_NAMES, TABLES, rows_to_arrow, to_json

log = logging.getLogger("sluice.telemetry.store")

DURABLE_TABLES = ("policy_changes", "requests", "decisions", "gpu_samples")
LOSSY_TABLES = ("spans", "span_events")
WRITE_ORDER = DURABLE_TABLES + LOSSY_TABLES

FaultHook = Callable[[str], None]

# JSON columns whose values may be queued as dicts/lists and are encoded on the writer thread
_LAZY_JSON = {"decisions": ("inputs", "outputs")}


class SyncWrite:
    """One policy-change row whose caller waits until it is committed (or failed)."""

    __slots__ = ("row", "done", "error")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.done = threading.Event()
        self.error: BaseException | None = None


class WriterTask:
    """A function run on the writer thread between batches, and its outcome."""

    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class StoreWriter:
    """The queues, the counters and the writer thread's loop (``Store`` sets the bounds it reads)."""

    flush_interval_s: float
    batch_rows: int
    retry_bound_s: float
    span_retries: int
    fault_hook: FaultHook | None
    dead_letter_path: str | None
    _con: duckdb.DuckDBPyConnection

    def _init_writer_state(self) -> None:
        self._wcur = self._con.cursor()
        self._cond = threading.Condition()
        self._queues: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}
        self._queued = 0  # rows in self._queues, all tables (kept as a running count)
        self._first_ts: dict[str, float | None] = {t: None for t in TABLES}
        # rows that failed to write: (rows, first_failure_ts, attempts)
        self._retry: dict[str, tuple[list[dict[str, Any]], float, int] | None] = {t: None for t in TABLES}
        self._sync: list[SyncWrite] = []
        self._tasks: list[tuple[Callable[[duckdb.DuckDBPyConnection], Any], WriterTask]] = []
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

    def _pending(self, table: str) -> int:
        retry = self._retry[table]
        return len(self._queues[table]) + (len(retry[0]) if retry else 0)

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

    def _write_sync(self, s: SyncWrite) -> None:
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


def _is_data_error(exc: BaseException) -> bool:
    import pyarrow as pa

    return isinstance(exc, (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, duckdb.ConversionException))

