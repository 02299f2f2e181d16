"""Spans/s accepted by the OTLP/HTTP receiver from the real OTLPSpanExporter, into the store.

    .venv/bin/python bench/bench_otlp.py [--spans 50000] [--batch 512] [--gzip]

SGLang-shaped spans (root " Req <rid8>" with gen_ai.* usage attributes, children with events)
are made with the SDK beforehand. Two measurements:

* exporter: the real OTLPSpanExporter; the clock covers its encoding and POSTs over loopback, the
  receiver's decoding and conversion, and the store writing every row (flush()). On a small
  machine this is bound by the exporter's own Python encoding, which shares the CPU.
* receiver: the same spans pre-encoded (outside the clock) and POSTed over one keep-alive
  connection: the receiver's capacity (HTTP + decode + convert + store).
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from telemetry.otlp_receiver import OtlpServer  # noqa: E402
from telemetry.store import Store  # noqa: E402


def make_spans(n: int):
    mem = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sglang"}))
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("sglang server")
    made = 0
    while made < n:
        with tracer.start_as_current_span(f" Req {made:08x}") as root:
            root.set_attributes({"rid": f"{made:016x}", "gen_ai.usage.prompt_tokens": 812,
                                 "gen_ai.usage.completion_tokens": 140, "gen_ai.usage.cached_tokens": 512,
                                 "gen_ai.response.finish_reasons": '["stop"]'})
            with tracer.start_as_current_span("Scheduler [TP 0] (host:0a0b0c0d | pid:42)"):
                for stage in ("prefill_waiting", "prefill_forward", "decode_forward"):
                    with tracer.start_as_current_span(stage) as s:
                        s.add_event("schedule", {"batch": 8})
        made += 5
    return mem.get_finished_spans()[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=512, help="spans per export (SGLang uses 64, the SDK 512)")
    ap.add_argument("--gzip", action="store_true")
    args = ap.parse_args()
    spans = make_spans(args.spans)
    with tempfile.TemporaryDirectory() as d:
        exp = run(os.path.join(d, "a.duckdb"), spans, args, via_exporter=True)
        raw = run(os.path.join(d, "b.duckdb"), spans, args, via_exporter=False)
    z = "gzip, " if args.gzip else ""
    for label, (accepted_s, end_s) in (("exporter", exp), ("receiver", raw)):
        print(f"{label:9s} ({z}batch {args.batch}): accepted {accepted_s:>9,.0f} spans/s, "
              f"in DuckDB {end_s:>9,.0f} spans/s")


def run(path: str, spans, args, via_exporter: bool) -> tuple[float, float]:
    store = Store(path, flush_interval_s=0.2, max_pending_spans=len(spans) * 2)
    with OtlpServer(store, port=0) as server:
        if via_exporter:
            exporter = OTLPSpanExporter(endpoint=server.url, compression=Compression.Gzip if args.gzip else None)
            t0 = time.perf_counter()
            for i in range(0, len(spans), args.batch):
                assert exporter.export(spans[i:i + args.batch]) == SpanExportResult.SUCCESS
            t_http = time.perf_counter() - t0
            exporter.shutdown()
        else:
            import gzip

            bodies = [encode_spans(spans[i:i + args.batch]).SerializeToString()
                      for i in range(0, len(spans), args.batch)]
            headers = {"Content-Type": "application/x-protobuf"}
            if args.gzip:
                bodies = [gzip.compress(b, 1) for b in bodies]
                headers["Content-Encoding"] = "gzip"
            conn = http.client.HTTPConnection("127.0.0.1", server.port)
            t0 = time.perf_counter()
            for body in bodies:
                conn.request("POST", "/v1/traces", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200, resp.status
            t_http = time.perf_counter() - t0
            conn.close()
        assert store.flush(120)
        dt = time.perf_counter() - t0
        accepted = server.receiver.stats.spans_accepted
    st = store.stats()
    store.close()
    assert accepted == len(spans) and st["written"]["spans"] == len(spans), (accepted, st)
    return accepted / t_http, accepted / dt


if __name__ == "__main__":
    main()
