"""Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}.

Below the gateway, the admin API and the runtime (`service.py`), which all raise them.
"""
from __future__ import annotations

import json
from typing import Any

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error",
          504: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def to_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(int(max(1, round(self.retry_after)))).encode()))
        if self.status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="sluice"'))
        return headers


def parse_json(raw: bytes | str) -> Any:
    """A request body as JSON, or a 400 `invalid_json` in the usual shape (never a 500).

    Nesting deeper than the parser's limit (about 1,000 levels: `[[[[...`) is refused like any
    other malformed body, not left to escape as a RecursionError.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to be valid JSON here", code="invalid_json") \
            from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
