"""GPU readings through NVML (nvidia-ml-py's ``pynvml``), or from a simulated engine.

No GPU, no driver or no library is a normal state: ``sample()`` returns ``[]`` and ``status``
says ``"no GPU: <reason>"``. A reading a device does not support is ``None``.

Every source yields dicts with the ``gpu_samples`` columns: ``ts, gpu, name, simulated, power_w,
energy_j, sm_clock_mhz, utilization (0..1), memory_used_bytes, memory_total_bytes, power_limit_w``
(the enforced power limit, what a chart of the power is scaled to), and the MIG columns: ``mig_mode``
(on a whole GPU's row: MIG enabled or not; None where the GPU has no MIG) and, on one extra row per
MIG instance, ``mig`` (its NVML UUID, ``MIG-...``), ``mig_profile`` (``3g.40gb``),
``gpu_instance_id`` and ``compute_instance_id``; ``gpu`` is the parent's index.

What NVML gives of a MIG instance: its memory (total and used, ``nvmlDeviceGetMemoryInfo`` on the
instance's handle) and its identity. Not its utilisation: ``nvmlDeviceGetUtilizationRates`` is not
supported on MIG-enabled GPUs, neither on the GPU nor on an instance (per-instance activity needs
DCGM's profiling fields), so both rows' ``utilization`` is None. Power, energy, clocks and the power
limit belong to the whole GPU: they are on its row only.

Setting the SM clock (the frequency rule's actuator) is telemetry.nvml_clocks.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Protocol

log = logging.getLogger("sluice.telemetry.nvml")

SAMPLE_KEYS = ("ts", "gpu", "name", "simulated", "power_w", "energy_j", "sm_clock_mhz", "utilization",
               "memory_used_bytes", "memory_total_bytes", "power_limit_w", "mig_mode", "mig", "mig_profile",
               "gpu_instance_id", "compute_instance_id")
NVML_DEVICE_MIG_ENABLE = 1
_PROFILE = re.compile(r"(?:\d+c\.)?\d+g\.\d+gb(?:\+me)?")
NVML_CLOCK_SM = 1


class GpuSource(Protocol):
    """Anything that reports GPU readings: the NVML sampler or a simulated engine."""

    @property
    def status(self) -> str: ...

    def sample(self) -> list[dict[str, Any]]: ...


class GpuSampler:
    """Reads every GPU through NVML. ``nvml_module`` injects a fake (same call names) for tests."""

    def __init__(self, nvml_module: Any | None = None, clock: Callable[[], float] = time.time) -> None:
        self._nvml = nvml_module
        self._clock = clock
        self._handles: list[tuple[int, Any, str]] | None = None
        self._status = "not started"
        self._lock = threading.Lock()
        self._warned: set[tuple[int, str]] = set()
        self._no_mig: set[int] = set()  # GPUs without MIG (NotSupported): never asked again

    @property
    def status(self) -> str:
        """``"ok"`` or ``"no GPU: <reason>"`` (``"not started"`` before the first sample)."""
        return self._status

    def _init(self) -> None:
        if self._handles is not None:
            return
        self._handles = []
        try:
            nvml = self._nvml
            if nvml is None:
                import pynvml as nvml  # nvidia-ml-py; importing never loads the library

                self._nvml = nvml
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            for i in range(count):
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(h)
                if isinstance(name, bytes):
                    name = name.decode(errors="replace")
                self._handles.append((i, h, str(name)))
        except ImportError as exc:
            self._status = f"no GPU: NVML bindings not installed ({exc})"
            return
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self._status = f"no GPU: {_describe(exc)}"
            self._handles = []
            return
        self._status = "ok" if self._handles else "no GPU: NVML reports zero devices"

    def sample(self) -> list[dict[str, Any]]:
        """One reading per GPU now; ``[]`` when there is no GPU."""
        with self._lock:
            self._init()
            if not self._handles:
                return []
            ts = self._clock()
            nvml = self._nvml
            out = []
            for i, h, name in self._handles:
                power = self._read(i, "power", partial(nvml.nvmlDeviceGetPowerUsage, h))  # mW
                energy = self._read(i, "energy", partial(nvml.nvmlDeviceGetTotalEnergyConsumption, h))  # mJ
                clock = self._read(i, "clock", partial(nvml.nvmlDeviceGetClockInfo, h,
                                                       getattr(nvml, "NVML_CLOCK_SM", NVML_CLOCK_SM)))
                util = self._read(i, "utilization", partial(nvml.nvmlDeviceGetUtilizationRates, h))
                mem = self._read(i, "memory", partial(nvml.nvmlDeviceGetMemoryInfo, h))
                # the enforced limit (the lower of the board limit and any operator cap), mW
                limit = self._read(i, "power limit", partial(_call, nvml, "nvmlDeviceGetEnforcedPowerLimit", h))
                mig_mode = self._mig_mode(i, h)
                out.append({
                    **_EMPTY,
                    "ts": ts,
                    "gpu": i,
                    "name": name,
                    "simulated": False,
                    "power_w": power / 1000.0 if power is not None else None,
                    "energy_j": energy / 1000.0 if energy is not None else None,
                    "sm_clock_mhz": float(clock) if clock is not None else None,
                    "utilization": util.gpu / 100.0 if util is not None else None,
                    "memory_used_bytes": int(mem.used) if mem is not None else None,
                    "memory_total_bytes": int(mem.total) if mem is not None else None,
                    "power_limit_w": limit / 1000.0 if limit is not None else None,
                    "mig_mode": mig_mode,
                })
                if mig_mode:
                    out.extend(self._mig_rows(i, h, name, ts))
            return out

    def _mig_mode(self, gpu: int, h: Any) -> bool | None:
        """MIG's current mode on the GPU (None: it has none; asked once). Read every sample: an
        operator may change it while sluice runs."""
        if gpu in self._no_mig:
            return None
        try:
            current, _pending = _call(self._nvml, "nvmlDeviceGetMigMode", h)
        except Exception as exc:
            if isinstance(exc, AttributeError) or _is(exc, "NotSupported") or _is(exc, "FunctionNotFound"):
                self._no_mig.add(gpu)
            else:
                self._warn(gpu, "MIG mode", exc)
            return None
        return int(current) == getattr(self._nvml, "NVML_DEVICE_MIG_ENABLE", NVML_DEVICE_MIG_ENABLE)

    def _mig_rows(self, gpu: int, h: Any, parent: str, ts: float) -> list[dict[str, Any]]:
        """One row per MIG instance (NVML's MIG device: a compute instance) of a MIG-enabled GPU."""
        nvml = self._nvml
        count = self._read(gpu, "MIG device count", partial(_call, nvml, "nvmlDeviceGetMaxMigDeviceCount", h)) or 0
        rows = []
        for k in range(int(count)):
            try:
                mh = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except Exception as exc:
                if not (_is(exc, "NotFound") or _is(exc, "InvalidArgument")):  # else an empty slot
                    self._warn(gpu, "MIG device", exc)
                continue
            name = _text(self._read(gpu, "MIG name", partial(nvml.nvmlDeviceGetName, mh)))
            mem = self._read(gpu, "MIG memory", partial(nvml.nvmlDeviceGetMemoryInfo, mh))
            profile = mig_profile(name) or self._profile_of(gpu, mh)
            rows.append({
                **_EMPTY, "ts": ts, "gpu": gpu, "name": name or f"{parent} MIG {profile or '?'}", "simulated": False,
                "memory_used_bytes": int(mem.used) if mem is not None else None,
                "memory_total_bytes": int(mem.total) if mem is not None else None,
                "mig": _text(self._read(gpu, "MIG UUID", partial(nvml.nvmlDeviceGetUUID, mh))),
                "mig_profile": profile,
                "gpu_instance_id": self._read(gpu, "GPU instance id",
                                              partial(_call, nvml, "nvmlDeviceGetGpuInstanceId", mh)),
                "compute_instance_id": self._read(gpu, "compute instance id",
                                                  partial(_call, nvml, "nvmlDeviceGetComputeInstanceId", mh)),
            })
        return rows

    def _profile_of(self, gpu: int, mh: Any) -> str | None:
        """A profile name from the instance's attributes, where its NVML name does not carry one:
        "<c>c." when the compute instance has fewer slices than its GPU instance, "<g>g.<GB>gb"."""
        a = self._read(gpu, "MIG attributes", partial(_call, self._nvml, "nvmlDeviceGetAttributes", mh))
        if a is None:
            return None
        g, c = int(a.gpuInstanceSliceCount), int(a.computeInstanceSliceCount)
        return f"{f'{c}c.' if c < g else ''}{g}g.{math.ceil(int(a.memorySizeMB) / 1024)}gb"

    def _read(self, gpu: int, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # NotSupported (e.g. utilisation under MIG), GPU lost, ...
            self._warn(gpu, what, exc)
            return None

    def _warn(self, gpu: int, what: str, exc: BaseException) -> None:
        if (gpu, what) not in self._warned:
            self._warned.add((gpu, what))
            log.info("GPU %d: %s unavailable: %s", gpu, what, _describe(exc))
        if "lost" in type(exc).__name__.lower():
            self._status = f"no GPU: GPU {gpu} is lost"

    def close(self) -> None:
        with self._lock:
            if self._handles and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
            self._handles = None
            self._status = "not started"


class SimulatedGpuSource:
    """Readings from a simulated engine: ``readings()`` returns dicts with the sample keys.

    ``simulated`` is forced to True and ``ts`` filled in when absent.
    """

    def __init__(self, readings: Callable[[], Iterable[Mapping[str, Any]]],
                 clock: Callable[[], float] = time.time) -> None:
        self._readings = readings
        self._clock = clock
        self._status = "ok"

    @property
    def status(self) -> str:
        return self._status

    def sample(self) -> list[dict[str, Any]]:
        try:
            rows = [dict(r) for r in self._readings()]
        except Exception as exc:
            self._status = f"no GPU: simulated source failed ({exc})"
            return []
        ts = self._clock()
        out = []
        for i, r in enumerate(rows):
            row = {k: r.get(k) for k in SAMPLE_KEYS}
            row["ts"] = r.get("ts", ts)
            row["gpu"] = r.get("gpu", r.get("index", i))
            row["simulated"] = True
            out.append(row)
        self._status = "ok" if out else "no GPU: simulated source has no GPUs"
        return out


class CombinedGpuSource:
    """Real and simulated GPUs together (status "ok" if any source is ok)."""

    def __init__(self, *sources: GpuSource) -> None:
        self.sources = sources

    @property
    def status(self) -> str:
        statuses = [s.status for s in self.sources]
        if any(st == "ok" for st in statuses):
            return "ok"
        return statuses[0] if statuses else "no GPU: no sources"

    def sample(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for s in self.sources:
            out.extend(s.sample())
        return out


_EMPTY: dict[str, Any] = dict.fromkeys(SAMPLE_KEYS)


def mig_profile(device_name: str | None) -> str | None:
    """The MIG profile in an instance's NVML name ("NVIDIA H100 80GB HBM3 MIG 3g.40gb" -> "3g.40gb")."""
    found = _PROFILE.search(device_name or "")
    return found.group(0) if found else None


def unknown_mig_bindings(bindings: Mapping[str, str], rows: Iterable[Mapping[str, Any]], status: str) -> list[str]:
    """One line per engine bound (``mig = "MIG-..."``) to an instance NVML does not list."""
    seen = {r["mig"]: r for r in rows if r.get("mig")}
    listed = ", ".join(f"{u} (GPU {r['gpu']} {r.get('mig_profile') or '?'})" for u, r in seen.items())
    if not listed:
        listed = f"none: {status}" if status != "ok" else "none: no GPU has MIG enabled"
    return [f"engine {engine!r}: mig = {uuid!r} is not a MIG instance NVML lists (instances: {listed}; "
            "`nvidia-smi -L` prints them)" for engine, uuid in bindings.items() if uuid not in seen]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _is(exc: BaseException, kind: str) -> bool:
    """Whether an NVML error is of `kind` (pynvml names its classes NVMLError_<Kind>)."""
    return any(kind.lower() in c.__name__.lower() for c in type(exc).__mro__)


def _call(module: Any, name: str, *args: Any) -> Any:
    """module.name(*args), looked up at call time: older bindings (and fakes) may lack a call."""
    return getattr(module, name)(*args)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
