"""sluice telemetry: tracing setup, the DuckDB store, OTLP in and out, Prometheus metrics, NVML.

Imports nothing of ours. See docs/telemetry.md for the API the gateway uses.
"""

from .metrics import Metrics
from .nvml import CombinedGpuSource, GpuSampler, GpuSource, SimulatedGpuSource
from .otlp_receiver import OtlpReceiver, OtlpServer, handle_otlp_traces, otlp_app, otlp_routes
from .store import (Store, StoreClosedError, StoreError, StoreLockedError, StoreUnwritableError, StoreWriteError,
                    open_read_only)
from .tracing import GenAI, Sluice, annotate_request_span, setup_tracing, traceparent_of

__all__ = [
    "CombinedGpuSource",
    "GenAI",
    "GpuSampler",
    "GpuSource",
    "Metrics",
    "OtlpReceiver",
    "OtlpServer",
    "SimulatedGpuSource",
    "Sluice",
    "Store",
    "StoreClosedError",
    "StoreError",
    "StoreLockedError",
    "StoreUnwritableError",
    "StoreWriteError",
    "annotate_request_span",
    "handle_otlp_traces",
    "open_read_only",
    "otlp_app",
    "otlp_routes",
    "setup_tracing",
    "traceparent_of",
]
