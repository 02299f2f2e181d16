"""Snapshot tests of the console's main screens (pytest-textual-snapshot, fixed terminal size).

The data is the fake admin API's frozen data; the sparklines get a deterministic history by
injecting `state_at(1..60)` (server times after the fake's frozen `now`, so the fake's own
periodic answers are older and ignored). Nothing rendered depends on the wall clock: times are
the server's, shown in UTC. Regenerate with `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from textual.widgets import Input, TextArea

from tests.tui_fake_admin import FakeAdmin, fake_admin, state_at, wait_until  # noqa: F401 - fixture
from tui.app import SluiceConsole
from tui.trace import TraceScreen

SIZE = (150, 42)


def console(fake: FakeAdmin) -> SluiceConsole:
    # long intervals: one read at start, then nothing changes under the snapshot
    return SluiceConsole(fake.url, fake.token, actor="tester", refresh_interval=3600.0,
                         requests_interval=3600.0)


def prepare(*keys: str, then: Callable[[Any], Awaitable[None]] | None = None) -> Callable[[Any], Awaitable[None]]:
    async def run_before(pilot: Any) -> None:
        app: SluiceConsole = pilot.app
        app.animation_level = "none"
        await wait_until(pilot, lambda: app.state is not None and app.policy_pane.policy is not None
                         and app.query_one("#history").row_count == 3
                         and len(app.requests_pane.store) == 14, "initial load")
        app.sub_title = "http://sluice.example:8080"  # the fake's port changes between runs
        for i in range(1, 61):
            app.ingest_state(state_at(i))
        for widget in app.query(Input):
            widget.cursor_blink = False
        for area in app.query(TextArea):
            area.cursor_blink = False
        if keys:
            await pilot.press(*keys)
        app.requests_pane.render_rows()
        await pilot.pause()
        if then is not None:
            await then(pilot)
        await pilot.pause()

    return run_before


def test_overview(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare())


def test_tenants(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("2"))


def test_requests(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("3"))


def test_policy(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("4"))


def test_policy_review(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    async def edit(pilot: Any) -> None:
        editor = pilot.app.query_one("#policy-text", TextArea)
        doc = json.loads(editor.text)
        doc["scheduler"] = "vtc"
        doc["holistic_alpha"] = 0.7
        doc["tenants"]["umbrella"]["rate_limit_rps"] = 5.0
        editor.load_text(json.dumps(doc, indent=2))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: pilot.app.screen.query_one("#review-reason"), "review dialog")
        for widget in pilot.app.screen.query(Input):
            widget.cursor_blink = False
        await pilot.press(*"batch tenants were starving")

    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("4", then=edit))


def test_trace(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    async def open_trace(pilot: Any) -> None:
        await pilot.press("down", "down", "down", "enter")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, TraceScreen) and pilot.app.screen.trace,
                         "trace")
        pilot.app.screen.sub_title = "trace of req-0998"
        await pilot.press("down", "down", "down", "down", "down")  # the engine's prefill span

    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("3", then=open_trace))


def test_help(snap_compare: Any, fake_admin: FakeAdmin) -> None:
    assert snap_compare(console(fake_admin), terminal_size=SIZE, run_before=prepare("question_mark"))
