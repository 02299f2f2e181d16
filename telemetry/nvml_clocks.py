"""GPU SM clock control through NVML, the actuator of the frequency rule: locked clocks, else
application clocks, else a dry run that never fails serving. The readings are in telemetry.nvml."""

from __future__ import annotations

import threading
from typing import Any

from .nvml import _describe, _is, log  # one logger for all of sluice's NVML lines

NVML_CLOCK_MEM = 2


class NvmlClocks:
    """Locks GPUs' SM clocks for the frequency rule (controlplane/core/frequency.py), never failing
    serving.

    Locked clocks, ``nvmlDeviceSetGpuLockedClocks(h, f, f)`` (Volta and newer), are the actuator;
    where a GPU does not support them, application clocks, ``nvmlDeviceSetApplicationsClocks(h,
    mem, f)`` with the memory clock it runs at now. Both need root: where NVML refuses
    (``NVMLError_NoPermission``), or there is no GPU, no library or no support (MIG), the controller
    runs dry: one clear log line per GPU and reason, the target kept and reported (``status``), and
    nothing raised. ``nvml_module`` injects a fake (same call names) for tests.
    """

    def __init__(self, nvml_module: Any | None = None) -> None:
        self._nvml = nvml_module
        self._ready: bool | None = None
        self._why = ""
        self._lock = threading.Lock()
        self._logged: set[tuple[int, str]] = set()
        self.targets: dict[int, float] = {}
        self.status: dict[int, str] = {}  # per GPU: "locked", "application clocks" or "dry run: <reason>"

    def _init(self) -> bool:
        if self._ready is None:
            try:
                if self._nvml is None:
                    import pynvml

                    self._nvml = pynvml
                self._nvml.nvmlInit()
                self._ready = True
            except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
                self._ready, self._why = False, f"no GPU ({_describe(exc)})"
        return self._ready

    def set_sm_clock(self, gpu: int, mhz: float) -> str:
        """Lock GPU `gpu`'s SM clock at `mhz` (min = max); returns how it went (see `status`)."""
        with self._lock:
            self.targets[gpu] = mhz
            if not self._init():
                return self._dry(gpu, mhz, self._why)
            nvml, f = self._nvml, int(round(mhz))
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(gpu)
                try:
                    nvml.nvmlDeviceSetGpuLockedClocks(h, f, f)
                    return self._done(gpu, "locked")
                except Exception as exc:
                    if not _is(exc, "NotSupported"):
                        raise
                mem = nvml.nvmlDeviceGetClockInfo(h, getattr(nvml, "NVML_CLOCK_MEM", NVML_CLOCK_MEM))
                nvml.nvmlDeviceSetApplicationsClocks(h, int(mem), f)
                return self._done(gpu, "application clocks")
            except Exception as exc:
                why = ("not permitted (setting GPU clocks needs root: NVMLError_NoPermission)"
                       if _is(exc, "NoPermission") else _describe(exc))
                return self._dry(gpu, mhz, why)

    def reset(self, gpu: int) -> None:
        """Give the clock back to the driver (at shutdown); silent where nothing was locked."""
        with self._lock:
            self.targets.pop(gpu, None)
            how = self.status.get(gpu)
            if how not in ("locked", "application clocks") or not self._ready:
                return
            try:
                h = self._nvml.nvmlDeviceGetHandleByIndex(gpu)
                if how == "locked":
                    self._nvml.nvmlDeviceResetGpuLockedClocks(h)
                else:
                    self._nvml.nvmlDeviceResetApplicationsClocks(h)
                log.info("GPU %d: SM clock given back to the driver (sluice had set %s)", gpu, how)
            except Exception as exc:
                log.warning("GPU %d: could not reset its clocks: %s", gpu, _describe(exc))
            self.status.pop(gpu, None)

    def close(self) -> list[int]:
        """At shutdown: reset every GPU whose clock sluice set (locked clocks outlive the process,
        until `nvidia-smi -rgc` or a reboot), then release NVML. Returns those GPUs; never raises."""
        with self._lock:
            gpus = sorted(g for g, how in self.status.items() if how in ("locked", "application clocks"))
        for gpu in gpus:
            self.reset(gpu)
        with self._lock:
            if self._ready:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:  # noqa: BLE001 - shutting down: nothing left to protect
                    log.debug("nvmlShutdown: %s", _describe(exc))
            self._ready = None
        return gpus

    def _done(self, gpu: int, how: str) -> str:
        self.status[gpu] = how
        return how

    def _dry(self, gpu: int, mhz: float, why: str) -> str:
        if (gpu, why) not in self._logged:
            self._logged.add((gpu, why))
            log.warning("GPU %d: SM clock control runs dry (targets are computed and recorded, the clock is "
                        "not set): %s", gpu, why)
        return self._done(gpu, f"dry run: {why}")
