"""One request's life in serving, and what the core's actions do to it.

`Ticket`: a request from its arrival to its close (queued, dispatched, streaming), with the row it
leaves in the `requests` table. `TicketSink`: the driver's `ActionSink` in serving: a decision
updates its ticket's row and goes to the recorder; a dispatch or a refusal resolves the ticket's
waiter, which the request's handler awaits (`Sluice.wait_dispatch`).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.core.events import ADMISSION_KINDS, Decision, Dispatch, Reject
from controlplane.core.policy import SLOClassPolicy
from controlplane.driver import ClockSteering, slo_met
from controlplane.recorder import Recorder
from controlplane.requests import CompletionRequest
from engine_adapter.base import Chunk

log = logging.getLogger("sluice")

__all__ = ["Cancellable", "Ticket", "TicketSink"]


class Cancellable(Protocol):
    def cancel(self, msg: Any = None) -> Any: ...


@dataclass(slots=True)
class Ticket:
    """One request's life in the gateway; `row` becomes its record in the `requests` table."""

    rid: str
    tenant: str
    request: CompletionRequest
    slo_class: str
    arrival: float
    row: dict[str, Any]
    waiter: asyncio.Future[Dispatch | Reject]
    engine: str | None = None
    priority: int | None = None
    dispatched_at: float | None = None
    first_token_at: float | None = None
    closed: bool = False
    spans: dict[str, Any] | None = None  # the recorder's open spans
    task: Cancellable | None = None  # the handler serving it (a task, or a worker's: worker_hub.py), cancelled by an operator abort
    abort_reason: str | None = None
    decisions: list[Decision] = field(default_factory=list)

    @classmethod
    def open(cls, rid: str, tenant: str, req: CompletionRequest, slo_class: str, now: float) -> Ticket:
        """A new ticket on the running loop, its row filled with what is known at arrival."""
        return cls(rid, tenant, req, slo_class, now, _new_row(rid, tenant, slo_class, req, now),
                   asyncio.get_running_loop().create_future())

    def live_row(self) -> dict[str, Any]:
        """A queued or running request as the admin API lists it."""
        row = dict(self.row)
        row.update(status="running" if self.engine else "queued", engine=self.engine)
        if self.first_token_at is not None:
            row["ttft_ms"] = (self.first_token_at - self.arrival) * 1e3
        return row

    def finish_row(self, now: float, status: str, http_status: int, chunk: Chunk | None, error: str | None,
                   code: str | None, slo: SLOClassPolicy) -> dict[str, Any]:
        """The complete `requests` row once the request ends at `now` (`chunk`: the engine's last)."""
        row = self.row
        row.update(status=status, http_status=http_status, error=error, error_code=code, finish_ts=now,
                   engine=self.engine, dispatch_ts=self.dispatched_at, first_token_ts=self.first_token_at)
        if chunk is not None:
            row.update(prompt_tokens=chunk.prompt_tokens, cached_tokens=chunk.cached_tokens,
                       completion_tokens=chunk.completion_tokens, finish_reason=chunk.finish_reason,
                       energy_j=chunk.energy_j)
        _derive_latencies(row, slo)
        return row


class TicketSink:
    """The core's actions in serving (the driver's ActionSink): a decision updates its ticket's row
    and goes to the recorder; a dispatch or a refusal resolves the ticket's waiter. A dispatch may
    raise its engine's clock at once (`ClockSteering.dispatched`), as replay's does."""

    __slots__ = ("pool", "recorder", "steering", "tickets")

    def __init__(self, tickets: dict[str, Ticket], recorder: Recorder | None, steering: ClockSteering | None,
                 pool: str | None = None) -> None:
        self.tickets = tickets
        self.recorder = recorder
        self.steering = steering
        self.pool = pool  # the model pool whose core this sink serves (its decision rows say so)

    def decision(self, d: Decision) -> None:
        ticket = self.tickets.get(d.rid)
        if ticket is not None:
            ticket.decisions.append(d)
            if d.kind in ADMISSION_KINDS:
                ttft, tpot = d.outputs.get("ttft_s"), d.outputs.get("tpot_s")  # the row says ms
                ticket.row.update(decision=d.kind, reason=d.reason, policy_version=d.policy_version,
                                  predicted_output_tokens=d.inputs.get("output_tokens"),
                                  predicted_ttft_ms=None if ttft is None else ttft * 1e3,
                                  predicted_tpot_ms=None if tpot is None else tpot * 1e3)
        if self.recorder is not None:
            self.recorder.decision(d, self.pool)

    def dispatch(self, now: float, action: Dispatch) -> None:
        ticket = self.tickets.get(action.rid)
        if ticket is None or ticket.waiter.done():
            return
        ticket.engine, ticket.priority, ticket.dispatched_at = action.engine, action.priority, now
        ticket.waiter.set_result(action)
        if self.steering is not None:
            try:  # nothing here may fail serving: an engine that cannot take a clock keeps running
                for d in self.steering.dispatched(now, action.engine):
                    self.decision(d)
            except Exception:
                log.exception("frequency rule on engine %s failed", action.engine)

    def reject(self, now: float, action: Reject) -> None:
        ticket = self.tickets.get(action.rid)
        if ticket is not None and not ticket.waiter.done():
            ticket.waiter.set_result(action)


def _new_row(rid: str, tenant: str, slo_class: str, req: CompletionRequest, now: float) -> dict[str, Any]:
    return {"rid": rid, "trace_id": None, "tenant": tenant, "slo_class": slo_class, "model": req.model,
            "engine": None, "stream": req.stream, "status": None, "http_status": None, "decision": None,
            "reason": None, "finish_reason": None, "error": None, "error_code": None, "arrival_ts": now,
            "dispatch_ts": None, "first_token_ts": None, "finish_ts": None, "queue_ms": None, "ttft_ms": None, "tpot_ms": None,
            "e2e_ms": None, "prompt_tokens": req.prompt_tokens, "cached_tokens": 0, "completion_tokens": 0,
            "max_tokens": req.max_tokens, "predicted_output_tokens": None, "predicted_ttft_ms": None,
            "predicted_tpot_ms": None, "policy_version": None, "slo_met": None, "end_user": req.user,
            "energy_j": None, "pool": req.pool or None, "adapter": req.adapter}


def _derive_latencies(row: dict[str, Any], slo: SLOClassPolicy) -> None:
    arrival, first, end = row["arrival_ts"], row["first_token_ts"], row["finish_ts"]
    if row["dispatch_ts"] is not None:
        row["queue_ms"] = (row["dispatch_ts"] - arrival) * 1e3
    if first is not None:
        row["ttft_ms"] = (first - arrival) * 1e3
        if row["completion_tokens"] > 1:
            row["tpot_ms"] = (end - first) * 1e3 / (row["completion_tokens"] - 1)
    row["e2e_ms"] = (end - arrival) * 1e3
    if row["status"] == "ok":  # judged in seconds, as the core and replay judge it
        n = row["completion_tokens"]
        row["slo_met"] = slo_met(slo, row["prompt_tokens"], None if first is None else first - arrival,
                                 (end - first) / (n - 1) if first is not None and n > 1 else None, end - arrival)
