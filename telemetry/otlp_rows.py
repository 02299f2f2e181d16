"""Conversion of decoded OTLP spans into rows for the store's ``spans`` and ``span_events`` tables:
attribute values bounded (long strings, arrays and attribute lists truncated and counted), legacy
GenAI names mapped onto the current ones, spans with bad ids rejected one by one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .otlp_decode import Group, groups_of

MAX_ATTR_CHARS = 8192  # longer string values are truncated
MAX_ARRAY_ITEMS = 256  # longer arrays are truncated
MAX_ATTRIBUTES = 512  # per span / event / resource; the rest are dropped

# legacy name -> current GenAI semconv name (the legacy key is kept, the current one added)
LEGACY_ATTRIBUTES: dict[str, str] = {
    "gen_ai.usage.prompt_tokens": "gen_ai.usage.input_tokens",
    "gen_ai.usage.completion_tokens": "gen_ai.usage.output_tokens",
    "gen_ai.usage.cached_tokens": "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.system": "gen_ai.provider.name",
    "llm.usage.prompt_tokens": "gen_ai.usage.input_tokens",
    "llm.usage.completion_tokens": "gen_ai.usage.output_tokens",
}

# proto enums (differ from the SDK's SpanKind numbering)
_KIND = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class ReceiverStats:
    requests: int = 0
    spans_accepted: int = 0
    spans_rejected: int = 0
    truncated_values: int = 0
    responses: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "spans_accepted": self.spans_accepted,
            "spans_rejected": self.spans_rejected,
            "truncated_values": self.truncated_values,
            "responses": dict(self.responses),
        }


class _Converter:
    def __init__(self, max_attr_chars: int, stats: ReceiverStats) -> None:
        self.max_chars = max_attr_chars
        self.stats = stats

    def value(self, v: Any) -> Any:
        kind = v.WhichOneof("value")
        if kind == "string_value":
            s = v.string_value
            if len(s) > self.max_chars:
                self.stats.truncated_values += 1
                return s[: self.max_chars] + f"...[truncated {len(s) - self.max_chars} chars]"
            return s
        if kind == "int_value":
            return v.int_value
        if kind == "double_value":
            d = v.double_value
            return d if d == d and d not in (float("inf"), float("-inf")) else None
        if kind == "bool_value":
            return v.bool_value
        if kind == "array_value":
            items = v.array_value.values
            if len(items) > MAX_ARRAY_ITEMS:
                self.stats.truncated_values += 1
                items = items[:MAX_ARRAY_ITEMS]
            return [self.value(x) for x in items]
        if kind == "kvlist_value":
            return self.attrs(v.kvlist_value.values)
        if kind == "bytes_value":
            b = v.bytes_value
            if len(b) > self.max_chars:
                self.stats.truncated_values += 1
                b = b[: self.max_chars]
            return base64.b64encode(b).decode()
        return None

    def attrs(self, kvs: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, kv in enumerate(kvs):
            if i >= MAX_ATTRIBUTES:
                self.stats.truncated_values += len(kvs) - MAX_ATTRIBUTES
                break
            out[kv.key[:256]] = self.value(kv.value)
        return out


def normalise_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """Add current GenAI names for legacy ones (keeping the legacy keys); in place, returned."""
    for old, new in LEGACY_ATTRIBUTES.items():
        if old in attrs and new not in attrs:
            attrs[new] = attrs[old]
    fr = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(fr, str):  # SGLang sends a JSON list as a string
        try:
            parsed = json.loads(fr)
        except ValueError:
            parsed = [fr]
        attrs["gen_ai.response.finish_reasons"] = parsed if isinstance(parsed, list) else [str(parsed)]
    return attrs


def _json(d: dict[str, Any] | list[Any] | None) -> str | None:
    if not d:
        return None
    return json.dumps(d, separators=(",", ":"), default=str)


def _check_ids(span: Any) -> str | None:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        return f"trace_id must be 16 non-zero bytes, got {len(span.trace_id)}"
    if len(span.span_id) != 8 or not any(span.span_id):
        return f"span_id must be 8 non-zero bytes, got {len(span.span_id)}"
    if len(span.parent_span_id) not in (0, 8):
        return f"parent_span_id must be empty or 8 bytes, got {len(span.parent_span_id)}"
    return None


def request_to_rows(
    req: ExportTraceServiceRequest | list[Group], *, max_attr_chars: int = MAX_ATTR_CHARS,
    stats: ReceiverStats | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, list[str]]:
    """Rows for ``spans`` and ``span_events``, plus the number of rejected spans and why.

    ``req``: a parsed ExportTraceServiceRequest, or the groups ``decode_request`` gives."""
    conv = _Converter(max_attr_chars, stats or ReceiverStats())
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    rejected = 0
    problems: list[str] = []
    groups = groups_of(req) if isinstance(req, ExportTraceServiceRequest) else req
    resources: dict[int, tuple[str, str | None, Any]] = {}  # by id; holds the object so the id stays its own
    for resource, scope_msg, spans in groups:
        known = resources.get(id(resource))
        if known is None:
            rattrs = conv.attrs(resource.attributes)
            known = resources[id(resource)] = (str(rattrs.get("service.name") or "unknown_service"), _json(rattrs),
                                               resource)
        service, resource_json, _ = known
        scope = scope_msg.name or None
        for span in spans:
            problem = _check_ids(span)
            if problem is not None:
                rejected += 1
                if len(problems) < 5:
                    problems.append(f"span {span.name[:64]!r}: {problem}")
                continue
            row = _span_row(conv, span, service, scope, resource_json)
            rows.append(row)
            events.extend(_event_rows(conv, span, row["trace_id"], row["span_id"]))
    return rows, events, rejected, problems


def _span_row(conv: _Converter, span: Any, service: str, scope: str | None,
              resource_json: str | None) -> dict[str, Any]:
    """One ``spans`` row for a span whose ids passed ``_check_ids``."""
    max_attr_chars = conv.max_chars
    attrs = normalise_attributes(conv.attrs(span.attributes))
    links = None
    if span.links:
        links = [
            {"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex(),
             "attributes": conv.attrs(ln.attributes)}
            for ln in span.links[:MAX_ARRAY_ITEMS]
        ]
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() if span.parent_span_id else None,
        "name": span.name[:max_attr_chars],
        "kind": _KIND.get(span.kind, "UNSPECIFIED"),
        "service": service,
        "scope": scope,
        "start_ts": span.start_time_unix_nano / 1e9 if span.start_time_unix_nano else None,
        "end_ts": span.end_time_unix_nano / 1e9 if span.end_time_unix_nano else None,
        "status_code": _STATUS.get(span.status.code, "UNSET"),
        "status_message": span.status.message[:max_attr_chars] or None,
        "attributes": _json(attrs),
        "resource": resource_json,
        "links": _json(links),
    }


def _event_rows(conv: _Converter, span: Any, trace_id: str, span_id: str) -> list[dict[str, Any]]:
    """The ``span_events`` rows of a span."""
    return [
        {
            "trace_id": trace_id,
            "span_id": span_id,
            "ts": ev.time_unix_nano / 1e9 if ev.time_unix_nano else None,
            "name": ev.name[:conv.max_chars],
            "attributes": _json(conv.attrs(ev.attributes)),
        }
        for ev in span.events
    ]
