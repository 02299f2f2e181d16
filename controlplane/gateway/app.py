"""The OpenAI-compatible gateway (ASGI).

The two completion endpoints are plain ASGI callables: they need exact control of when the
response starts (a refusal must be a real 429, not a 200 stream) and must notice a client that
disconnects while queued or streaming. Everything else is ordinary Starlette.

`Gateway`, the ASGI callable that uvicorn serves, sends `POST /v1/chat/completions` and
`POST /v1/completions` straight to their endpoint (no middleware, router or request object on
the hot path) and every other request, and the lifespan, to the Starlette app.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from controlplane.config import TenantConfig
from controlplane.errors import ApiError
from controlplane.gateway import openai_api as oa
from controlplane.gateway.asgi_io import (ClientStalled, DisconnectWatch, Receive, Reply, Send, read_body,
                                         send_error, send_within, within)
from controlplane.requests import CompletionRequest
from controlplane.service import Sluice
from controlplane.tickets import Ticket
from engine_adapter.base import Chunk, EngineError

log = logging.getLogger("sluice.gateway")


def canonical_bearer(header: str | None) -> str | None:
    """`Authorization` with its scheme spelled `Bearer`: auth schemes are case-insensitive (RFC 9110
    11.1), and clients that send `bearer` or `BEARER` exist."""
    if not header:
        return None
    if header[:7].lower() == "bearer " and not header.startswith("Bearer "):
        return "Bearer " + header[7:]
    return header


class CompletionsEndpoint:
    """POST /v1/chat/completions and /v1/completions."""

    def __init__(self, sluice: Sluice, kind: str) -> None:
        self.sluice = sluice
        self.kind = kind

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            return await send_error(send, ApiError(405, "use POST", code="method_not_allowed"))
        sluice = self.sluice
        headers = dict(scope["headers"])
        tenant: TenantConfig | None = None
        req: CompletionRequest | None = None
        try:
            tenant = sluice.authenticate(canonical_bearer(headers.get(b"authorization", b"").decode("latin-1")))
            ctype = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
            if ctype != b"application/json":
                raise ApiError(415, "Content-Type must be application/json", code="unsupported_media_type")
            body = await read_body(receive, headers, sluice.config.server.max_body_bytes)
            req = oa.parse_completion(body, self.kind, max_tokens_limit=sluice.config.server.max_tokens_limit,
                                      count=sluice.count_tokens)
            sluice.route(tenant, req)  # its model pool: 404 unknown model, 403 one the tenant may not use
            sluice.fit_context(req)
            ticket = sluice.submit(tenant, req)  # a refusal here has its row already (and its request_id)
        except ApiError as err:
            if tenant is None:
                count_unauthenticated(sluice, err)
            elif err.request_id is None:  # refused before admission: the request's one row
                err.request_id = sluice.refuse(tenant, self.kind, req, "rejected", err.status, code=err.code,
                                               error=err.message)
            return await send_error(send, err)
        except ConnectionError:  # gone while sending its body, or too slow (the listener answered 408)
            timed_out = scope.get("sluice.request_timeout")
            if tenant is not None and timed_out:
                sluice.refuse(tenant, self.kind, req, "rejected", 408, code="request_timeout", error=timed_out)
            elif tenant is not None:
                sluice.refuse(tenant, self.kind, req, "aborted", 499, code=None, error="client_disconnected")
            return
        except Exception as exc:  # a bug must still answer in the OpenAI shape, never a plain-text 500
            log.exception("unexpected error before admission")
            err = ApiError(500, "internal error", code="internal_error")
            if tenant is not None:
                err.request_id = sluice.refuse(tenant, self.kind, req, "error", 500, code=err.code, error=repr(exc))
            return await send_error(send, err)
        await self._serve(ticket, receive, send)

    async def _serve(self, ticket: Ticket, receive: Receive, send: Send) -> None:
        """Wait for dispatch, send the response, and close the request's row however it ended."""
        gone = DisconnectWatch(receive)
        ticket.task = asyncio.current_task()
        reply = Reply(ticket.rid)
        status, http_status, error, code = "error", 500, "internal_error", "internal_error"
        try:
            status, http_status, error, code = await self._respond(ticket, gone, reply, send)
        except ApiError as err:  # refused or expired while queued: wait_dispatch wrote the row
            status, http_status, error, code = ticket.row.get("status") or "rejected", err.status, err.code, err.code
            if not gone.gone:
                await send_error(send, err)
        except ClientStalled:  # it reads nothing: its engine request is aborted (or was done), the rest is dropped
            status, error, code = "aborted", "client_stalled", None
            http_status = 200 if reply.started else 499
        except EngineError as exc:
            err = engine_error(exc, ticket.rid)
            # the tenant gets a stable message and the rid; the row and the span get the detail
            status, error, code = "error", f"engine {ticket.engine}: {exc}", err.code
            http_status = await self._fail(send, err, reply.started, reply.held)
        except asyncio.CancelledError:
            if not gone.gone and ticket.abort_reason is None:  # the server is shutting down (past its grace)
                status, error, code = "aborted", "server_shutdown", "aborted"
                http_status = 200 if reply.started else 503
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status, error, code = "aborted", ticket.abort_reason or "client_disconnected", None
            http_status = 200 if reply.started else 499  # 499: the client left before any response
            if not gone.gone:  # an operator abort: tell the client
                err = ApiError(503, f"request aborted: {ticket.abort_reason}", code="aborted")
                err.request_id = ticket.rid
                code = err.code
                http_status = await self._fail(send, err, reply.started, reply.held)
        finally:
            gone.disarm()
            self.sluice.close(ticket, status, http_status, chunk=reply.last, error=error, code=code)

    async def _respond(self, ticket: Ticket, gone: DisconnectWatch, reply: Reply,
                       send: Send) -> tuple[str, int, str | None, str | None]:
        """The success path: the engine's batches relayed (streamed, or gathered for one JSON reply).
        Returns the row's status, HTTP status, error and code."""
        sluice, req = self.sluice, ticket.request
        await sluice.wait_dispatch(ticket)
        created = int(time.time())
        enc = oa.StreamEncoder(self.kind, ticket.rid, req.model, created) if req.stream else None

        def push(batch: Sequence[Chunk]) -> Awaitable[None] | None:
            """Each batch, as the engine connection reads it: no task of ours runs per event."""
            if ticket.first_token_at is None:
                sluice.first_token(ticket, batch)
            reply.last = batch[-1]
            if enc is not None:
                backed_up = reply.stream_batch(batch, enc, send)
                return None if backed_up is None else within(backed_up, self.send_timeout_s)
            reply.texts.extend(batch)
            return None

        # the engine's own generator, no hop of sluice's: first-token bookkeeping, engine
        # failure and abort-on-close are done here (see Sluice.open_stream)
        batches = sluice.open_stream(ticket, push)
        try:
            async for batch in batches:  # what the engine did not push (see engine_call.engine_batches)
                pending = push(batch)
                if pending is not None:
                    await pending
        except EngineError as exc:
            sluice.engine_failed(ticket, exc)
            raise
        finally:
            await batches.aclose()  # type: ignore[attr-defined]  # early exit: aborts at the engine
        last = reply.last
        if last is None or last.finish_reason is None:
            raise EngineError("the engine ended the stream without a final chunk")
        gone.disarm()  # the response is complete: a disconnect from here on is not an abort
        await self._send_end(ticket, reply, created, last, send)
        if last.finish_reason == "abort":
            return "aborted", 200, last.message or "aborted by the engine", None
        return "ok", 200, None, None

    async def _send_end(self, ticket: Ticket, reply: Reply, created: int, last: Chunk, send: Send) -> None:
        """The response's last write: the held events, usage and [DONE], or the whole JSON reply."""
        req = ticket.request
        usage = oa.usage(last.prompt_tokens, last.completion_tokens, last.cached_tokens)
        if req.stream:
            tail = oa.usage_chunk(self.kind, ticket.rid, req.model, created, usage) if req.include_usage else b""
            await send_within(send, {"type": "http.response.body", "body": reply.held + tail + oa.DONE}, self.send_timeout_s)
            return
        payload = oa.full_response(self.kind, ticket.rid, req.model, created, reply.texts, last.finish_reason, usage)
        await send_within(send, {"type": "http.response.start", "status": 200,
                                 "headers": [(b"content-type", b"application/json"), reply.rid_header]},
                          self.send_timeout_s)
        await send_within(send, {"type": "http.response.body", "body": json.dumps(payload).encode()},
                          self.send_timeout_s)

    async def _fail(self, send: Send, err: ApiError, started: bool, held: bytes) -> int:
        """Send `err` and return the HTTP status the client got: a stream already started (200) ends
        with an in-band error event, as SGLang's does. A client that reads nothing gets no more."""
        try:
            if started:
                await send_within(send, {"type": "http.response.body", "body": held + oa.error_event(err) + oa.DONE},
                                  self.send_timeout_s)
                return 200
            await send_error(send, err, self.send_timeout_s)
        except ClientStalled:
            return 200 if started else 499
        return err.status

    @property
    def send_timeout_s(self) -> float:
        return self.sluice.config.server.send_timeout_s


def engine_error(exc: EngineError, rid: str) -> ApiError:
    """What a tenant sees of an engine failure: a stable message and the request id to quote, never
    the engine's address or exception text (operators find those in the request's row and span). When
    the engine refused the request itself (a 4xx), its reason is about the request and is passed on."""
    if exc.status_code == 503:
        what = "the engine is overloaded; retry later"
    elif 400 <= exc.status_code < 500:
        what = "the engine refused this request" + (f": {exc.client_message}" if exc.client_message else "")
    else:
        what = "the engine failed while serving this request"
    err = ApiError(exc.status_code, f"{what} (request id {rid})", code="engine_error",
                   retry_after=1.0 if exc.status_code == 503 else None)
    err.request_id = rid
    return err


def count_unauthenticated(sluice: Sluice, err: ApiError) -> None:
    """No tenant, so no row: unauthenticated requests are only counted (`sluice_refusals`)."""
    if sluice.recorder is not None:
        sluice.recorder.unauthenticated(err.code, err.status)


class Gateway:
    """The ASGI app: the two completion endpoints directly, everything else through Starlette.

    `state` and `router` are the Starlette app's, so callers configure it (lifespan, state)
    through this object as they would the Starlette app itself.
    """

    def __init__(self, starlette: Starlette, fast: dict[str, CompletionsEndpoint]) -> None:
        self.starlette = starlette
        self.fast = fast

    @property
    def state(self) -> Any:
        return self.starlette.state

    @property
    def router(self) -> Any:
        return self.starlette.router

    @property
    def routes(self) -> list[Any]:
        return self.starlette.routes

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.fast.get(scope["path"])
            if endpoint is not None:
                return await endpoint(scope, receive, send)
        try:
            await self.starlette(scope, receive, send)  # lifespan, websockets and every other route
        except ClientDisconnect:
            pass  # the client went away (or its body timed out) while a route read the body: no one to answer


def build_app(sluice: Sluice, extra_routes: list[Any] | None = None) -> Gateway:
    started = int(time.time())

    def model_object(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": started, "owned_by": "sluice"}

    def authenticate(request: Request) -> TenantConfig:
        try:
            return sluice.authenticate(canonical_bearer(request.headers.get("authorization")))
        except ApiError as err:
            count_unauthenticated(sluice, err)
            raise

    async def models(request: Request) -> Response:
        """Every model the key may use: each pool's names, its adapters (`model:adapter`), aliases."""
        try:
            tenant = authenticate(request)
        except ApiError as err:
            return _error_response(err)
        return JSONResponse({"object": "list", "data": [model_object(m) for m in sluice.model_list(tenant)]})

    async def model(request: Request) -> Response:
        """GET /v1/models/{id} (ids may hold slashes: `meta-llama/Llama-3.1-8B-Instruct`)."""
        try:
            tenant = authenticate(request)
            name = request.path_params["model"]
            sluice.resolve_model(tenant, name)
        except ApiError as err:
            return _error_response(err)
        return JSONResponse(model_object(name))

    async def health(request: Request) -> Response:
        """Up while any engine of any pool is healthy; `pools`: each pool's healthy engines."""
        pools = {name: [e.name for e in snap.healthy_engines()]
                 for name, snap in sluice.snapshots(with_tenants=False).items()}
        healthy = [e for names in pools.values() for e in names]
        body = {"status": "ok" if healthy else "unavailable", "engines": healthy, "pools": pools}
        return JSONResponse(body, 200 if healthy else 503, headers=None if healthy else {"Retry-After": "5"})

    chat, text = CompletionsEndpoint(sluice, "chat"), CompletionsEndpoint(sluice, "text")
    routes = [
        # also served by Gateway directly; through Starlette for other methods (405) and path variants
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", text, methods=["POST"]),
        Route("/v1/models", models),
        Route("/v1/models/{model:path}", model),
        Route("/health", health),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed, Exception: _server_error})
    return Gateway(app, {"/v1/chat/completions": chat, "/v1/completions": text})


def _error_response(err: ApiError) -> Response:
    return JSONResponse(err.body(), err.status, headers={k.decode(): v.decode() for k, v in err.headers()
                                                         if k != b"content-type"})


async def _server_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected (a bug) still answers in the OpenAI shape; the traceback goes to the log."""
    return JSONResponse(ApiError(500, "internal error", code="internal_error").body(), 500)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(ApiError(404, f"no route for {request.url.path}", code="not_found").body(), 404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse(ApiError(405, f"method {request.method} not allowed", code="method_not_allowed").body(), 405)


__all__ = ["Gateway", "Mount", "build_app"]
