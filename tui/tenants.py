"""Tenants: a live, sortable, filterable table with weight and pause/resume actions."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Static

from .format import ms, num, pct, si
from .paint import show
from .tables import KeyedTable

NEG = float("-inf")


def _counter(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda t: (t.get("counters") or {}).get(name)


FAIR_WINDOW_S = 60.0  # the server's Share window (LiveStats.window_s)


def _share_ratio(t: dict[str, Any]) -> float | None:
    share, fair = t.get("share"), t.get("fair_60s")
    if share is None or not fair:
        return None
    return float(share) / float(fair)


def _refusals(t: dict[str, Any]) -> tuple[int, str]:
    by = t.get("rejected_by_reason") or {}
    reasons = " ".join(f"{code} {n}" for code, n in sorted(by.items(), key=lambda kv: (-kv[1], kv[0])))
    return int(t.get("rejected") or 0), reasons


def _refusals_cell(value: tuple[int, str]) -> Text:
    total, reasons = value
    if not total:
        return Text("0", style="dim")
    return Text(f"{total}: {reasons}" if reasons else str(total), style="red")


class FairWindow:
    """A tenant's fair share averaged over the last 60 s of server time, from the state samples.

    The server's `fair_share` is instantaneous (weight / the weights backlogged right now) and
    flips as queues empty and fill; `share` is the tenant's part of the service over 60 s. The
    ratio of the two is only meaningful over the same window, so the console averages the
    instantaneous value over the samples it saw in that window (a running sum, O(1) a sample)."""

    __slots__ = ("samples", "total")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def add(self, now: float, fair: float) -> float:
        self.samples.append((now, fair))
        self.total += fair
        since = now - FAIR_WINDOW_S
        while self.samples[0][0] <= since:
            self.total -= self.samples.popleft()[1]
        return max(0.0, self.total / len(self.samples))


def _ratio_cell(ratio: float | None) -> Any:
    if ratio is None:
        return Text("–", style="dim")
    style = "green" if 0.8 <= ratio <= 1.25 else ("yellow" if 0.5 <= ratio <= 2.0 else "red")
    return Text(f"{ratio:.2f}×", style=style)


def _attainment_cell(value: Any) -> Any:
    if value is None:
        return "–"
    style = "green" if value >= 0.99 else "yellow" if value >= 0.95 else "red"
    return Text(pct(value, 1), style=style)


PAUSED = Text("paused", style="bold yellow")
ACTIVE = Text("active", style="green")

# key, label, width, raw value (compared between updates, and sorted on), cell from the raw value
COLUMNS: list[tuple[str, str, int, Callable[[dict[str, Any]], Any], Callable[[Any], Any]]] = [
    ("name", "Tenant", 14, lambda t: str(t.get("name")), Text),
    ("slo_class", "Class", 11, lambda t: str(t.get("slo_class") or "–"), Text),
    ("weight", "Weight", 6, lambda t: t.get("weight"), lambda v: num(v, 2)),
    ("state", "State", 6, lambda t: bool(t.get("paused")), lambda v: PAUSED if v else ACTIVE),
    ("share", "Share 60s", 9, lambda t: t.get("share"), lambda v: pct(v, 1)),
    ("fair_60s", "Fair 60s", 8, lambda t: t.get("fair_60s"), lambda v: pct(v, 1)),
    ("ratio", "Shr/fair", 8, _share_ratio, _ratio_cell),
    ("user", "U tok/w", 8, _counter("user"), si),
    ("resource", "R GPU·s/w", 9, _counter("resource"), lambda v: num(v, 1)),
    ("holistic", "H ×avg", 6, _counter("holistic"), lambda v: num(v, 2)),
    ("energy", "Energy J", 8, lambda t: t.get("energy_j"), si),
    ("queued", "Queue", 5, lambda t: t.get("queued"), num),
    ("in_flight", "In fl.", 6, lambda t: t.get("in_flight"), num),
    ("ttft_p50_ms", "TTFT p50", 8, lambda t: t.get("ttft_p50_ms"), ms),
    ("ttft_p99_ms", "TTFT p99", 8, lambda t: t.get("ttft_p99_ms"), ms),
    ("attainment", "Attain", 6, lambda t: t.get("attainment"), _attainment_cell),
    ("admitted", "Admitted", 8, lambda t: t.get("admitted"), num),
    ("refusals", "Refused: by reason", 26, _refusals, _refusals_cell),
]

LEGEND = (
    "Share 60s: the tenant's part of the service (weighted tokens) finished in the last 60 s · "
    "Fair 60s: weight ÷ the weights of the tenants with work queued, averaged over the same 60 s · "
    "Shr/fair: 1.00× is fair\n"
    "U: weighted tokens served ÷ weight · R: GPU-seconds ÷ weight · H: U and R against the mean of "
    "the queued tenants (1.00 = mean, 0 = nothing queued) · Energy: GPU joules of its requests since start "
    "(engines that report it) · Refused: rejections since start, by reason"
)
COLUMN_KEYS = [c[0] for c in COLUMNS]
RAW = {c[0]: c[3] for c in COLUMNS}
LABELS = {c[0]: c[1] for c in COLUMNS}
_RAW_FMT = [(c[3], c[4]) for c in COLUMNS]


def tenant_cells(t: dict[str, Any], old: dict[str, Any] | None = None,
                 old_cells: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """The displayed cells of one tenant row (same order as COLUMNS). Given the previous raw row
    and its cells, only the cells whose raw value changed are formatted again."""
    if old is None or old_cells is None:
        return tuple(fmt(raw(t)) for raw, fmt in _RAW_FMT)
    out = []
    for (raw, fmt), cell in zip(_RAW_FMT, old_cells):
        value = raw(t)
        out.append(cell if value == raw(old) else fmt(value))
    return tuple(out)


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
        self.fair: dict[str, FairWindow] = {}

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Input(placeholder="/ filter tenants by name or class", id="tenant-filter")
            yield Label("", id="tenant-summary")
        yield KeyedTable([(k, label, w) for k, label, w, _, _ in COLUMNS], id="tenant-table",
                         cursor_type="row", zebra_stripes=True)
        yield Static(Text(LEGEND, style="dim"), id="tenant-legend")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#tenant-table", KeyedTable)

    def selected(self) -> dict[str, Any] | None:
        key = self.table.cursor_key()
        return None if key is None else self.raw.get(key)

    # -- data -------------------------------------------------------------------------------------

    def update_tenants(self, tenants: list[dict[str, Any]], now: float | None = None) -> None:
        """Show `tenants`; `now` (the server time of a new sample) adds a point to each 60 s fair
        share average. Without it the last averages are kept (a refilter, the same sample)."""
        previous = self.raw
        raw: dict[str, dict[str, Any]] = {}
        for t in tenants:
            name = str(t.get("name"))
            if now is not None:
                window = self.fair.get(name) or self.fair.setdefault(name, FairWindow())
                fair = window.add(now, float(t.get("fair_share") or 0.0))
            else:
                fair = (previous.get(name) or t).get("fair_60s")
            raw[name] = {**t, "fair_60s": fair}
        self.raw = raw
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
            shown = table.cells_of(name)
            if shown is not None and old is not None:
                cells = shown if old == t else tenant_cells(t, old, shown)
                if cells is not shown and RAW[sort_col](old) != RAW[sort_col](t):
                    sort_dirty = True
            else:
                cells = tenant_cells(t)
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
        show(self.query_one("#tenant-summary", Label), text)

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
