"""The recorder: what the serving runtime tells telemetry about each request and decision.

Spans: a SERVER root per request (from arrival to the end of the response) and a CLIENT
`engine generate` child (dispatch to the last chunk) with a `first_token` event; the engine
span's `traceparent` goes to SGLang so its spans join the trace. Admission and queueing are
events on the root, not spans of their own: an `admission` event at the decision's time
(decision, reason, policy version, forecasts) and a `dispatch` event when the request leaves
sluice's queue (queue wait = root start -> `dispatch`, also `sluice.queue_ms`).

The spans are built whole when the request ends (`SluiceTracerProvider.emit`): only their ids
and the sampling decision are made on arrival and at dispatch. A request that is not sampled
costs two random ids and a traceparent string (sent to the engine with the sampled flag clear).
Rows: one `requests` row per request (never sampled), one `decisions` row per decision (the
driver's `decision_row`, as replay records it; its inputs/outputs JSON is encoded on the store's
writer thread), the policy audit log.
"""
from __future__ import annotations

import json
from typing import Any

from opentelemetry.trace import SpanKind

from controlplane.core.events import ADMISSION_KINDS, Decision
from controlplane.driver import decision_row
from telemetry.metrics import Metrics
from telemetry.store import Store
from telemetry.tracing import GenAI, Sluice, SluiceTracerProvider, request_span_attributes

# the admission forecast (seconds, as the core gives it) -> span attributes (ms)
_PREDICTED = (("ttft_s", Sluice.PREDICTED_TTFT_MS), ("tpot_s", Sluice.PREDICTED_TPOT_MS),
              ("e2e_s", "sluice.predicted.e2e_ms"))


def _ns(ts: float) -> int:
    return int(ts * 1e9)


class RequestTrace:
    """A request's span ids (its spans are emitted when it ends)."""

    __slots__ = ("trace_id", "root_id", "sampled", "engine_id", "name")

    def __init__(self, trace_id: int, root_id: int, sampled: bool, name: str) -> None:
        self.trace_id, self.root_id, self.sampled, self.name = trace_id, root_id, sampled, name
        self.engine_id: int | None = None

    def traceparent(self, span_id: int) -> str:
        return f"00-{self.trace_id:032x}-{span_id:016x}-{'01' if self.sampled else '00'}"


class Recorder:
    def __init__(self, store: Store | None, metrics: Metrics | None, provider: SluiceTracerProvider | None) -> None:
        self.store = store
        self.metrics = metrics
        self.provider = provider

    # -- spans ---------------------------------------------------------------------------------
    def begin(self, ticket: Any) -> None:
        provider = self.provider
        if provider is None:
            return
        req = ticket.request
        name = f"chat {req.model}" if req.kind == "chat" else f"text_completion {req.model}"
        trace_id, root_id, sampled = provider.new_trace(name, SpanKind.SERVER)
        ticket.spans = RequestTrace(trace_id, root_id, sampled, name)
        ticket.row["trace_id"] = f"{trace_id:032x}"

    def engine_call(self, ticket: Any) -> str | None:
        """The traceparent for the engine: the CLIENT span's when sampled, else the root's, unsampled."""
        tr: RequestTrace | None = ticket.spans
        if tr is None:
            return None
        if not tr.sampled:
            return tr.traceparent(tr.root_id)
        tr.engine_id = self.provider.new_span_id()  # type: ignore[union-attr]
        return tr.traceparent(tr.engine_id)

    def first_token(self, ticket: Any) -> None:
        pass  # the first_token event is built from ticket.first_token_at when the request ends

    # -- end of a request ------------------------------------------------------------------------
    def request_finished(self, ticket: Any, row: dict[str, Any]) -> None:
        tr: RequestTrace | None = ticket.spans
        if tr is not None and tr.sampled:
            self._emit_spans(ticket, tr, row)
        if self.store is not None:
            self.store.record_request(row, wait=False)  # on the event loop: never waits for room
        if self.metrics is not None:
            self.metrics.observe_request(row)

    def _emit_spans(self, ticket: Any, tr: RequestTrace, row: dict[str, Any]) -> None:
        provider: SluiceTracerProvider = self.provider  # type: ignore[assignment]
        end = _ns(row["finish_ts"])
        events: list[tuple[str, int, dict[str, Any]]] = []
        for d in ticket.decisions:
            if d.kind in ADMISSION_KINDS:
                attrs: dict[str, Any] = {Sluice.DECISION: d.kind, Sluice.REASON: d.reason,
                                         Sluice.POLICY_VERSION: d.policy_version}
                outputs = d.outputs
                for key, attr in _PREDICTED:
                    v = outputs.get(key)
                    if v is not None:
                        attrs[attr] = v * 1e3
                events.append(("admission", _ns(d.ts), attrs))
                break
        if ticket.dispatched_at is not None:
            events.append(("dispatch", _ns(ticket.dispatched_at), {Sluice.ENGINE: ticket.engine}))
        if tr.engine_id is not None:
            ev = (("first_token", _ns(ticket.first_token_at), {}),) if ticket.first_token_at is not None else ()
            provider.emit("engine generate", tr.trace_id, tr.engine_id, tr.root_id, SpanKind.CLIENT,
                          _ns(ticket.dispatched_at), end,
                          {Sluice.ENGINE: ticket.engine, Sluice.RID: ticket.rid,
                           GenAI.USAGE_INPUT_TOKENS: row["prompt_tokens"],
                           GenAI.USAGE_OUTPUT_TOKENS: row["completion_tokens"]}, ev)
        attrs, error = request_span_attributes(row)
        attrs[GenAI.OPERATION_NAME] = "chat" if ticket.request.kind == "chat" else "text_completion"
        provider.emit(tr.name, tr.trace_id, tr.root_id, None, SpanKind.SERVER, _ns(ticket.arrival), end,
                      attrs, events, error)

    def unauthenticated(self, code: str | None, http_status: int) -> None:
        """A request refused before its tenant was known: counted, no row (rows belong to a tenant)."""
        if self.metrics is not None:
            self.metrics.observe_refusal(code, http_status)

    def decision(self, d: Decision, pool: str | None = None) -> None:
        if self.store is not None:  # inputs/outputs: fresh dicts from the core, JSON-encoded by the writer
            self.store.record_decision_fresh(**decision_row(d), pool=pool, wait=False)
        if self.metrics is not None and d.kind in ("admit", "defer", "reject", "expire"):
            self.metrics.observe_decision(d.kind, d.reason)

    def forecast(self, kind: str, predicted: float, actual: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_forecast(kind, predicted, actual)

    def policy_change(self, record: dict[str, Any]) -> None:
        """Durable before the change takes effect: raises if the audit log cannot be written."""
        if self.store is not None:
            row = dict(record)
            for key in ("before", "after", "config"):
                if row.get(key) is not None:
                    row[key] = json.dumps(row[key])
            self.store.record_policy_change_now(row)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()  # flushes spans into the store before it closes
        if self.store is not None:
            self.store.close()
