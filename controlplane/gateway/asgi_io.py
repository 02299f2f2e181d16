"""The raw ASGI side of the completion endpoints: reading a request's body under its limit, answering
an error, noticing a client that goes away, and writing a response (streamed or one JSON body) so
that the error paths know what has already left."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

from controlplane.errors import ApiError
from controlplane.gateway import openai_api as oa
from engine_adapter.base import Chunk

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_error(send: Send, err: ApiError, timeout_s: float | None = None) -> None:
    """`err` as the whole response; with `timeout_s`, each write bounded as `send_within`'s."""
    for message in ({"type": "http.response.start", "status": err.status, "headers": err.headers()},
                    {"type": "http.response.body", "body": err.to_bytes()}):
        if timeout_s is None:
            await send(message)
        else:
            await send_within(send, message, timeout_s)


def send_now(send: Send, message: dict[str, Any]) -> Awaitable[None] | None:
    """`send(message)` run to its end right here when it need not wait (the server's transport took
    the bytes: the usual case), so that a read callback can write to its client with no task; else
    an awaitable that finishes it (the client is backed up: the server waits for its buffer to drain)."""
    coro = send(message)
    if not hasattr(coro, "send"):  # not a coroutine (no ASGI server's send, but the spec allows any awaitable)
        return coro
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return _UnfinishedSend(coro, waiting)


class ClientStalled(Exception):
    """A write to the client waited `[server] send_timeout_s`: it reads nothing of its response."""


async def within(write: Awaitable[None], timeout_s: float) -> None:
    """`write` (to the client), or ClientStalled once it has waited `timeout_s`: a client that
    stops reading must not hold its engine request and its slot in the core for ever."""
    try:
        await asyncio.wait_for(write, timeout_s)
    except TimeoutError:
        raise ClientStalled(f"the client read nothing for {timeout_s:g} s") from None


async def send_within(send: Send, message: dict[str, Any], timeout_s: float) -> None:
    """`send(message)`, done on the spot when the client keeps up (no task: what follows runs in
    the same step, as after a plain await), else bounded as `within`'s."""
    rest = send_now(send, message)
    if rest is not None:
        await within(rest, timeout_s)


class _UnfinishedSend:
    """The rest of a send coroutine that was started by hand and stopped at `waiting` (see
    send_now): awaiting it hands `waiting` to the task first, then runs the coroutine on from there."""

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Any, waiting: Any) -> None:
        self._coro, self._waiting = coro, waiting

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                value = yield waiting
            except GeneratorExit:  # closed unfinished: so is the send
                coro.close()
                raise
            except BaseException as e:  # a cancellation: the send gets it where it waits
                try:
                    waiting = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(value)
                except StopIteration:
                    return

    def close(self) -> None:
        self._coro.close()


class DisconnectWatch:
    """Cancels the handling task when the client disconnects (queued or mid-stream), until disarmed."""

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.armed = True
        self._task = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if self.armed:
            self.gone = True
            self._task.cancel()  # type: ignore[union-attr]

    def disarm(self) -> None:
        self.armed = False
        self._watcher.cancel()


class Reply:
    """What one response has sent so far: the streaming writes fill it in, and the error paths need
    it (a started stream ends with an in-band error event; its held final events go out first)."""

    __slots__ = ("rid_header", "started", "held", "first", "last", "texts")

    def __init__(self, rid: str) -> None:
        self.rid_header = (b"x-request-id", rid.encode())
        self.started = False  # the response's start has been sent
        self.held = b""  # the final batch's events, sent with the response's end (one write)
        self.first = True
        self.last: Chunk | None = None
        self.texts: list[Chunk] = []  # a non-streamed response's chunks, joined at the end

    def stream_batch(self, batch: Sequence[Chunk], enc: oa.StreamEncoder, send: Send) -> Awaitable[None] | None:
        """One batch's SSE events, written now (`send_now`: the engine connection's read callback
        calls this); the final batch's are held back for the response's end. An awaitable in
        return: the client is backed up, and nothing more may be written until it is done (the
        callers stop reading the engine until then, so no batch comes meanwhile)."""
        start = None
        if not self.started:
            start = send_now(send, {"type": "http.response.start", "status": 200,
                                    "headers": [*_SSE_HEADERS, self.rid_header]})
            self.started = start is None
        last = batch[-1]
        if len(batch) == 1:
            if not (last.text or last.extra or last.finish_reason or self.first):
                return self._write(start, send, None)
            data = enc.chunk(last.text, last.finish_reason, self.first, last.extra)
            self.first = False
        else:  # events that arrived together leave in one write
            parts = []
            for chunk in batch:
                if chunk.text or chunk.extra or chunk.finish_reason or self.first:
                    parts.append(enc.chunk(chunk.text, chunk.finish_reason, self.first, chunk.extra))
                    self.first = False
            data = b"".join(parts)
        if last.finish_reason is not None:
            self.held = data  # leaves with the usage chunk and [DONE]: one write
            return self._write(start, send, None)
        return self._write(start, send, {"type": "http.response.body", "more_body": True, "body": data} if data else None)

    def _write(self, start: Awaitable[None] | None, send: Send, body: dict[str, Any] | None) -> Awaitable[None] | None:
        if start is None:
            return None if body is None else send_now(send, body)
        return self._after_start(start, send, body)

    async def _after_start(self, start: Awaitable[None], send: Send, body: dict[str, Any] | None) -> None:
        """The rest of a write whose response start was backed up."""
        await start
        self.started = True  # only once it has left: an error after a start that never did sends its own
        if body is not None:
            await send(body)
