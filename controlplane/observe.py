"""The recorder: what the serving runtime tells telemetry about each request and decision.

Spans: a SERVER root per request (from arrival), an `admission` child, a `queue` child (arrival
to dispatch) and a CLIENT `engine` child (dispatch to the last chunk) with a `first_token` event;
the engine span's `traceparent` goes to SGLang so its spans join the trace. Rows: one `requests`
row per request (never sampled), one `decisions` row per decision, the policy audit log.
"""
from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import TracerProvider

from controlplane.core.events import Decision
from telemetry.metrics import Metrics
from telemetry.store import Store
from telemetry.tracing import GenAI, annotate_request_span, traceparent_of


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class Recorder:
    def __init__(self, store: Store | None, metrics: Metrics | None, provider: TracerProvider | None) -> None:
        self.store = store
        self.metrics = metrics
        self.provider = provider
        self.tracer = provider.get_tracer("sluice") if provider else trace_api.NoOpTracer()

    # -- spans ---------------------------------------------------------------------------------
    def begin(self, ticket: Any) -> None:
        req = ticket.request
        op = "chat" if req.kind == "chat" else "text_completion"
        root = self.tracer.start_span(f"{op} {req.model}", kind=trace_api.SpanKind.SERVER,
                                      start_time=_ns(ticket.arrival),
                                      attributes={GenAI.OPERATION_NAME: op, GenAI.REQUEST_MODEL: req.model})
        ticket.spans = {"root": root}
        ctx = root.get_span_context()
        if ctx.is_valid:
            ticket.row["trace_id"] = f"{ctx.trace_id:032x}"

    def engine_call(self, ticket: Any) -> str | None:
        """Start the CLIENT span of the engine call; returns its traceparent for the engine."""
        root = ticket.spans["root"]
        span = self.tracer.start_span("engine generate", context=trace_api.set_span_in_context(root),
                                      kind=trace_api.SpanKind.CLIENT, start_time=_ns(ticket.dispatched_at),
                                      attributes={"sluice.engine": ticket.engine, "sluice.rid": ticket.rid})
        ticket.spans["engine"] = span
        return traceparent_of(span)

    def first_token(self, ticket: Any) -> None:
        span = ticket.spans.get("engine")
        if span is not None:
            span.add_event("first_token", timestamp=_ns(ticket.first_token_at))

    # -- end of a request ------------------------------------------------------------------------
    def request_finished(self, ticket: Any, row: dict[str, Any]) -> None:
        spans = getattr(ticket, "spans", None)
        if spans:
            root = spans["root"]
            ctx = trace_api.set_span_in_context(root)
            decided = next((d for d in ticket.decisions if d.kind in ("admit", "defer", "reject")), None)
            if decided is not None:
                adm = self.tracer.start_span("admission", context=ctx, start_time=_ns(ticket.arrival), attributes={
                    "sluice.decision": decided.kind, "sluice.reason": decided.reason,
                    "sluice.policy_version": decided.policy_version,
                    **{f"sluice.predicted.{k}": v for k, v in decided.outputs.items()
                       if k in ("ttft_ms", "tpot_ms", "e2e_ms") and v is not None}})
                adm.end(end_time=_ns(decided.ts))
            if ticket.dispatched_at is not None:
                queue = self.tracer.start_span("queue", context=ctx, start_time=_ns(ticket.arrival))
                queue.end(end_time=_ns(ticket.dispatched_at))
            engine = spans.get("engine")
            if engine is not None:
                engine.set_attributes({GenAI.USAGE_INPUT_TOKENS: row["prompt_tokens"],
                                       GenAI.USAGE_OUTPUT_TOKENS: row["completion_tokens"]})
                engine.end(end_time=_ns(row["finish_ts"]))
            annotate_request_span(root, row)
            root.end(end_time=_ns(row["finish_ts"]))
        if self.store is not None:
            self.store.record_request(row)
        if self.metrics is not None:
            self.metrics.observe_request(row)

    def decision(self, d: Decision) -> None:
        if self.store is not None:
            self.store.record_decision({
                "ts": d.ts, "rid": d.rid, "tenant": d.tenant, "kind": d.kind, "reason": d.reason,
                "engine": d.engine, "policy_version": d.policy_version,
                "inputs": json.dumps(d.inputs, default=str), "outputs": json.dumps(d.outputs, default=str)})
        if self.metrics is not None and d.kind in ("admit", "defer", "reject", "expire"):
            self.metrics.observe_decision(d.kind, d.reason)

    def forecast(self, kind: str, predicted: float, actual: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_forecast(kind, predicted, actual)

    def policy_change(self, record: dict[str, Any]) -> None:
        """Durable before the change takes effect: raises if the audit log cannot be written."""
        if self.store is not None:
            self.store.record_policy_change_now({**record, "before": json.dumps(record["before"]),
                                                 "after": json.dumps(record["after"])})

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes spans into the store before it closes
        if self.store is not None:
            self.store.close()
