"""Collectors read at scrape time for ``Metrics``: the latest GPU readings and the store's counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class GpuCollector(Collector):
    """Whole GPUs as `sluice_gpu_*{gpu, name}`; MIG instances in families of their own,
    `sluice_gpu_mig_memory_{used,total}_bytes{gpu, mig, profile}`, so that summing a family never
    counts a GPU's memory twice (NVML gives an instance its memory, not its power, clock or
    utilisation: telemetry/nvml.py)."""

    def __init__(self) -> None:
        self.latest: list[dict[str, Any]] = []

    def collect(self) -> Iterable[Metric]:
        rows = [s for s in self.latest if not s.get("mig")]
        yield from self._whole(rows)
        yield from self._mig([s for s in self.latest if s.get("mig")], rows)

    @staticmethod
    def _mig(instances: list[dict[str, Any]], gpus: list[dict[str, Any]]) -> Iterable[Metric]:
        mode = GaugeMetricFamily("sluice_gpu_mig_mode", "MIG enabled on the GPU (1) or not (0)", labels=["gpu", "name"])
        for s in gpus:
            if s.get("mig_mode") is not None:
                mode.add_metric([str(s.get("gpu", "")), str(s.get("name") or "")], 1.0 if s["mig_mode"] else 0.0)
        labels = ["gpu", "mig", "profile"]
        used = GaugeMetricFamily("sluice_gpu_mig_memory_used_bytes", "MIG instance memory used", labels=labels)
        total = GaugeMetricFamily("sluice_gpu_mig_memory_total_bytes", "MIG instance memory", labels=labels)
        for s in instances:
            values = [str(s.get("gpu", "")), str(s["mig"]), str(s.get("mig_profile") or "")]
            if s.get("memory_used_bytes") is not None:
                used.add_metric(values, float(s["memory_used_bytes"]))
            if s.get("memory_total_bytes") is not None:
                total.add_metric(values, float(s["memory_total_bytes"]))
        yield from (mode, used, total)

    @staticmethod
    def _whole(latest: list[dict[str, Any]]) -> Iterable[Metric]:
        gauges = {
            "power_w": GaugeMetricFamily("sluice_gpu_power_watts", "GPU power draw", labels=["gpu", "name"]),
            "sm_clock_mhz": GaugeMetricFamily("sluice_gpu_sm_clock_mhz", "GPU SM clock", labels=["gpu", "name"]),
            "utilization": GaugeMetricFamily("sluice_gpu_utilization", "GPU utilisation (0..1)",
                                             labels=["gpu", "name"]),
            "memory_used_bytes": GaugeMetricFamily("sluice_gpu_memory_used_bytes", "GPU memory used",
                                                   labels=["gpu", "name"]),
        }
        energy = CounterMetricFamily("sluice_gpu_energy_joules", "GPU energy since driver load",
                                     labels=["gpu", "name"])
        for s in latest:
            labels = [str(s.get("gpu", "")), str(s.get("name") or "")]
            for key, fam in gauges.items():
                if s.get(key) is not None:
                    fam.add_metric(labels, float(s[key]))
            if s.get("energy_j") is not None:
                energy.add_metric(labels, float(s["energy_j"]))
        yield from gauges.values()
        yield energy


class StoreCollector(Collector):
    def __init__(self) -> None:
        self.stats: Callable[[], Mapping[str, Any]] | None = None

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily("sluice_store_lag_seconds", "Age of the oldest row not yet written")
        pending = GaugeMetricFamily("sluice_store_pending_rows", "Rows queued for the store", labels=["table"])
        written = CounterMetricFamily("sluice_store_written_rows", "Rows written to the store", labels=["table"])
        dropped = CounterMetricFamily("sluice_store_dropped_rows", "Rows given up (counted loss)",
                                      labels=["table"])
        failures = CounterMetricFamily("sluice_store_write_failures", "Failed batch writes (retried)")
        if self.stats is not None:
            try:
                st = self.stats()
            except Exception:  # a closed store: export nothing rather than fail the scrape
                st = None
            if st:
                lag.add_metric([], float(st.get("lag_s") or 0.0))
                for t, n in st.get("pending", {}).items():
                    pending.add_metric([t], n)
                for t, n in st.get("written", {}).items():
                    written.add_metric([t], n)
                for t, n in st.get("dropped", {}).items():
                    dropped.add_metric([t], n)
                failures.add_metric([], st.get("write_failures", 0))
        yield from (lag, pending, written, dropped, failures)
