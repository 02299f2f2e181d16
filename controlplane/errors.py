"""Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}.

Below the gateway, the admin API and the runtime (`service.py`), which all raise them. The
decision core refuses with a reason (`Reject.code`); `REFUSAL_STATUS` is the one place that
turns a reason into an HTTP status.
"""
from __future__ import annotations

import json
from typing import Any

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error", 409: "conflict_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error",
          504: "server_error"}

# The HTTP status of each refusal reason. 429 (come back later): the policy refused this request
# now; 503: nothing could serve it (no healthy engine, or an operator aborted it while queued).
REFUSAL_STATUS: dict[str, int] = {
    "tenant_paused": 429,
    "rate_limited_requests": 429,
    "rate_limited_tokens": 429,
    "over_share": 429,
    "ttft_unattainable": 429,
    "tpot_unattainable": 429,
    "protects_running": 429,
    "deadline_unattainable": 429,
    "deadline_expired": 429,  # waited in the queue past its deadline: still the policy's refusal
    "no_healthy_engine": 503,
    "aborted": 503,
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.request_id: str | None = None  # the request's row: `x-request-id`, the id a tenant quotes

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
        if self.request_id is not None:
            headers.append((b"x-request-id", self.request_id.encode()))
        return headers


def refusal(code: str, message: str, retry_after_s: float | None) -> ApiError:
    """The error a refused request gets; a reason the table does not name is a policy refusal (429)."""
    return ApiError(REFUSAL_STATUS.get(code, 429), message, code=code, retry_after=retry_after_s)


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
