"""Decoding of an OTLP/HTTP trace request body: decompression with a cap, then protobuf (walked on
the wire, span by span) or OTLP-JSON, into groups of spans that share a resource and a scope.

The receiver (telemetry/otlp_receiver.py) maps ``TooLarge`` to 413 and ``BadData`` to 400.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class TooLarge(Exception):
    pass


class BadData(Exception):
    pass


def media_type_of(content_type: str | None) -> str:
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
                    raise TooLarge(f"decompressed body exceeds {max_bytes} bytes")
                data = d.unconsumed_tail
                if not data or d.eof:
                    break
            if not d.eof:
                flushed = d.flush()
                out += flushed
                if not d.eof:
                    raise BadData("truncated compressed body")
        except zlib.error as exc:
            raise BadData(f"bad compressed body: {exc}") from None
        if len(out) > max_bytes:
            raise TooLarge(f"decompressed body exceeds {max_bytes} bytes")
        data = d.unused_data  # gzip allows several members back to back
        if data and wbits == -zlib.MAX_WBITS:
            break
    return bytes(out)


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    enc = (content_encoding or "identity").strip().lower()
    if enc in ("identity", ""):
        if len(body) > max_bytes:
            raise TooLarge(f"body exceeds {max_bytes} bytes")
        return body
    if enc in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, max_bytes)
    if enc == "deflate":
        # RFC 9110 "deflate" is zlib-wrapped; some clients send raw deflate
        try:
            return _inflate(body, zlib.MAX_WBITS, max_bytes)
        except BadData:
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
            raise BadData(f"cannot decode ExportTraceServiceRequest protobuf: {exc}") from None
        return req
    return _from_json_doc(_json_object(raw))


def _from_json_doc(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    _fix_json_ids(doc)
    try:
        json_format.ParseDict(doc, req, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise BadData(f"invalid OTLP-JSON ExportTraceServiceRequest: {exc}") from None
    return req


# Spans in groups that share a resource and a scope: what the conversion needs, without one
# ExportTraceServiceRequest holding every span (its C parser holds the GIL for the whole body)
Group = tuple[Any, Any, list[Any]]  # (Resource, InstrumentationScope, [Span])


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise BadData("truncated or malformed protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> Any:
    """(field number, start, end) of each length-delimited field in buf[pos:end]; other wire types
    are skipped, malformed data raises BadData (what the C parser would refuse)."""
    while pos < end:
        number, wire, pos = _tag(buf, pos, end)
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise BadData("truncated protobuf: a field runs past the end of its message")
            yield number, pos, pos + n
            pos += n
            continue
        pos = _skip(buf, wire, pos, end)
        if pos > end:
            raise BadData("truncated protobuf")


def _tag(buf: memoryview, pos: int, end: int) -> tuple[int, int, int]:
    """(field number, wire type, position after the tag) of the field starting at `pos`."""
    key, pos = _varint(buf, pos, end)
    if key >> 3 == 0:
        raise BadData("invalid protobuf field number 0")
    return key >> 3, key & 7, pos


def _skip(buf: memoryview, wire: int, pos: int, end: int) -> int:
    """Past a field of a wire type that is not length-delimited."""
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 1:
        return pos + 8
    if wire == 5:
        return pos + 4
    raise BadData(f"unsupported protobuf wire type {wire}")


def _parse(cls: Any, data: bytes | memoryview) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise BadData(f"cannot decode ExportTraceServiceRequest protobuf: {cls.__name__}: {exc}") from None


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
                raise BadData("truncated protobuf: a span runs past the end of its ScopeSpans")
            count += 1
            continue
        number, wire, pos = _tag(buf, pos, end)
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise BadData("truncated protobuf: a field runs past the end of its message")
            if number == 1:
                scope_parts.append(raw[pos:pos + n])
            elif number == 2:
                count += 1
                spans.append(_parse(Span, buf[pos:pos + n]))
            pos += n
        else:
            pos = _skip(buf, wire, pos, end)
    if pos > end:
        raise BadData("truncated protobuf")
    return scope_parts, spans, count


def decode_request(raw: bytes, media_type: str, max_spans: int) -> tuple[list[Group], int]:
    """Groups of at most ``max_spans`` spans and the request's span count, protobuf or OTLP-JSON."""
    if media_type == PROTOBUF:
        return decode_protobuf(raw, max_spans)
    doc = _json_object(raw)
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
    return list(groups_of(req)), total


def groups_of(req: ExportTraceServiceRequest) -> Any:
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            yield rs.resource, ss.scope, ss.spans


def _json_object(raw: bytes) -> dict[str, Any]:
    """An OTLP-JSON body's top-level object."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadData(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadData("OTLP-JSON body must be an object")
    return doc
