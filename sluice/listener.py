"""What every HTTP listener of `sluice serve` shares (the gateway's, the OTLP receiver's): uvicorn's
protocol with read deadlines and a connection cap, which uvicorn itself does not bound."""
from __future__ import annotations

import asyncio
from typing import Any

from controlplane.config import Config
from controlplane.errors import ApiError


def listener_options(config: Config) -> dict[str, Any]:
    """uvicorn options shared by every listener of the process: read deadlines and a connection cap
    (`[server] header_timeout_s`, `body_timeout_s`, `max_connections`, `keep_alive_timeout_s`)."""
    srv = config.server
    return {"http": http_protocol(srv.header_timeout_s, srv.body_timeout_s, srv.max_connections),
            "timeout_keep_alive": srv.keep_alive_timeout_s}


def _raw_error(status: int, reason: str, message: str, code: str, retry_after: int | None = None) -> bytes:
    body = ApiError(status, message, code=code).to_bytes()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _ReadDeadlines:
    """Mixed into uvicorn's HTTP protocol: what uvicorn does not bound (it has no request-receipt
    timeout: `timeout_keep_alive` covers only idle time between requests, and its
    `limit_concurrency` answers 503 only once headers are complete, holding every connection).

    * a request's headers must arrive within `header_timeout_s` of the connection opening (or of
      the first byte of the next request on a kept-alive connection), its body within
      `body_timeout_s` of the headers: else 408 in the OpenAI error shape, and the connection closes
      (the app, if already running, sees the client disconnect: no ticket is left behind);
    * past `max_connections` open connections, a new one gets 503 + Retry-After and is closed at once.

    The deadlines cover receiving the request only: a long streamed response is never cut.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._timer: asyncio.TimerHandle | None = None
        self._timed: Any = None  # the request cycle whose headers completed last
        self._phase = "headers"
        if self.max_connections is not None and len(self.connections) > self.max_connections:  # type: ignore[attr-defined]
            self._phase = "refused"
            transport.write(_raw_error(503, "Service Unavailable", f"more than {self.max_connections} open "
                                       "connections; retry later", "too_many_connections", retry_after=1))
            transport.close()
            return
        self._arm(self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._phase == "refused":
            return
        if self._phase == "idle":  # the next request on a kept-alive connection begins
            self._phase = "headers"
            self._arm(self.header_timeout_s)
        super().data_received(data)  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        if self._phase == "headers" and cycle is not None and cycle is not self._timed:
            self._timed = cycle  # the headers are complete
            if cycle.more_body and not cycle.response_complete:
                self._phase = "body"
                self._arm(self.body_timeout_s)
            else:
                self._phase = "app"
                self._disarm()
        if self._phase == "body" and cycle is not None and (not cycle.more_body or cycle.response_complete):
            self._phase = "app"
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if self._phase != "refused":
            self._phase = "idle"
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired)  # type: ignore[attr-defined]

    def _disarm(self) -> None:
        timer = getattr(self, "_timer", None)
        if timer is not None:
            timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing() or self._phase not in ("headers", "body"):
            return
        cycle = getattr(self, "cycle", None)
        if self._phase == "headers":
            message = f"the request's headers did not arrive within {self.header_timeout_s:g} s"
        else:
            message = f"the request's body did not arrive within {self.body_timeout_s:g} s of its headers"
        if self._phase == "headers" or (cycle is not None and not cycle.response_started):
            transport.write(_raw_error(408, "Request Timeout", message, "request_timeout"))
        if self._phase == "body" and cycle is not None:  # the app sees a disconnect, its sends go nowhere
            if not cycle.response_started:  # the client got the 408: the gateway records that, not a 499
                cycle.scope["sluice.request_timeout"] = message
            cycle.disconnected = True
            cycle.message_event.set()
        self._phase = "closed"
        transport.close()


def http_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int | None) -> type:
    """uvicorn's own HTTP protocol (httptools, else h11) with the read deadlines and connection cap."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("SluiceHTTPProtocol", (_ReadDeadlines, AutoHTTPProtocol),
                {"header_timeout_s": float(header_timeout_s), "body_timeout_s": float(body_timeout_s),
                 "max_connections": max_connections})
