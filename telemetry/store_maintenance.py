"""Reads and maintenance on the store's connection: cursors, functions run on the writer thread
between batches, retention pruning, CHECKPOINT, Parquet export and consistent snapshots."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import duckdb

from .schema import TABLES, TIME_COLUMN
from .store_errors import StoreClosedError, StoreWriteError
from .store_writer import DURABLE_TABLES, StoreWriter, WriterTask


class StoreMaintenance(StoreWriter):
    """A mixin of ``Store`` (which defines ``flush``)."""

    flush: Callable[..., bool]

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor of the writer's connection, for reads from any one thread."""
        if self._closed:
            raise StoreClosedError("store closed")
        return self._con.cursor()

    def run_on_writer(self, fn: Callable[[duckdb.DuckDBPyConnection], Any], timeout_s: float = 60.0) -> Any:
        """Run ``fn(cursor)`` on the writer thread between batches and return its result."""
        task = WriterTask()
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
