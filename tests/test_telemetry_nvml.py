"""GPU readings through an injected fake NVML, absent GPUs as a normal state, simulated GPUs."""

from __future__ import annotations

import sys

from telemetry.nvml import SAMPLE_KEYS, CombinedGpuSource, GpuSampler, SimulatedGpuSource
from tests.fake_nvml import FakeNvml, NVMLError, NVMLError_LibraryNotFound, NVMLError_NotSupported

__all__ = ["FakeNvml", "NVMLError", "NVMLError_LibraryNotFound", "NVMLError_NotSupported"]  # test_frequency's


def test_sample_every_gpu_in_si_units():
    s = GpuSampler(FakeNvml(), clock=lambda: 123.0)
    rows = s.sample()
    assert s.status == "ok" and len(rows) == 2
    r = rows[1]
    assert set(r) == set(SAMPLE_KEYS)
    assert r["gpu"] == 1 and r["name"] == "NVIDIA H100 80GB HBM3" and r["simulated"] is False
    assert r["power_w"] == 412.345 and r["energy_j"] == (2**40 + 1) / 1000.0
    assert r["sm_clock_mhz"] == 1980 and r["utilization"] == 0.93 and r["ts"] == 123.0
    assert r["memory_used_bytes"] == 70 * 2**30 and r["memory_total_bytes"] == 80 * 2**30


def test_unsupported_readings_are_none_not_errors():
    rows = GpuSampler(FakeNvml(count=1, unsupported={"utilization", "energy"})).sample()
    assert rows[0]["utilization"] is None and rows[0]["energy_j"] is None and rows[0]["power_w"] == 412.345


def test_no_driver_is_a_normal_state():
    s = GpuSampler(FakeNvml(init_error=NVMLError_LibraryNotFound("NVML Shared Library Not Found")))
    assert s.sample() == []
    assert s.status.startswith("no GPU:") and "Library Not Found" in s.status


def test_zero_devices_is_a_normal_state():
    s = GpuSampler(FakeNvml(count=0))
    assert s.sample() == [] and s.status == "no GPU: NVML reports zero devices"


def test_missing_bindings_are_a_normal_state(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    s = GpuSampler()
    assert s.sample() == [] and s.status.startswith("no GPU: NVML bindings not installed")


def test_real_nvml_on_this_machine_never_raises():
    s = GpuSampler()
    rows = s.sample()
    assert s.status == "ok" or (s.status.startswith("no GPU:") and rows == [])
    s.close()


def test_simulated_source_reports_through_the_same_interface():
    sim = SimulatedGpuSource(lambda: [{"index": 0, "name": "H100 (simulated)", "power_w": 300.0, "energy_j": 5.0,
                                        "sm_clock_mhz": 1400, "utilization": 0.5}], clock=lambda: 9.0)
    rows = sim.sample()
    assert rows[0]["simulated"] is True and rows[0]["gpu"] == 0 and rows[0]["ts"] == 9.0
    assert rows[0]["memory_used_bytes"] is None and set(rows[0]) == set(SAMPLE_KEYS)
    both = CombinedGpuSource(GpuSampler(FakeNvml(count=0)), sim)
    assert both.status == "ok" and len(both.sample()) == 1


def test_a_failing_simulated_source_is_reported_not_raised():
    def boom():
        raise RuntimeError("sim stopped")

    sim = SimulatedGpuSource(boom)
    assert sim.sample() == [] and "sim stopped" in sim.status
