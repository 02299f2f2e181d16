"""A fake of nvidia-ml-py's `pynvml` (the calls sluice makes, same names and return shapes), with an
optional MIG layout, for tests on machines without a GPU.

MIG as NVML shows it: `nvmlDeviceGetMigMode` -> [current, pending]; `nvmlDeviceGetMaxMigDeviceCount`
(7 on A100/H100/H200); `nvmlDeviceGetMigDeviceHandleByIndex` raises NVMLError_NotFound for an empty
slot; an instance's handle answers GetName ("<parent> MIG <profile>"), GetUUID ("MIG-..."),
GetMemoryInfo, GetGpuInstanceId, GetComputeInstanceId, GetAttributes; utilisation is NotSupported on
a MIG-enabled GPU and on its instances (NVML's documented behaviour).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

GIB, MIB = 1 << 30, 1 << 20


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's own naming
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801
    pass


class NVMLError_NotFound(NVMLError):  # noqa: N801
    pass


@dataclass
class MigInstance:
    uuid: str
    profile: str  # "3g.40gb"
    memory_mib: int  # as NVML reports the instance's total
    used_mib: int
    gpu_instance_id: int
    compute_instance_id: int = 0
    gi_slices: int = 1
    ci_slices: int | None = None  # default: the whole GPU instance


def h100_layout() -> dict[int, list[MigInstance | None]]:
    """GPU 0 of an H100 80GB carved into 3g.40gb + 2g.20gb + two 1g.10gb (7 compute slices), with an
    empty slot between the 2g and the 1g's; the memory is nvidia-smi's for those profiles."""
    return {0: [
        MigInstance("MIG-3b2c9f60-0001-5e0e-9a1c-6b1f00000001", "3g.40gb", 40448, 20_000, 2, 0, 3),
        MigInstance("MIG-3b2c9f60-0002-5e0e-9a1c-6b1f00000002", "2g.20gb", 20096, 16_500, 3, 0, 2),
        None,
        MigInstance("MIG-3b2c9f60-0003-5e0e-9a1c-6b1f00000003", "1g.10gb", 9984, 1_024, 9, 0, 1),
        MigInstance("MIG-3b2c9f60-0004-5e0e-9a1c-6b1f00000004", "1g.10gb", 9984, 0, 10, 0, 1),
    ]}


class FakeNvml:
    NVML_CLOCK_SM = 1
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_DEVICE_MIG_DISABLE = 0

    def __init__(self, count=2, init_error=None, unsupported=(), mig=None, profile_in_name=True):
        self.count = count
        self.init_error = init_error
        self.unsupported = set(unsupported)  # "power", "energy", "utilization", "mig"
        self.energy_mj = 2**40  # far beyond 32 bits: catches a c_uint-style overflow
        self.mig = mig or {}  # GPU index -> its instances by MIG device index (None: an empty slot)
        self.profile_in_name = profile_in_name

    def _check(self, what):
        if what in self.unsupported:
            raise NVMLError_NotSupported("Not Supported")

    def _instance(self, h):
        _, gpu, k = h
        return self.mig[gpu][k]

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetName(self, h):
        if h[0] == "mig":
            return f"NVIDIA H100 80GB HBM3 MIG {self._instance(h).profile}" if self.profile_in_name else "MIG Device"
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return self._instance(h).uuid if h[0] == "mig" else f"GPU-00000000-0000-0000-0000-00000000000{h[1]}"

    def nvmlDeviceGetPowerUsage(self, h):
        self._check("power")
        return 412_345  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._check("energy")
        return self.energy_mj + h[1]

    def nvmlDeviceGetClockInfo(self, h, kind):
        assert kind == self.NVML_CLOCK_SM
        return 1980

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check("utilization")
        if h[0] == "mig" or h[1] in self.mig:
            raise NVMLError_NotSupported("Not Supported")  # NVML: not supported on MIG-enabled GPUs
        return SimpleNamespace(gpu=93, memory=40)

    def nvmlDeviceGetMemoryInfo(self, h):
        if h[0] == "mig":
            m = self._instance(h)
            return SimpleNamespace(total=m.memory_mib * MIB, used=m.used_mib * MIB, free=(m.memory_mib - m.used_mib) * MIB)
        return SimpleNamespace(total=80 * GIB, used=70 * GIB, free=10 * GIB)

    # -- MIG ----------------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, h):
        self._check("mig")
        mode = self.NVML_DEVICE_MIG_ENABLE if h[1] in self.mig else self.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7 if h[1] in self.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, k):
        slots = self.mig.get(h[1], [])
        if k >= len(slots) or slots[k] is None:
            raise NVMLError_NotFound("Not Found")
        return ("mig", h[1], k)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h):
        return ("handle", h[1])

    def nvmlDeviceGetGpuInstanceId(self, h):
        return self._instance(h).gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, h):
        return self._instance(h).compute_instance_id

    def nvmlDeviceGetAttributes(self, h):
        m = self._instance(h)
        return SimpleNamespace(gpuInstanceSliceCount=m.gi_slices, computeInstanceSliceCount=m.ci_slices or m.gi_slices,
                               memorySizeMB=m.memory_mib, multiprocessorCount=16 * m.gi_slices)
