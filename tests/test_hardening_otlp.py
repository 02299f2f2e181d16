"""Issue 9 item 2: one OTLP POST cannot stall the gateway.

A ~40 KB gzip body expanding to 400,000 spans froze the gateway's event loop for seconds
(decompressed, decoded and converted on it). Now: decoding runs off the loop, a request's spans
past `otlp_max_spans` are only counted (partial success), decodes at a time are capped (503 +
Retry-After past the cap), a token guards the receiver (required by default beyond loopback), and
`[telemetry] otlp_receiver_port` gives it a listener of its own.
"""
from __future__ import annotations

import gzip
import time

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from controlplane.config import TelemetryConfig
from sluice.server import create_app, otlp_receiver
from telemetry import queries
from telemetry.otlp_decode import decode_protobuf
from telemetry.otlp_receiver import OtlpReceiver, response_summary
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import make_config
from tests.servers import ServerThread, free_port
from tests.test_gateway import raw, wait_until
from tests.test_hardening_loop import STALL_BOUND_S, Ticker
from tests.test_telemetry_otlp import PB, make_request, span

SPANS = 400_000


def bomb() -> bytes:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for _ in range(SPANS):
        s = ss.spans.add()
        s.trace_id, s.span_id, s.name = b"\x01" * 16, b"\x02" * 8, "x"
    return gzip.compress(req.SerializeToString(), 9)


@pytest.fixture
def gateway(tmp_path):
    config = make_config(tmp_path, ["fake"])
    config.server.max_body_bytes = 1 << 20
    app, sluice = create_app(config, {"fake": FakeEngine(delay=0.001)})
    with ServerThread(app) as server:
        yield server, app


def test_a_span_bomb_does_not_stall_the_gateway(gateway):
    server, app = gateway
    body = bomb()
    assert len(body) < 200_000
    ticker = Ticker(app.state.loop)
    t0 = time.perf_counter()
    status, headers, out = raw(server, "POST", "/v1/traces", body, {"Content-Type": PB, "Content-Encoding": "gzip"})
    took = time.perf_counter() - t0
    worst = ticker.stop()
    summary = response_summary(status, headers, out)
    assert status == 200 and summary["rejected"] == SPANS - 10_000, summary
    assert "past the limit of 10000" in summary["message"]
    print(f"span bomb: {took:.2f} s to answer, worst loop stall {worst * 1e3:.1f} ms")
    assert worst < STALL_BOUND_S
    assert raw(server, "GET", "/health")[0] == 200
    store = app.state.telemetry.store
    store.flush()
    assert store.cursor().execute("SELECT count(*) FROM spans WHERE trace_id = ?", ["01" * 16]).fetchone()[0] == 10_000


def test_decoding_is_capped_per_request_and_counted():
    req = make_request([span(span_id=(i + 1).to_bytes(8, "big")) for i in range(25)])
    groups, total = decode_protobuf(req.SerializeToString(), 10)
    assert total == 25 and sum(len(g[2]) for g in groups) == 10
    rows = []
    receiver = OtlpReceiver(lambda r, e: rows.extend(r) or True, max_spans=10)
    status, headers, out = receiver.handle(req.SerializeToString(), PB)
    assert status == 200 and response_summary(status, headers, out)["rejected"] == 15 and len(rows) == 10


def test_concurrent_decodes_are_capped_with_a_retryable_503(gateway):
    server, app = gateway
    receiver = app.state.telemetry.receiver
    held = [receiver.try_acquire() for _ in range(receiver.max_concurrent)]  # every decode slot is busy
    try:
        status, headers, out = raw(server, "POST", "/v1/traces", make_request([span()]).SerializeToString(),
                                   {"Content-Type": PB})
        assert status == 503 and headers["retry-after"] == "1"
        assert response_summary(status, headers, out)["code"] == 14  # UNAVAILABLE
    finally:
        for ok in held:
            if ok:
                receiver.release()
    assert raw(server, "POST", "/v1/traces", make_request([span()]).SerializeToString(),
               {"Content-Type": PB})[0] == 200


@pytest.mark.parametrize("auth,host,token,required,closed", [
    ("auto", "127.0.0.1", None, False, False),   # loopback, no token: open, as before
    ("auto", "0.0.0.0", None, True, True),       # beyond loopback, no token: refuses everything
    ("auto", "0.0.0.0", "tok", True, False),
    ("auto", "127.0.0.1", "tok", True, False),   # a configured token is always required
    ("token", "127.0.0.1", None, True, True),
    ("none", "0.0.0.0", "tok", False, False),    # explicitly open
])
def test_the_token_is_on_by_default_beyond_loopback(tmp_path, monkeypatch, auth, host, token, required, closed):
    config = make_config(tmp_path, ["fake"])
    config.server.host = host
    config.telemetry = TelemetryConfig(otlp_receiver_auth=auth)
    if token:
        monkeypatch.setenv("SLUICE_OTLP_TOKEN", token)
    else:
        monkeypatch.delenv("SLUICE_OTLP_TOKEN", raising=False)
    receiver, warning = otlp_receiver(config, None)
    assert receiver.require_token is required and (warning is not None) is closed
    if closed:
        status, _, out = receiver.authorize(f"Bearer {token or 'x'}", PB)
        assert status == 401 and "no token is configured" in response_summary(status, {"content-type": PB}, out)[
            "message"]


def test_own_listener_with_a_token_and_the_real_exporter(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_OTLP_TOKEN", "otlp-secret")
    config = make_config(tmp_path, ["fake"])
    port = free_port()
    config.telemetry = TelemetryConfig(otlp_receiver_port=port)
    app, _ = create_app(config, {"fake": FakeEngine()})
    with ServerThread(app) as server:
        url = f"http://127.0.0.1:{port}/v1/traces"
        # the serve port no longer takes spans: the receiver has its own listener
        assert raw(server, "POST", "/v1/traces", make_request([span()]).SerializeToString(),
                   {"Content-Type": PB})[0] == 404

        def export(headers):
            provider = TracerProvider(resource=Resource.create({"service.name": "sglang"}))
            exporter = OTLPSpanExporter(endpoint=url, headers=headers, timeout=5)
            results = []

            class Tap(SimpleSpanProcessor):
                def on_end(self, s):
                    results.append(exporter.export([s]))

            provider.add_span_processor(Tap(exporter))
            with provider.get_tracer("t").start_as_current_span(" Req 1234abcd"):
                pass
            return results[0]

        assert export({}) == SpanExportResult.FAILURE  # 401: no token
        assert export({"Authorization": "Bearer wrong"}) == SpanExportResult.FAILURE
        assert export({"authorization": "bearer otlp-secret"}) == SpanExportResult.SUCCESS
        store = app.state.telemetry.store
        wait_until(lambda: store.flush() and [r["version"] for r in queries.policy_timeline(store)] == [1] and
                   store.cursor().execute("SELECT count(*) FROM spans WHERE service = 'sglang'").fetchone()[0] == 1)
        assert app.state.telemetry.receiver.stats.responses[401] == 2
