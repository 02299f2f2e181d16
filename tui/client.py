"""Async client of sluice's admin API (`/admin/v1/...`, see docs/admin-api.md).

UI-free: it imports neither Textual nor anything else of sluice, so scripts and tests can use it
on their own. Every call raises one of three typed errors:

- `Unauthorized` for 401 / 403 (the admin token is missing, unknown or a tenant key);
- `Unreachable` when the server cannot be reached (connection refused, reset, timed out);
- `ApiError` for any other non-2xx answer, carrying the OpenAI-style error message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

__all__ = [
    "AdminClient",
    "AdminError",
    "ApiError",
    "Event",
    "Unauthorized",
    "Unreachable",
    "parse_sse_lines",
]

API_PREFIX = "/admin/v1"


class AdminError(Exception):
    """Base class of the client's errors."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Unreachable(AdminError):
    """The admin API could not be reached (refused, reset, timed out, DNS)."""


class Unauthorized(AdminError):
    """The admin token was refused: 401 (missing/unknown) or 403 (not an admin token)."""


class ApiError(AdminError):
    """A non-2xx answer other than 401/403, with the OpenAI-style error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str | None = None,  # noqa: A002 - the field's name in the error shape
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.type = type
        self.code = code
        self.param = param

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event from `/admin/v1/events`: `kind` is the `event:` field."""

    kind: str
    data: Any = field(default=None)


def _error_from_body(status: int, text: str) -> tuple[str, dict[str, Any]]:
    """Extract the message (and fields) from an OpenAI-style error body, or fall back to text."""
    try:
        body = json.loads(text)
    except ValueError:
        return (text.strip() or f"HTTP {status}"), {}
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            msg = str(err.get("message") or f"HTTP {status}")
            return msg, err
        if isinstance(err, str):
            return err, {}
        if "detail" in body:  # Starlette/FastAPI default shape
            return str(body["detail"]), {}
    return (text.strip() or f"HTTP {status}"), {}


def parse_sse_lines(lines: list[str]) -> Event | None:
    """Turn the lines of one SSE event block (without the blank terminator) into an `Event`.

    Comment lines (starting with ':') and unknown fields are ignored; multi-line `data:` is joined
    with newlines as the SSE specification says. Returns None for a block with no data (for
    example a lone `: keepalive`).
    """
    kind = "message"
    data: list[str] = []
    for line in lines:
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
    if not data:
        return None
    raw = "\n".join(data)
    try:
        payload: Any = json.loads(raw)
    except ValueError:
        payload = raw
    return Event(kind, payload)


class AdminClient:
    """Client of one sluice admin API.

    `url` is the server's base URL (for example `http://127.0.0.1:8080`); the `/admin/v1` prefix is
    added here. `actor` is sent as `X-Sluice-Actor` so the audit log records who changed what.
    The aiohttp session is created lazily inside the running event loop; call `close()` (or use
    `async with`) when done.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        actor: str | None = None,
        timeout: float = 5.0,
        events_read_timeout: float = 45.0,
    ) -> None:
        self.base_url = url.rstrip("/")
        if self.base_url.endswith(API_PREFIX):
            self.base_url = self.base_url[: -len(API_PREFIX)]
        self.token = token
        self.actor = actor
        self.timeout = timeout
        self.events_read_timeout = events_read_timeout
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.actor:
            headers["X-Sluice-Actor"] = self.actor
        return headers

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers())
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    @staticmethod
    async def _raise_for(resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        text = await resp.text()
        message, fields = _error_from_body(resp.status, text)
        if resp.status in (401, 403):
            raise Unauthorized(message, status=resp.status)
        raise ApiError(
            message,
            status=resp.status,
            type=fields.get("type"),
            code=None if fields.get("code") is None else str(fields.get("code")),
            param=fields.get("param"),
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        session = self._get_session()
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
        try:
            async with session.request(
                method,
                self._url(path),
                params=clean or None,
                json=body,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                await self._raise_for(resp)
                if resp.status == 204:
                    return None
                text = await resp.text()
        except AdminError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ApiError(f"invalid JSON from server: {text[:200]!r}", status=resp.status) from exc

    # -- reading ----------------------------------------------------------------------------------

    async def get_state(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/state")
        return result

    async def get_gpus(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/gpus")
        return result

    async def get_policy(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/policy")
        return result

    async def policy_history(self, limit: int = 50) -> list[dict[str, Any]]:
        body = await self._request("GET", "/policy/history", params={"limit": limit})
        return list((body or {}).get("changes", []))

    async def requests(
        self, *, tenant: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        body = await self._request(
            "GET", "/requests", params={"tenant": tenant, "status": status, "limit": limit}
        )
        return list((body or {}).get("requests", []))

    async def trace(self, rid: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/requests/{quote(rid, safe='')}/trace")
        return result

    async def why(self, rid: str) -> dict[str, Any]:
        """Why the request was admitted, deferred, refused or sent where it went."""
        result: dict[str, Any] = await self._request("GET", f"/requests/{quote(rid, safe='')}/why")
        return result

    # -- steering ---------------------------------------------------------------------------------

    async def patch_policy(
        self, changes: Mapping[str, Any], reason: str, expected_version: int | None = None
    ) -> dict[str, Any]:
        """Merge `changes` into the policy (JSON merge patch). Returns the new policy document."""
        if not reason or not reason.strip():
            raise ValueError("a reason is required for a policy change")
        body: dict[str, Any] = {"reason": reason, "changes": dict(changes)}
        if expected_version is not None:
            body["expected_version"] = expected_version
        result: dict[str, Any] = await self._request("PATCH", "/policy", body=body)
        return result

    async def set_weight(self, tenant: str, weight: float, reason: str) -> Any:
        return await self._request(
            "PATCH", f"/tenants/{quote(tenant, safe='')}", body={"weight": weight, "reason": reason}
        )

    async def pause_tenant(self, tenant: str, reason: str | None = None) -> Any:
        body = {"reason": reason} if reason else {}
        return await self._request("POST", f"/tenants/{quote(tenant, safe='')}/pause", body=body)

    async def resume_tenant(self, tenant: str, reason: str | None = None) -> Any:
        body = {"reason": reason} if reason else {}
        return await self._request("POST", f"/tenants/{quote(tenant, safe='')}/resume", body=body)

    async def abort(self, rid: str, reason: str | None = None) -> Any:
        body = {"reason": reason} if reason else {}
        return await self._request("POST", f"/requests/{quote(rid, safe='')}/abort", body=body)

    # -- live events ------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Yield events from `/admin/v1/events` until the server closes the stream.

        Raises `Unauthorized`, `ApiError` or `Unreachable` like the other calls; a stream that
        ends or stalls for `events_read_timeout` seconds (the server sends a keepalive every 15 s)
        raises `Unreachable`, so callers simply reconnect.
        """
        session = self._get_session()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.events_read_timeout
        )
        try:
            async with session.get(
                self._url("/events"), timeout=timeout, headers={"Accept": "text/event-stream"}
            ) as resp:
                await self._raise_for(resp)
                block: list[str] = []
                while True:
                    raw = await resp.content.readline()
                    if not raw:
                        break
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if line:
                        block.append(line)
                        continue
                    event = parse_sse_lines(block)
                    block = []
                    if event is not None:
                        yield event
        except AdminError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_describe(exc)) from exc
        raise Unreachable("event stream closed by the server")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc)
    return text or type(exc).__name__
