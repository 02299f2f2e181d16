"""The small typed messages the console's background workers post to the UI."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class StateUpdated(Message):
    """A `/admin/v1/state` body (from the periodic read or the event stream)."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self.state = state


class RequestsLoaded(Message):
    """A page of `/admin/v1/requests` (recent and in flight, newest first)."""

    def __init__(self, requests: list[dict[str, Any]]) -> None:
        super().__init__()
        self.requests = requests


class RequestEvent(Message):
    """One `request` event from the stream: a request finished, was rejected or aborted."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__()
        self.request = request


class PolicyUpdated(Message):
    """The current policy document (after a read, an apply, or a `policy` event)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        super().__init__()
        self.policy = policy


class HistoryLoaded(Message):
    """The audit log (`/admin/v1/policy/history`), newest first."""

    def __init__(self, changes: list[dict[str, Any]]) -> None:
        super().__init__()
        self.changes = changes


class ConnectionChanged(Message):
    """The link to the admin API changed: `status` is one of connecting, ok, unreachable,
    unauthorized, error; `retry_in` is the backoff delay before the next attempt."""

    def __init__(self, status: str, detail: str = "", retry_in: float | None = None) -> None:
        super().__init__()
        self.status = status
        self.detail = detail
        self.retry_in = retry_in
