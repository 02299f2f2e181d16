"""`KeyFooter`: the focused screen's keys on one line, as Textual's Footer shows them, for less.

Textual's Footer recomposes on every binding refresh: it removes its keys and mounts and styles a
widget per key again, and a focus change refreshes the bindings twice (the focus watcher, then after
the next frame). Every tab key changes the focus, so each cost two rebuilds of ten widgets, the
largest part of a key's time to its screen after the frame itself (docs/console.md). This footer is
one widget: on a binding refresh it reads the active bindings (a dict walk), and repaints its one
line only if what it shows changed; nothing is mounted or restyled.

It looks like Textual's (the same theme variables, key then description, the command palette key
on the right after a bar) and a click on a key presses it. What it drops: per-key tooltips and
horizontal scrolling (keys past the width are cut; the palette key stays).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

from rich.style import Style
from rich.text import Text
from textual import events
from textual.screen import Screen

from .paint import KeptLines


class FooterItem(NamedTuple):
    key: str  # what a click presses
    display: str  # how the key is shown
    description: str
    enabled: bool


class KeyFooter(KeptLines, can_focus=False):
    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"key-footer--key", "key-footer--description", "key-footer--bar"}
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        & > .key-footer--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        & > .key-footer--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        & > .key-footer--bar {
            color: $foreground 20%;
        }
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.items: tuple[FooterItem, ...] = ()
        self.palette: FooterItem | None = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[Any]) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        items, palette = self.read_bindings(screen)
        if items != self.items or palette != self.palette:
            self.items, self.palette = items, palette
            self.refresh()

    def read_bindings(self, screen: Screen[Any]) -> tuple[tuple[FooterItem, ...], FooterItem | None]:
        """What Textual's Footer would show: the first shown binding of each action, in the
        binding chain's order, and the command palette's key."""
        app = self.app
        active = screen.active_bindings
        by_action: dict[str, FooterItem] = {}
        for _node, binding, enabled, _tooltip in active.values():
            if binding.show and binding.action not in by_action:
                by_action[binding.action] = FooterItem(binding.key, app.get_key_display(binding),
                                                       binding.description, bool(enabled))
        palette = None
        found = active.get(app.COMMAND_PALETTE_BINDING) if app.ENABLE_COMMAND_PALETTE else None
        if found is not None:
            _node, binding, enabled, _tooltip = found
            palette = FooterItem(binding.key, app.get_key_display(binding), binding.description, bool(enabled))
        return tuple(by_action.values()), palette

    def render_key(self) -> Hashable:
        return (self.items, self.palette, *(self.get_component_rich_style(name) for name in sorted(
            self.COMPONENT_CLASSES)))

    def render(self) -> Text:
        key_style = self.get_component_rich_style("key-footer--key")
        desc_style = self.get_component_rich_style("key-footer--description")
        dim = Style(dim=True)
        line = Text(no_wrap=True, overflow="crop", end="")
        right = Text(no_wrap=True, end="")
        if self.palette is not None:
            right.append("▏", self.get_component_rich_style("key-footer--bar"))
            right.append_text(_item(self.palette, key_style, desc_style, dim, pad=False))
            right.append(" ")
        room = max(0, self.size.width - right.cell_len)
        for item in self.items:
            part = _item(item, key_style, desc_style, dim)
            if line.cell_len + part.cell_len > room:
                break
            line.append_text(part)
        line.append(" " * (room - line.cell_len))
        line.append_text(right)
        return line

    def on_click(self, event: events.Click) -> None:
        key = event.style.meta.get(KEY_META)
        if key is None:
            return
        event.stop()
        if event.style.meta.get(ENABLED_META):
            self.app.simulate_key(key)
        else:
            self.app.bell()


KEY_META, ENABLED_META = "key_footer_key", "key_footer_enabled"


def _item(item: FooterItem, key_style: Style, desc_style: Style, dim: Style, pad: bool = True) -> Text:
    """One key as Textual's FooterKey draws it (" k " then "Description "; the palette's "^p
    palette"), carrying the key it presses (a click reads it) in its style's meta."""
    meta = Style.from_meta({KEY_META: item.key, ENABLED_META: item.enabled})
    if not item.enabled:
        meta += dim
    key = f" {item.display} " if pad else item.display
    desc = f"{item.description} " if pad else f" {item.description}"
    return Text.assemble((key, key_style + meta), (desc, desc_style + meta))
