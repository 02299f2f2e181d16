"""Locked GPU clocks outlive the process (until `nvidia-smi -rgc` or a reboot): when sluice stops,
every clock it set is given back to the driver (telemetry/nvml_clocks.py `NvmlClocks.close`, called by
the server's shutdown), against the fake NVML."""
from __future__ import annotations

import sys
import time

from starlette.testclient import TestClient

from controlplane.config import Config, EngineConfig, ServerConfig
from sluice.server import create_app
from telemetry.nvml_clocks import NvmlClocks
from tests.fake_engine import FakeEngine
from tests.test_frequency import ClockNvml, NVMLError_NoPermission


class ResettableNvml(ClockNvml):
    """The clock fake with application-clock resets and NVML's shutdown recorded too."""

    def nvmlDeviceResetApplicationsClocks(self, h):  # noqa: N802
        self.calls.append(("reset application", h[1]))

    def nvmlShutdown(self):  # noqa: N802
        self.calls.append(("shutdown",))


def test_close_resets_what_was_set_and_nothing_else() -> None:
    nv = ResettableNvml()
    clocks = NvmlClocks(nv)
    assert clocks.set_sm_clock(0, 1200.0) == "locked"
    nv.locked_supported = False
    assert clocks.set_sm_clock(1, 990.0) == "application clocks"
    assert clocks.close() == [0, 1]
    assert nv.calls[-3:] == [("reset", 0), ("reset application", 1), ("shutdown",)]
    assert clocks.status == {} and clocks.targets == {}
    assert clocks.close() == []  # twice: nothing left to give back


def test_close_after_a_dry_run_touches_no_clock() -> None:
    nv = ResettableNvml(refuse=NVMLError_NoPermission)
    clocks = NvmlClocks(nv)
    assert clocks.set_sm_clock(0, 1200.0).startswith("dry run: not permitted")
    assert clocks.close() == []
    assert not [c for c in nv.calls if c[0].startswith("reset")]


def test_the_server_gives_the_locked_clock_back_when_it_stops(tmp_path, monkeypatch) -> None:
    nv = ResettableNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)  # what NvmlClocks (and the GPU sampler) import
    config = Config(server=ServerConfig(db_path=str(tmp_path / "s.duckdb"), clock_control=True),
                    engines=[EngineConfig(name="gpu0", kind="sglang", url="http://127.0.0.1:9", gpu=0)])
    app, sluice = create_app(config, {"gpu0": FakeEngine("gpu0")}, store=False)
    with TestClient(app):
        pool = next(iter(sluice.pools.values()))
        assert pool.steering is not None
        pool.steering.actuate(time.time(), "gpu0", 1200.0)  # the frequency rule lowering the clock
        assert pool.clock_status == {"gpu0": "locked"} and ("locked", 0, 1200, 1200) in nv.calls
        assert ("reset", 0) not in nv.calls
    assert ("reset", 0) in nv.calls  # at shutdown, after the engines stopped
    assert nv.calls.index(("reset", 0)) > nv.calls.index(("locked", 0, 1200, 1200))


def test_without_a_real_gpu_there_is_nothing_to_give_back(tmp_path, monkeypatch) -> None:
    nv = ResettableNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    config = Config(server=ServerConfig(db_path=str(tmp_path / "s.duckdb"), clock_control=True),
                    engines=[EngineConfig(name="sim-0")])
    app, _ = create_app(config, store=False)
    with TestClient(app):
        pass
    assert not [c for c in nv.calls if c[0] in ("locked", "reset")]
