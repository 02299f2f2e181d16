"""The `Recorder` protocol: what the serving runtime tells telemetry about each request and decision.

`controlplane/observe.py`'s `Recorder` implements it over the store, Prometheus and the tracer
provider; tests pass smaller ones. The runtime calls it on its event loop, so every method returns
quickly; `policy_change` is the exception, and is called off the loop: it returns once the change
is durable, and raises if it cannot be.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from controlplane.core.events import Decision
    from controlplane.tickets import Ticket


class Recorder(Protocol):
    def begin(self, ticket: Ticket) -> None:
        """A request was accepted for a decision (its root span starts at its arrival)."""

    def engine_call(self, ticket: Ticket) -> str | None:
        """It goes to its engine now; returns the traceparent to send along (None: none)."""

    def first_token(self, ticket: Ticket) -> None: ...

    def request_finished(self, ticket: Ticket, row: dict[str, Any]) -> None:
        """It ended; `row` is its complete `requests` row."""

    def unauthenticated(self, code: str | None, http_status: int) -> None:
        """A request refused before it had a tenant (no row, no span: a count)."""

    def decision(self, d: Decision, pool: str | None = None) -> None:
        """A decision of the core of model pool `pool`."""

    def forecast(self, kind: str, predicted: float, actual: float) -> None:
        """A forecast (`kind`: output_tokens, ttft, tpot) and what it turned out to be."""

    def policy_change(self, record: dict[str, Any]) -> None:
        """An audit row of a policy change, durable when this returns."""
