"""How the console's tables are drawn: Textual's DataTable rendering, with what it redraws kept.

Textual keys its cell and line caches on a table-wide update count and drops them on any style
change (a focus change is one), so every update and every tab switch drew every visible cell
again. `RenderedTable` keeps each rendered line while its row's cells (one tuple, replaced by
`KeyedTable.sync` when a cell changes), place, width and styles stay, and each cell's render while
its cell object does; a row of one-line plain cells (nearly all of them) is drawn as its whole
line in one pass, its cells' styles kept by place; the header is kept while the columns are; the
table's and its rows' styles are worked out once per render pass; a hidden table is not drawn
again; the vertical scrollbar is a `KeptScrollBar`. tests/test_tui_render_cache.py checks every
shortcut against Textual's own rendering, segment for segment.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.coordinate import Coordinate
from textual.geometry import Region
from textual.scrollbar import ScrollBar
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

from .paint import KeptScrollBar

CELL_RENDERS = 4_000  # rendered cells kept per table (the screen's cells a few times over)
LINE_RENDERS = 2_000  # rendered lines kept per table
STYLE_MEMO = 8_000  # cell styles kept per table (by row, column and styles: the screen's a few times over)


class RenderedTable(DataTable[Any]):
    """A DataTable drawn with the shortcuts above. A subclass keeps `_cells` (row key -> the row's
    cells, a tuple replaced whenever one of them changes) in step with the rows it adds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cells: dict[str, tuple[Any, ...]] = {}
        # Batched cell writes: `update_cell` does `_data[row][col] = value; _update_count += 1;
        # refresh()`, and the refresh (~25 us) dominates when thousands of cells change at once.
        # With textual pinned (8.2.8) subclasses write the same dict and refresh once per sync;
        # if those internals ever go away they fall back to update_cell, and this to Textual.
        self._batch_writes = isinstance(getattr(self, "_data", None), dict) and isinstance(
            getattr(self, "_update_count", None), int)
        self._cell_renders: dict[tuple[Any, ...], tuple[Any, int, list[list[Segment]]]] = {}
        self._line_renders: dict[tuple[Any, ...], tuple[tuple[Any, ...], Strip]] = {}
        self._last_render: tuple[Any, list[Strip]] | None = None
        self._pass_styles: dict[Any, Any] | None = None  # styles computed once per render pass
        self._style_memo: dict[tuple[Any, ...], tuple[Style, Style]] = {}

    @property
    def vertical_scrollbar(self) -> ScrollBar:
        """Textual's, as a `KeptScrollBar`: a tab switch re-sizes the table and repaints its
        scrollbar whatever moved (Widget.vertical_scrollbar, with textual pinned)."""
        if self._vertical_scrollbar is None:
            bar = KeptScrollBar(vertical=True, name="vertical", thickness=self.scrollbar_size_vertical)
            bar.display = False
            self._vertical_scrollbar = bar
            self.app._start_widget(self, bar)
        return self._vertical_scrollbar

    def render_lines(self, crop: Region) -> list[Strip]:
        # A tab switch hides this table's pane, but the frame drawn before the layout catches up
        # still paints it where it was, and losing the focus restyled it: rendering it again,
        # only to be hidden, cost as much as the table shown. What it drew last will do.
        last = self._last_render
        if last is not None and last[0] == crop and not all(node.display for node in self.ancestors):
            return last[1]
        self._pass_styles = {}
        try:
            lines = super().render_lines(crop)
        finally:
            self._pass_styles = None
        self._last_render = (crop, lines)
        return lines

    # Textual asks for the table's style and its rows' component styles on every line; each is a
    # walk up the widget tree blending backgrounds (a third of a line's time). Nothing restyles a
    # widget while it renders, so within one `render_lines` pass each is computed once.

    @property
    def rich_style(self) -> Style:
        memo = self._pass_styles
        if memo is None:
            return super().rich_style
        style = memo.get("")
        if style is None:
            style = memo[""] = super().rich_style
        return style

    def _get_row_style(self, row_index: int, base_style: Style) -> Style:
        memo = self._pass_styles
        if memo is None or row_index < self.fixed_rows or not self.zebra_stripes:
            return super()._get_row_style(row_index, base_style)
        name = "datatable--odd-row" if row_index % 2 else "datatable--even-row"
        style = memo.get(name)
        if style is None:
            style = memo[name] = self.get_component_styles(name).rich_style
        return style

    def _render_line_in_row(self, row_key: RowKey, line_no: int, base_style: Style, cursor_location: Coordinate,
                            hover_location: Coordinate) -> tuple[list[list[Segment]], list[list[Segment]]]:
        """Textual's, for a table without row labels or fixed columns (these), less the header
        style it computes for them on every line and its row cache (`_render_line` keeps lines)."""
        if self.fixed_columns or (self._labelled_row_exists and self.show_row_labels) or self.cursor_type != "row":
            return super()._render_line_in_row(row_key, line_no, base_style, cursor_location, hover_location)
        row_index = self._row_locations.get(row_key) if row_key in self._row_locations else -1
        row_style = self._get_row_style(row_index, base_style)
        highlight, cursor_type = self._should_highlight, self.cursor_type
        row: list[list[Segment]] = []
        table_width = self._row_label_column_width
        for column_index, column in enumerate(self.ordered_columns):
            place = Coordinate(row_index, column_index)
            width = column.get_render_width(self)
            table_width += width
            row.append(self._render_cell(row_index, column_index, row_style, width,
                                         cursor=highlight(cursor_location, place, cursor_type),
                                         hover=highlight(hover_location, place, cursor_type))[line_no])
        extend_style, _ = self._get_styles_to_render_cell(  # the row's style out to the table's edge
            row_index == -1, False, False, highlight(hover_location, Coordinate(row_index or 0, 0), cursor_type),
            row_index == cursor_location.row, self.show_cursor, self._show_hover_cursor, False, False)
        extend_style = row_style + extend_style + Style.from_meta({"row": row_index, "column": 0,
                                                                   "out_of_bounds": True})
        row.append([Segment(" " * max(0, self.size.width - table_width), extend_style)])
        return [], row

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        """Textual's line render, remembered while the row on that line keeps its cells (the same
        tuple: `sync` replaces it when a cell changes), as `_render_cell` does for a cell. The
        header is remembered while the columns are the same (Textual drew it again on every
        update: a table's whole header through Rich, 1-2 ms, on each state)."""
        try:
            row_key, line_no = self._get_offsets(y) if self._batch_writes else (None, 0)
        except LookupError:
            row_key = None
        header = row_key is not None and row_key is self._header_row_key
        if header:
            cells: Any = ("header", tuple(self._pass_columns()[0]), tuple(c.label for c in self.ordered_columns))
        else:
            cells = None if row_key is None or row_key.value is None else self._cells.get(str(row_key.value))
        if cells is None:  # DataTable internals changed
            return super()._render_line(y, x1, x2, base_style)
        key = (y, x1, x2, line_no, row_key, self.size.width, base_style, self.cursor_coordinate,
               self.hover_coordinate, self.cursor_type, self.show_cursor, self._show_hover_cursor,
               self._pseudo_class_state, self.app.theme)
        kept = self._line_renders.get(key)
        if kept is not None and (kept[0] is cells or (header and kept[0] == cells)):
            return kept[1]
        strip = self._plain_line(row_key, x1, x2, base_style) if line_no == 0 and not header else None
        if strip is None:
            strip = super()._render_line(y, x1, x2, base_style)
        if len(self._line_renders) >= LINE_RENDERS:
            self._line_renders.clear()
        self._line_renders[key] = (cells, strip)
        return strip

    def _plain_line(self, row_key: RowKey, x1: int, x2: int, base_style: Style) -> Strip | None:
        """The line Textual's `_render_line` draws for a row of one-line plain cells (nearly every
        row here), built in one pass: each cell's text and styles (`_plain_parts`, `_cell_styles`)
        as the segments Textual's line ends with once simplified, the row's cursor and hover styles
        once. None where Textual must draw it (a fixed or labelled column, a cell cursor, a taller
        row, horizontal scrolling, a cell that is not plain)."""
        width = self.size.width
        if (x1 or x2 != width or self.fixed_columns or self.fixed_rows or self.cursor_type != "row"
                or (self._labelled_row_exists and self.show_row_labels)):
            return None
        row_index = self._row_locations.get(row_key)
        if row_index is None or self.rows[row_key].height != 1:
            return None
        columns, pad, used_width = self._pass_columns()
        if used_width > width:
            return None
        row_data = self._data[row_key]
        row_style = self._get_row_style(row_index, base_style)
        styles = self._row_cell_styles(row_index == self.cursor_coordinate.row,
                                       row_index == self.hover_coordinate.row)
        segments: list[Segment] = []
        add = segments.append
        for column_index, (column_key, cell_width) in enumerate(columns):
            parts = self._plain_parts(row_data.get(column_key), cell_width)
            if parts is None:
                return None
            plain, text_style, used = parts
            blank, styled = self._cell_styles(row_index, column_index, row_style, styles, text_style)
            fill = " " * (cell_width - 2 * len(pad) - used)
            # Textual's pad, text, fill, pad, with the neighbours of one style joined (simplify)
            if styled is blank:
                add(Segment(pad + plain + fill + pad, blank))
            else:
                if pad:
                    add(Segment(pad, blank))
                add(Segment(plain, styled))
                if fill or pad:
                    add(Segment(fill + pad, blank))
        if not segments or not segments[0].text:
            return None  # line_crop drops a leading empty segment: leave that to Textual
        extend_key = ("extend", row_index, row_style, styles[0])
        extend_style = self._style_memo.get(extend_key)
        if extend_style is None:  # the row's style out to the table's edge, as _render_line_in_row
            extend_style = self._style_memo[extend_key] = row_style + styles[0] + Style.from_meta(
                {"row": row_index, "column": 0, "out_of_bounds": True})
        add(Segment(" " * (width - used_width), extend_style))
        return Strip(segments, width)

    def _pass_columns(self) -> tuple[list[tuple[ColumnKey, int]], str, int]:
        """The columns' keys and widths, the cell padding and the row's width, once per pass."""
        memo = self._pass_styles
        kept = None if memo is None else memo.get("columns")
        if kept is None:
            columns = [(column.key, column.get_render_width(self)) for column in self.ordered_columns]
            kept = (columns, " " * self.cell_padding,
                    self._row_label_column_width + sum(w for _, w in columns))
            if memo is not None:
                memo["columns"] = kept
        return kept

    def _row_cell_styles(self, cursor: bool, hover: bool) -> tuple[Style, Style]:
        """`_get_styles_to_render_cell` for a data cell under (or not) the row cursor and hover,
        once per render pass (several component-style lookups, the same for every row)."""
        memo = self._pass_styles
        key = ("cell", cursor, hover)
        styles = None if memo is None else memo.get(key)
        if styles is None:
            styles = self._get_styles_to_render_cell(
                False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
                self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
            if memo is not None:
                memo[key] = styles
        return styles

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        """Textual's cell render, remembered while the cell object stays the same.

        Textual keys its own cell cache on a table-wide update count and drops it on any style
        change, and a focus change restyles the table: every tab switch rendered every visible
        cell again (most of a key's time to screen). Cells here are immutable values that `sync`
        replaces when they change, so a render stays good for the same cell object, width and
        styles. The render carries its row and column (mouse clicks read them): a cell that moved
        to another row (new requests on top) gets its new row stamped on, not rendered again."""
        row = self._data.get(self._row_locations.get_key(row_index)) if self._batch_writes else None
        cell = None if row is None or column_index < 0 else row.get(self._column_locations.get_key(column_index))
        if cell is None:  # a header, a row label, an empty cell, or DataTable internals changed
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        styles = self._get_styles_to_render_cell(  # the cursor's and hover's styles (the theme)
            False, False, False, hover, cursor, self.show_cursor, self._show_hover_cursor,
            self.cursor_foreground_priority == "css", self.cursor_background_priority == "css")
        key = (column_index, id(cell), width, base_style, styles, cursor, hover, self._pseudo_class_state)
        kept = self._cell_renders.get(key)
        if kept is not None and kept[0] is cell:
            if kept[1] == row_index:
                return kept[2]
            place = Style.from_meta({"row": row_index, "column": column_index})  # later meta wins
            lines = [[Segment(text, style + place if style is not None else style, control)
                      for text, style, control in line] for line in kept[2]]
        else:
            lines = self._render_plain_cell(cell, row_index, column_index, base_style, width, styles)
            if lines is None:
                lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
            if len(self._cell_renders) >= CELL_RENDERS:
                self._sweep_cell_renders()
        self._cell_renders[key] = (cell, row_index, lines)
        return lines

    def _render_plain_cell(self, cell: Any, row_index: int, column_index: int, base_style: Style, width: int,
                           styles: tuple[Style, Style]) -> list[list[Segment]] | None:
        """The segments Textual's `_render_cell` makes of a one-line cell of plain text in one style
        (nearly every cell here), built directly: Textual renders each through Rich's Styled, Padding
        and Text (0.1-0.2 ms a cell; a screen of changed tenants is ~500 of them). None for anything
        else (markup, spans, justify, tabs, wide characters to crop, a taller row, fixed cells),
        which Textual renders. tests/test_tui_render_cache.py checks the two agree segment for segment."""
        if self.fixed_rows or self.fixed_columns or self.rows[self._row_locations.get_key(row_index)].height != 1:
            return None
        parts = self._plain_parts(cell, width)
        if parts is None:
            return None
        blank, styled = self._cell_styles(row_index, column_index, base_style, styles, parts[1])
        return [self._cell_segments(parts[0], parts[2], width, blank, styled)]

    def _plain_parts(self, cell: Any, width: int) -> tuple[str, Any, int] | None:
        """(text, its style or None, cells it takes) of a cell Textual draws as one line of plain
        text in one style, cropped to the column; None for anything else."""
        if isinstance(cell, str):
            if "[" in cell:
                return None
            # Textual reads a str as markup: with no "[" that is only emoji codes (":smile:")
            text = Text.from_markup(cell) if ":" in cell else None
        elif isinstance(cell, Text):
            text = cell
        else:
            return None
        plain = cell if text is None else text.plain
        if text is not None and (text.spans or text.justify is not None or text.overflow is not None):
            return None
        if "\n" in plain or "\t" in plain:
            return None
        room = width - 2 * self.cell_padding
        used = cell_len(plain)
        if room < 0 or (used > room and used != len(plain)):
            return None
        if used > room:
            plain, used = plain[:room], room  # Rich crops a no-wrap line ("fold" without wrapping)
        return plain, (text.style or None) if text is not None else None, used

    def _cell_styles(self, row_index: int, column_index: int, base_style: Style, styles: tuple[Style, Style],
                     text_style: Any) -> tuple[Style, Style]:
        """The styles of a plain cell's padding and of its text, as Textual's Styled(Padding(cell))
        applies them (`Segment.apply_style(pre_style, post_style)`). Kept by place and styles: the
        row and column meta makes every cell's style a new object, and building it (a pickled meta
        and three Style additions) was most of a changed cell's time."""
        key = (row_index, column_index, base_style, styles, text_style)
        kept = self._style_memo.get(key)
        if kept is not None:
            return kept
        component_style, post_style = styles
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style

        def finish(style: Style | None) -> Style:
            combined = pre + style
            return (combined + post_style if combined else post_style) if post_style else combined

        blank = finish(Style.null())
        styled = finish(self.app.console.get_style(text_style, default=Style.null())) if text_style else blank
        kept = (blank, blank if styled == blank else styled)  # one object: the line joins them
        if len(self._style_memo) >= STYLE_MEMO:
            self._style_memo.clear()
        self._style_memo[key] = kept
        return kept

    def _cell_segments(self, plain: str, used: int, width: int, blank: Style, styled: Style) -> list[Segment]:
        pad = " " * self.cell_padding
        fill = " " * (width - 2 * self.cell_padding - used)
        line = [Segment(pad, blank)] if pad else []
        line.append(Segment(plain, styled))
        if fill:
            line.append(Segment(fill, blank))
        if pad:
            line.append(Segment(pad, blank))
        return line

    def _sweep_cell_renders(self) -> None:
        """Drop the renders of cells the table no longer holds (`sync` replaced them): they can
        never be drawn again, and every object kept is one more for each full GC pass to walk
        (tens of ms of a key's time when one lands on it). If the live ones alone fill it, clear."""
        # the cells it draws: `sync` keeps a cell equal to its replacement, so these are not
        # always the objects in `_cells`
        live = {id(cell) for row in self._data.values() for cell in row.values()}
        kept = {key: entry for key, entry in self._cell_renders.items() if key[1] in live}
        self._cell_renders = kept if len(kept) < CELL_RENDERS // 2 else {}
