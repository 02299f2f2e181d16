"""The console's GPU clock view (each engine's SM clock, the frequency rule's target and why, on the
overview) and the tenants' energy column, against the fake admin API."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tests.tui_fake_admin import FakeAdmin, fake_admin, state_at, wait_until  # noqa: F401 - fake_admin is a fixture
from tui.app import SluiceConsole
from tui.overview import clock_cell
from tui.tenants import COLUMN_KEYS

SIZE = (150, 42)


def make_app(fake: FakeAdmin) -> SluiceConsole:
    return SluiceConsole(fake.url, fake.token, actor="tester", refresh_interval=0.2, requests_interval=0.2)


def cell(app: SluiceConsole, table: str, row: str, column: str) -> str:
    t = app.query_one(f"#{table}")
    value = t.cells_of(row)[[c[0] for c in t.column_spec].index(column)]
    return value.plain if isinstance(value, Text) else str(value)


async def test_each_engine_shows_its_clock_the_target_and_why(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None and app.query_one("#engines").row_count == 3, "state")
        assert cell(app, "engines", "sim-0", "clock") == "990 energy"  # held at the energy floor
        assert cell(app, "engines", "sim-1", "clock") == "1410→1680 SLO"  # raising for the SLO
        assert cell(app, "engines", "h100-a", "clock") == "1980 SLO dry"  # the target, not set: no root
        line = app.query_one("#engine-clock", Static)
        assert line.display
        text = str(line.render())
        assert text.startswith("sim-0: SM 990 MHz now, target 990 (wants 990; floors: SLO 840, energy 990) · "
                               "hold: energy: below 990 MHz")
        await pilot.press("down")  # the next engine's why
        await wait_until(pilot, lambda: str(line.render()).startswith("sim-1: SM 1410 MHz now, target 1680"),
                         "sim-1's clock")
        assert "raise: SLO: below 1680 MHz" in str(line.render())


def test_an_engine_without_the_rule_shows_its_clock_only() -> None:
    assert clock_cell({"sm_clock_mhz": 1980.0, "control": False}).plain == "1980 fixed"
    assert clock_cell(None).plain == "–"
    hold_min = {"sm_clock_mhz": 345.0, "control": True, "target_mhz": 345.0,
                "reason": "hold: the SLO holds with margin at the minimum clock", "status": "simulated"}
    assert clock_cell(hold_min).plain == "345 min"


async def test_the_clock_line_is_hidden_without_clock_control(fake_admin: FakeAdmin, monkeypatch) -> None:
    def without_rule() -> dict:
        state = state_at(0, fake_admin.policy)
        for engine in state["engines"]:
            engine["clock"] = {"sm_clock_mhz": 1980.0, "control": False, "target_mhz": None, "wanted_mhz": None,
                               "slo_floor_mhz": None, "energy_floor_mhz": None, "reason": None, "ts": None,
                               "status": None}
        return state

    monkeypatch.setattr(fake_admin, "state", without_rule)
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None and app.query_one("#engines").row_count == 3, "state")
        assert cell(app, "engines", "sim-0", "clock") == "1980 fixed"
        assert not app.query_one("#engine-clock", Static).display


async def test_tenants_show_their_energy(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.tenants.table.row_count == 6, "tenants")
        assert "energy" in COLUMN_KEYS
        joules = {t["name"]: t["energy_j"] for t in app.state["tenants"]}
        assert cell(app, "tenant-table", "acme", "energy") == f"{joules['acme'] / 1e3:.1f}k"
        app.tenants.sort_by("energy", reverse=True)
        assert app.tenants.table.row_keys[0] == max(joules, key=joules.__getitem__)
