"""The simulated GPU's readings follow the engine's activity (docs/simulator.md, "GPU") and carry
its power limit, which reaches the admin API's state and the store as a real GPU's does."""
from __future__ import annotations

import json

import pytest

from engine_adapter.sim.core import GPU_WINDOW_S, SimCore, SimRequest
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from telemetry import queries
from tests.gateway_fixtures import ADMIN, make_config
from tests.servers import ServerThread
from tests.test_gateway import raw, wait_until

SECONDS = 30.0
PROFILE = load_profile("h100-llama3.1-8b")
WEIGHTS = PROFILE.memory_used_bytes - PROFILE.kv_capacity_tokens * PROFILE.kv_bytes_per_token


def readings(rate: float, mhz: float | None = None, at: float = SECONDS) -> dict[str, float]:
    """The readings at `at` after requests (600 prompt tokens, 20 out) arriving every 1/rate s
    until SECONDS; merged decode steps (per_token=False) as replay runs them."""
    core = SimCore(PROFILE, seed=0)
    if mhz is not None:
        core.set_frequency(mhz)
    for i in range(int(rate * SECONDS)):
        t = i / rate
        core.advance(t, per_token=False)
        core.submit(t, SimRequest(f"r{i}", 600, 64, output_tokens=20))
    core.advance(at, per_token=False)
    return core.gpu(at)


def test_an_idle_gpu_reads_idle():
    g = readings(0.0)
    assert g["utilization"] == 0.0 and g["power_w"] == PROFILE.idle_w
    assert g["memory_used_bytes"] == WEIGHTS < g["memory_total_bytes"]
    assert g["sm_clock_mhz"] == PROFILE.f_max_mhz


def test_readings_rise_with_the_load():
    rates = (0.0, 1.0, 3.0, 6.0, 60.0)
    gs = [readings(r) for r in rates]
    utils = [g["utilization"] for g in gs]
    powers = [g["power_w"] for g in gs]
    assert utils == sorted(utils) and 0.0 < utils[1] < 0.5 < utils[3] and utils[-1] == pytest.approx(1.0)
    assert powers == sorted(powers) and len(set(powers)) == len(powers)  # strictly rising
    assert PROFILE.idle_w < powers[1] < powers[-1] <= PROFILE.max_w
    # an average over the window, not the power of the step running at that instant
    assert powers[1] < (PROFILE.idle_w + PROFILE.max_w) / 2
    # memory: the weights plus the KV tokens the running requests hold
    assert gs[-1]["memory_used_bytes"] > WEIGHTS
    assert (gs[-1]["memory_used_bytes"] - WEIGHTS) % PROFILE.kv_bytes_per_token == 0


def test_readings_return_to_idle_once_the_load_stops():
    busy = readings(60.0)
    after = readings(60.0, at=SECONDS + 2 * GPU_WINDOW_S)
    assert busy["utilization"] == pytest.approx(1.0) and after["utilization"] == 0.0
    assert after["power_w"] == PROFILE.idle_w and after["memory_used_bytes"] == WEIGHTS
    assert after["energy_j"] > busy["energy_j"]


def test_a_lower_clock_reads_lower_power_under_the_same_load():
    fast, slow = readings(60.0), readings(60.0, mhz=1000.0)
    assert slow["sm_clock_mhz"] == 1000.0 and fast["sm_clock_mhz"] == PROFILE.f_max_mhz
    assert slow["power_w"] < fast["power_w"]


def test_the_engine_reports_its_power_limit():
    g = SimEngine("sim-0", PROFILE).gpu()
    assert g["power_limit_w"] == PROFILE.max_w and g["utilization"] == 0.0


def test_the_power_limit_reaches_the_admin_state_and_the_store(tmp_path):
    from sluice.server import create_app

    app, _ = create_app(make_config(tmp_path, ["sim-0"]), {"sim-0": SimEngine("sim-0", PROFILE)})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    with ServerThread(app) as server:
        def gpus():
            return json.loads(raw(server, "GET", "/admin/v1/state", headers=auth)[2])["gpus"]

        wait_until(lambda: any(g["simulated"] for g in gpus()))
        g = next(g for g in gpus() if g["simulated"])
        assert g["power_limit_w"] == PROFILE.max_w and g["gpu"] == 0 and g["name"] == "sim-0 (simulated)"
        store = app.state.telemetry.store
        store.flush(timeout_s=10)
        rows = [r for r in queries.gpu_timeline(store, 0.0) if r["simulated"]]
        assert rows and rows[0]["power_limit_w"] == PROFILE.max_w
