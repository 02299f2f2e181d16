"""The local channel between the decision process and its gateway workers (`sluice serve --workers N`).

A Unix stream socket carrying length-prefixed frames: a 4-byte big-endian length, then one JSON
array `[op, ...]` (orjson, already a dependency). Why this and not shared memory or ZeroMQ: every
message is small and belongs to one request (submit, dispatch, first token, finish), so what costs
is the per-message work, not bandwidth; a stream socket gives ordering, back-pressure from the
kernel and, above all, a clean signal when the other side dies (the connection drops: the decision
process aborts the dead worker's tickets, a worker answers 503), which shared memory would have to
rebuild with heartbeats; ZeroMQ would add a dependency and hide that signal.

`FrameProtocol` is an asyncio protocol, not a stream reader: frames are parsed in `data_received`
and handed to a plain callback (no task, no await per message), and the frames sent during one
turn of the event loop leave in one write (one system call for every request that moved meanwhile).
The protocol's ops are listed in controlplane/worker_hub.py (the decision side) and
controlplane/worker_runtime.py (the worker side).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("sluice.ipc")

__all__ = ["MAX_FRAME", "FrameProtocol"]

MAX_FRAME = 16 * 1024 * 1024  # a frame is one request's message; anything larger is a broken peer


class FrameProtocol(asyncio.Protocol):
    """One end of a connection: `on_frame(frame)` per frame received, `on_lost()` once when it
    drops; `send(frame)` queues a frame for the write at the end of this turn of the loop."""

    def __init__(self, on_frame: Callable[[list[Any]], None], on_lost: Callable[[], None]) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos, size = 0, len(buf)
        while size - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if n > MAX_FRAME:
                log.error("IPC frame of %d bytes: closing the connection", n)
                self.transport.close()  # type: ignore[union-attr]
                return
            if size - pos - 4 < n:
                break
            frame = orjson.loads(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
            try:
                self.on_frame(frame)
            except Exception:  # one bad message must not take the connection (and its requests) down
                log.exception("IPC frame %r failed", frame[:2] if isinstance(frame, list) else frame)
        del buf[:pos]

    def send(self, frame: list[Any]) -> None:
        if self.closed:
            return
        data = orjson.dumps(frame)
        self._out.append(len(data).to_bytes(4, "big") + data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.closed and self.transport is not None:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self.on_lost()
