"""A gateway worker's every other route (`sluice serve --workers N`): relayed to the decision process.

A worker serves the two completion endpoints itself; the admin API, `/metrics`, `/health`,
`/v1/models` and the OTLP receiver (on the serve port) belong to the decision process, which
serves them on a private Unix socket. `Relay` forwards each such request there as it came (method,
path, query, headers, body) and streams the answer back as it goes (the admin event stream is
long-lived), so clients keep one address and one behaviour whichever process answers.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from controlplane.errors import ApiError
from controlplane.gateway.asgi_io import DisconnectWatch, Receive, Send, read_body, send_error

log = logging.getLogger("sluice.worker")

__all__ = ["Relay"]

# hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets for the body it sends. The client's `host`
# goes through (Starlette builds redirects and URLs from it; aiohttp would send its own, `sluice`);
# the answer's `date` and `server` are the worker's uvicorn's, which adds them to every response.
_DROP_REQUEST = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"proxy-connection",
                 b"content-length"}
_DROP_RESPONSE = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection",
                  "content-length", "date", "server"}


class Relay:
    """An ASGI app that forwards HTTP requests to the HTTP server on the Unix socket `path`."""

    def __init__(self, path: str, max_body_bytes: int) -> None:
        self.path = path
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.path),
                                                  auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is the worker's own (sluice/worker.py); no websockets
            return
        headers = dict(scope["headers"])
        try:
            body = await read_body(receive, headers, self.max_body_bytes)
        except ApiError as err:
            return await send_error(send, err)
        except ConnectionError:
            return
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        forward = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _DROP_REQUEST]
        gone = DisconnectWatch(receive)  # a client that leaves a long answer (the event stream) ends the relay
        started: list[bool] = []
        try:
            await self._forward(scope["method"], "http://sluice" + target.decode("latin-1"), forward, body, send,
                                started)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("relay of %s %s failed: %s", scope["method"], scope["path"], exc)
            if not gone.gone and not started:
                await send_error(send, ApiError(503, "sluice's decision process is unavailable; retry later",
                                                code="service_unavailable", retry_after=1.0))
        except asyncio.CancelledError:
            if not gone.gone:
                raise  # the worker is shutting down
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            gone.disarm()

    async def _forward(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes, send: Send,
                       started: list[bool]) -> None:
        async with self._sess().request(method, url, headers=headers, data=body or None,
                                        allow_redirects=False) as resp:
            out = [(k, v) for k, v in resp.raw_headers if k.decode("latin-1").lower() not in _DROP_RESPONSE]
            await send({"type": "http.response.start", "status": resp.status, "headers": out})
            started.append(True)  # from here an error can only cut the answer short
            try:
                async for piece in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
            finally:
                await send({"type": "http.response.body", "body": b""})
