"""The raw ASGI side of the completion endpoints: reading a request's body under its limit, answering
an error, noticing a client that goes away, and writing a response (streamed or one JSON body) so
that the error paths know what has already left."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
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


async def send_error(send: Send, err: ApiError) -> None:
    await send({"type": "http.response.start", "status": err.status, "headers": err.headers()})
    await send({"type": "http.response.body", "body": err.to_bytes()})


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
        self.started = False
        self.held = b""  # the final batch's events, sent with the response's end (one write)
        self.first = True
        self.last: Chunk | None = None
        self.texts: list[Chunk] = []  # a non-streamed response's chunks, joined at the end

    async def stream_batch(self, batch: Sequence[Chunk], enc: oa.StreamEncoder, send: Send) -> None:
        """One batch's SSE events; the final batch's are held back for the response's end."""
        last = batch[-1]
        if not self.started:
            await send({"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS, self.rid_header]})
            self.started = True
        if len(batch) == 1:
            if last.text or last.extra or last.finish_reason or self.first:
                data = enc.chunk(last.text, last.finish_reason, self.first, last.extra)
                self.first = False
                if last.finish_reason is not None:
                    self.held = data  # leaves with the usage chunk and [DONE]: one write
                    return
                await send({"type": "http.response.body", "more_body": True, "body": data})
            return
        # events that arrived together leave in one write
        parts = []
        for chunk in batch:
            if chunk.text or chunk.extra or chunk.finish_reason or self.first:
                parts.append(enc.chunk(chunk.text, chunk.finish_reason, self.first, chunk.extra))
                self.first = False
        if last.finish_reason is not None:
            self.held = b"".join(parts)
        elif parts:
            await send({"type": "http.response.body", "more_body": True, "body": b"".join(parts)})

