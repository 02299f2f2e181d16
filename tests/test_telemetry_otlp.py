"""The OTLP/HTTP receiver: the real exporter over loopback, OTLP-JSON, partial success, bad input."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import urllib.error
import urllib.request

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator

from telemetry import queries
from telemetry.otlp_receiver import (
    OtlpServer,
    handle_otlp_traces,
    response_summary,
)
from telemetry.otlp_rows import MAX_ATTR_CHARS
from telemetry.store import Store

PB = "application/x-protobuf"
JS = "application/json"


class Collect:
    def __init__(self, ok: bool = True) -> None:
        self.rows: list[dict] = []
        self.events: list[dict] = []
        self.ok = ok

    def __call__(self, rows, events):
        if self.ok:
            self.rows += rows
            self.events += events
        return self.ok


def kv(key, **value):
    return KeyValue(key=key, value=AnyValue(**value))


def make_request(spans: list[Span], service: str = "sglang") -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource={"attributes": [kv("service.name", string_value=service)]},
        scope_spans=[ScopeSpans(scope={"name": "sglang server"}, spans=spans)],
    )])


def span(name="s", trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent=b"", attrs=(), **kw) -> Span:
    return Span(name=name, trace_id=trace_id, span_id=span_id, parent_span_id=parent,
                start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_001_000_000_000,
                attributes=list(attrs), **kw)


class SGLangIds(IdGenerator):
    """SGLang's TraceCustomIdGenerator: 64-bit trace ids, so the upper half is zero."""

    def __init__(self) -> None:
        self.rng = random.Random(7)

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.rng.getrandbits(64) or 1


def test_sglang_shaped_spans_from_the_real_exporter_land_in_the_store(tmp_path):
    store = Store(tmp_path / "o.duckdb", flush_interval_s=0.05)
    try:
        with OtlpServer(store, port=0) as server:
            provider = TracerProvider(resource=Resource.create({"service.name": "sglang"}), id_generator=SGLangIds())
            exporter = OTLPSpanExporter(endpoint=server.url)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            tracer = provider.get_tracer("sglang server")
            with tracer.start_as_current_span(" Req 1a2b3c4d") as root:
                root.set_attributes({
                    "rid": "1a2b3c4d5e6f", "module": "sglang::request",
                    "gen_ai.usage.prompt_tokens": 812, "gen_ai.usage.completion_tokens": 140,
                    "gen_ai.usage.cached_tokens": 512, "gen_ai.request.max_tokens": 256,
                    "gen_ai.response.finish_reasons": '["stop"]', "gen_ai.latency.time_to_first_token": 0.08,
                })
                with tracer.start_as_current_span("Scheduler [TP 0] (host:0a0b0c0d | pid:42)"), \
                        tracer.start_as_current_span("prefill_forward") as fwd:
                    fwd.add_event("schedule", {"batch": 4})
            trace_id = f"{root.get_span_context().trace_id:032x}"
            provider.shutdown()
            assert server.receiver.stats.spans_accepted == 3
        store.flush()
        assert trace_id.startswith("0" * 16)
        t = queries.trace(store, trace_id)
        assert [s["name"] for s in t["spans"]] == [" Req 1a2b3c4d", "Scheduler [TP 0] (host:0a0b0c0d | pid:42)",
                                                   "prefill_forward"]
        assert [s["depth"] for s in t["spans"]] == [0, 1, 2]
        a = t["spans"][0]["attributes"]
        assert a["gen_ai.usage.input_tokens"] == 812 and a["gen_ai.usage.output_tokens"] == 140
        assert a["gen_ai.usage.cache_read.input_tokens"] == 512
        assert a["gen_ai.usage.prompt_tokens"] == 812  # the raw legacy key is kept
        assert a["gen_ai.response.finish_reasons"] == ["stop"]
        assert t["spans"][0]["service"] == "sglang" and t["spans"][0]["scope"] == "sglang server"
        assert t["spans"][2]["events"] == [{"name": "schedule", "ts": pytest.approx(t["spans"][2]["events"][0]["ts"]),
                                            "attributes": {"batch": 4}}]
    finally:
        store.close()


def test_protobuf_and_gzip_round_trip():
    sink = Collect()
    body = make_request([span(attrs=[kv("k", int_value=5)])]).SerializeToString()
    status, headers, out = handle_otlp_traces(gzip.compress(body), PB, "gzip", 1 << 20, sink)
    assert status == 200 and headers["content-type"] == PB
    assert response_summary(status, headers, out) == {"status": 200, "rejected": 0, "message": ""}
    r = sink.rows[0]
    assert r["trace_id"] == "01" * 16 and r["span_id"] == "02" * 8 and r["parent_span_id"] is None
    assert r["start_ts"] == pytest.approx(1_700_000_000.0) and json.loads(r["attributes"]) == {"k": 5}


def test_otlp_json_ids_are_hex_not_base64():
    sink = Collect()
    # this 32-char id is valid base64 too: a naive proto3-JSON parse would decode 24 wrong bytes
    tid, sid, pid = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173"
    doc = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "x"}}]},
                              "scopeSpans": [{"scope": {"name": "sc"}, "spans": [{
                                  "traceId": tid, "spanId": sid, "parentSpanId": pid, "name": "j",
                                  "kind": 2, "startTimeUnixNano": "1700000000000000000",
                                  "endTimeUnixNano": 1700000000500000000, "status": {"code": 2, "message": "bad"},
                                  "attributes": [{"key": "n", "value": {"intValue": "7"}}],
                                  "events": [{"timeUnixNano": "1700000000100000000", "name": "ev"}],
                                  "unknownField": True}]}]}]}
    status, headers, out = handle_otlp_traces(json.dumps(doc).encode(), "application/json; charset=utf-8", None,
                                              1 << 20, sink)
    assert status == 200 and headers["content-type"] == JS
    r = sink.rows[0]
    assert (r["trace_id"], r["span_id"], r["parent_span_id"]) == (tid, sid, pid)
    assert r["kind"] == "SERVER" and r["status_code"] == "ERROR" and r["status_message"] == "bad"
    assert json.loads(r["attributes"]) == {"n": 7}
    assert sink.events[0]["name"] == "ev" and sink.events[0]["span_id"] == sid


@pytest.mark.parametrize("media", [PB, JS])
def test_partial_success_for_spans_with_bad_ids(media):
    sink = Collect()
    req = make_request([
        span("good"),
        span("short-trace", trace_id=b"\x01" * 8),
        span("zero-span", span_id=b"\x00" * 8),
        span("bad-parent", parent=b"\x03" * 3),
    ])
    if media == PB:
        body = req.SerializeToString()
    else:
        doc = json_format.MessageToDict(req)
        for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # MessageToDict gives base64; OTLP wants hex
            for k in ("traceId", "spanId", "parentSpanId"):
                if k in s:
                    import base64

                    s[k] = base64.b64decode(s[k]).hex()
        body = json.dumps(doc).encode()
    status, headers, out = handle_otlp_traces(body, media, None, 1 << 20, sink)
    summary = response_summary(status, headers, out)
    assert status == 200 and summary["rejected"] == 3
    assert "trace_id must be 16" in summary["message"] and "short-trace" in summary["message"]
    assert [r["name"] for r in sink.rows] == ["good"]


def test_huge_attribute_values_are_truncated():
    sink = Collect()
    big = "x" * (10 * MAX_ATTR_CHARS)
    req = make_request([span(attrs=[kv("prompt", string_value=big),
                                    kv("list", array_value={"values": [AnyValue(int_value=i) for i in range(5000)]})])])
    status, _, _ = handle_otlp_traces(req.SerializeToString(), PB, None, 1 << 22, sink)
    assert status == 200
    attrs = json.loads(sink.rows[0]["attributes"])
    assert len(attrs["prompt"]) < MAX_ATTR_CHARS + 100 and "truncated" in attrs["prompt"]
    assert len(attrs["list"]) == 256


def test_a_full_store_answers_503_with_retry_after():
    status, headers, out = handle_otlp_traces(make_request([span()]).SerializeToString(), PB, None, 1 << 20,
                                              Collect(ok=False))
    assert status == 503 and headers["retry-after"] == "1"
    assert response_summary(status, headers, out)["code"] == 14  # UNAVAILABLE


def test_gzip_bomb_is_refused_without_inflating_it():
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB -> ~64 KiB
    tracemalloc.start()
    try:
        status, headers, out = handle_otlp_traces(bomb, PB, "gzip", 1 << 20, Collect())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413 and response_summary(status, headers, out)["code"] == 8  # RESOURCE_EXHAUSTED
    assert peak < 8 << 20  # bounded by the limit plus one chunk, not by the bomb


VALID = make_request([span()]).SerializeToString()


BAD_INPUT = [
    (bytes(random.Random(1).getrandbits(8) for _ in range(512)), PB, None, 400),  # random bytes
    (b"\xff\xff\xff\xff\x0f", PB, None, 400),  # invalid wire type
    (VALID[: len(VALID) // 2], PB, None, 400),  # truncated protobuf
    (gzip.compress(VALID)[:-12], PB, "gzip", 400),  # truncated gzip
    (b"not gzip at all", PB, "gzip", 400),
    (VALID, "text/plain", None, 415),
    (VALID, "", None, 415),
    (VALID, PB, "br", 415),
    (b"{not json", JS, None, 400),
    (b"[1, 2, 3]", JS, None, 400),
    (b'{"resourceSpans": "nope"}', JS, None, 400),
    (b"\xff\xfe\x00garbage", JS, None, 400),
    (b"x" * 2048, PB, None, 413),  # over the limit before decompression
    (b"", PB, None, 200),  # an empty request is valid protobuf: nothing to store
]


@pytest.mark.parametrize(("body", "ctype", "encoding", "expected"), BAD_INPUT,
                         ids=[f"{i}-{c or 'none'}-{e}-{x}" for i, (_, c, e, x) in enumerate(BAD_INPUT)])
def test_bad_input_gets_an_otlp_status_and_never_raises(body, ctype, encoding, expected):
    sink = Collect()
    status, headers, out = handle_otlp_traces(body, ctype, encoding, 1024, sink)
    assert status == expected
    summary = response_summary(status, headers, out)
    if expected != 200:
        assert summary["message"]
        assert not sink.rows


def post(url, body, headers, method="POST"):
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_http_server_limits_and_methods():
    sink = Collect()
    with OtlpServer(sink, port=0, max_bytes=4096) as server:
        status, headers, body = post(server.url, VALID, {"Content-Type": PB})
        assert status == 200 and headers["content-type"] == PB
        status, headers, body = post(server.url, b"\0" * 10_000, {"Content-Type": PB})
        assert status == 413
        status, _, _ = post(server.url, gzip.compress(b"\0" * 100_000), {"Content-Type": PB, "Content-Encoding": "gzip"})
        assert status == 413
        status, headers, body = post(server.url, b"{}", {"Content-Type": "text/csv"})
        assert status == 415 and json.loads(body)["message"]
        status, _, _ = post(server.url, None, {}, method="GET")
        assert status == 405
        assert server.receiver.stats.responses[413] == 2
    assert len(sink.rows) == 1
