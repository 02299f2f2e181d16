"""The recorder: what the serving runtime tells telemetry about each request and decision.

Spans: a SERVER root per request (from arrival to the last byte) and a CLIENT `engine generate`
child (dispatch to the last chunk) with a `first_token` event; the engine span's `traceparent`
goes to SGLang so its spans join the trace. Admission and queueing are events on the root, not
spans of their own: an `admission` event at the decision's time (decision, reason, policy
version, forecasts) and a `dispatch` event when the request leaves sluice's queue (the queue
wait is root start -> `dispatch`, also in `sluice.queue_ms`). A request that is not sampled
costs no span work beyond the root's ids (its traceparent still goes to the engine, unsampled).
Rows: one `requests` row per request (never sampled), one `decisions` row per decision (its
inputs/outputs JSON is encoded on the store's writer thread), the policy audit log.
"""
from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import TracerProvider

from controlplane.core.events import Decision
from telemetry.metrics import Metrics
from telemetry.store import Store
from telemetry.tracing import GenAI, Sluice, annotate_request_span, traceparent_of

_SERVER = trace_api.SpanKind.SERVER
_CLIENT = trace_api.SpanKind.CLIENT
_ADMISSION = ("admit", "defer", "reject")
_PREDICTED = (("ttft_ms", Sluice.PREDICTED_TTFT_MS), ("tpot_ms", Sluice.PREDICTED_TPOT_MS),
              ("e2e_ms", "sluice.predicted.e2e_ms"))


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
        root = self.tracer.start_span(f"{op} {req.model}", kind=_SERVER, start_time=_ns(ticket.arrival))
        ticket.spans = {"root": root}
        if root.is_recording():
            root.set_attributes({GenAI.OPERATION_NAME: op, GenAI.REQUEST_MODEL: req.model})
        ctx = root.get_span_context()
        if ctx.is_valid:
            ticket.row["trace_id"] = f"{ctx.trace_id:032x}"

    def engine_call(self, ticket: Any) -> str | None:
        """Start the CLIENT span of the engine call; returns its traceparent for the engine.

        Not sampled: no child span, the root's own (unsampled) traceparent goes to the engine."""
        root = ticket.spans["root"]
        if not root.is_recording():
            return traceparent_of(root)
        span = self.tracer.start_span("engine generate", context=trace_api.set_span_in_context(root),
                                      kind=_CLIENT, start_time=_ns(ticket.dispatched_at),
                                      attributes={Sluice.ENGINE: ticket.engine, Sluice.RID: ticket.rid})
        ticket.spans["engine"] = span
        return traceparent_of(span)

    def first_token(self, ticket: Any) -> None:
        span = ticket.spans.get("engine")
        if span is not None:
            span.add_event("first_token", timestamp=_ns(ticket.first_token_at))

    # -- end of a request ------------------------------------------------------------------------
    def request_finished(self, ticket: Any, row: dict[str, Any]) -> None:
        spans = ticket.spans
        if spans:
            root = spans["root"]
            if root.is_recording():
                self._end_spans(ticket, root, spans.get("engine"), row)
        if self.store is not None:
            self.store.record_request(row)
        if self.metrics is not None:
            self.metrics.observe_request(row)

    def _end_spans(self, ticket: Any, root: Any, engine: Any, row: dict[str, Any]) -> None:
        for d in ticket.decisions:
            if d.kind in _ADMISSION:
                attrs: dict[str, Any] = {Sluice.DECISION: d.kind, Sluice.REASON: d.reason,
                                         Sluice.POLICY_VERSION: d.policy_version}
                outputs = d.outputs
                for key, attr in _PREDICTED:
                    v = outputs.get(key)
                    if v is not None:
                        attrs[attr] = v
                root.add_event("admission", attrs, _ns(d.ts))
                break
        end = _ns(row["finish_ts"])
        if ticket.dispatched_at is not None:
            root.add_event("dispatch", {Sluice.ENGINE: ticket.engine}, _ns(ticket.dispatched_at))
        if engine is not None:
            engine.set_attributes({GenAI.USAGE_INPUT_TOKENS: row["prompt_tokens"],
                                   GenAI.USAGE_OUTPUT_TOKENS: row["completion_tokens"]})
            engine.end(end_time=end)
        annotate_request_span(root, row)
        root.end(end_time=end)

    def decision(self, d: Decision) -> None:
        if self.store is not None:  # inputs/outputs: fresh dicts from the core, JSON-encoded by the writer
            self.store.record_decision_fresh(d.ts, d.rid, d.tenant, d.kind, d.reason, d.engine, d.policy_version,
                                             d.inputs, d.outputs)
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
