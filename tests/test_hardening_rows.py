"""Issue 9 item 10: every authenticated request leaves exactly one row, with what its client received.

A mix of requests (served, refused before admission for every kind of bad input, refused by the
policy, gone while sending its body, unauthenticated) goes through a real gateway; after shutdown
the DuckDB file holds one row per authenticated request whose `http_status` and `error_code` are
what that client saw, and `sluice_refusals_total` counts the refusals by reason, the
unauthenticated ones included (they have no row: no tenant to charge it to).
"""
from __future__ import annotations

import collections
import json
import socket

from prometheus_client.parser import text_string_to_metric_families

from telemetry.store import open_read_only
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, running_gateway
from tests.test_gateway import raw, wait_until

OK = {"model": "sluice-default", "prompt": "x", "max_tokens": 3}


def _auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


def _admin(server, method, path, body=None):
    status, _, data = raw(server, method, path, body or {}, {"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, data


def _half_body_then_leave(server) -> None:
    """Headers announcing 1,000 bytes of body, 10 sent, then the connection closes."""
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Authorization: Bearer {KEYS['acme']}\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"model": ')


def test_every_authenticated_request_leaves_one_row_with_what_its_client_received(tmp_path):
    cases = [  # (tenant or None, body, extra headers)
        ("acme", OK, None),
        ("acme", {**OK, "stream": True}, None),
        ("acme", b"{not json", None),
        ("acme", {**OK, "best_of": 3}, None),
        ("acme", {**OK, "max_tokens": -1}, None),
        ("acme", {**OK, "model": "gpt-nope"}, None),
        ("acme", {**OK, "prompt": "x" * 100_000}, None),
        ("acme", OK, {"Content-Type": "text/plain"}),
        (None, OK, {"Authorization": "Bearer sk-wrong"}),
        (None, OK, {"Authorization": ""}),
    ]
    sent: list[tuple[str | None, int, str | None, str | None]] = []  # tenant, status, code, x-request-id

    def send(tenant, body, headers=None):
        status, hdrs, data = raw(server, "POST", "/v1/completions", body, {**_auth(tenant or "acme"),
                                                                          **(headers or {})})
        code = json.loads(data)["error"]["code"] if status >= 400 else None
        sent.append((tenant, status, code, hdrs.get("x-request-id")))
        return status

    with running_gateway(tmp_path, {"fake": FakeEngine()}) as (server, sluice):
        for tenant, body, headers in cases:
            send(tenant, body, headers)
        _admin(server, "POST", "/admin/v1/tenants/globex/pause")
        assert send("globex", OK) == 429
        _admin(server, "PATCH", "/admin/v1/policy", {"reason": "test", "changes": {
            "tenants": {"acme": {"rate_limit_rps": 1e-6}}}})
        statuses = [send("acme", OK) for _ in range(4)]
        assert 429 in statuses
        rows_before = len(sluice.stats.requests)
        _half_body_then_leave(server)
        wait_until(lambda: len(sluice.stats.requests) == rows_before + 1)
        _, _, metrics = raw(server, "GET", "/metrics")
        db_path = sluice.config.server.db_path

    # what the clients saw: every error status, every code, an id for every authenticated request
    assert {s for _, s, _, _ in sent} >= {200, 400, 401, 404, 413, 415, 429}
    assert {c for *_, c, _ in sent} >= {"invalid_json", "invalid_value", "unsupported_value", "model_not_found",
                                        "body_too_large", "unsupported_media_type", "invalid_api_key",
                                        "tenant_paused", "rate_limited_requests"}
    assert all((rid is None) == (tenant is None) for tenant, _, _, rid in sent)

    with open_read_only(db_path) as db:
        rows = {r[0]: r[1:] for r in db.execute(
            "SELECT rid, tenant, http_status, error_code, status, error FROM requests").fetchall()}
    authenticated = [s for s in sent if s[0] is not None]
    assert len(rows) == len(authenticated) + 1  # + the client gone while sending its body
    for tenant, status, code, rid in authenticated:
        assert rows.pop(rid)[:3] == (tenant, status, code)
    [gone] = rows.values()
    assert gone == ("acme", 499, None, "aborted", "client_disconnected")

    counted = {(s.labels["reason"], s.labels["http_status"]): s.value
               for f in text_string_to_metric_families(metrics.decode()) if f.name == "sluice_refusals"
               for s in f.samples if s.name == "sluice_refusals_total"}
    expected = collections.Counter((code, str(status)) for _, status, code, _ in sent if status >= 400)
    assert counted == expected
    # the serving loop's lag is measured (bench/bench_soak.py reads it): a ticker has been observing
    [lag] = [s.value for f in text_string_to_metric_families(metrics.decode())
             for s in f.samples if s.name == "sluice_event_loop_lag_seconds_count"]
    assert lag > 0


def test_a_body_that_times_out_is_recorded_as_the_408_its_client_got(tmp_path):
    from tests.test_hardening_http import connect, read_all, response, serving

    with serving(tmp_path, body_timeout_s=0.5) as (port, sluice):
        with connect(port) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {KEYS['acme']}\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"model": ')
            status, body = response(read_all(s))
        assert status == 408
        wait_until(lambda: sluice.stats.requests)
        [row] = sluice.stats.requests
        assert (row["tenant"], row["http_status"], row["error_code"], row["status"]) == \
            ("acme", 408, "request_timeout", "rejected")
