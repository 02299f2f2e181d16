"""The console as an operator lives in it (issue 10): the requests table stays on the newest and
in-flight requests, sparklines keep fixed scales, fairness reads without the docs, the policy
screen, and the small things. Pilot tests on injected data (`live=False`: no network)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from tests.tui_fake_admin import NOW, fake_admin, initial_requests, state_at, wait_until  # noqa: F401 - fixture
from tui.app import SluiceConsole

SIZE = (150, 42)


def offline() -> SluiceConsole:
    return SluiceConsole("http://127.0.0.1:9", "t", live=False)


def newer(n: int, start: int = 0, status: str = "running") -> list[dict[str, Any]]:
    """`n` requests that arrived after the fake's, newest last."""
    return [{"rid": f"new-{start + i:03d}", "tenant": "acme", "slo_class": "interactive", "status": status,
             "engine": "sim-0", "arrival_ts": NOW + 1 + start + i, "ttft_ms": 90.0, "prompt_tokens": 100,
             "completion_tokens": 0, "decision": "admit", "reason": ""} for i in range(n)]


def label(app: SluiceConsole, selector: str) -> str:
    return str(app.query_one(selector).render())


async def test_requests_follow_the_newest_and_pause_for_reading() -> None:
    app = offline()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.requests_pane
        app.ingest_requests(initial_requests(), render=False)
        await pilot.press("3")
        await pilot.pause()
        table = pane.table
        # 60 new in-flight requests arrive while the operator watches: the newest stay on top, on screen
        for k in range(6):
            app.ingest_requests(newer(10, 10 * k), render=False)
            pane.render_rows()
            await pilot.pause()
        assert table.row_keys[0] == "new-059"
        assert table.cursor_row == 0 and table.scroll_y == 0
        assert pane.selected()["rid"] == "new-059"
        assert "live" in label(app, "#request-summary")
        # a running request that has streamed shows no false 0 output tokens
        out_tok = dict(zip([c[0] for c in table.column_spec], table.get_row("new-059")))["out"]
        assert Text.assemble(out_tok).plain == "…"

        # the operator moves to a row: the rows stop moving and the selection stays on that request
        await pilot.press("down", "down")
        assert pane.selected()["rid"] == "new-057"
        before = table.row_keys
        app.ingest_requests(newer(5, 60), render=False)
        app.ingest_requests([{**newer(1, 57)[0], "status": "ok", "completion_tokens": 33}], render=False)
        pane.render_rows()
        await pilot.pause()
        assert table.row_keys == before and table.cursor_row == 2
        assert pane.selected()["rid"] == "new-057" and pane.selected()["status"] == "ok"
        summary = label(app, "#request-summary")
        assert "paused for reading" in summary and "5 newer" in summary

        # home: back to live, the newest on top again
        await pilot.press("home")
        await pilot.pause()
        assert table.row_keys[0] == "new-064" and table.cursor_row == 0
        assert "live" in label(app, "#request-summary")


def test_sparklines_have_fixed_scales() -> None:
    from tui.format import chart, spark

    assert spark([1.0] * 5, width=5, hi=1.0) == "█████"  # a constant 100% is full, not empty
    assert spark([0.0] * 5, width=5) == "▁▁▁▁▁"
    assert spark([448.0, 700.0], width=2, hi=700.0) == "▅█"  # 448 W on a 700 W limit is not zero
    assert spark([1200.0, 1100.0], width=2) == "█▇"  # a rate near its peak stays near the top
    assert chart([1.0, 0.5, 0.0], width=3, height=2, hi=1.0) == ["█  ", "██ "]


async def test_overview_cards_are_scaled_and_labelled() -> None:
    app = offline()
    async with app.run_test(size=SIZE) as pilot:
        for i in range(1, 11):
            state = state_at(i)
            state["totals"]["attainment"] = 1.0
            for g in state["gpus"]:
                g.update(gpu=1 - g["gpu"], power_limit_w=700.0)
            app.ingest_state(state)
        await pilot.pause()
        card = app.query_one("#card-attainment")
        assert card.border_subtitle == "0–100%"
        lines = card.query_one("Chart").render().plain.split("\n")
        assert len(lines) == 3 and all(line.endswith("█" * 10) for line in lines)  # 10 samples, full
        assert app.query_one("#card-gpu_power").border_subtitle == "0–1400 W limit"
        assert app.query_one("#card-request_rate").border_subtitle.startswith("0–")
        assert app.query_one("#gpus").row_keys == ["1", "0"]  # the GPU index, not "None"


async def test_fairness_reads_without_the_docs() -> None:
    app = offline()
    async with app.run_test(size=SIZE) as pilot:
        # acme's instantaneous fair share flips between 0 and 2/3 as its queue empties and fills
        for i in range(1, 61):
            state = state_at(i)
            acme = next(t for t in state["tenants"] if t["name"] == "acme")
            acme.update(share=0.33, fair_share=(2 / 3) if i % 2 else 0.0, rejected=5,
                        rejected_by_reason={"tenant_paused": 4, "rate_limited": 1})
            app.ingest_state(state)
        await pilot.press("2")
        await pilot.pause()
        table = app.tenants.table
        row = dict(zip([c[0] for c in table.column_spec], table.get_row("acme")))
        assert row["fair_60s"] == "33.3%"  # the 60 s average of the flips, the same window as Share
        assert Text.assemble(row["ratio"]).plain == "0.99×"
        assert Text.assemble(row["refusals"]).plain == "5: tenant_paused 4 rate_limited 1"
        labels = [str(c.label) for c in table.columns.values()]
        assert {"Share 60s", "Fair 60s", "U tok/w", "R GPU·s/w", "H ×avg"} <= set(labels)
        legend = label(app, "#tenant-legend")
        assert all(f"{name}:" in legend for name in ("Share 60s", "Fair 60s", "U", "R", "H", "Refused"))


async def test_policy_screen_newest_change_whole_and_checked_as_you_type() -> None:
    from textual.widgets import TextArea

    from tests.tui_fake_admin import initial_history, initial_policy
    from tui.modals import ChangeScreen

    app = offline()
    async with app.run_test(size=SIZE) as pilot:
        app.ingest_state(state_at(1))
        app.policy_pane.update_policy(initial_policy())
        history = initial_history()
        app.policy_pane.update_history(history)
        await pilot.press("4")
        await pilot.pause()
        # a new change lands while the history is shown: enter opens it, the newest
        v4 = dict(history[0], version=4, actor="carol", before=history[0]["after"],
                  after={**history[0]["after"], "version": 4, "holistic_alpha": 0.7},
                  reason="interactive tenants waited too long behind a long batch of summaries")
        app.policy_pane.update_history([v4, *history])
        await pilot.pause()
        await pilot.press("tab")  # leaves the editor (no indent) for the next focusable widget
        assert not app.query_one("#policy-text", TextArea).has_focus
        app.query_one("#history").focus()
        await pilot.pause()
        detail = label(app, "#history-detail")
        assert "behind a long batch of summaries" in detail and "holistic_alpha" in detail  # whole
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ChangeScreen)
        assert app.screen.diff_lines[:2] == ["--- v3 (before)", "+++ v4 (after)"]
        await pilot.press("escape")

        # the editor names the valid values and flags a bad one before apply
        hint = label(app, "#policy-hint")
        assert "fcfs | vtc | equinox | wrr" in hint and "ttft_ms" in hint and "weight" in hint
        editor = app.query_one("#policy-text", TextArea)
        editor.load_text(editor.text.replace('"scheduler": "equinox"', '"scheduler": "fifo"'))
        await pilot.pause()
        assert "scheduler: must be one of fcfs, vtc, equinox, wrr" in label(app, "#policy-error")
        editor.load_text(editor.text.replace('"scheduler": "fifo"', '"scheduler": "vtc"')
                         .replace('"weight": 2.0', '"weight": "2"'))
        await pilot.pause()
        assert "tenants.acme.weight: must be a number" in label(app, "#policy-error")


async def test_opening_a_request_shows_why_and_its_phases(fake_admin) -> None:  # noqa: F811 - fixture
    from textual.widgets import OptionList

    from tui.trace import TraceScreen

    app = SluiceConsole(fake_admin.url, fake_admin.token, refresh_interval=3600.0, requests_interval=3600.0)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: len(app.requests_pane.store) == 14, "requests")
        await pilot.press("3")
        app.requests_pane.render_rows()
        await pilot.pause()
        await pilot.press("down", "down", "down", "enter")  # req-0998, ok
        await wait_until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.trace
                         and app.screen.why, "trace and why")
        screen = app.screen
        why = str(screen.query_one("#why").render())
        assert "forecast TTFT 95 ms" in why and "500 ms budget" in why and "runners-up" in why
        assert "fair share" in why and "policy v3" in why
        names = [str(o.prompt) for o in screen.query_one("#waterfall", OptionList)._options]
        assert [n for n in names if "phase:" in n] and all(
            any(f"phase: {p}" in n for n in names) for p in ("admission", "queue", "prefill", "decode"))
        await pilot.press("escape")
        await pilot.pause()
        # a refusal says what would have let it in
        pane = app.requests_pane
        pane.table.move_cursor(row=pane.table.get_row_index("req-0996"))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, TraceScreen) and app.screen.why, "why")
        assert "would have been let in with" in str(app.screen.query_one("#why").render())


def test_phases_that_start_together_keep_their_order() -> None:
    from tui.waterfall import phase_spans, waterfall_rows

    root = {"span_id": "r", "parent_span_id": None, "name": "root", "start_ts": 0.0, "end_ts": 2.0}
    why = {"phases": [{"name": n, "start_ts": 1.0, "end_ts": 1.0 + d} for n, d in
                      (("admission", 0.0), ("queue", 0.0), ("prefill", 0.5))]}
    rows, _, _ = waterfall_rows([root, *phase_spans(why, [root])])
    assert [r.span["name"] for r in rows] == ["root", "phase: admission", "phase: queue", "phase: prefill"]
