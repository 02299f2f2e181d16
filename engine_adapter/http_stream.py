"""A lean HTTP/1.1 client for one engine's streamed POSTs (SGLang's ``/generate`` and its OpenAI
endpoints): an `asyncio.Protocol` per pooled keep-alive connection, httptools parsing the response.

Why not aiohttp here: on the streaming hot path aiohttp spends, per socket read, a `StreamReader`
feed and wake-up and a `call_later` re-armed for its read timeout; that machinery was most of the
client's CPU per proxied SSE event. Here a read is one ``feed_data`` into httptools (C), the body
bytes appended to a list, and at most one future woken; the consumer takes everything that arrived
since its last read in one piece (several engine events read while the consumer was busy come
together, and leave to the client in one write).

Push mode (`StreamResponse.relay`): the consumer's callback gets each read's bytes straight from
the connection's `data_received`, so a proxied event costs no future, no task step and no
generator resumption of the consumer's (measured at 7-11 us per event on this machine by
bench/bench_relay_floor.py --hop, a third of the floor); the consumer's task sleeps until the body
is over, or until the callback's far side is backed up (then reading stops until it drained).

Timeouts: connect (`connect_timeout`) and a stalled response (`read_timeout`: the longest silence
between two bytes, as aiohttp's ``sock_read``), checked by one watchdog timer per request that is
re-armed only when it fires, never per read. A request sent on a reused connection that the server
had closed (keep-alive race) is retried once on a fresh connection, as no byte of it was answered.
"""
from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, urlsplit

import httptools

__all__ = ["ConnectFailed", "PushFailed", "StreamClient", "StreamResponse", "check_url"]

_PAUSE_AT = 1 << 20  # bytes buffered unread before the socket stops being read


def _never() -> bool:
    return False


class ConnectFailed(OSError):
    """The engine could not be reached: the request never left (no abort is owed)."""


class PushFailed(Exception):
    """What a push consumer's far side raised (its `error`: the client's write failed), carried out
    of `relay` so that it is not taken for an error of the engine or the connection."""

    def __init__(self, error: Exception) -> None:
        super().__init__(repr(error))
        self.error = error


class _Closed(ConnectionResetError):
    """The connection closed before the response was complete."""


class StreamResponse(asyncio.Protocol):
    """One pooled connection, and the response being read on it (one at a time)."""

    def __init__(self, client: StreamClient) -> None:
        self._client = client
        self._time = client.loop.time
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._framed = False  # a Content-Length or chunked body (else it ends when the connection does)
        self._complete = False
        self._keep = False
        self._answered = False  # a byte of this response arrived
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._last = self._time()
        self._watchdog: asyncio.TimerHandle | None = None
        self._push: Callable[[bytes], Awaitable[None] | None] | None = None  # set while `relay` waits
        self._over: Callable[[], bool] = _never
        self._pending: Awaitable[None] | None = None  # the write a push left backed up
        self._push_error: Exception | None = None

    # ------------------------------------------------------------------ protocol (the loop calls these)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._last = self._time()
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ValueError(f"malformed HTTP response: {e}"))
            return
        if self._push is not None:
            if self._pieces:
                self._push_now()
            if self._push is not None and not self._complete:
                return  # pushed: nothing for the consumer's task to do
        if self._size > _PAUSE_AT:
            self._pause()
        w = self._waiter
        if w is not None and not w.done() and (self._pieces or self._complete or self._headers_done):
            w.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._headers_done and not self._framed and exc is None and not self._complete:
            self.on_message_complete()  # a body delimited by the connection's end
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)
        if not self._complete:
            self._fail(_Closed(f"connection closed by the engine{f' ({exc})' if exc else ''}"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headers_done = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._size += len(body)

    def on_message_complete(self) -> None:
        self._complete = True
        self._keep = self._framed and self._parser.should_keep_alive()  # (the parser resets after this)

    # ------------------------------------------------------------------ the consumer's side

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self.transport is not None:
            self.transport.close()

    async def _wait(self) -> None:
        w = self._waiter = self._client.loop.create_future()
        try:
            await w
        finally:
            self._waiter = None

    def _take(self) -> bytes:
        pieces = self._pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._pieces = []
        self._size = 0
        return data

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self._last = self._time()  # the engine's silence counts from when it is listened to again
            self.transport.resume_reading()

    async def read_some(self) -> bytes:
        """Everything received since the last call, at least one byte; b"" once the body is over."""
        while not self._pieces:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        data = self._take()
        self._resume()
        return data

    async def relay(self, consume: Callable[[bytes], Awaitable[None] | None], over: Callable[[], bool]) -> None:
        """Push mode: the body's bytes go to `consume` as they arrive, from the connection's callback
        (no task woken per read), until `over()` says the consumer has all it needs or the body ends.
        `consume` returning an awaitable (its far side is backed up) stops the reads until this task
        has awaited it. Raises the connection's errors and what `consume` raised, as it was raised;
        what the awaitable raised comes as `PushFailed` (it is the far side's, never the engine's)."""
        try:
            while not over():
                if self._pieces:
                    pending = consume(self._take())
                    if pending is not None:
                        self._pause()
                elif self._complete:
                    return
                elif self._error is not None:
                    raise self._error
                else:
                    self._push, self._over = consume, over
                    try:
                        await self._wait()  # woken when the push stops: over, backed up, failed, or the end
                    finally:
                        self._push = None
                    pending, self._pending = self._pending, None
                    if self._push_error is not None:
                        raise self._push_error
                if pending is not None:
                    try:
                        await pending
                    except Exception as e:
                        raise PushFailed(e) from e
                self._resume()
        finally:
            if self._pending is not None:  # left by a cancellation: never to be awaited
                close = getattr(self._pending, "close", None)
                if close is not None:
                    close()
                self._pending = None

    def _push_now(self) -> None:
        """In `data_received`, push mode: hand the bytes over; wake the task if the push must stop."""
        try:
            pending = self._push(self._take())  # type: ignore[misc]
        except Exception as e:
            self._push_error = e
            self._push = None
            return
        if pending is not None:  # the consumer's far side is backed up: read nothing until it drained
            self._pending = pending
            self._push = None
            self._pause()
        elif self._over():
            self._push = None

    async def read(self) -> bytes:
        """The rest of the body."""
        parts = []
        while piece := await self.read_some():
            parts.append(piece)
        return b"".join(parts)

    def release(self) -> None:
        """Done with this response: a complete one's connection goes back to the pool, any other is
        closed (the engine sees the client go away)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        keep = self._complete and self._keep and not self._pieces
        if keep and not self.closed:
            self._resume()  # a push may have paused it on its last read (a backed-up write, then cancelled)
            self._client._put(self)
        elif self.transport is not None:
            self.closed = True
            self.transport.close()

    # ------------------------------------------------------------------ sending, and the stall watchdog

    async def _send(self, head: bytes, body: bytes) -> None:
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body)
        self._arm(self._client.read_timeout)
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    def _arm(self, delay: float) -> None:
        self._watchdog = self._client.loop.call_later(delay, self._check)

    def _check(self) -> None:
        """Fires at most once per `read_timeout`: a response silent that long has stalled."""
        if self._paused:  # not reading (the consumer is behind, or its far side backed up): not the engine's silence
            self._last = self._time()
        silent = self._time() - self._last
        timeout = self._client.read_timeout
        if silent >= timeout:
            self._watchdog = None
            self._fail(TimeoutError(f"no byte from the engine in {timeout:g} s"))
        else:
            self._arm(timeout - silent)


def check_url(url: str) -> SplitResult:
    """`url` split, or ValueError unless it is ``http(s)://host[:port][/prefix]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"engine URL must be http(s)://host[:port][/prefix], got {url!r}")
    return parts


class StreamClient:
    """Pooled keep-alive connections to one engine for streamed POSTs (created in the loop that
    uses it). `post` returns once the response's headers are in."""

    def __init__(self, url: str, headers: dict[str, str], *, connect_timeout: float, read_timeout: float,
                 keepalive_s: float = 4.0) -> None:
        parts = check_url(url)
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: _ssl.SSLContext | None = _ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.keepalive_s = keepalive_s  # below uvicorn's default 5 s keep-alive: SGLang closes after that
        host = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers}.items())
        self._idle: list[StreamResponse] = []
        self._pruned = 0.0

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> StreamResponse:
        """Send ``POST prefix+path``; the response with its status. Raises `ConnectFailed`,
        TimeoutError, OSError. The caller must `release()` the response."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        head = (f"POST {self.prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            conn, reused = await self._get()
            try:
                await conn._send(head, body)
                return conn
            except _Closed:
                conn.release()
                if reused and attempt == 0 and not conn._answered:
                    continue  # the server closed an idle connection as we used it: nothing was sent
                raise
            except BaseException:
                conn.release()
                raise
        raise AssertionError("unreachable")

    async def _get(self) -> tuple[StreamResponse, bool]:
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn, True
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: StreamResponse(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout)
        except (OSError, TimeoutError) as e:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {str(e) or type(e).__name__}") from e
        return conn, False

    def _put(self, conn: StreamResponse) -> None:
        now = conn.idle_since = self.loop.time()
        if now - self._pruned > self.keepalive_s:  # LIFO reuse leaves a burst's extra connections at the bottom
            self._pruned = now
            for old in self._idle:
                if old.transport is not None and now - old.idle_since >= self.keepalive_s:
                    old.closed = True
                    old.transport.close()
            self._idle = [c for c in self._idle if not c.closed]
        self._idle.append(conn)

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
