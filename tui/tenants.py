"""Tenants: a live, sortable, filterable table with weight and pause/resume actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key
from textual.message import Message
from textual.widgets import DataTable, Input, Label

from .format import ms, num, pct, si
from .tables import KeyedTable

NEG = float("-inf")


def _counter(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda t: (t.get("counters") or {}).get(name)


def _share_ratio(t: dict[str, Any]) -> float | None:
    share, fair = t.get("share"), t.get("fair_share")
    if share is None or not fair:
        return None
    return float(share) / float(fair)


# key, label, width, raw value (for sorting)
COLUMNS: list[tuple[str, str, int, Callable[[dict[str, Any]], Any]]] = [
    ("name", "Tenant", 14, lambda t: str(t.get("name"))),
    ("slo_class", "Class", 11, lambda t: str(t.get("slo_class") or "")),
    ("weight", "Weight", 6, lambda t: t.get("weight")),
    ("state", "State", 8, lambda t: bool(t.get("paused"))),
    ("share", "Share", 6, lambda t: t.get("share")),
    ("fair_share", "Fair", 6, lambda t: t.get("fair_share")),
    ("ratio", "Share/fair", 10, _share_ratio),
    ("user", "U (user)", 8, _counter("user")),
    ("resource", "R (res.)", 8, _counter("resource")),
    ("holistic", "H", 5, _counter("holistic")),
    ("queued", "Queue", 5, lambda t: t.get("queued")),
    ("in_flight", "In fl.", 6, lambda t: t.get("in_flight")),
    ("ttft_p50_ms", "TTFT p50", 8, lambda t: t.get("ttft_p50_ms")),
    ("ttft_p99_ms", "TTFT p99", 8, lambda t: t.get("ttft_p99_ms")),
    ("attainment", "Attain", 6, lambda t: t.get("attainment")),
    ("rejected", "Rejected", 8, lambda t: t.get("rejected")),
    ("admitted", "Admitted", 8, lambda t: t.get("admitted")),
]
COLUMN_KEYS = [c[0] for c in COLUMNS]
RAW = {c[0]: c[3] for c in COLUMNS}
LABELS = {c[0]: c[1] for c in COLUMNS}


def tenant_cells(t: dict[str, Any]) -> tuple[Any, ...]:
    """The displayed cells of one tenant row (same order as COLUMNS)."""
    ratio = _share_ratio(t)
    if ratio is None:
        ratio_cell = Text("–", style="dim")
    else:
        style = "green" if 0.8 <= ratio <= 1.25 else ("yellow" if 0.5 <= ratio <= 2.0 else "red")
        ratio_cell = Text(f"{ratio:.2f}×", style=style)
    counters = t.get("counters") or {}
    attainment = t.get("attainment")
    att_style = "" if attainment is None else ("green" if attainment >= 0.99 else
                                               "yellow" if attainment >= 0.95 else "red")
    paused = bool(t.get("paused"))
    return (
        Text(str(t.get("name"))),
        Text(str(t.get("slo_class") or "–")),
        num(t.get("weight"), 2),
        Text("paused", style="bold yellow") if paused else Text("active", style="green"),
        pct(t.get("share"), 1),
        pct(t.get("fair_share"), 1),
        ratio_cell,
        si(counters.get("user")),
        si(counters.get("resource")),
        num(counters.get("holistic"), 2),
        num(t.get("queued")),
        num(t.get("in_flight")),
        ms(t.get("ttft_p50_ms")),
        ms(t.get("ttft_p99_ms")),
        Text(pct(attainment, 1), style=att_style),
        Text(num(t.get("rejected")), style="red" if t.get("rejected") else ""),
        num(t.get("admitted")),
    )


def _sort_value(t: dict[str, Any], column: str) -> Any:
    value = RAW[column](t)
    if value is None:
        return (0, NEG)
    if isinstance(value, str):
        return (1, value.lower())
    return (1, value)


class TenantsPane(Vertical):
    """The tenants table. `update_tenants` is cheap: only changed cells are touched."""

    BINDINGS = [
        Binding("w", "weight", "Weight"),
        Binding("p", "pause", "Pause/resume"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("s", "sort_next", "Sort"),
        Binding("r", "sort_reverse", "Reverse"),
    ]

    class WeightRequested(Message):
        def __init__(self, tenant: str, weight: float | None) -> None:
            super().__init__()
            self.tenant = tenant
            self.weight = weight

    class PauseRequested(Message):
        def __init__(self, tenant: str, paused: bool) -> None:
            super().__init__()
            self.tenant = tenant
            self.paused = paused

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raw: dict[str, dict[str, Any]] = {}
        self.sort_column = "name"
        self.sort_reverse = False
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Input(placeholder="/ filter tenants by name or class", id="tenant-filter")
            yield Label("", id="tenant-summary")
        yield KeyedTable([(k, label, w) for k, label, w, _ in COLUMNS], id="tenant-table",
                         cursor_type="row", zebra_stripes=True)

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#tenant-table", KeyedTable)

    def selected(self) -> dict[str, Any] | None:
        key = self.table.cursor_key()
        return None if key is None else self.raw.get(key)

    # -- data -------------------------------------------------------------------------------------

    def update_tenants(self, tenants: list[dict[str, Any]]) -> None:
        previous = self.raw
        self.raw = {str(t.get("name")): t for t in tenants}
        terms = self.filter_text.lower().split()
        rows: dict[str, tuple[Any, ...]] = {}
        table = self.table
        sort_dirty = False
        sort_col = self.sort_column
        for name, t in self.raw.items():
            if terms and not all(term in name.lower() or term in str(t.get("slo_class") or "").lower()
                                 for term in terms):
                continue
            old = previous.get(name)
            cells = table.cells_of(name) if old is not None and old == t else None
            if cells is None:
                cells = tenant_cells(t)
                if old is None or RAW[sort_col](old) != RAW[sort_col](t):
                    sort_dirty = True
            rows[name] = cells
        structural = table.sync(rows)
        if structural or sort_dirty:
            self._sort()
        self._summary(len(rows))

    def _summary(self, shown: int) -> None:
        paused = sum(1 for t in self.raw.values() if t.get("paused"))
        arrow = "↓" if self.sort_reverse else "↑"
        text = f"{shown}/{len(self.raw)} tenants · {paused} paused · sort: {LABELS[self.sort_column]} {arrow}"
        self.query_one("#tenant-summary", Label).update(text)

    def _sort(self) -> None:
        col = self.sort_column
        rank = {name: _sort_value(t, col) for name, t in self.raw.items()}
        self.table.order(rank, reverse=self.sort_reverse)

    def refilter(self) -> None:
        self.update_tenants(list(self.raw.values()))

    # -- user actions -----------------------------------------------------------------------------

    @on(Input.Changed, "#tenant-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refilter()

    @on(Input.Submitted, "#tenant-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: Key) -> None:
        if event.key == "escape" and self.query_one("#tenant-filter", Input).has_focus:
            event.stop()
            self.table.focus()

    @on(DataTable.HeaderSelected, "#tenant-table")
    def _header(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column = column
            self.sort_reverse = column not in ("name", "slo_class")
        self._sort()
        self._summary(self.table.row_count)

    def action_filter(self) -> None:
        self.query_one("#tenant-filter", Input).focus()

    def action_sort_next(self) -> None:
        i = COLUMN_KEYS.index(self.sort_column)
        self.sort_column = COLUMN_KEYS[(i + 1) % len(COLUMN_KEYS)]
        self.sort_reverse = self.sort_column not in ("name", "slo_class")
        self._sort()
        self._summary(self.table.row_count)

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sort()
        self._summary(self.table.row_count)

    def sort_by(self, column: str, reverse: bool = False) -> None:
        self.sort_column = column
        self.sort_reverse = reverse
        self._sort()
        self._summary(self.table.row_count)

    def action_weight(self) -> None:
        t = self.selected()
        if t is None:
            self.notify("No tenant selected", severity="warning")
            return
        self.post_message(self.WeightRequested(str(t["name"]), t.get("weight")))

    def action_pause(self) -> None:
        t = self.selected()
        if t is None:
            self.notify("No tenant selected", severity="warning")
            return
        self.post_message(self.PauseRequested(str(t["name"]), bool(t.get("paused"))))
