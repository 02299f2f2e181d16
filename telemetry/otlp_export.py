"""OTLP/HTTP export of sluice's spans to any collector (Jaeger, Tempo, Grafana, Datadog, ...)."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry.sdk.trace.export import SpanExporter


def make_otlp_exporter(
    endpoint: str,
    *,
    headers: Mapping[str, str] | None = None,
    compression: str | None = None,
    timeout_s: float = 10.0,
) -> SpanExporter:
    """An OTLP/HTTP protobuf span exporter for ``endpoint``.

    ``endpoint`` is used verbatim, so it must be the full URL including ``/v1/traces`` (e.g.
    ``http://127.0.0.1:4318/v1/traces``). ``compression``: ``"gzip"``, ``"deflate"`` or None.
    """
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"OTLP endpoint must be an http(s) URL ending in /v1/traces, got {endpoint!r}")
    comp = None
    if compression:
        try:
            comp = Compression(compression.lower())
        except ValueError:
            raise ValueError(f"unknown OTLP compression {compression!r} (gzip, deflate, none)") from None
    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers or {}), compression=comp, timeout=timeout_s)
