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
``OtlpServer`` serves it on a dedicated port. Decoding lives in telemetry/otlp_decode.py, the
conversion into store rows in telemetry/otlp_rows.py.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .otlp_decode import JSON, PROTOBUF, BadData, TooLarge, decode_request, decompress, media_type_of
from .otlp_rows import MAX_ATTR_CHARS, ReceiverStats, request_to_rows

log = logging.getLogger("sluice.telemetry.otlp_receiver")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the spec's recommended limit (after decompression)
DEFAULT_MAX_SPANS = 10_000  # per request; the rest are rejected (partial success)
DEFAULT_MAX_CONCURRENT = 2  # decodes at a time; more get 503 + Retry-After

Sink = Callable[[list[dict[str, Any]], list[dict[str, Any]]], bool]
Response = tuple[int, dict[str, str], bytes]


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
        media = media_type_of(content_type)
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
        media = media_type_of(content_type)
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
        media = media_type_of(content_type)
        h, b = _status_body(media if media in (PROTOBUF, JSON) else JSON, code_pb2.RESOURCE_EXHAUSTED,
                            f"body exceeds {self.max_bytes} bytes")
        self.count(413)
        return 413, h, b

    def _handle(self, body: bytes, content_type: str | None, content_encoding: str | None) -> Response:
        media = media_type_of(content_type)
        if media not in (PROTOBUF, JSON):
            h, b = _status_body(JSON, code_pb2.INVALID_ARGUMENT,
                                f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}")
            return 415, h, b
        try:
            raw = decompress(body, content_encoding, self.max_bytes)
        except TooLarge as exc:
            h, b = _status_body(media, code_pb2.RESOURCE_EXHAUSTED, str(exc))
            return 413, h, b
        except BadData as exc:
            h, b = _status_body(media, code_pb2.INVALID_ARGUMENT, str(exc))
            return 400, h, b
        except ValueError as exc:
            h, b = _status_body(media, code_pb2.INVALID_ARGUMENT, str(exc))
            return 415, h, b
        try:
            groups, total = decode_request(raw, media, self.max_spans)
        except BadData as exc:
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
