"""OTLP/HTTP trace receiver (``POST /v1/traces``), per the OTLP specification.

* ``application/x-protobuf`` and ``application/json`` (OTLP-JSON: hex trace/span ids, integer
  enums, lowerCamelCase keys), answered in the request's own content type; anything else: 415.
* ``Content-Encoding: gzip`` (or ``deflate``), decompressed as a stream with a cap, so the size
  limit holds after decompression and a gzip bomb costs at most ``max_bytes``; over it: 413.
* Undecodable data: 400 with a ``google.rpc.Status`` body. Spans with bad ids are rejected one by
  one and reported as partial success (200, ``partial_success.rejected_spans`` + message).
* A full store answers 503 with ``Retry-After`` (retryable per the spec).
* At most ``max_spans`` spans per request are decoded; the rest are counted and reported as
  rejected (partial success). Protobuf is walked on the wire and decoded span by span, so no C
  call holds the GIL for a whole body; the ASGI routes decode in a worker thread, at most
  ``max_concurrent`` at a time (503 + ``Retry-After`` past that).
* An optional bearer token (401 ``UNAUTHENTICATED`` without it, before the body is read).
* Legacy GenAI attribute names are mapped onto the current ones (the raw keys are kept), and
  huge attribute values are truncated.

``handle_otlp_traces`` is the pure core; ``otlp_app``/``otlp_routes`` wrap it for Starlette and
``OtlpServer`` serves it on a dedicated port.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

log = logging.getLogger("sluice.telemetry.otlp_receiver")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the spec's recommended limit (after decompression)
DEFAULT_MAX_SPANS = 10_000  # per request; the rest are rejected (partial success)
DEFAULT_MAX_CONCURRENT = 2  # decodes at a time; more get 503 + Retry-After
MAX_ATTR_CHARS = 8192  # longer string values are truncated
MAX_ARRAY_ITEMS = 256  # longer arrays are truncated
MAX_ATTRIBUTES = 512  # per span / event / resource; the rest are dropped
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

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

Sink = Callable[[list[dict[str, Any]], list[dict[str, Any]]], bool]
Response = tuple[int, dict[str, str], bytes]


class _TooLarge(Exception):
    pass


class _BadData(Exception):
    pass


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


# ---------------------------------------------------------------------- decoding


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _inflate(body: bytes, wbits: int, max_bytes: int) -> bytes:
    """Decompress with a cap on the output: never holds more than ``max_bytes`` + one chunk."""
    out = bytearray()
    data = body
    chunk = 1 << 20
    while data:
        d = zlib.decompressobj(wbits)
        try:
            while True:
                piece = d.decompress(data, chunk)
                out += piece
                if len(out) > max_bytes:
                    raise _TooLarge(f"decompressed body exceeds {max_bytes} bytes")
                data = d.unconsumed_tail
                if not data or d.eof:
                    break
            if not d.eof:
                flushed = d.flush()
                out += flushed
                if not d.eof:
                    raise _BadData("truncated compressed body")
        except zlib.error as exc:
            raise _BadData(f"bad compressed body: {exc}") from None
        if len(out) > max_bytes:
            raise _TooLarge(f"decompressed body exceeds {max_bytes} bytes")
        data = d.unused_data  # gzip allows several members back to back
        if data and wbits == -zlib.MAX_WBITS:
            break
    return bytes(out)


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        if len(body) > max_bytes:
            raise _TooLarge(f"body exceeds {max_bytes} bytes")
        return body
    if enc in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, max_bytes)
    if enc == "deflate":
        # RFC 9110 "deflate" is zlib-wrapped; some clients send raw deflate
        try:
            return _inflate(body, zlib.MAX_WBITS, max_bytes)
        except _BadData:
            return _inflate(body, -zlib.MAX_WBITS, max_bytes)
    raise ValueError(f"unsupported Content-Encoding {content_encoding!r} (gzip, deflate, identity)")


def _hex_to_b64(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return base64.b64encode(b"\x00").decode()  # 1 byte: rejected later as a bad id
    return base64.b64encode(raw).decode()


def _fix_json_ids(doc: Any) -> None:
    """OTLP-JSON carries ids as hex; protobuf's JSON parser expects base64: convert in place."""
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(_dict(rs).get("scopeSpans")):
            for span in _list(_dict(ss).get("spans")):
                if not isinstance(span, dict):
                    continue
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _hex_to_b64(span[key])
                for link in _list(span.get("links")):
                    if isinstance(link, dict):
                        for key in ("traceId", "spanId"):
                            if key in link:
                                link[key] = _hex_to_b64(link[key])


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def parse_request(raw: bytes, media_type: str) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    if media_type == PROTOBUF:
        try:
            req.ParseFromString(raw)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise _BadData(f"cannot decode ExportTraceServiceRequest protobuf: {exc}") from None
        return req
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadData(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadData("OTLP-JSON body must be an object")
    return _from_json_doc(doc)


def _from_json_doc(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    _fix_json_ids(doc)
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise _BadData(f"invalid OTLP-JSON ExportTraceServiceRequest: {exc}") from None
    return req


# Spans in groups that share a resource and a scope: what the conversion needs, without one
# ExportTraceServiceRequest holding every span (its C parser holds the GIL for the whole body)
Group = tuple[Any, Any, list[Any]]  # (Resource, InstrumentationScope, [Span])


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _BadData("truncated or malformed protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> Any:
    """(field number, start, end) of each length-delimited field in buf[pos:end]; other wire types
    are skipped, malformed data raises _BadData (what the C parser would refuse)."""
    while pos < end:
        number, wire, pos = _tag(buf, pos, end)
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _BadData("truncated protobuf: a field runs past the end of its message")
            yield number, pos, pos + n
            pos += n
            continue
        pos = _skip(buf, wire, pos, end)
        if pos > end:
            raise _BadData("truncated protobuf")


def _tag(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag) of the field starting at `pos`."""
    key, pos = _varint(buf, pos, end)
    if key >> 3 == 0:
        raise _BadData("invalid protobuf field number 0")
    return key >> 3, key & 7, pos


def _skip(buf: memoryview, wire: int, pos: int, end: int) -> int:
    """Past a field of a wire type that is not length-delimited."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise _BadData(f"unsupported protobuf wire type {wire}")


def _parse(cls: Any, data: bytes | memoryview) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise _BadData(f"cannot decode ExportTraceServiceRequest protobuf: {cls.__name__}: {exc}") from None


def decode_protobuf(raw: bytes, max_spans: int) -> tuple[list[Group], int]:
    """An ExportTraceServiceRequest as groups holding at most ``max_spans`` spans, and the number of
    spans in the whole request.

    The wire format is walked two levels down (ResourceSpans, ScopeSpans) and each span is
    decoded on its own, so no single C call holds the GIL for more than one span, and spans past
    the cap are only counted, never decoded.
    """
    buf = memoryview(raw)
    groups: list[Group] = []
    total = 0
    for number, rs_start, rs_end in _fields(buf, 0, len(buf)):
        if number != 1:  # resource_spans; anything else is an unknown field
            continue
        resource_parts: list[bytes] = []
        scopes: list[tuple[int, int]] = []
        for f, start, end in _fields(buf, rs_start, rs_end):
            if f == 1:
                resource_parts.append(bytes(buf[start:end]))  # repeated occurrences merge, as in protobuf
            elif f == 2:
                scopes.append((start, end))
        resource = _parse(Resource, b"".join(resource_parts))
        for start, end in scopes:
            scope_parts, spans, count = _scope_spans(raw, buf, start, end, max(0, max_spans - total))
            total += count
            if spans:
                groups.append((resource, _parse(InstrumentationScope, b"".join(scope_parts)), spans))
    return groups, total


def _scope_spans(raw: bytes, buf: memoryview, pos: int, end: int, room: int) -> tuple[list[bytes], list[Any], int]:
    """One ScopeSpans: its scope's bytes, its first ``room`` spans decoded, and how many spans it holds
    (the rest are skipped over with the cheapest loop that still checks the framing)."""
    scope_parts: list[bytes] = []
    spans: list[Any] = []
    count = 0
    while pos < end:
        b = raw[pos]
        if b == 0x12 and count >= room:  # field 2 (spans), length-delimited, past the cap: count and skip
            n = raw[pos + 1] if pos + 1 < end else 0x80
            if n < 0x80:
                pos += 2 + n
            else:
                n, pos = _varint(buf, pos + 1, end)
                pos += n
            if pos > end:
                raise _BadData("truncated protobuf: a span runs past the end of its ScopeSpans")
            count += 1
            continue
        number, wire, pos = _tag(buf, pos, end)
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _BadData("truncated protobuf: a field runs past the end of its message")
            if number == 1:
                scope_parts.append(raw[pos:pos + n])
            elif number == 2:
                count += 1
                spans.append(_parse(Span, buf[pos:pos + n]))
            pos += n
        else:
            pos = _skip(buf, wire, pos, end)
    if pos > end:
        raise _BadData("truncated protobuf")
    return scope_parts, spans, count


def decode_request(raw: bytes, media_type: str, max_spans: int) -> tuple[list[Group], int]:
    """Groups of at most ``max_spans`` spans and the request's span count, protobuf or OTLP-JSON."""
    if media_type == PROTOBUF:
        return decode_protobuf(raw, max_spans)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadData(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadData("OTLP-JSON body must be an object")
    total, room = 0, max_spans
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(_dict(rs).get("scopeSpans")):
            spans = _dict(ss).get("spans")
            if isinstance(spans, list):
                total += len(spans)
                if len(spans) > room:  # past the cap: counted, not converted
                    del spans[room:]
                room -= len(spans)
    req = _from_json_doc(doc)
    return list(_groups_of(req)), total


def _groups_of(req: ExportTraceServiceRequest) -> Any:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield rs.resource, ss.scope, ss.spans


# ---------------------------------------------------------------------- conversion


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
    groups = _groups_of(req) if isinstance(req, ExportTraceServiceRequest) else req
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
            trace_id = span.trace_id.hex()
            span_id = span.span_id.hex()
            attrs = normalise_attributes(conv.attrs(span.attributes))
            links = None
            if span.links:
                links = [
                    {"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex(),
                     "attributes": conv.attrs(ln.attributes)}
                    for ln in span.links[:MAX_ARRAY_ITEMS]
                ]
            rows.append(
                {
                    "trace_id": trace_id,
                    "span_id": span_id,
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
            )
            for ev in span.events:
                events.append(
                    {
                        "trace_id": trace_id,
                        "span_id": span_id,
                        "ts": ev.time_unix_nano / 1e9 if ev.time_unix_nano else None,
                        "name": ev.name[:max_attr_chars],
                        "attributes": _json(conv.attrs(ev.attributes)),
                    }
                )
    return rows, events, rejected, problems


# ---------------------------------------------------------------------- responses


def _status_body(media_type: str, code: int, message: str) -> tuple[dict[str, str], bytes]:
    st = status_pb2.Status(code=code, message=message)
    if media_type == PROTOBUF:
        return {"content-type": PROTOBUF}, st.SerializeToString()
    return {"content-type": JSON}, json_format.MessageToJson(st, indent=None).encode()


def _ok_body(media_type: str, rejected: int, message: str) -> tuple[dict[str, str], bytes]:
    resp = ExportTraceServiceResponse()
    if rejected:
        resp.partial_success.rejected_spans = rejected
        resp.partial_success.error_message = message
    if media_type == PROTOBUF:
        return {"content-type": PROTOBUF}, resp.SerializeToString()
    return {"content-type": JSON}, json_format.MessageToJson(resp, indent=None).encode()


class OtlpReceiver:
    """The receiver's state: the sink rows go to, the limits and counters."""

    def __init__(
        self,
        sink: Sink | Any | None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        max_attr_chars: int = MAX_ATTR_CHARS,
        max_spans: int = DEFAULT_MAX_SPANS,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        token: str | None = None,
        require_token: bool = False,
        closed_reason: str = "",
    ) -> None:
        """``token``: when set (or ``require_token``), requests must carry ``Authorization: Bearer
        <token>`` (401 otherwise). ``require_token`` without a token refuses every request, with
        ``closed_reason`` as the message (a receiver reachable beyond loopback with no token set).
        ``max_spans`` per request (the rest are rejected, partial success); ``max_concurrent``
        decodes at a time through the ASGI routes (more: 503 + Retry-After)."""
        if sink is not None and not callable(sink):
            sink = sink.record_spans  # a Store (or anything with record_spans)
        self.sink: Sink | None = sink
        self.max_bytes = int(max_bytes)
        self.max_attr_chars = int(max_attr_chars)
        self.max_spans = int(max_spans)
        self.max_concurrent = int(max_concurrent)
        self.token = token
        self.require_token = bool(require_token or token)
        self.closed_reason = closed_reason
        self.stats = ReceiverStats()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, self.max_concurrent))

    # -- admission of a request, before its body is read -------------------------------------
    def authorize(self, authorization: str | None, content_type: str | None) -> Response | None:
        """None when the request may proceed, else the 401 response (counted)."""
        if not self.require_token:
            return None
        if self.token is None:
            message = self.closed_reason or "this OTLP receiver requires a token and none is configured"
        else:
            presented = ""
            if authorization and authorization[:7].lower() == "bearer ":
                presented = authorization[7:].strip()
            if presented and hmac.compare_digest(presented.encode(), self.token.encode()):
                return None
            message = ("missing or invalid token: send 'Authorization: Bearer <token>' "
                       "(OTEL_EXPORTER_OTLP_TRACES_HEADERS=\"Authorization=Bearer%20<token>\")")
        media = _media_type(content_type)
        h, b = _status_body(media if media in (PROTOBUF, JSON) else JSON, code_pb2.UNAUTHENTICATED, message)
        h["www-authenticate"] = 'Bearer realm="otlp"'
        self.count(401)
        return 401, h, b

    def try_acquire(self) -> bool:
        """A decode slot, without waiting (release it with ``release``)."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def busy(self, content_type: str | None) -> Response:
        """503 + Retry-After: every decode slot is taken (retryable per the OTLP spec)."""
        media = _media_type(content_type)
        h, b = _status_body(media if media in (PROTOBUF, JSON) else JSON, code_pb2.UNAVAILABLE,
                            f"{self.max_concurrent} OTLP requests are being decoded; retry later")
        h["retry-after"] = "1"
        self.count(503)
        return 503, h, b

    def handle(self, body: bytes, content_type: str | None, content_encoding: str | None = None) -> Response:
        status, headers, out = self._handle(body, content_type, content_encoding)
        self.count(status)
        return status, headers, out

    def count(self, status: int) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.responses[status] = self.stats.responses.get(status, 0) + 1

    def too_large(self, content_type: str | None) -> Response:
        """The 413 response for a body over the limit before it is even read whole."""
        media = _media_type(content_type)
        h, b = _status_body(media if media in (PROTOBUF, JSON) else JSON, code_pb2.RESOURCE_EXHAUSTED,
                            f"body exceeds {self.max_bytes} bytes")
        self.count(413)
        return 413, h, b

    def _handle(self, body: bytes, content_type: str | None, content_encoding: str | None) -> Response:
        media = _media_type(content_type)
        if media not in (PROTOBUF, JSON):
            h, b = _status_body(JSON, code_pb2.INVALID_ARGUMENT,
                                f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}")
            return 415, h, b
        try:
            raw = decompress(body, content_encoding, self.max_bytes)
        except _TooLarge as exc:
            h, b = _status_body(media, code_pb2.RESOURCE_EXHAUSTED, str(exc))
            return 413, h, b
        except _BadData as exc:
            h, b = _status_body(media, code_pb2.INVALID_ARGUMENT, str(exc))
            return 400, h, b
        except ValueError as exc:
            h, b = _status_body(media, code_pb2.INVALID_ARGUMENT, str(exc))
            return 415, h, b
        try:
            groups, total = decode_request(raw, media, self.max_spans)
        except _BadData as exc:
            h, b = _status_body(media, code_pb2.INVALID_ARGUMENT, str(exc))
            return 400, h, b
        del raw
        stats = ReceiverStats()
        rows, events, rejected, problems = request_to_rows(groups, max_attr_chars=self.max_attr_chars, stats=stats)
        over = max(0, total - self.max_spans)
        if over:
            rejected += over
            problems.insert(0, f"{over} spans past the limit of {self.max_spans} per request "
                               "(send smaller batches)")
        if rows and self.sink is not None:
            try:
                ok = self.sink(rows, events)
            except Exception as exc:  # a closed or broken store: retryable for the client
                log.warning("OTLP sink failed: %s", exc)
                ok = False
            if not ok:
                h, b = _status_body(media, code_pb2.UNAVAILABLE, "span store is full or unavailable; retry later")
                h["retry-after"] = "1"
                return 503, h, b
        with self._lock:
            self.stats.spans_accepted += len(rows)
            self.stats.spans_rejected += rejected
            self.stats.truncated_values += stats.truncated_values
        message = ""
        if rejected:
            message = f"rejected {rejected} of {total} spans: " + "; ".join(problems)
        h, b = _ok_body(media, rejected, message)
        return 200, h, b


def handle_otlp_traces(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    sink: Sink | Any | None = None,
) -> Response:
    """Handle one ``POST /v1/traces`` body; returns ``(status, headers, body)``.

    ``sink(span_rows, event_rows) -> bool`` (or an object with ``record_spans``, e.g. a Store)
    receives the converted rows; False means "full" and yields 503 + Retry-After.
    """
    return OtlpReceiver(sink, max_bytes).handle(body, content_type, content_encoding)


# ---------------------------------------------------------------------- ASGI


def otlp_routes(receiver: OtlpReceiver, path: str = "/v1/traces") -> list[Any]:
    """Starlette routes for mounting the receiver in another app (e.g. the gateway)."""
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import Response as HttpResponse
    from starlette.routing import Route

    async def post_traces(request: Request) -> HttpResponse:
        ctype = request.headers.get("content-type")
        refused = receiver.authorize(request.headers.get("authorization"), ctype)
        if refused is not None:  # before reading a byte of the body
            status, headers, out = refused
            return HttpResponse(out, status_code=status, headers=headers)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > receiver.max_bytes:
            status, headers, out = receiver.too_large(ctype)
            return HttpResponse(out, status_code=status, headers=headers)
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > receiver.max_bytes:  # compressed or not, never buffer more than the limit
                    status, headers, out = receiver.too_large(ctype)
                    return HttpResponse(out, status_code=status, headers=headers)
                chunks.append(chunk)
        except ClientDisconnect:  # gone (or its body timed out): nobody to answer
            return HttpResponse(b"", status_code=400)
        body = b"".join(chunks)
        del chunks
        if not receiver.try_acquire():
            status, headers, out = receiver.busy(ctype)
            return HttpResponse(out, status_code=status, headers=headers)
        try:  # decompression, decoding and conversion never run on the event loop
            status, headers, out = await run_in_threadpool(receiver.handle, body, ctype,
                                                           request.headers.get("content-encoding"))
        finally:
            receiver.release()
        return HttpResponse(out, status_code=status, headers=headers)

    return [Route(path, post_traces, methods=["POST"])]


def otlp_app(store: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """A Starlette app serving ``POST /v1/traces`` into ``store`` (``app.state.receiver`` holds stats)."""
    from starlette.applications import Starlette

    receiver = store if isinstance(store, OtlpReceiver) else OtlpReceiver(store, max_bytes)
    app = Starlette(routes=otlp_routes(receiver))
    app.state.receiver = receiver
    return app


class OtlpServer:
    """The receiver on its own port (uvicorn in a daemon thread). ``port=0`` picks a free port."""

    def __init__(
        self, store: Any, host: str = "127.0.0.1", port: int = 4318, max_bytes: int = DEFAULT_MAX_BYTES,
        *, uvicorn_options: Mapping[str, Any] | None = None
    ) -> None:
        """``store``: a Store, a sink, or a configured ``OtlpReceiver``; ``uvicorn_options`` are
        passed to ``uvicorn.Config`` (e.g. ``limit_concurrency``, or ``http`` for a protocol class
        with read timeouts)."""
        import uvicorn

        self.app = otlp_app(store, max_bytes)
        self.receiver: OtlpReceiver = self.app.state.receiver
        self.host = host
        options: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "access_log": False,
                                   **(uvicorn_options or {})}
        self._config = uvicorn.Config(self.app, host=host, port=port, **options)
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/traces"

    def start(self, timeout_s: float = 10.0) -> OtlpServer:
        self._thread = threading.Thread(target=self._server.run, name="sluice-otlp-receiver", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError(f"OTLP receiver did not start on {self.host}:{self._config.port}")
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = sock.getsockname()[1]
                break
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> OtlpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def response_summary(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Decode a receiver response (for tests and tools): status, rejected spans, message."""
    media = headers.get("content-type", JSON)
    if status == 200:
        resp = ExportTraceServiceResponse()
        if media == PROTOBUF:
            resp.ParseFromString(body)
        else:
            json_format.Parse(body or b"{}", resp)
        return {"status": status, "rejected": resp.partial_success.rejected_spans,
                "message": resp.partial_success.error_message}
    st = status_pb2.Status()
    if media == PROTOBUF:
        st.ParseFromString(body)
    else:
        json_format.Parse(body, st)
    return {"status": status, "code": st.code, "message": st.message}
