"""Issue 9 item 4: header and body read timeouts and a connection cap.

A connection with partial headers stayed open over 40 s, a partial body over 70 s, and 3,000 such
connections were all held. The serve port (and the OTLP receiver's own listener) now answer 408
and close when a request's headers or body do not arrive in time, and refuse connections past
`max_connections` with 503. The waits below are bounded socket timeouts, not timing assertions:
on the old code the reads simply never see an answer.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest
import uvicorn

from controlplane.config import ConfigError, ServerConfig
from sluice.server import create_app, uvicorn_config
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.servers import free_port
from tests.test_gateway import wait_until


@contextlib.contextmanager
def serving(tmp_path, **server):
    """`sluice serve`'s own uvicorn settings (uvicorn_config), on loopback."""
    config = make_config(tmp_path, ["fake"])
    for key, value in server.items():
        setattr(config.server, key, value)
    engine = FakeEngine(delay=0.05)
    app, sluice = create_app(config, {"fake": engine})
    port = free_port()
    srv = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, config))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    wait_until(lambda: srv.started, timeout=30)
    try:
        yield port, sluice
    finally:
        srv.should_exit = True
        thread.join(timeout=15)


def read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the server closes the connection (socket.timeout if it never does)."""
    sock.settimeout(timeout)
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk


def response(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_partial_headers_get_408_and_the_connection_closes(tmp_path):
    with serving(tmp_path, header_timeout_s=0.5) as (port, _):
        with connect(port) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            status, body = response(read_all(s))
        assert status == 408 and body["error"]["code"] == "request_timeout"
        with connect(port) as s:  # a connection that sends nothing at all is closed too
            assert response(read_all(s))[0] == 408


def test_a_partial_body_gets_408_closes_and_leaves_nothing_behind(tmp_path):
    with serving(tmp_path, body_timeout_s=0.5) as (port, sluice):
        for method, path, key in (("POST", "/v1/chat/completions", KEYS["acme"]), ("PATCH", "/admin/v1/policy", ADMIN),
                                  ("POST", "/v1/traces", "")):
            with connect(port) as s:
                s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n".encode()
                          + b'{"model": "sluice-')
                status, body = response(read_all(s))
            assert status == 408 and "body" in body["error"]["message"]
        assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0 and not sluice.tickets


def test_deadlines_cover_receiving_the_request_not_a_long_streamed_response(tmp_path):
    with serving(tmp_path, header_timeout_s=0.3, body_timeout_s=0.3) as (port, sluice):
        with connect(port) as s:
            body = json.dumps({"model": "sluice-default", "prompt": "x", "max_tokens": 20, "stream": True}).encode()
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      f"Authorization: Bearer {KEYS['acme']}\r\nConnection: close\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            t0 = time.monotonic()
            data = read_all(s)
            assert time.monotonic() - t0 > 0.6  # 20 tokens at 50 ms: longer than both deadlines
        assert data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data and data.endswith(b"\r\n0\r\n\r\n")
        # a kept-alive connection serves a second request after a pause shorter than keep-alive
        with connect(port) as s:
            req = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.sendall(req)
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(0.5)  # idle between requests: keep-alive's business (5 s), not the header deadline
            s.sendall(req)
            assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_connections_past_the_cap_are_refused_with_503(tmp_path):
    with serving(tmp_path, max_connections=5, header_timeout_s=30) as (port, _):
        held = [connect(port) for _ in range(5)]
        try:
            # no wait: the server accepts in order, so the 6th connection finds the 5 open
            with connect(port) as extra:
                status, body = response(read_all(extra))
            assert status == 503 and body["error"]["code"] == "too_many_connections"
        finally:
            for s in held:
                s.close()

        def served() -> bool:  # room again, once the server has seen the 5 go
            with connect(port) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return read_all(s).startswith(b"HTTP/1.1 200")

        wait_until(served)


@pytest.mark.parametrize("key,value", [("header_timeout_s", 0), ("body_timeout_s", -1), ("max_connections", 0),
                                       ("keep_alive_timeout_s", "5")])
def test_bad_limits_are_configuration_errors(key, value):
    from controlplane.config import Config

    with pytest.raises(ConfigError, match=key):
        Config(server=ServerConfig(**{key: value}))
