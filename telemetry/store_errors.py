"""The store's errors (re-exported by ``telemetry.store`` and ``telemetry``)."""

from __future__ import annotations


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
