"""A gateway worker's runtime (`sluice serve --workers N`): what the gateway's completion endpoints
call in a worker process, in place of `Sluice`, with the same methods and the same contract.

Authentication, parsing and routing happen here, from the worker's own copy of the config
(`TenantAccess`): a bad key, bad input or an unknown model is answered without asking the decision
process, which only hears of it for the request's row ("refuse", "unauth"). Admission, queueing,
dispatch, the request's row and its spans belong to the decision process
(controlplane/worker_hub.py lists the frames): `submit` sends the request there and `wait_dispatch`
waits for its answer; the worker then calls the chosen engine itself with the traceparent the
decision process gave (engine_call.py) and reports its first token and its end.

If the decision process goes away (its connection drops), queued requests and new ones are
answered 503 in OpenAI's error shape; streams already running finish (their rows are lost with it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.config import Config, TenantConfig
from controlplane.engine_call import engine_batches, generate_request
from controlplane.errors import ApiError
from controlplane.ipc import FrameProtocol
from controlplane.prefix_hash import request_prefix
from controlplane.requests import CompletionRequest
from controlplane.tenant_access import TenantAccess
from engine_adapter.base import Chunk, Engine, EngineError, EngineOverloaded, Push, has_first_token
from engine_adapter.tokens import estimate_tokens, tokenizer_counter

log = logging.getLogger("sluice.worker")

__all__ = ["WorkerRuntime", "WorkerTicket"]


@dataclass(slots=True)
class WorkerTicket:
    """A request in a worker, from its submit to its close (the row is the decision process's)."""

    rid: str
    request: CompletionRequest
    waiter: asyncio.Future[ApiError | None]  # None: dispatched; an ApiError: refused
    engine: str | None = None
    priority: int | None = None
    traceparent: str | None = None
    engine_model: str | None = None
    first_token_at: float | None = None
    closed: bool = False
    task: asyncio.Task[Any] | None = None
    abort_reason: str | None = None
    row: dict[str, Any] = field(default_factory=dict)  # only its status, for the gateway's error path


def _unavailable(rid: str | None = None) -> ApiError:
    err = ApiError(503, "sluice's decision process is unavailable; retry later", code="service_unavailable",
                   retry_after=1.0)
    err.request_id = rid
    return err


class WorkerRuntime:
    def __init__(self, config: Config, engines: dict[str, Engine], clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.engines = engines
        self.clock = clock
        self.access = TenantAccess(config)
        self.authenticate, self.route = self.access.authenticate, self.access.route
        tokenizer = config.server.tokenizer
        self.count_tokens = tokenizer_counter(tokenizer) if tokenizer else estimate_tokens
        self.recorder = self  # the gateway counts unauthenticated requests through `recorder`
        self.pending: dict[str, WorkerTicket] = {}
        self.link: FrameProtocol | None = None
        self.lost = asyncio.Event()
        self.stopping = False
        self._rid_bits = random.Random(os.urandom(32)).getrandbits
        self._ops = {"dispatch": self._dispatch, "refused": self._refused, "abort": self._abort}

    async def connect(self, path: str, index: int) -> None:
        """Connect to the decision process's IPC socket and say hello."""
        loop = asyncio.get_running_loop()
        _, self.link = await loop.create_unix_connection(lambda: FrameProtocol(self._frame, self._lost), path)
        self.link.send(["hello", index, os.getpid()])

    def _send(self, frame: list[Any]) -> None:
        if self.link is not None:
            self.link.send(frame)

    def _new_rid(self) -> str:
        return f"{self._rid_bits(128):032x}"  # as Sluice's: fixed length, so prefix-free

    # -- what the gateway calls (Sluice's request path) ---------------------------------------------
    def fit_context(self, req: CompletionRequest) -> None:
        """Done at submit by the decision process, where the per-model prompt estimate is learned."""

    def submit(self, tenant: TenantConfig, req: CompletionRequest) -> WorkerTicket:
        if self.lost.is_set():
            raise _unavailable()
        rid = self._new_rid()
        ticket = WorkerTicket(rid, req, asyncio.get_running_loop().create_future())
        hashes, block = request_prefix(req)  # hashed here: the prompt never crosses the IPC
        self.pending[rid] = ticket
        self._send(["submit", rid, tenant.name, req.kind, req.model, req.pool, req.adapter,
                    req.estimate or req.prompt_tokens, req.max_tokens, req.max_tokens_default, req.stream, req.user,
                    hashes, block])
        return ticket

    async def wait_dispatch(self, ticket: WorkerTicket) -> None:
        outcome = await ticket.waiter
        if outcome is not None:
            raise outcome

    def open_stream(self, ticket: WorkerTicket, push: Push | None = None) -> AsyncIterator[Sequence[Chunk]]:
        assert ticket.engine is not None
        req = ticket.request
        adapters = self.access.catalog.pools[req.pool].adapters if req.adapter else None
        greq = generate_request(ticket.rid, req, ticket.priority, ticket.traceparent, ticket.engine_model, adapters)
        return engine_batches(self.engines[ticket.engine], greq, push)

    def first_token(self, ticket: WorkerTicket, batch: Sequence[Chunk]) -> None:
        if has_first_token(batch):
            ticket.first_token_at = self.clock()
            self._send(["first", ticket.rid])

    def engine_failed(self, ticket: WorkerTicket, exc: EngineError) -> None:
        self._send(["failed", ticket.rid, exc.status_code, isinstance(exc, EngineOverloaded), str(exc)])

    def close(self, ticket: WorkerTicket, status: str, http_status: int, *, chunk: Chunk | None = None,
              error: str | None = None, code: str | None = None) -> None:
        if ticket.closed:
            return
        ticket.closed = True
        self.pending.pop(ticket.rid, None)
        last = None if chunk is None else [chunk.prompt_tokens, chunk.cached_tokens, chunk.completion_tokens,
                                           chunk.finish_reason, chunk.energy_j]
        self._send(["close", ticket.rid, status, http_status, error, code, last])

    def refuse(self, tenant: TenantConfig, kind: str, req: CompletionRequest | None, status: str,
               http_status: int, *, code: str | None, error: str | None) -> str:
        rid = self._new_rid()
        summary = None if req is None else [req.model, req.pool, req.adapter, req.prompt_tokens, req.max_tokens,
                                            req.stream, req.user]
        self._send(["refuse", rid, tenant.name, kind, summary, status, http_status, code, error])
        return rid

    def unauthenticated(self, code: str | None, http_status: int) -> None:
        self._send(["unauth", code, http_status])

    # -- frames from the decision process --------------------------------------------------------
    def _frame(self, f: list[Any]) -> None:
        self._ops[f[0]](f)

    def _dispatch(self, f: list[Any]) -> None:
        _, rid, engine, priority, traceparent, engine_model, prompt_tokens, max_tokens = f
        ticket = self.pending.get(rid)
        if ticket is None or ticket.waiter.done():
            return
        ticket.engine, ticket.priority, ticket.traceparent, ticket.engine_model = engine, priority, traceparent, engine_model
        req = ticket.request
        req.prompt_tokens = prompt_tokens
        if max_tokens != req.max_tokens:  # a default max_tokens shrunk to fit the context (CompletionRequest.fit_context)
            req.max_tokens = req.sampling["max_new_tokens"] = max_tokens
            if req.body is not None:
                req.body["max_tokens"] = max_tokens
        ticket.waiter.set_result(None)

    def _refused(self, f: list[Any]) -> None:
        _, rid, status, http_status, message, code, param, retry_after = f
        ticket = self.pending.pop(rid, None)
        if ticket is None or ticket.waiter.done():
            return
        err = ApiError(http_status, message, code=code, param=param, retry_after=retry_after)
        err.request_id = rid
        ticket.row["status"] = status
        ticket.closed = True  # its row is written: the gateway's close is a no-op
        ticket.waiter.set_result(err)

    def _abort(self, f: list[Any]) -> None:
        ticket = self.pending.get(f[1])
        if ticket is not None and not ticket.closed and ticket.task is not None:
            ticket.abort_reason = f[2]
            ticket.task.cancel()

    def abort_all(self, reason: str) -> list[asyncio.Task[Any]]:
        """Every request still here aborted as an operator abort is (the client gets an in-band error,
        the row `reason`); returns their tasks, to await so that their `close` frames leave."""
        tasks = []
        for ticket in list(self.pending.values()):
            if not ticket.closed and ticket.task is not None and not ticket.task.done():
                ticket.abort_reason = ticket.abort_reason or reason
                ticket.task.cancel()
                tasks.append(ticket.task)
        return tasks

    def disconnect(self) -> None:
        """This worker is stopping: its pending frames leave, then the connection closes."""
        self.stopping = True
        if self.link is not None:
            self.link.close()

    def _lost(self) -> None:
        if not self.stopping:
            log.error("the decision process is gone: answering 503 until this worker stops")
        self.lost.set()
        for rid, ticket in list(self.pending.items()):
            if not ticket.waiter.done():  # still queued: never dispatched, so it ends here
                self.pending.pop(rid)
                ticket.closed = True
                ticket.row["status"] = "error"
                ticket.waiter.set_result(_unavailable(rid))
