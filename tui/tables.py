"""A DataTable kept in sync with keyed rows by updating cells in place.

Rebuilding a table every second (clear + add_row) costs O(rows x columns) renders and loses the
cursor and scroll position; `KeyedTable.sync` instead diffs the new rows against the cells it
already shows and only touches what changed (`update_cell` by row and column key), adds new
rows and removes vanished ones. `order` re-sorts by a rank of row keys and keeps the cursor on the
same row. How it is drawn, and what of that is kept, is tui/table_render.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist, RowKey

from .table_render import RenderedTable


class KeyedTable(RenderedTable):
    """A DataTable whose rows are identified by string keys; the first column shows the key.
    Drawn by `RenderedTable` (tui/table_render.py)."""

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.column_spec = list(columns)
        self._col_keys = [key for key, _label, _width in self.column_spec]
        self._row_keys: dict[str, RowKey] = {}
        self._column_keys: list[ColumnKey] = []
        for key, label, width in self.column_spec:
            self._column_keys.append(self.add_column(label, key=key, width=width))

    # -- queries ----------------------------------------------------------------------------------

    @property
    def row_keys(self) -> list[str]:
        """Row keys in display order."""
        return [str(row.key.value) for row in self.ordered_rows]

    def cursor_key(self) -> str | None:
        """The key of the row under the cursor, or None on an empty table."""
        if self.row_count == 0:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except CellDoesNotExist:
            return None
        return None if row_key.value is None else str(row_key.value)

    def cells_of(self, key: str) -> tuple[Any, ...] | None:
        return self._cells.get(key)

    # -- updates ----------------------------------------------------------------------------------

    def sync(self, rows: Mapping[str, tuple[Any, ...]]) -> bool:
        """Make the table show exactly `rows` (key -> cells). Returns True when rows were added or
        removed (the caller may want to re-sort), False when only cells changed."""
        structural = False
        cursor = self.cursor_key()
        gone = [key for key in self._cells if key not in rows]
        for key in gone:
            try:
                self.remove_row(key)
            except RowDoesNotExist:
                pass
            del self._cells[key]
            self._row_keys.pop(key, None)
            structural = True
        col_keys = self._column_keys
        data: dict[RowKey, dict[ColumnKey, Any]] | None = self._data if self._batch_writes else None
        written = 0
        for key, cells in rows.items():
            old = self._cells.get(key)
            if old is None:
                self._row_keys[key] = self.add_row(*cells, key=key)
                structural = True
            elif old is not cells:
                row_data = data[self._row_keys[key]] if data is not None else None
                for col, before, after in zip(col_keys, old, cells):
                    if before is after or (before == after and _same_style(before, after)):
                        continue
                    if row_data is not None:
                        row_data[col] = after
                        written += 1
                    else:
                        self.update_cell(key, col, after)
            self._cells[key] = cells
        if written:
            self._update_count += 1
            self.refresh()
        if gone and cursor is not None:
            self._restore_cursor(cursor)
        return structural

    def order(self, rank: Mapping[str, Any], reverse: bool = False) -> None:
        """Sort rows by `rank[row key]` (rows missing from `rank` go last), keeping the cursor's row."""
        if self.row_count < 2:
            return
        cursor = self.cursor_key()
        first = self._col_keys[0]
        missing = (1,)

        def key(cell: Any) -> Any:
            value = rank.get(cell.plain if isinstance(cell, Text) else str(cell))
            return missing if value is None else (0, value)

        self.sort(first, key=key, reverse=reverse)
        if cursor is not None:
            self._restore_cursor(cursor)

    def _restore_cursor(self, key: str) -> None:
        try:
            index = self.get_row_index(key)
        except RowDoesNotExist:
            return
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False, scroll=False)


def _same_style(a: Any, b: Any) -> bool:
    if isinstance(a, Text) and isinstance(b, Text):
        return a.style == b.style
    return True
