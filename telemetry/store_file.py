"""Opening the store's DuckDB file: the writability check, one writer per file in this process,
the connection (a lock held elsewhere becomes ``StoreLockedError``) and the schema migration."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

import duckdb

from .schema import INDEXES, add_missing_columns, ddl
from .store_errors import StoreLockedError, StoreUnwritableError

# files opened by a Store of this process (DuckDB would let a second connection in the same process write)
_open_paths: set[str] = set()
_open_paths_lock = threading.Lock()


def claim_path(key: str, path: str) -> None:
    """Register ``key`` as open in this process; StoreLockedError if it already is."""
    with _open_paths_lock:
        if key in _open_paths:
            raise StoreLockedError(f"{path} is already open in this process")
        _open_paths.add(key)


def release_path(key: str) -> None:
    with _open_paths_lock:
        _open_paths.discard(key)


def connect_writer(path: str, threads: int | None, memory_mb: int | None) -> duckdb.DuckDBPyConnection:
    """The writer's connection, its tables created or given the columns they lack, and its indexes."""
    config: dict[str, Any] = {}
    if threads:
        config["threads"] = int(threads)
    if memory_mb:  # DuckDB's default (80% of RAM) lets a long-running store cache its whole file
        config["memory_limit"] = f"{int(memory_mb)}MB"
    try:
        con = duckdb.connect(path, config=config)
    except duckdb.IOException as exc:
        msg = str(exc)
        if "lock" in msg.lower():
            raise StoreLockedError(
                f"{path} is locked by another process (DuckDB allows one writer): {msg}"
            ) from None
        raise
    _migrate(con)
    return con


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    existing: dict[str, set[str]] = {}
    for table, column in con.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'main'").fetchall():
        existing.setdefault(table, set()).add(column)
    for stmt in ddl() + add_missing_columns(existing):
        con.execute(stmt)
    for stmt in INDEXES:
        con.execute(stmt)


def check_writable(path: str) -> None:
    """Raise StoreUnwritableError unless the file's directory takes new files (DuckDB's WAL and the
    dead-letter file go there) and an existing file can be opened for writing."""
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
