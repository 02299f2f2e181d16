"""sluice's own spans: the provider, sampling, traceparent, attributes, export to store and OTLP."""

from __future__ import annotations

import json
import re
import threading

import pytest
from opentelemetry import trace as trace_api
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from telemetry import queries
from telemetry.otlp_receiver import OtlpServer
from telemetry.store import Store
from telemetry.tracing import GenAI, Sluice, annotate_request_span, setup_tracing, traceparent_of

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def sampled(header):
    return int(header[-2:], 16) & 1 == 1



@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "tr.duckdb", flush_interval_s=0.05)
    yield s
    s.close()


def test_spans_reach_the_store_with_genai_and_sluice_attributes(store):
    provider = setup_tracing("sluice-test", store=store, schedule_delay_millis=50)
    tracer = provider.get_tracer("gateway")
    row = {"rid": "req-1", "tenant": "acme", "slo_class": "interactive", "model": "llama", "engine": "sim-0",
           "status": "ok", "decision": "admit", "reason": "fits", "policy_version": 3, "prompt_tokens": 12,
           "completion_tokens": 5, "max_tokens": 64, "ttft_ms": 120.0, "finish_reason": "stop",
           "predicted_ttft_ms": 100.0, "predicted_tpot_ms": 20.0, "predicted_output_tokens": 6.0}
    with tracer.start_as_current_span("chat llama", kind=SpanKind.SERVER) as root:
        root.set_attribute(GenAI.OPERATION_NAME, "chat")
        with tracer.start_as_current_span("queue") as child:
            child.add_event("dispatched", {"engine": "sim-0"})
        annotate_request_span(root, row)
        header = traceparent_of(root)
    provider.force_flush()
    provider.shutdown()
    store.flush()
    trace_id = header.split("-")[1]
    t = queries.trace(store, trace_id)
    names = [s["name"] for s in t["spans"]]
    assert names == ["chat llama", "queue"]
    root_row, child_row = t["spans"]
    assert root_row["kind"] == "SERVER" and root_row["service"] == "sluice-test"
    assert root_row["parent_span_id"] is None and child_row["parent_span_id"] == root_row["span_id"]
    assert root_row["span_id"] == header.split("-")[2]
    assert child_row["depth"] == 1 and child_row["events"][0]["name"] == "dispatched"
    a = root_row["attributes"]
    assert a[GenAI.OPERATION_NAME] == "chat" and a[GenAI.REQUEST_MODEL] == "llama"
    assert a[GenAI.USAGE_INPUT_TOKENS] == 12 and a[GenAI.USAGE_OUTPUT_TOKENS] == 5
    assert a[GenAI.RESPONSE_FINISH_REASONS] == ["stop"] and a[GenAI.RESPONSE_ID] == "req-1"
    assert a[Sluice.TENANT] == "acme" and a[Sluice.POLICY_VERSION] == 3
    assert a[Sluice.PREDICTED_TTFT_MS] == 100.0 and a[Sluice.DECISION] == "admit"
    assert root_row["resource"]["service.name"] == "sluice-test"


def test_rejected_request_marks_the_span_as_error(store):
    provider = setup_tracing(store=store)
    with provider.get_tracer("g").start_as_current_span("chat m") as span:
        annotate_request_span(span, {"rid": "r", "status": "rejected", "reason": "slo_unattainable"})
    provider.shutdown()
    store.flush()
    cur = store.cursor()
    status, attrs = cur.execute("SELECT status_code, attributes FROM spans").fetchone()
    assert status == "ERROR" and json.loads(attrs)[GenAI.ERROR_TYPE] == "slo_unattainable"


def test_traceparent_format_and_sampling():
    provider = setup_tracing(sample_ratio=0.0)
    tracer = provider.get_tracer("g")
    with tracer.start_as_current_span("unsampled") as span:
        assert not span.is_recording()
        header = traceparent_of(span)
        assert TRACEPARENT.match(header) and not sampled(header)
    # parent-based: a sampled caller is honoured even at ratio 0
    parent = SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    ctx = trace_api.set_span_in_context(NonRecordingSpan(parent))
    with tracer.start_as_current_span("child", context=ctx) as span:
        assert span.is_recording()
        header = traceparent_of(span)
        assert header.startswith("00-00000000000000000000000000000abc-") and sampled(header)
    assert traceparent_of(trace_api.INVALID_SPAN) is None
    provider.shutdown()


def test_two_providers_are_independent(store):
    a = setup_tracing("a", store=store)
    b = setup_tracing("b", sample_ratio=0.0, store=store)
    with a.get_tracer("t").start_as_current_span("x"):
        pass
    with b.get_tracer("t").start_as_current_span("y"):
        pass
    a.shutdown()
    b.shutdown()
    store.flush()
    assert store.cursor().execute("SELECT service, name FROM spans").fetchall() == [("a", "x")]


def test_setup_rejects_bad_settings():
    with pytest.raises(ValueError):
        setup_tracing(sample_ratio=1.5)
    with pytest.raises(ValueError):
        setup_tracing(otlp_endpoint="localhost:4318")


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_otlp_export_reaches_our_own_receiver(compression):
    received: list[dict] = []
    lock = threading.Lock()

    def sink(rows, events):
        with lock:
            received.extend(rows)
        return True

    with OtlpServer(sink, port=0) as server:
        provider = setup_tracing("exported", otlp_endpoint=server.url, otlp_compression=compression,
                                 schedule_delay_millis=50)
        with provider.get_tracer("g").start_as_current_span("chat m", kind=SpanKind.SERVER) as span:
            span.set_attribute(GenAI.REQUEST_MODEL, "m")
            span.set_attribute(Sluice.TENANT, "acme")
        assert provider.force_flush(10_000)
        provider.shutdown()
    assert len(received) == 1
    row = received[0]
    assert row["name"] == "chat m" and row["service"] == "exported" and row["kind"] == "SERVER"
    assert json.loads(row["attributes"])[Sluice.TENANT] == "acme"


def test_a_span_built_whole_is_the_row_the_sdk_span_would_make():
    """`emit` writes its row straight to the store and hands an SDK span to the exporters; the row
    must be what the store's exporter makes of that span (one shape, whichever way it came)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult, SimpleSpanProcessor

    from telemetry.tracing import spans_to_rows

    class Sink:
        rows, events = [], []

        def record_spans(self, rows, events=None):
            self.rows += rows
            self.events += events or []
            return True

    class Keep(SpanExporter):
        spans = []

        def export(self, spans):
            self.spans += spans
            return SpanExportResult.SUCCESS

    provider = setup_tracing("whole", sample_ratio=1.0)
    provider.store = sink = Sink()
    provider.add_exporting_processor(SimpleSpanProcessor(keep := Keep()))
    trace_id, root, _ = provider.new_trace("chat m", SpanKind.SERVER)
    child = provider.new_span_id()
    provider.emit("engine generate", trace_id, child, root, SpanKind.CLIENT, 1_000_000_000, 3_000_000_000,
                  {Sluice.ENGINE: "sim-0", GenAI.USAGE_INPUT_TOKENS: 12}, (("first_token", 2_000_000_000, {}),))
    provider.emit("chat m", trace_id, root, None, SpanKind.SERVER, 500_000_000, 3_000_000_000,
                  {GenAI.RESPONSE_ID: "r1", GenAI.RESPONSE_FINISH_REASONS: ("stop",)},
                  (("admission", 600_000_000, {Sluice.DECISION: "admit"}),), error="engine_error")
    rows, events = spans_to_rows(keep.spans)
    assert sink.rows == rows and sink.events == events
    assert [r["status_code"] for r in rows] == ["UNSET", "ERROR"] and rows[0]["parent_span_id"] == rows[1]["span_id"]
    provider.shutdown()
