"""The console's tables keep rendered cells and lines while their content stays (tui/tables.py): a
tab switch repaints only what changed, and what changed is never served stale."""
from __future__ import annotations

from textual.widgets import DataTable

from tui.app import SluiceConsole


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

    def counting(self, row_index, column_index, *args, **kwargs):
        if self.id == "tenant-table" and row_index >= 0:
            rendered.append(str(self.ordered_rows[row_index].key.value))
        return original(self, row_index, column_index, *args, **kwargs)

    monkeypatch.setattr(DataTable, "_render_cell", counting)
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
