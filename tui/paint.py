"""Cheaper repaints: texts updated without a layout when their size cannot change, and widgets
whose lines are kept while what they show stays (`KeptLines`).

`Static.update` asks for a layout by default: the whole screen is reflowed, and every scrollable
widget is told its size again, which repaints its scrollbars (a table's vertical scrollbar is ~10
ms to draw). The console updates half a dozen texts on every state (the status bar, the overview's
numbers, the tables' summaries), so each state paid a layout and a scrollbar repaint, whichever tab
was shown. `show` skips a text that did not change and lays out only when the widget's size
follows its text and the text's size changed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.geometry import Region
from textual.scrollbar import ScrollBar
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

_SHOWN = "_sluice_shown"  # the last (fingerprint, extent) shown, on the widget


def show(widget: Static, content: str | Text) -> None:
    """`widget.update(content)`, or nothing when it shows that already; a layout only where the
    widget's size depends on its text (an auto width or height) and that text's size changed.
    With an auto height and a width that is not auto the text may wrap differently at the same
    size, so any change there lays out, as `update` would."""
    if isinstance(content, Text):
        plain = content.plain
        mark: Any = (plain, str(content.style), tuple(content.spans), content.justify, content.no_wrap,
                     content.overflow, content.end)
    else:
        plain, mark = content, content
    extent = tuple(cell_len(line) for line in plain.split("\n"))
    before = getattr(widget, _SHOWN, None)
    if before is not None and before[0] == mark and type(before[0]) is type(mark):
        return
    styles = widget.styles
    width_auto = styles.width is not None and styles.width.is_auto
    height_auto = styles.height is None or styles.height.is_auto
    if not width_auto and not height_auto:
        layout = False  # a fixed height and a width from the container: the text never resizes it
    elif width_auto and before is not None and before[1] == extent:
        layout = False  # sized by its lines, which have the same widths (no wrapping at an auto width)
    else:
        layout = True
    setattr(widget, _SHOWN, (mark, extent))
    widget.update(content, layout=layout)


class KeptLines(Widget):
    """A widget whose rendered lines are kept by what they show (`render_key`, with the crop, size,
    style and theme). Textual draws a refreshed widget's lines again whatever caused the refresh:
    a tab key restyles and re-sizes each table's scrollbar and changes the footer's keys back and
    forth, and each is drawn again (the footer 1-3 ms, a 48-line scrollbar 1.5-3 ms, per key)."""

    KEPT = 16  # renders kept (the footer has one per focused pane; a scrollbar, a few positions)

    def render_key(self) -> Hashable | None:
        """What the lines show, beyond crop, size, style and theme (None: not known, draw afresh)."""
        return None

    def render_lines(self, crop: Region) -> list[Strip]:
        shows = self.render_key()
        if shows is None:
            return super().render_lines(crop)
        key = (crop, self.size, self.rich_style, self.background_colors, self.app.theme, shows)
        kept: dict[Any, list[Strip]] = self.__dict__.setdefault("_kept_lines", {})
        lines = kept.get(key)
        if lines is None:
            lines = super().render_lines(crop)
            if len(kept) >= self.KEPT:
                kept.clear()
            kept[key] = lines
        return lines


class KeptScrollBar(KeptLines, ScrollBar):
    """Textual's scrollbar, its lines kept while its place, size and colours stay."""

    def render_key(self) -> Hashable:
        parent = self.parent
        styles = parent.styles if isinstance(parent, Widget) else None
        colours = () if styles is None else (
            styles.scrollbar_background, styles.scrollbar_background_hover, styles.scrollbar_background_active,
            styles.scrollbar_color, styles.scrollbar_color_hover, styles.scrollbar_color_active,
            parent.background_colors if isinstance(parent, Widget) else None)
        return (self.window_virtual_size, self.window_size, self.position, self.thickness, self.vertical,
                self.grabbed, self.mouse_over, self.screen.styles.scrollbar_color, colours)
