"""The decision process's side of `sluice serve --workers N`: each gateway worker's requests through
the one `Sluice`, so fairness, admission and the store stay global (one core per pool, one writer).

A worker terminates HTTP, authenticates, parses and routes by itself, then asks here over its IPC
connection (controlplane/ipc.py). Frames from a worker:

  ["hello", index, pid]
  ["submit", rid, tenant, kind, model, pool, adapter, prompt_estimate, max_tokens, max_tokens_default,
   stream, user, prefix_hashes, block_tokens]          admission; answered by "dispatch" or "refused"
  ["first", rid]                                       its first token (or its end) reached the worker
  ["failed", rid, status_code, overloaded, message]    its engine stream ended in an EngineError
  ["close", rid, status, http_status, error, code, last]   it ended; last: [prompt_tokens,
                                                       cached_tokens, completion_tokens, finish_reason,
                                                       energy_j] of the engine's last chunk, or null
  ["refuse", rid, tenant, kind, request, status, http_status, code, error]   refused before admission
                                                       (bad input, unknown model): its one row
  ["unauth", code, http_status]                        refused before a tenant was known: counted

Frames to a worker:

  ["dispatch", rid, engine, priority, traceparent, engine_model, prompt_tokens, max_tokens]
  ["refused", rid, row_status, http_status, message, code, param, retry_after]
  ["abort", rid, reason]                               an operator aborted it while it ran

When a worker's connection drops (it died, or was killed), every ticket it held is closed here as
aborted (`worker_lost`): a queued one leaves its queue, a running one is reconciled and aborted
at its engine, so no slot of the core leaks.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from controlplane.errors import ApiError
from controlplane.ipc import FrameProtocol
from controlplane.requests import CompletionRequest
from controlplane.service import Sluice
from controlplane.tickets import Ticket
from engine_adapter.base import Chunk, EngineError, EngineOverloaded

log = logging.getLogger("sluice.workers")

__all__ = ["WorkerHub", "WorkerLink", "request_from_summary"]


class WorkerHub:
    """The IPC server the workers connect to; `links` holds one `WorkerLink` per connected worker."""

    def __init__(self, sluice: Sluice) -> None:
        self.sluice = sluice
        self.links: set[WorkerLink] = set()
        self.server: asyncio.AbstractServer | None = None
        self._hello = asyncio.Condition()

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: WorkerLink(self), path)
        os.chmod(path, 0o600)  # the directory is private too; only this user's processes connect

    async def wait_workers(self, n: int, timeout_s: float) -> None:
        """Until `n` workers have said hello (TimeoutError after `timeout_s`)."""
        async with self._hello:
            await asyncio.wait_for(self._hello.wait_for(lambda: self.ready() >= n), timeout_s)

    def ready(self) -> int:
        return sum(1 for link in self.links if link.pid is not None)

    async def hello(self) -> None:
        async with self._hello:
            self._hello.notify_all()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for link in list(self.links):
            link.close()


class _RemoteHandler:
    """A worker's request as `Ticket.task`: an operator abort (`Sluice.abort`) reaches the worker."""

    __slots__ = ("link", "ticket")

    def __init__(self, link: WorkerLink, ticket: Ticket) -> None:
        self.link, self.ticket = link, ticket

    def cancel(self, msg: Any = None) -> bool:
        self.link.send(["abort", self.ticket.rid, self.ticket.abort_reason or "aborted"])
        return True


class WorkerLink(FrameProtocol):
    """One worker's connection and the tickets it holds."""

    def __init__(self, hub: WorkerHub) -> None:
        super().__init__(self._frame, self._lost)
        self.hub = hub
        self.sluice = hub.sluice
        self.tickets: dict[str, Ticket] = {}
        self.pid: int | None = None
        self.index: int | None = None
        self.submitted = 0  # requests this worker sent to admission
        self._ops: dict[str, Callable[[list[Any]], None]] = {
            "submit": self._submit, "first": self._first, "close": self._close, "failed": self._failed,
            "refuse": self._refuse, "unauth": self._unauth, "hello": self._hello}
        self._bg: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.hub.links.add(self)

    def _frame(self, f: list[Any]) -> None:
        self._ops[f[0]](f)

    def _hello(self, f: list[Any]) -> None:
        self.index, self.pid = f[1], f[2]
        self._task(self.hub.hello())

    def _submit(self, f: list[Any]) -> None:
        _, rid, tenant_name, kind, model, pool, adapter, estimate, max_tokens, default, stream, user, hashes, block = f
        sluice = self.sluice
        self.submitted += 1
        tenant = sluice.access.tenants[tenant_name]
        req = CompletionRequest(kind, model, "", estimate, max_tokens, stream, False, {"max_new_tokens": max_tokens},
                                user, None, default, estimate, pool, adapter)
        try:
            sluice.fit_context(req)
            ticket = sluice.submit(tenant, req, rid=rid, prefix=(tuple(hashes), block))
        except ApiError as err:
            if err.request_id is None:  # refused before admission (its context): the request's one row
                sluice.refuse(tenant, kind, req, "rejected", err.status, code=err.code, error=err.message, rid=rid)
            self._refused(rid, "rejected", err)
            return
        except Exception as exc:  # a bug still answers in the OpenAI shape, and leaves its row
            log.exception("unexpected error in admission")
            sluice.refuse(tenant, kind, req, "error", 500, code="internal_error", error=repr(exc), rid=rid)
            self._refused(rid, "error", ApiError(500, "internal error", code="internal_error"))
            return
        self.tickets[rid] = ticket
        ticket.task = _RemoteHandler(self, ticket)
        if ticket.waiter.done():
            self._resolved(ticket)
        else:
            ticket.waiter.add_done_callback(lambda _: self._resolved(ticket))

    def _resolved(self, ticket: Ticket) -> None:
        """Dispatched (the worker calls the engine) or refused while queued."""
        if ticket.closed:
            return
        try:
            self.sluice.settle(ticket)
            traceparent, model = self.sluice.engine_call(ticket)
        except ApiError as err:
            self.tickets.pop(ticket.rid, None)
            self._refused(ticket.rid, ticket.row.get("status") or "rejected", err)
            return
        except Exception as exc:  # a bug: the worker's client still gets an answer, the core its slot back
            log.exception("unexpected error at dispatch")
            self.tickets.pop(ticket.rid, None)
            self.sluice.close(ticket, "error", 500, error=repr(exc), code="internal_error")
            self._refused(ticket.rid, "error", ApiError(500, "internal error", code="internal_error"))
            return
        req = ticket.request
        self.send(["dispatch", ticket.rid, ticket.engine, ticket.priority, traceparent, model, req.prompt_tokens,
                   req.max_tokens])

    def _refused(self, rid: str, status: str, err: ApiError) -> None:
        self.send(["refused", rid, status, err.status, err.message, err.code, err.param, err.retry_after])

    def _first(self, f: list[Any]) -> None:
        ticket = self.tickets.get(f[1])
        if ticket is not None and ticket.first_token_at is None:
            self.sluice.mark_first_token(ticket)

    def _failed(self, f: list[Any]) -> None:
        _, rid, status_code, overloaded, message = f
        ticket = self.tickets.get(rid)
        if ticket is not None:
            exc = EngineOverloaded(message) if overloaded else EngineError(message, status_code=status_code)
            self.sluice.engine_failed(ticket, exc)

    def _close(self, f: list[Any]) -> None:
        _, rid, status, http_status, error, code, last = f
        ticket = self.tickets.pop(rid, None)
        if ticket is None:
            return
        chunk = None
        if last is not None:
            prompt, cached, completion, reason, energy = last
            chunk = Chunk("", completion, prompt, cached, reason, energy_j=energy)
        self.sluice.close(ticket, status, http_status, chunk=chunk, error=error, code=code)

    def _refuse(self, f: list[Any]) -> None:
        _, rid, tenant_name, kind, summary, status, http_status, code, error = f
        req = request_from_summary(kind, summary)
        self.sluice.refuse(self.sluice.access.tenants[tenant_name], kind, req, status, http_status, code=code,
                           error=error, rid=rid)

    def _unauth(self, f: list[Any]) -> None:
        if self.sluice.recorder is not None:
            self.sluice.recorder.unauthenticated(f[1], f[2])

    def _lost(self) -> None:
        """The worker is gone: its tickets are aborted here and at their engines."""
        self.hub.links.discard(self)
        if self.tickets:
            log.warning("worker %s (pid %s) is gone: aborting its %d requests", self.index, self.pid, len(self.tickets))
        tickets, self.tickets = self.tickets, {}
        for ticket in tickets.values():
            if ticket.engine is not None:
                self._task(_abort_at_engine(self.sluice, ticket.engine, ticket.rid))
            self.sluice.close(ticket, "aborted", 499, error="worker_lost")

    def _task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)


async def _abort_at_engine(sluice: Sluice, engine: str, rid: str) -> None:
    try:
        await sluice.engines[engine].abort(rid)
    except Exception as exc:  # the engine may already have dropped it with the worker's connection
        log.info("abort of %s at %s after its worker died: %s", rid, engine, exc)


def request_from_summary(kind: str, summary: list[Any] | None) -> CompletionRequest | None:
    """A request refused before admission, as a worker summarises it for its row (None: unparsed)."""
    if summary is None:
        return None
    model, pool, adapter, prompt_tokens, max_tokens, stream, user = summary
    return CompletionRequest(kind, model, "", prompt_tokens, max_tokens, stream, False, user=user, pool=pool,
                             adapter=adapter)
