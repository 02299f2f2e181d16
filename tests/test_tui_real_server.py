"""The console driven with Pilot against a real sluice (gateway + admin API + store) on loopback.

Changes made in the UI are checked through the admin API and the audit log; a paused tenant's
requests are refused; a wrong token and a dead server show the banner.
"""
from __future__ import annotations

import json

import pytest

from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, running_gateway
from tests.servers import free_port
from tests.test_gateway import raw
from tests.tui_fake_admin import wait_until
from tui.app import SluiceConsole
from tui.modals import ConfirmScreen, PolicyReviewScreen, WeightScreen

SIZE = (150, 42)
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def sluice_server(tmp_path):
    with running_gateway(tmp_path, {"fake": FakeEngine()}) as (server, sluice):
        yield server, sluice


def console(url: str, token: str = ADMIN) -> SluiceConsole:
    return SluiceConsole(url, token, actor="operator@test", refresh_interval=0.2, requests_interval=0.2,
                         backoff_initial=0.05, backoff_max=0.2)


async def select_tenant(pilot, app: SluiceConsole, name: str) -> None:  # type: ignore[no-untyped-def]
    """Open the tenants tab (loaded from the real server) and put the cursor on `name`."""
    await wait_until(pilot, lambda: app.tenants.table.row_count == 2, "tenants from the real server")
    await pilot.press("2")
    for _ in range(app.tenants.table.row_count):
        if app.tenants.table.cursor_key() == name:
            return
        await pilot.press("down")
    raise AssertionError(f"tenant {name!r} not in the table")


def history(server) -> list[dict]:
    return json.loads(raw(server, "GET", "/admin/v1/policy/history", headers=ADMIN_AUTH)[2])["changes"]


async def test_weight_change_in_the_console_takes_effect_and_is_audited(sluice_server) -> None:
    server, sluice = sluice_server
    app = console(server.url)
    async with app.run_test(size=SIZE) as pilot:
        await select_tenant(pilot, app, "globex")
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(app.screen, WeightScreen), "weight dialog")
        await pilot.press("end", *["backspace"] * 6, "4", "enter", *"more for globex", "enter")
        await wait_until(pilot, lambda: sluice.policy.tenant("globex").weight == 4.0, "weight applied")
    assert sluice.pool.core.scheduler.tenants["globex"].weight == 4.0
    change = history(server)[0]
    assert (change["actor"], change["reason"]) == ("operator@test", "more for globex")
    assert change["before"]["tenants"]["globex"]["weight"] == 1.0 and change["after"]["tenants"]["globex"]["weight"] == 4.0
    rows = sluice.recorder.store.cursor().execute("SELECT actor, reason FROM policy_changes "
                                                  "WHERE version > 1").fetchall()  # v1: the first start
    assert rows == [("operator@test", "more for globex")]


async def test_policy_edit_in_the_console_changes_the_scheduler(sluice_server) -> None:
    server, sluice = sluice_server
    app = console(server.url)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.policy_pane.policy is not None, "policy")
        await pilot.press("4")
        editor = app.query_one("#policy-text")
        doc = json.loads(editor.text)
        doc["scheduler"], doc["admission"] = "vtc", True
        editor.load_text(json.dumps(doc, indent=2))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, PolicyReviewScreen), "review")
        await pilot.press(*"fair share drill", "enter")
        await wait_until(pilot, lambda: sluice.policy.version == 2, "new policy version")
    assert sluice.policy.scheduler == "vtc" and sluice.pool.core.scheduler.name == "vtc"
    assert sluice.policy.admission is True
    assert history(server)[0]["reason"] == "fair share drill"


async def test_pausing_a_tenant_in_the_console_refuses_its_requests(sluice_server) -> None:
    server, sluice = sluice_server
    app = console(server.url)
    async with app.run_test(size=SIZE) as pilot:
        await select_tenant(pilot, app, "acme")
        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press(*"incident 42", "enter")
        await wait_until(pilot, lambda: sluice.policy.tenant("acme").paused, "paused")
    status, _, body = raw(server, "POST", "/v1/completions", {"model": "sluice-default", "prompt": "x", "max_tokens": 2},
                          {"Authorization": f"Bearer {KEYS['acme']}"})
    assert status == 429 and json.loads(body)["error"]["code"] == "tenant_paused"
    assert history(server)[0]["reason"] == "incident 42"


async def test_wrong_token_and_dead_server_show_the_banner(sluice_server) -> None:
    server, _ = sluice_server
    app = console(server.url, token=KEYS["acme"])  # a tenant key is refused by the admin API
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unauthorized", "refused")
    app = console(f"http://127.0.0.1:{free_port()}")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unreachable", "unreachable")
