"""Each engine's SM clock and the frequency rule's target and why, in the admin state (docs/frequency.md,
controlplane/admin/state.py `engine_clocks`), as the console's GPU clock view reads them."""
from __future__ import annotations

from starlette.testclient import TestClient

from controlplane.config import Config, EngineConfig, ServerConfig
from sluice.server import create_app
from tests.fake_engine import FakeEngine
from tests.test_admin_state import problems

TOKEN = "admin-token"


def serve(tmp_path, clock_control: bool, engines: dict | None = None, names: tuple[str, ...] = ("sim-0",)):
    token = tmp_path / "admin.token"
    token.write_text(TOKEN)
    config = Config(server=ServerConfig(db_path=str(tmp_path / "s.duckdb"), admin_token_file=str(token),
                                        clock_control=clock_control),
                    engines=[EngineConfig(name=n) for n in names])
    return create_app(config, engines, store=False)


def state(client: TestClient) -> dict:
    body = client.get("/admin/v1/state", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert problems("/admin/v1/state", body) == []
    return body


def test_the_state_shows_the_rules_target_why_and_the_clock_now(tmp_path) -> None:
    app, sluice = serve(tmp_path, clock_control=True)
    with TestClient(app) as client:
        before = state(client)["engines"][0]["clock"]
        assert before["control"] and before["sm_clock_mhz"] == before["target_mhz"] == 1980.0
        pool = next(iter(sluice.pools.values()))
        assert pool.steering is not None
        pool.steering.actuate(sluice.clock(), "sim-0", 1200.0)  # a change, as the rule makes one
        pool.steering.controllers["sim-0"].current_mhz = 1200.0
        pool.steering.evaluate(sluice.clock())  # an idle engine: the rule asks for less, and holds
        clock = state(client)["engines"][0]["clock"]
    # (the cadence evaluates the rule too, every second: lowering takes 8 evaluations in a row)
    assert clock["sm_clock_mhz"] == 1200.0 and clock["status"] == "simulated"
    assert clock["target_mhz"] == 1200.0 and clock["wanted_mhz"] < 1200.0 and clock["reason"].startswith("hold: ")
    assert clock["wanted_mhz"] >= clock["slo_floor_mhz"] and clock["energy_floor_mhz"] is not None
    assert clock["ts"] is not None


def test_without_clock_control_a_simulated_engine_shows_its_clock_only(tmp_path) -> None:
    app, _ = serve(tmp_path, clock_control=False)
    with TestClient(app) as client:
        clock = state(client)["engines"][0]["clock"]
    assert clock["sm_clock_mhz"] == 1980.0 and clock["control"] is False
    assert clock["target_mhz"] is None and clock["reason"] is None


def test_an_engine_with_no_known_gpu_and_no_rule_has_no_clock(tmp_path) -> None:
    app, _ = serve(tmp_path, clock_control=False, engines={"real": FakeEngine("real")}, names=("real",))
    with TestClient(app) as client:
        assert state(client)["engines"][0]["clock"] is None
