"""The console's tables keep rendered cells and lines while their content stays (tui/table_render.py): a
tab switch repaints only what changed, and what changed is never served stale."""
from __future__ import annotations

from rich.text import Text
from textual.coordinate import Coordinate
from textual.geometry import Region
from textual.widget import Widget
from textual.widgets import DataTable

from tui.app import SluiceConsole
from tui.paint import KeptScrollBar
from tui.tables import KeyedTable


def state(now: float, weights: dict[str, float]) -> dict:
    tenants = [{"name": name, "weight": w, "slo_class": "interactive", "paused": False, "share": 0.1,
                "fair_share": 0.5, "counters": {"user": 1.0, "resource": 2.0, "holistic": 1.0}, "queued": 0,
                "in_flight": 0, "admitted": 1, "rejected": 0} for name, w in weights.items()]
    return {"now": now, "policy_version": 1, "scheduler": "vtc", "totals": {"request_rate": 1.0},
            "tenants": tenants, "engines": [], "gpus": [], "gpu_status": "no GPU: test"}


def line_of(table, key: str) -> str:
    y = table.get_row_index(key) + (table.header_height if table.show_header else 0)
    return table.render_line(y - table.scroll_offset.y).text


async def test_a_tab_switch_repaints_only_what_changed(monkeypatch):
    rendered: list[str] = []
    original = DataTable._render_cell

    plain = KeyedTable._render_plain_cell

    def counting(self, row_index, column_index, *args, **kwargs):
        if self.id == "tenant-table" and row_index >= 0:
            rendered.append(str(self.ordered_rows[row_index].key.value))
        return original(self, row_index, column_index, *args, **kwargs)

    def counting_plain(self, cell, row_index, *args, **kwargs):
        lines = plain(self, cell, row_index, *args, **kwargs)
        if lines is not None and self.id == "tenant-table" and row_index >= 0:
            rendered.append(str(self.ordered_rows[row_index].key.value))
        return lines

    monkeypatch.setattr(DataTable, "_render_cell", counting)
    monkeypatch.setattr(KeyedTable, "_render_plain_cell", counting_plain)  # both ways of rendering a cell
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    weights = {f"t{i:02d}": 1.0 for i in range(20)}
    async with app.run_test(size=(160, 40)) as pilot:
        app.ingest_state(state(1.0, weights))
        app.action_show_tab("tenants")
        await pilot.pause()
        table = app.tenants.table
        assert "1.00" in line_of(table, "t05")
        app.action_show_tab("overview")
        await pilot.pause()
        app.action_show_tab("tenants")
        await pilot.pause()
        rendered.clear()
        app.action_show_tab("overview")
        await pilot.pause()
        weights["t05"] = 3.5  # changes while the table is hidden
        app.ingest_state(state(2.0, weights))
        await pilot.pause()
        assert rendered == []  # a hidden table is not rendered
        app.action_show_tab("tenants")
        await pilot.pause()
        # the changed cell is rendered anew and shown; of the rest only the cursor's row (its
        # style follows the focus) is rendered, not the other rows' unchanged cells
        assert "3.50" in line_of(table, "t05") and "3.50" not in line_of(table, "t04")
        assert "t05" in rendered and set(rendered) <= {"t05", table.cursor_key()}


async def test_a_cell_moved_to_another_row_renders_as_textual_would_there():
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    async with app.run_test(size=(160, 40)) as pilot:
        app.ingest_state(state(1.0, {f"t{i:02d}": 1.0 for i in range(20)}))
        app.action_show_tab("tenants")
        await pilot.pause()
        table = app.tenants.table
        style = table.rich_style
        for column in range(len(table.columns)):
            table._cell_renders.clear()
            table._render_cell(2, column, style, 12)
            (key, (cell, _, lines)), = table._cell_renders.items()
            table._cell_renders = {key: (cell, 9, lines)}  # as if rendered at row 9, then moved to 2
            stamped = table._render_cell(2, column, style, 12)
            table._cell_renders.clear()
            textual = DataTable._render_cell(table, 2, column, style, 12)
            assert stamped == textual and stamped[0][0].style.meta == {"row": 2, "column": column}


EDGE_CELLS = [  # what the fast path takes, and what it must leave to Textual (the result is the same)
    "", "12.3 ms", "12:34:56.7", "a:smile:b", "x[b]y[/b]", "a\tb", "two\nlines", "…", "·", "×",
    "a" * 40, "表格" * 3, "表", 3.14159, 42, None,
    Text(""), Text("red", style="red"), Text("bold yellow", style="bold yellow"), Text("dim", style="dim"),
    Text("b" * 30, style="green"), Text.assemble(("a", "red"), "b"), Text("right", justify="right"),
    Text("ellipsis " * 5, overflow="ellipsis"), Text("x", style="not-a-style"),
]


# one request in each status a row can show
FIVE_REQUESTS = [{"rid": f"r{i}", "tenant": "t01", "status": s, "arrival_ts": 1.7e9 + i, "ttft_ms": 12.5 * i,
                  "decision": "reject" if s == "rejected" else "admit",
                  "reason": "tenant_paused" if s == "rejected" else ""}
                 for i, s in enumerate(("queued", "running", "ok", "rejected", "error"))]


async def each_focused_table(app, pilot, edge):
    """Each table of the tenants and requests tabs (and `edge`, mounted in the tenants pane), shown,
    then focused and not (its filter focused instead)."""
    for tab in ("tenants", "requests"):
        app.action_show_tab(tab)
        await pilot.pause()
        tables = [app.tenants.table, edge] if tab == "tenants" else [app.requests_pane.table]
        for table in tables:
            for focused in (True, False):
                (table if focused else app.main(f"#{'tenant' if tab == 'tenants' else 'request'}-filter")).focus()
                await pilot.pause()
                assert table.size.width and app.main("#tabs").active == tab
                yield table


async def test_the_fast_cell_render_is_textuals_segment_for_segment():
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    async with app.run_test(size=(200, 40)) as pilot:
        app.ingest_state(state(1.0, {f"t{i:02d}": 1.0 + i / 3 for i in range(20)}))
        app.ingest_requests(FIVE_REQUESTS)
        edge = KeyedTable([(f"c{i}", f"C{i}", 6 + i % 5) for i in range(len(EDGE_CELLS))], id="edge",
                          cursor_type="row", zebra_stripes=True)
        await app.main("#tenants-pane").mount(edge)
        edge.sync({"e0": tuple(EDGE_CELLS), "e1": tuple(reversed(EDGE_CELLS))})
        checked = fast = 0
        async for table in each_focused_table(app, pilot, edge):
            style = table.rich_style
            for row in range(table.row_count):
                for column, col in enumerate(table.ordered_columns):
                    width = col.get_render_width(table)
                    for cursor, hover in ((False, False), (True, False), (False, True)):
                        table._cell_renders.clear()
                        ours = table._render_cell(row, column, style, width, cursor, hover)
                        theirs = DataTable._render_cell(table, row, column, style, width, cursor, hover)
                        assert ours == theirs, (table.id, row, column, cursor, hover)
                        assert [[s.style.meta if s.style else None for s in line] for line in ours] == [
                            [s.style.meta if s.style else None for s in line] for line in theirs]
                        checked += 1
                        styles = table._get_styles_to_render_cell(
                            False, False, False, hover, cursor, table.show_cursor,
                            table._show_hover_cursor, table.cursor_foreground_priority == "css",
                            table.cursor_background_priority == "css")
                        cell = table._data[table._row_locations.get_key(row)][
                            table._column_locations.get_key(column)]
                        fast += table._render_plain_cell(cell, row, column, style, width, styles) is not None
        assert checked > 1000 and fast > checked * 0.8  # most cells take the fast path, all agree


async def test_the_line_render_is_textuals_segment_for_segment():
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    async with app.run_test(size=(200, 40)) as pilot:
        app.ingest_state(state(1.0, {f"t{i:02d}": 1.0 + i / 3 for i in range(12)}))
        app.action_show_tab("tenants")
        await pilot.pause()
        table = app.tenants.table
        keys = [table._header_row_key] + [row.key for row in table.ordered_rows]
        checked = 0
        for focused in (True, False):
            (table if focused else app.main("#tenant-filter")).focus()
            await pilot.pause()
            assert table.size.width > 150 and table.has_focus == focused
            table._pseudo_class_state = table.get_pseudo_class_state()
            for cursor_row in (0, 5):
                table.move_cursor(row=cursor_row, animate=False)
                for hover in ((0, 0), (3, 2), (-1, 0)):
                    for memo in (None, {}):  # outside and inside a render pass (styles computed once)
                        table._pass_styles = memo
                        base = table.rich_style
                        for key in keys:
                            ours = table._render_line_in_row(key, 0, base, table.cursor_coordinate,
                                                             Coordinate(*hover))
                            table._row_render_cache.clear()
                            theirs = DataTable._render_line_in_row(table, key, 0, base, table.cursor_coordinate,
                                                                   Coordinate(*hover))
                            assert ours == theirs, (key, focused, cursor_row, hover, memo)
                            checked += 1
                        assert table._get_row_style(3, base) == DataTable._get_row_style(table, 3, base)
                table._pass_styles = None
        assert checked == 2 * 2 * 3 * 2 * len(keys)
        assert table.render_lines(Region(0, 0, table.size.width, table.size.height))
        assert table._pass_styles is None  # the memo lives for one pass only


async def test_a_plain_row_is_drawn_as_textual_draws_its_line():
    """`KeyedTable._plain_line` builds a whole row's line directly; it must equal Textual's line
    (DataTable._render_line, its caches emptied) for every row, focus, cursor and hover, and
    leave to Textual the lines it cannot build (markup, a wide cell to crop, horizontal scroll)."""
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    async with app.run_test(size=(200, 40)) as pilot:
        app.ingest_state(state(1.0, {f"t{i:02d}": 1.0 + i / 3 for i in range(12)}))
        app.ingest_requests(FIVE_REQUESTS)
        edge = KeyedTable([(f"c{i}", f"C{i}", 6 + i % 5) for i in range(10)], id="edge", cursor_type="row",
                          zebra_stripes=True)  # narrower than the screen: no horizontal scrolling
        await app.main("#tenants-pane").mount(edge)
        edge.sync({f"e{i}": (cell,) * 10 for i, cell in enumerate(EDGE_CELLS)})
        built: dict[str, int] = {}
        checked: dict[str, int] = {}
        async for table in each_focused_table(app, pilot, edge):
            table._pseudo_class_state = table.get_pseudo_class_state()
            width = table.size.width
            assert width
            for cursor_row, hover in ((0, (0, 0)), (2, (3, 1)), (1, (-1, 0))):
                table.move_cursor(row=cursor_row, animate=False)
                table.hover_coordinate = Coordinate(*hover)
                table._pass_styles = {}
                base = table.rich_style
                for row in table.ordered_rows:
                    ours = table._plain_line(row.key, 0, width, base)
                    table._line_cache.clear()
                    table._row_render_cache.clear()
                    table._cell_render_cache.clear()
                    y = table.get_row_index(row.key) + table.header_height
                    theirs = DataTable._render_line(table, y, 0, width, base)
                    if ours is not None:
                        assert ours == theirs and ours.cell_length == theirs.cell_length, (table.id, row.key)
                        assert [s.style for s in ours] == [s.style for s in theirs]
                        built[table.id] = built.get(table.id, 0) + 1
                    checked[table.id] = checked.get(table.id, 0) + 1
                    assert table._plain_line(row.key, 1, width + 1, base) is None  # scrolled
                table._pass_styles = None
        # every row of the console's own tables is built directly (and matches), and the plain ones
        # of the edge cases: the empty and plain texts, crops, emoji codes, wide characters that fit
        assert built["tenant-table"] == checked["tenant-table"] == 2 * 3 * 12
        assert built["request-table"] == checked["request-table"] == 2 * 3 * 5
        assert 10 * 6 <= built["edge"] < checked["edge"]
        assert edge._plain_line(edge.ordered_rows[4].key, 0, edge.size.width, edge.rich_style) is None  # markup


async def test_the_header_is_drawn_again_only_when_the_columns_change(monkeypatch):
    drawn: list[int] = []
    original = DataTable._render_line

    def counting(self, y, *args, **kwargs):
        if self.id == "tenant-table":
            drawn.append(y)
        return original(self, y, *args, **kwargs)

    monkeypatch.setattr(DataTable, "_render_line", counting)
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    weights = {f"t{i:02d}": 1.0 for i in range(5)}
    async with app.run_test(size=(160, 40)) as pilot:
        app.action_show_tab("tenants")
        app.ingest_state(state(1.0, weights))
        await pilot.pause()
        table = app.tenants.table
        header = table.render_line(0)
        assert "Tenant" in header.text and 0 in drawn
        drawn.clear()
        for now in (2.0, 3.0):  # every state changes cells: Textual's own cache dropped the header each time
            weights["t01"] = now
            app.ingest_state(state(now, weights))
            await pilot.pause()
            assert f"{now:.2f}" in line_of(table, "t01")
        assert 0 not in drawn and table.render_line(0).text == header.text
        table.columns[table.ordered_columns[0].key].label = Text("Renamed")
        table.refresh()
        await pilot.pause()
        assert "Renamed" in table.render_line(0).text


async def test_a_tables_scrollbar_is_drawn_again_only_when_it_moves():
    app = SluiceConsole("http://127.0.0.1:9", None, live=False)
    async with app.run_test(size=(160, 30)) as pilot:
        app.action_show_tab("tenants")
        app.ingest_state(state(1.0, {f"t{i:02d}": 1.0 for i in range(60)}))
        await pilot.pause()
        table = app.tenants.table
        bar = table.vertical_scrollbar
        assert isinstance(bar, KeptScrollBar) and bar.display and bar.size.height > 5
        crop = Region(0, 0, bar.size.width, bar.size.height)

        def fresh() -> list:
            bar._styles_cache.clear()
            return Widget.render_lines(bar, crop)  # Textual's, nothing kept

        first = bar.render_lines(crop)
        assert first == fresh()
        app.action_show_tab("overview")
        await pilot.pause()
        app.action_show_tab("tenants")  # re-sized and refreshed, the same to draw
        await pilot.pause()
        assert bar.render_lines(crop) is first
        table.scroll_to(y=20, animate=False)
        await pilot.pause()
        moved = bar.render_lines(crop)
        assert moved != first and moved == fresh()
