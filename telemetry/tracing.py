"""sluice's own spans: a TracerProvider that writes to the DuckDB store and, optionally, OTLP/HTTP.

A request's spans can be made live (``tracer.start_as_current_span("chat <model>",
kind=SpanKind.SERVER)``, ``annotate_request_span`` for the ``GenAI``/``Sluice`` attributes,
``traceparent_of(span)`` forwarded to SGLang) or, as the gateway does, built whole when the
request ends (``SluiceTracerProvider.new_trace``/``emit`` with ``request_span_attributes``): the
same spans for a fraction of the CPU. SGLang's spans join the same trace through the OTLP receiver.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

try:  # optional: faster attribute JSON on the exporter thread
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

from .otlp_export import make_otlp_exporter

log = logging.getLogger("sluice.telemetry.tracing")


class GenAI:
    """OpenTelemetry GenAI semantic-convention attribute names (current, Development status)."""

    OPERATION_NAME = "gen_ai.operation.name"  # "chat", "text_completion", "generate_content"
    PROVIDER_NAME = "gen_ai.provider.name"
    REQUEST_MODEL = "gen_ai.request.model"
    REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
    REQUEST_TEMPERATURE = "gen_ai.request.temperature"
    REQUEST_TOP_P = "gen_ai.request.top_p"
    REQUEST_TOP_K = "gen_ai.request.top_k"
    REQUEST_SEED = "gen_ai.request.seed"
    REQUEST_STREAM = "gen_ai.request.stream"
    REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
    RESPONSE_ID = "gen_ai.response.id"
    RESPONSE_MODEL = "gen_ai.response.model"
    RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
    RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"  # seconds
    USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
    USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
    USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
    CONVERSATION_ID = "gen_ai.conversation.id"
    ERROR_TYPE = "error.type"
    SERVER_ADDRESS = "server.address"
    SERVER_PORT = "server.port"


class Sluice:
    """sluice's own span attributes."""

    RID = "sluice.rid"
    TENANT = "sluice.tenant"
    SLO_CLASS = "sluice.slo_class"
    DECISION = "sluice.decision"  # admit | reject | defer
    REASON = "sluice.reason"
    POLICY_VERSION = "sluice.policy_version"
    ENGINE = "sluice.engine"
    STATUS = "sluice.status"  # ok | rejected | aborted | error | expired
    QUEUE_MS = "sluice.queue_ms"
    PREDICTED_TTFT_MS = "sluice.predicted.ttft_ms"
    PREDICTED_TPOT_MS = "sluice.predicted.tpot_ms"
    PREDICTED_OUTPUT_TOKENS = "sluice.predicted.output_tokens"
    SLO_MET = "sluice.slo_met"
    POOL = "sluice.pool"  # the model pool that served the request (gen_ai.request.model: the name as sent)
    ADAPTER = "sluice.lora_adapter"  # the LoRA adapter it ran with


# request-row key -> span attribute, for annotate_request_span
_ROW_TO_ATTR: dict[str, str] = {
    "rid": Sluice.RID,
    "tenant": Sluice.TENANT,
    "slo_class": Sluice.SLO_CLASS,
    "decision": Sluice.DECISION,
    "reason": Sluice.REASON,
    "policy_version": Sluice.POLICY_VERSION,
    "engine": Sluice.ENGINE,
    "status": Sluice.STATUS,
    "queue_ms": Sluice.QUEUE_MS,
    "predicted_ttft_ms": Sluice.PREDICTED_TTFT_MS,
    "predicted_tpot_ms": Sluice.PREDICTED_TPOT_MS,
    "predicted_output_tokens": Sluice.PREDICTED_OUTPUT_TOKENS,
    "slo_met": Sluice.SLO_MET,
    "model": GenAI.REQUEST_MODEL,
    "pool": Sluice.POOL,
    "adapter": Sluice.ADAPTER,
    "max_tokens": GenAI.REQUEST_MAX_TOKENS,
    "stream": GenAI.REQUEST_STREAM,
    "prompt_tokens": GenAI.USAGE_INPUT_TOKENS,
    "completion_tokens": GenAI.USAGE_OUTPUT_TOKENS,
    "cached_tokens": GenAI.USAGE_CACHE_READ_INPUT_TOKENS,
    "end_user": "user.id",  # OpenTelemetry's general attribute for the end user
}


def annotate_request_span(span: trace_api.Span, row: Mapping[str, Any]) -> None:
    """Set the span's gen_ai.*/sluice.* attributes from a request row (the ``record_request`` dict).

    Also ``gen_ai.response.id`` (= rid), ``gen_ai.response.finish_reasons`` from
    ``finish_reason``, ``gen_ai.response.time_to_first_chunk`` from ``ttft_ms`` and, for a
    status other than ok, ``error.type`` and an ERROR span status.
    """
    if not span.is_recording():
        return
    attrs, error = request_span_attributes(row)
    if error is not None:
        span.set_status(trace_api.Status(trace_api.StatusCode.ERROR, error))
    span.set_attributes(attrs)


def traceparent_of(span: trace_api.Span) -> str | None:
    """The W3C ``traceparent`` header value for ``span`` (None for an invalid span context).

    The flags are the span's own: a span that was sampled out still has a valid context and its
    header has the sampled bit (0x01) clear, so the engine's parent-based sampler makes the same
    choice (the SDK may also set W3C level-2's random bit, 0x02).
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}"


class SpanSink(Protocol):
    def record_spans(self, rows: list[dict[str, Any]], events: list[dict[str, Any]] | None = None) -> bool: ...


# an enum member's .name is a descriptor call: a dict lookup per span is cheaper
_KIND_NAME = {k: k.name for k in trace_api.SpanKind}
_STATUS_NAME = {c: c.name for c in trace_api.StatusCode}


def _attr_json(attrs: Mapping[str, Any] | None) -> str | None:
    if not attrs:
        return None
    if _orjson is not None:
        try:
            return _orjson.dumps(dict(attrs), default=str, option=_orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits
            pass
    return json.dumps(
        {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()},
        separators=(",", ":"),
        default=str,
    )


def span_row(trace_id: int, span_id: int, parent_span_id: int | None, name: str, kind: trace_api.SpanKind,
             service: str, scope: str | None, start_ns: int | None, end_ns: int | None, status: trace_api.Status,
             attributes: Mapping[str, Any] | None, resource: str | None, links: str | None = None) -> dict[str, Any]:
    """One ``spans`` row: what `spans_to_rows` makes of an SDK span and `SluiceTracerProvider.emit`
    of a span built whole."""
    return {
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "parent_span_id": f"{parent_span_id:016x}" if parent_span_id is not None else None,
        "name": name,
        "kind": _KIND_NAME[kind],
        "service": service,
        "scope": scope,
        "start_ts": start_ns / 1e9 if start_ns else None,
        "end_ts": end_ns / 1e9 if end_ns else None,
        "status_code": _STATUS_NAME[status.status_code],
        "status_message": status.description,
        "attributes": _attr_json(attributes),
        "resource": resource,
        "links": links,
    }


def event_row(trace_id: str, span_id: str, ts_ns: int, name: str, attributes: Mapping[str, Any] | None
              ) -> dict[str, Any]:
    """One ``span_events`` row (ids as in the span's row)."""
    return {"trace_id": trace_id, "span_id": span_id, "ts": ts_ns / 1e9, "name": name,
            "attributes": _attr_json(attributes)}


def _resource_row(res: Resource | None) -> tuple[str, str | None]:
    """(service name, resource attributes as JSON) of a span's resource."""
    rattrs = dict(res.attributes) if res is not None else {}
    return str(rattrs.get("service.name", "unknown_service")), _attr_json(rattrs)


def spans_to_rows(spans: Sequence[ReadableSpan]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Convert SDK spans into ``spans`` and ``span_events`` rows."""
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    resource_cache: dict[int, tuple[str, str | None]] = {}
    for span in spans:
        ctx = span.context
        if ctx is None:
            continue
        res = span.resource
        cached = resource_cache.get(id(res))
        if cached is None:
            cached = resource_cache[id(res)] = _resource_row(res)
        links = None
        if span.links:
            links = json.dumps(
                [
                    {
                        "trace_id": f"{link.context.trace_id:032x}",
                        "span_id": f"{link.context.span_id:016x}",
                        "attributes": json.loads(_attr_json(link.attributes) or "{}"),
                    }
                    for link in span.links
                ],
                separators=(",", ":"),
            )
        scope = span.instrumentation_scope.name if span.instrumentation_scope is not None else None
        row = span_row(ctx.trace_id, ctx.span_id, span.parent.span_id if span.parent is not None else None,
                       span.name, span.kind, cached[0], scope, span.start_time, span.end_time, span.status,
                       span.attributes, cached[1], links)
        rows.append(row)
        for ev in span.events:
            events.append(event_row(row["trace_id"], row["span_id"], ev.timestamp, ev.name, ev.attributes))
    return rows, events


class StoreSpanExporter(SpanExporter):
    """A SpanExporter that converts finished spans to rows and queues them in the store."""

    def __init__(self, store: SpanSink) -> None:
        self._store = store
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            rows, events = spans_to_rows(spans)
            ok = self._store.record_spans(rows, events)
        except Exception:  # the processor's thread must survive a closed or broken store
            log.exception("span export to the store failed")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_SAMPLED = trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED)
_ERROR = trace_api.StatusCode.ERROR
_UNSET = trace_api.Status(trace_api.StatusCode.UNSET)


class SluiceTracerProvider(TracerProvider):
    """A TracerProvider that can also take spans built whole, after the fact (`emit`).

    The gateway's per-request spans are a fixed shape whose times and attributes are all known when
    the request ends; building them then skips the SDK's live-span machinery (locks, attribute
    cleaning, contexts), several times the cost of the span itself. Such a span goes to the store
    as its row, straight into the store's own queue (its writer thread batches; a second batching
    thread and an SDK span converted back to a row bought nothing), and, as a `ReadableSpan`, to
    the exporting processors (OTLP, `extra_exporters`) when there are any. Live spans
    (`get_tracer`) go through every processor as the SDK has them. Ids and the sampling decision
    come from this provider's id generator and sampler, as `start_span` would take them.
    """

    def __init__(self, *, sample_ratio: float = 1.0, resource: Resource | None = None) -> None:
        # a request's root span has no parent, so ParentBased would always ask its root sampler,
        # after looking up the (always empty) current context: ask that sampler directly
        self.root_sampler = TraceIdRatioBased(sample_ratio)
        super().__init__(sampler=ParentBased(self.root_sampler), resource=resource)
        self.scope = InstrumentationScope("sluice")
        self.store: SpanSink | None = None  # where a span built whole is written, as its row
        self._exporting: list[SpanProcessor] = []  # the processors a span built whole is handed to
        self._service, self._resource_json = _resource_row(self.resource)

    def add_exporting_processor(self, processor: SpanProcessor) -> None:
        """A processor for every span, the ones built whole included (the store's own is not: see
        the class docstring)."""
        self.add_span_processor(processor)
        self._exporting.append(processor)

    def new_trace(self, name: str, kind: trace_api.SpanKind) -> tuple[int, int, bool]:
        """(trace_id, span_id, sampled) for a new root span."""
        trace_id = self.id_generator.generate_trace_id()
        decision = self.root_sampler.should_sample(None, trace_id, name, kind)
        return trace_id, self.id_generator.generate_span_id(), decision.decision.is_sampled()

    def new_span_id(self) -> int:
        return self.id_generator.generate_span_id()

    def emit(self, name: str, trace_id: int, span_id: int, parent_span_id: int | None, kind: trace_api.SpanKind,
             start_ns: int, end_ns: int, attributes: dict[str, Any], events: Sequence[tuple[str, int, dict[str, Any]]] = (),
             error: str | None = None) -> None:
        """One finished, sampled span: its row to the store, the span to the exporting processors."""
        status = trace_api.Status(_ERROR, error) if error is not None else _UNSET
        if self.store is not None:
            row = span_row(trace_id, span_id, parent_span_id, name, kind, self._service, self.scope.name, start_ns,
                           end_ns, status, attributes, self._resource_json)
            self.store.record_spans([row], [event_row(row["trace_id"], row["span_id"], ts, n, a)
                                            for n, ts, a in events])
        if self._exporting:
            parent = (trace_api.SpanContext(trace_id, parent_span_id, False, _SAMPLED)
                      if parent_span_id is not None else None)
            span = ReadableSpan(
                name, trace_api.SpanContext(trace_id, span_id, False, _SAMPLED), parent, self.resource, attributes,
                tuple(Event(n, a, ts) for n, ts, a in events), (), kind, status=status,
                start_time=start_ns, end_time=end_ns, instrumentation_scope=self.scope)
            for processor in self._exporting:
                processor.on_end(span)


def request_span_attributes(row: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``annotate_request_span``'s attributes for a request row, and the ERROR status message
    (None for an ok request)."""
    attrs: dict[str, Any] = {}
    for key, attr in _ROW_TO_ATTR.items():
        value = row.get(key)
        if value is not None:
            attrs[attr] = value
    if row.get("rid"):
        attrs[GenAI.RESPONSE_ID] = str(row["rid"])
    if row.get("finish_reason"):
        attrs[GenAI.RESPONSE_FINISH_REASONS] = (str(row["finish_reason"]),)
    if row.get("ttft_ms") is not None:
        attrs[GenAI.RESPONSE_TIME_TO_FIRST_CHUNK] = float(row["ttft_ms"]) / 1000.0
    status = row.get("status")
    if status and status != "ok":
        attrs[GenAI.ERROR_TYPE] = str(row.get("reason") or status)
        return attrs, str(row.get("error") or status)
    return attrs, None


def setup_tracing(
    service_name: str = "sluice",
    sample_ratio: float = 1.0,
    store: SpanSink | None = None,
    otlp_endpoint: str | None = None,
    *,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_compression: str | None = None,
    otlp_timeout_s: float = 10.0,
    resource_attributes: Mapping[str, Any] | None = None,
    schedule_delay_millis: int = 500,
    max_queue_size: int = 8192,
    max_export_batch_size: int = 1024,
    extra_exporters: Sequence[SpanExporter] = (),
) -> SluiceTracerProvider:
    """Build sluice's own TracerProvider (never installed globally; call ``.shutdown()`` on exit).

    Sampling is ``ParentBased(TraceIdRatioBased(sample_ratio))``: a request that arrives with a
    sampled ``traceparent`` is always traced, a fresh one with probability ``sample_ratio``.
    Spans go to ``store`` (the gateway's, built whole, as rows into the store's queue; live ones
    through a BatchSpanProcessor into ``StoreSpanExporter``) and, when
    ``otlp_endpoint`` is set (a full URL ending in ``/v1/traces``), to an OTLP/HTTP protobuf
    exporter (``otlp_compression``: ``"gzip"``, ``"deflate"`` or None).
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be in [0, 1], got {sample_ratio}")
    attrs: dict[str, Any] = {"service.name": service_name}
    attrs.update(resource_attributes or {})
    provider = SluiceTracerProvider(sample_ratio=sample_ratio, resource=Resource.create(attrs))

    def batch(exporter: SpanExporter) -> BatchSpanProcessor:
        return BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=min(max_export_batch_size, max_queue_size),
        )

    if store is not None:
        provider.store = store  # spans built whole
        provider.add_span_processor(batch(StoreSpanExporter(store)))  # live spans
    if otlp_endpoint:
        provider.add_exporting_processor(
            batch(make_otlp_exporter(otlp_endpoint, headers=otlp_headers, compression=otlp_compression,
                                     timeout_s=otlp_timeout_s))
        )
    for exporter in extra_exporters:
        provider.add_exporting_processor(batch(exporter))
    return provider
