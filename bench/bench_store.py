"""Ingest throughput of the DuckDB store: spans/s and request rows/s in batches.

    .venv/bin/python bench/bench_store.py [--spans 200000] [--requests 100000] [--batch 1000]

Measures the store's own path: rows queued by record_spans/record_request, written by the one
writer thread as Arrow batches; the clock stops when flush() returns (all rows committed).
Also measures the conversion of SDK spans to rows (tracing.spans_to_rows) separately.
Target (DESIGN.md): >= 100,000 spans/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from telemetry.store import Store  # noqa: E402


def span_rows(n: int, start: int = 0) -> tuple[list[dict], list[dict]]:
    rows, events = [], []
    for i in range(start, start + n):
        tid = f"{i // 8:032x}"
        rows.append({
            "trace_id": tid, "span_id": f"{i + 1:016x}", "parent_span_id": f"{i:016x}" if i % 8 else None,
            "name": "decode_forward" if i % 8 else " Req 1a2b3c4d", "kind": "INTERNAL", "service": "sglang",
            "scope": "sglang server", "start_ts": 1.7e9 + i * 1e-3, "end_ts": 1.7e9 + i * 1e-3 + 0.05,
            "status_code": "UNSET", "status_message": None,
            "attributes": '{"rid":"1a2b3c4d","gen_ai.usage.input_tokens":812,"gen_ai.usage.output_tokens":140}',
            "resource": '{"service.name":"sglang"}', "links": None,
        })
        if i % 4 == 0:
            events.append({"trace_id": tid, "span_id": f"{i + 1:016x}", "ts": 1.7e9 + i * 1e-3, "name": "schedule",
                           "attributes": '{"batch":4}'})
    return rows, events


def request_row(i: int) -> dict:
    return {
        "rid": f"r{i}", "trace_id": f"{i:032x}", "tenant": f"t{i % 50}", "slo_class": "interactive", "model": "m",
        "engine": "sim-0", "stream": True, "status": "ok", "http_status": 200, "decision": "admit", "reason": "fits",
        "finish_reason": "stop", "arrival_ts": 1.7e9 + i, "dispatch_ts": 1.7e9 + i + 0.01,
        "first_token_ts": 1.7e9 + i + 0.1, "finish_ts": 1.7e9 + i + 2.0, "queue_ms": 10.0, "ttft_ms": 100.0,
        "tpot_ms": 20.0, "e2e_ms": 2000.0, "prompt_tokens": 812, "cached_tokens": 512, "completion_tokens": 140,
        "max_tokens": 256, "predicted_output_tokens": 130.0, "predicted_ttft_ms": 90.0, "predicted_tpot_ms": 21.0,
        "policy_version": 1, "slo_met": True,
    }


def bench_spans(path: str, total: int, batch: int) -> float:
    pre = [span_rows(batch, k) for k in range(0, total, batch)]  # build outside the clock
    with Store(path, flush_interval_s=0.2, max_pending_spans=total * 2, batch_rows=50_000) as store:
        t0 = time.perf_counter()
        for rows, events in pre:
            store.record_spans(rows, events)
        assert store.flush(120)
        dt = time.perf_counter() - t0
        st = store.stats()
        assert st["written"]["spans"] == total and st["dropped"]["spans"] == 0, st
    return total / dt


def bench_requests(path: str, total: int) -> float:
    rows = [request_row(i) for i in range(total)]
    with Store(path, flush_interval_s=0.2, max_pending=total * 2, batch_rows=50_000) as store:
        t0 = time.perf_counter()
        for r in rows:  # one call per request, as the gateway does (includes per-row coercion)
            store.record_request(r)
        assert store.flush(120)
        dt = time.perf_counter() - t0
        assert store.stats()["written"]["requests"] == total
    return total / dt


def bench_sdk_conversion(total: int) -> float:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from telemetry.tracing import spans_to_rows

    mem = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "sluice"}))
    provider.add_span_processor(SimpleSpanProcessor(mem))
    tracer = provider.get_tracer("bench")
    for i in range(total):
        with tracer.start_as_current_span("chat m") as s:
            s.set_attributes({"sluice.tenant": f"t{i % 50}", "gen_ai.request.model": "m",
                              "gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 140})
    spans = mem.get_finished_spans()
    t0 = time.perf_counter()
    spans_to_rows(spans)
    return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000, help="spans per record_spans call")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sps = bench_spans(os.path.join(d, "spans.duckdb"), args.spans, args.batch)
        rps = bench_requests(os.path.join(d, "req.duckdb"), args.requests)
    conv = bench_sdk_conversion(min(args.spans, 50_000))
    print(f"spans into DuckDB:       {sps:>12,.0f} spans/s  ({args.spans:,} spans, {args.batch}/call, +25% events)")
    print(f"request rows into DuckDB:{rps:>12,.0f} rows/s   ({args.requests:,} rows, one record_request each)")
    print(f"SDK span -> row convert: {conv:>12,.0f} spans/s")
    print("target >= 100,000 spans/s:", "met" if sps >= 100_000 else "NOT met")


if __name__ == "__main__":
    main()
