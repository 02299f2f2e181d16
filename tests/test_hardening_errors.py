"""Issue 9 items 10 and 11: an engine failure as the tenant sees it and as the operator records it.

The tenant gets a stable message and the request id to quote (in the message and in
`x-request-id`), never the engine's address or exception text; the request's row and span hold
that detail. A stream that had its 200 when the engine failed is recorded as 200 with the in-band
error's code, not as the 502 it never got.
"""
from __future__ import annotations

import json

from engine_adapter.base import EngineError
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, running_gateway
from tests.test_gateway import raw, wait_until

DETAIL = "sim-0: POST http://10.1.2.3:30000/generate: ConnectionResetError(104, 'Connection reset by peer')"
INTERNALS = ("10.1.2.3", "30000", "ConnectionResetError", "Connection reset", "fake", "sim-0")


class LeakyEngine(FakeEngine):
    """Dies after two tokens with an error that names its address and the exception."""

    def __init__(self) -> None:
        super().__init__(die_after=2)

    async def submit(self, request):  # type: ignore[override]
        try:
            async for chunk in super().submit(request):
                yield chunk
        except EngineError:
            raise EngineError(DETAIL) from None


def _request(server, stream: bool):
    return raw(server, "POST", "/v1/completions", {"model": "sluice-default", "prompt": "x", "max_tokens": 20,
                                                   "stream": stream}, {"Authorization": f"Bearer {KEYS['acme']}"})


def _row(sluice, rid):
    wait_until(lambda: any(r["rid"] == rid for r in sluice.stats.requests))
    return next(r for r in sluice.stats.requests if r["rid"] == rid)


def _stable(message: str, rid: str) -> None:
    assert rid in message, message
    assert not [s for s in INTERNALS if s in message], message


def test_engine_failure_hides_internals_from_the_tenant_and_keeps_them_for_the_operator(tmp_path):
    with running_gateway(tmp_path, {"fake": LeakyEngine()}) as (server, sluice):
        status, headers, data = _request(server, stream=False)
        rid = headers["x-request-id"]
        err = json.loads(data)["error"]
        assert status == 502 and err["code"] == "engine_error" and err["type"] == "server_error"
        _stable(err["message"], rid)
        row = _row(sluice, rid)
        assert (row["status"], row["http_status"], row["error_code"]) == ("error", 502, "engine_error")
        assert DETAIL in row["error"]

        def roots():  # spans reach the store in the span processor's batches
            status, _, data = raw(server, "GET", f"/admin/v1/requests/{rid}/trace",
                                  headers={"Authorization": f"Bearer {ADMIN}"})
            assert status == 200
            return [s for s in json.loads(data)["spans"] if s["parent_span_id"] is None]

        wait_until(roots, timeout=30)
        [root] = roots()
        assert root["status_code"] == "ERROR" and DETAIL in root["status_message"]

        wait_until(lambda: sluice.pool.core.engines["fake"].healthy)  # out of rotation until its next load poll
        status, headers, data = _request(server, stream=True)
        rid = headers["x-request-id"]
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["code"] == "engine_error"
        _stable(err["message"], rid)
        row = _row(sluice, rid)
        # what the client received: a 200 whose stream ended in an engine_error event
        assert (row["status"], row["http_status"], row["error_code"]) == ("error", 200, "engine_error")
        assert DETAIL in row["error"]


class RefusingEngine(FakeEngine):
    """Refuses every request as SGLang's HTTP layer does a request it finds invalid (a 400)."""

    async def submit(self, request):  # type: ignore[override]
        raise EngineError("sim-0: HTTP 400: The input (140000 tokens) is longer than the model's context length",
                          status_code=400, retryable=False,
                          client_message="The input (140000 tokens) is longer than the model's context length")
        yield  # pragma: no cover - an async generator that raises on its first step


def test_an_engine_refusal_tells_the_tenant_what_is_wrong_with_the_request(tmp_path):
    """A 4xx from the engine is about the request: its reason is passed on (the engine's name is not),
    so the tenant can fix the request instead of retrying it."""
    with running_gateway(tmp_path, {"fake": RefusingEngine()}) as (server, sluice):
        status, headers, data = _request(server, stream=False)
        rid = headers["x-request-id"]
        err = json.loads(data)["error"]
        assert status == 400 and err["code"] == "engine_error"
        assert "longer than the model's context length" in err["message"], err
        _stable(err["message"], rid)
        assert "retry-after" not in headers
        assert _row(sluice, rid)["http_status"] == 400
