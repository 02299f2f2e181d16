"""The operator console driven with Textual's Pilot against the fake admin API (tests/tui_fake_admin.py)."""

from __future__ import annotations

import json

from textual.widgets import Button, Input, OptionList, Static, TextArea

from tests.tui_fake_admin import (  # noqa: F401 - fake_admin is a fixture
    NOW,
    TENANT_KEY,
    FakeAdmin,
    fake_admin,
    free_port,
    serve_fake,
    wait_until,
)
from tui.app import SluiceConsole
from tui.format import policy_document
from tui.modals import ConfirmScreen, HelpScreen, PolicyReviewScreen, WeightScreen
from tui.trace import TraceScreen

SIZE = (150, 42)


def make_app(fake: FakeAdmin, **kwargs: object) -> SluiceConsole:
    options: dict[str, object] = {"actor": "tester", "refresh_interval": 0.2, "requests_interval": 0.2,
                                  "backoff_initial": 0.05, "backoff_max": 0.2}
    options.update(kwargs)
    return SluiceConsole(fake.url, fake.token, **options)  # type: ignore[arg-type]


async def loaded(pilot, app: SluiceConsole) -> None:  # type: ignore[no-untyped-def]
    await wait_until(pilot, lambda: app.state is not None and app.policy_pane.policy is not None
                     and app.tenants.table.row_count == 6, "initial load")


def banner_text(app: SluiceConsole) -> str:
    banner = app.query_one("#banner", Static)
    return str(banner.render()) if banner.has_class("-visible") else ""


async def test_shows_engines_tenants_requests_and_policy(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        assert app.query_one("#engines").row_count == 3
        assert app.query_one("#gpus").row_count == 2
        assert app.tenants.table.row_keys == ["acme", "globex", "hooli", "initech", "stark", "umbrella"]
        assert app.connection == "ok"
        assert banner_text(app) == ""
        await pilot.press("3")
        await wait_until(pilot, lambda: app.requests_pane.table.row_count == 14, "requests")
        # in-flight first (newest first), then the recent ones
        assert app.requests_pane.table.row_keys[:3] == ["req-1000", "req-0999", "req-0994"]
        await pilot.press("4")
        assert json.loads(app.query_one("#policy-text", TextArea).text) == policy_document(fake_admin.policy)
        await wait_until(pilot, lambda: app.query_one("#history").row_count == 3, "history")
        # every read carried the admin token; no change was made
        assert fake_admin.mutations() == []


async def test_change_weight_records_patch_with_reason(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("2", "down")  # acme -> globex
        assert app.tenants.table.cursor_key() == "globex"
        await pilot.press("w")
        await wait_until(pilot, lambda: isinstance(app.screen, WeightScreen), "weight dialog")
        await pilot.press("end", "backspace", "backspace", "backspace", "3", "enter")
        await pilot.press(*"rebalance", "enter")
        await wait_until(pilot, lambda: fake_admin.mutations(), "the PATCH")
        call = fake_admin.mutations()[0]
        assert (call.method, call.path) == ("PATCH", "/admin/v1/tenants/globex")
        assert call.body == {"weight": 3.0, "reason": "rebalance"}
        assert call.actor == "tester"
        assert fake_admin.history[0]["reason"] == "rebalance"
        # the new weight comes back through the state read and is updated in place
        await wait_until(pilot, lambda: app.tenants.table.cells_of("globex")[2] == "3.00", "new weight")


async def test_weight_needs_a_reason(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("2", "w")
        await wait_until(pilot, lambda: isinstance(app.screen, WeightScreen), "weight dialog")
        await pilot.press("end", "backspace", "backspace", "backspace", "5", "enter", "enter")
        await pilot.pause()
        assert isinstance(app.screen, WeightScreen)
        assert "reason is required" in str(app.screen.query_one("#weight-error", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert fake_admin.mutations() == []


async def test_pause_and_resume_tenant(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("2", "p")  # acme is under the cursor
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press("ctrl+u", "enter")  # every steering action needs a reason
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and fake_admin.mutations() == []
        await pilot.press(*"noisy neighbour", "enter")
        await wait_until(pilot, lambda: fake_admin.mutations(), "the POST")
        call = fake_admin.mutations()[0]
        assert (call.method, call.path, call.body) == ("POST", "/admin/v1/tenants/acme/pause",
                                                       {"reason": "noisy neighbour"})
        await wait_until(pilot, lambda: app.tenants.table.cells_of("acme")[3].plain == "paused", "paused")
        await pilot.press("p")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press("enter")
        await wait_until(pilot, lambda: len(fake_admin.mutations()) == 2, "the resume")
        assert fake_admin.mutations()[1].path == "/admin/v1/tenants/acme/resume"
        assert fake_admin.mutations()[1].body == {"reason": "resumed from the console"}  # prefilled
        await wait_until(pilot, lambda: app.tenants.table.cells_of("acme")[3].plain == "active", "active")


async def test_filter_and_sort_tenants(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("2", "slash", *"batch")
        await wait_until(pilot, lambda: app.tenants.table.row_count == 2, "filtered rows")
        assert sorted(app.tenants.table.row_keys) == ["initech", "umbrella"]
        await pilot.press("escape")
        assert app.focused is app.tenants.table
        app.query_one("#tenant-filter", Input).value = ""
        await wait_until(pilot, lambda: app.tenants.table.row_count == 6, "all rows")
        app.tenants.sort_by("weight", reverse=True)
        await pilot.pause()
        assert app.tenants.table.row_keys[:2] == ["stark", "acme"]
        # header click sorts too; the cursor stays on its tenant across re-sorts
        await pilot.press("r")
        assert app.tenants.table.row_keys[0] == "umbrella"


async def test_tab_keys_leave_digits_to_text_fields_and_dialogs(fake_admin: FakeAdmin) -> None:
    """1-4 are the app's keys before any widget's (priority bindings), except where a text field
    takes digits (a filter, the policy editor, a dialog's field) or a dialog is open."""
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        tabs = app.query_one("#tabs")
        await pilot.press("3", "slash", "1", "0", "2", "4")
        assert tabs.active == "requests" and app.query_one("#request-filter", Input).value == "1024"
        await pilot.press("escape", "2")  # out of the filter, the digit is a tab key again
        assert tabs.active == "tenants" and app.focused is app.tenants.table
        await pilot.press("4", "end", "3")
        assert tabs.active == "policy" and app.query_one("#policy-text", TextArea).text.startswith("{3")
        await pilot.press("tab", "1")  # the editor left: back to a tab key
        assert tabs.active == "overview"
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("2")  # a dialog keeps its keys; the tabs behind it stay
        assert isinstance(app.screen, HelpScreen) and tabs.active == "overview"
        await pilot.press("escape", "2")
        assert tabs.active == "tenants"


async def test_edit_policy_shows_diff_and_applies(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("4")
        editor = app.query_one("#policy-text", TextArea)
        doc = json.loads(editor.text)
        doc["scheduler"] = "vtc"
        doc["holistic_alpha"] = 0.7
        editor.load_text(json.dumps(doc, indent=2))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, PolicyReviewScreen), "review dialog")
        review = app.screen
        diff = str(review.query_one("#review-diff-text", Static).render())
        assert '-  "scheduler": "equinox"' in diff and '+  "scheduler": "vtc"' in diff
        assert '-  "holistic_alpha": 0.5' in diff and '+  "holistic_alpha": 0.7' in diff
        assert review.query_one("#review-apply", Button).disabled  # no reason yet
        await pilot.press(*"try vtc for the batch tenants")
        assert not review.query_one("#review-apply", Button).disabled
        await pilot.press("enter")
        await wait_until(pilot, lambda: fake_admin.mutations(), "the PATCH")
        call = fake_admin.mutations()[0]
        assert (call.method, call.path) == ("PATCH", "/admin/v1/policy")
        assert call.body == {"reason": "try vtc for the batch tenants",
                             "changes": {"scheduler": "vtc", "holistic_alpha": 0.7}, "expected_version": 3}
        # the audit history shows the new version with who and why
        await wait_until(pilot, lambda: app.query_one("#history").row_count == 4, "history row")
        row = app.query_one("#history").cells_of("4")
        assert row[2].plain == "tester" and row[3].plain == "try vtc for the batch tenants"
        assert "scheduler" in row[4].plain and "holistic_alpha" in row[4].plain
        assert app.policy_pane.policy["version"] == 4
        assert not app.policy_pane.is_edited()


async def test_policy_rejected_by_server_shows_error(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("4")
        editor = app.query_one("#policy-text", TextArea)
        editor.load_text(editor.text.replace('"holistic_alpha": 0.5', '"holistic_alpha": 1.5'))
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: isinstance(app.screen, PolicyReviewScreen), "review dialog")
        await pilot.press(*"too much", "enter")
        await wait_until(pilot, lambda: "holistic_alpha must be" in str(
            app.query_one("#policy-error", Static).render()), "422 message")
        assert fake_admin.policy["version"] == 3
        # invalid JSON never reaches the server
        editor.load_text("{not json")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "Invalid JSON" in str(app.query_one("#policy-error", Static).render())
        assert len(fake_admin.mutations()) == 1


async def test_abort_request_after_confirmation(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("3")
        await wait_until(pilot, lambda: app.requests_pane.table.row_count == 14, "requests")
        assert app.requests_pane.table.cursor_key() == "req-1000"
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press("escape")  # cancelled: nothing sent
        await pilot.pause()
        assert fake_admin.mutations() == []
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        await pilot.press("enter")
        await wait_until(pilot, lambda: fake_admin.mutations(), "the POST")
        assert [(c.method, c.path, c.body) for c in fake_admin.mutations()] == [
            ("POST", "/admin/v1/requests/req-1000/abort", {"reason": "aborted from the console"})]
        await wait_until(pilot, lambda: app.requests_pane.store["req-1000"]["status"] == "aborted", "aborted")


async def test_abort_refuses_finished_request(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("3")
        await wait_until(pilot, lambda: app.requests_pane.table.row_count == 14, "requests")
        await pilot.press("down", "down", "down")  # req-0998, ok
        assert app.requests_pane.table.cursor_key() == "req-0998"
        await pilot.press("a")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert fake_admin.mutations() == []


async def test_open_trace_waterfall(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("3")
        await wait_until(pilot, lambda: app.requests_pane.table.row_count == 14, "requests")
        await pilot.press("down", "down", "down", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.trace
                         and app.screen.why, "trace and why")
        screen = app.screen
        assert screen.rid == "req-0998"
        # the trace's 7 spans and the request's 4 phases from /why
        assert [r.span["service"] for r in screen.rows].count("phase") == 4 and len(screen.rows) == 11
        names = [(r.depth, r.span["name"], r.span["service"]) for r in screen.rows]
        assert names[0] == (0, "POST /v1/chat/completions", "sluice")
        assert (2, "sglang.request", "sglang") in names and (3, "prefill", "sglang") in names
        waterfall = screen.query_one("#waterfall", OptionList)
        assert waterfall.option_count == 11
        root = str(waterfall.get_option_at_index(0).prompt)
        assert "█" * 20 in root and "1700ms" in root  # the root spans the whole trace
        await pilot.press("down", "down")  # the admission phase, then sluice's admission span
        assert "sluice.admission" in str(screen.query_one("#span-detail", Static).render())
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, TraceScreen)


async def test_request_events_update_the_table(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin, requests_interval=3600.0)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("3")
        await wait_until(pilot, lambda: app.requests_pane.table.row_count == 14, "requests")
        new = dict(fake_admin.reqs[2], rid="req-2000", arrival_ts=NOW + 0.5, status="rejected")
        await wait_until(pilot, lambda: fake_admin._subscribers, "event stream")
        fake_admin.push_event("request", new)
        await wait_until(pilot, lambda: "req-2000" in app.requests_pane.table.row_keys, "new row")
        # finished requests come after the in-flight ones, newest first
        assert app.requests_pane.table.row_keys.index("req-2000") == 3


async def test_unreachable_server_shows_banner() -> None:
    app = SluiceConsole(f"http://127.0.0.1:{free_port()}", "token", backoff_initial=0.05, backoff_max=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unreachable", "unreachable")
        assert "Cannot reach the admin API" in banner_text(app)
        assert "retrying in" in banner_text(app)


async def test_refused_token_shows_banner(fake_admin: FakeAdmin) -> None:
    app = SluiceConsole(fake_admin.url, "wrong-token", backoff_initial=0.05, backoff_max=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unauthorized", "unauthorized")
        text = banner_text(app)
        assert "admin token was refused" in text and "401" in text
        assert app.query_one("#banner").has_class("-refused")


async def test_tenant_key_is_refused_with_403(fake_admin: FakeAdmin) -> None:
    app = SluiceConsole(fake_admin.url, TENANT_KEY, backoff_initial=0.05, backoff_max=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unauthorized", "unauthorized")
        assert "403" in banner_text(app)


async def test_reconnects_when_the_server_accepts_again(fake_admin: FakeAdmin) -> None:
    fake_admin.refuse_all = 401
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.connection == "unauthorized", "unauthorized")
        assert app.policy_pane.policy is None
        fake_admin.refuse_all = None
        await wait_until(pilot, lambda: app.connection == "ok", "reconnected")
        assert banner_text(app) == ""
        # recovery reloads what could not be read before
        await wait_until(pilot, lambda: app.policy_pane.policy is not None, "policy after recovery")


async def test_help_screen_and_command_palette(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for wanted in ("Go to Tenants", "Set tenant weight", "Pause or resume tenant", "Open request trace",
                       "Abort request", "Review and apply policy", "Reconnect"):
            assert wanted in titles


async def test_stale_state_is_ignored_and_history_is_bounded() -> None:
    from tests.tui_fake_admin import state_at

    app = SluiceConsole("http://127.0.0.1:9", "t", live=False)
    async with app.run_test(size=SIZE) as pilot:
        for i in range(400):
            app.ingest_state(state_at(i))
        await pilot.pause()
        series = app.overview.series["request_rate"]
        assert len(series) == series.maxlen == 300
        app.ingest_state(state_at(5))  # older than what is shown: ignored
        assert app.state is not None and app.state["now"] == NOW + 399
        app.ingest_state(state_at(399))  # same time again: values refresh, no new point
        assert len(app.overview.engine_tput["sim-0"]) == 300


def test_fake_fixture_is_fresh_per_use() -> None:
    gen = serve_fake(FakeAdmin())
    fake = next(gen)
    try:
        assert fake.url.startswith("http://127.0.0.1:")
        assert fake.policy["version"] == 3
    finally:
        for _ in gen:
            pass
