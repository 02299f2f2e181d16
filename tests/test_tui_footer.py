"""The console's footer (tui/footer.py): the focused screen's keys, repainted only when they change,
and clickable; and the console's own bookkeeping that keeps a key's time to screen short (the
long-lived objects frozen out of the cyclic GC, rendered cells of replaced cells dropped)."""

from __future__ import annotations

import gc

from rich.text import Text

from tests.tui_fake_admin import FakeAdmin, fake_admin, wait_until  # noqa: F401 - fake_admin is a fixture
from tui.app import GC_THRESHOLDS, SluiceConsole
from tui.footer import KeyFooter
from tui.table_render import CELL_RENDERS
from tui.tables import KeyedTable

SIZE = (150, 42)


def make_app(fake: FakeAdmin) -> SluiceConsole:
    return SluiceConsole(fake.url, fake.token, actor="tester", refresh_interval=0.2, requests_interval=0.2)


def shown(footer: KeyFooter) -> list[str]:
    return [item.description for item in footer.items]


async def test_the_footer_shows_the_focused_panes_keys(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None, "state")
        footer = app.query_one(KeyFooter)
        assert shown(footer) == ["Overview", "Tenants", "Requests", "Policy", "Help", "Quit"]
        await pilot.press("2")
        await wait_until(pilot, lambda: "Weight" in shown(footer), "the tenants' keys")
        assert shown(footer)[:2] == ["Weight", "Pause/resume"] and "Quit" in shown(footer)
        assert footer.palette is not None and footer.palette.display == "^p"
        line = footer.render()
        assert isinstance(line, Text) and line.cell_len == SIZE[0]
        assert line.plain.startswith(" w Weight  p Pause/resume ") and line.plain.endswith("▏^p palette ")


async def test_the_footer_repaints_only_when_its_keys_change(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None, "state")
        footer = app.query_one(KeyFooter)
        repaints: list[int] = []
        original = footer.refresh

        def counting_refresh(*args: object, **kwargs: object) -> object:
            repaints.append(1)
            return original(*args, **kwargs)

        footer.refresh = counting_refresh  # type: ignore[method-assign]
        app.screen.refresh_bindings()  # nothing changed: no repaint
        app.screen.refresh_bindings()
        assert repaints == []
        await pilot.press("2")
        await wait_until(pilot, lambda: "Weight" in shown(footer), "the tenants' keys")
        assert repaints and not footer.children  # one widget: nothing mounted per key


async def test_clicking_a_key_in_the_footer_presses_it(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None, "state")
        plain = app.query_one(KeyFooter).render().plain
        x = plain.index(" 3 Requests") + 1
        await pilot.click(KeyFooter, offset=(x, 0))
        await wait_until(pilot, lambda: app.query_one("#tabs").active == "requests", "the requests tab")


async def test_the_console_freezes_what_lives_as_long_as_it(fake_admin: FakeAdmin) -> None:
    before = gc.get_threshold()
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None, "state")
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS  # young collections every 50,000 allocations
    assert gc.get_freeze_count() == 0  # given back when the console stops
    assert gc.get_threshold() == before


async def test_renders_of_replaced_cells_are_dropped(fake_admin: FakeAdmin) -> None:
    app = make_app(fake_admin)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state is not None, "state")
        table = app.query_one("#engines", KeyedTable)
        live = {id(c) for row in table._data.values() for c in row.values()}  # the cells it draws
        # plain rows are drawn as whole lines (KeyedTable._plain_line): render a live cell the
        # per-cell way, as a row that is not plain would, so that there is one to keep
        table._render_cell(0, 0, table.rich_style, 12)
        stale = {(0, -k, 10, None, None, False, False, None): (object(), 0, []) for k in range(1, CELL_RENDERS)}
        table._cell_renders.update(stale)  # renders of cells no longer in the table
        table._sweep_cell_renders()
        assert table._cell_renders and all(key[1] in live for key in table._cell_renders)
