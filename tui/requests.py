"""Requests: in-flight and recent requests (capped), a filter, open a trace, abort."""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Key
from textual.message import Message
from textual.widgets import DataTable, Input, Label

from .format import IN_FLIGHT, STATUS_STYLE, filter_terms, ms, num, request_matches, utc_time
from .paint import show
from .tables import KeyedTable

COLUMNS: list[tuple[str, str, int | None]] = [
    ("rid", "Request", 14), ("tenant", "Tenant", 12), ("model", "Model", 14), ("slo_class", "Class", 11),
    ("status", "Status", 8),
    ("engine", "Engine", 8), ("arrival", "Arrived (UTC)", 13), ("ttft", "TTFT", 7), ("tpot", "TPOT", 7),
    ("e2e", "E2E", 7), ("in", "In tok", 6), ("out", "Out tok", 7), ("decision", "Decision", 24),
]


def request_cells(r: dict[str, Any]) -> tuple[Any, ...]:
    status = str(r.get("status") or "?")
    decision = str(r.get("decision") or "")
    reason = str(r.get("reason") or "")
    arrival = r.get("arrival_ts")
    arrived = "–" if arrival is None else utc_time(arrival) + f".{int(float(arrival) * 10) % 10}"
    return (
        Text(str(r.get("rid"))),
        Text(str(r.get("tenant") or "–")),
        Text(str(r.get("model") or "–")),  # as the client sent it (an alias, model:adapter)
        Text(str(r.get("slo_class") or "–")),
        Text(status, style=STATUS_STYLE.get(status, "")),
        Text(str(r.get("engine") or "–")),
        arrived,
        ms(r.get("ttft_ms")),
        ms(r.get("tpot_ms")),
        ms(r.get("e2e_ms")),
        num(r.get("prompt_tokens")),
        _out_tokens(r, status),
        Text(f"{decision}: {reason}" if reason else decision, style="red" if decision == "reject" else ""),
    )


def _out_tokens(r: dict[str, Any], status: str) -> Any:
    # the gateway counts a running request's tokens only when it ends: a 0 would be a lie
    out = r.get("completion_tokens")
    if status in IN_FLIGHT and not out:
        return Text("…" if r.get("ttft_ms") is not None else "–", style="dim")
    return num(out)


def _rank(r: dict[str, Any]) -> tuple[int, float]:
    """In-flight requests first, then newest first."""
    return (0 if r.get("status") in IN_FLIGHT else 1, -float(r.get("arrival_ts") or 0.0))


class RequestsTable(KeyedTable):
    BINDINGS = [
        Binding("enter", "select_cursor", "Open why + trace"),
        Binding("home,g", "follow", "Newest", key_display="home"),
    ]

    def action_follow(self) -> None:
        pane = next((a for a in self.ancestors if isinstance(a, RequestsPane)), None)
        if pane is not None:
            pane.follow()


class RequestsPane(Vertical):
    """Keeps up to `max_store` requests in memory and shows the first `max_rows` matching ones."""

    BINDINGS = [
        Binding("a", "abort", "Abort"),
        Binding("slash", "filter", "Filter", key_display="/"),
    ]

    class TraceRequested(Message):
        def __init__(self, request: dict[str, Any]) -> None:
            super().__init__()
            self.request = request

    class AbortRequested(Message):
        def __init__(self, request: dict[str, Any]) -> None:
            super().__init__()
            self.request = request

    def __init__(self, *, max_rows: int = 500, max_store: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_rows = max_rows
        self.max_store = max_store
        self.store: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.filter_text = ""
        self.dirty = False
        self._shown: dict[str, dict[str, Any]] = {}
        self.newer = 0  # requests not shown while the table is paused for reading

    def compose(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Input(placeholder="/ filter: text, tenant:acme, status:inflight",
                        id="request-filter")
            yield Label("", id="request-summary")
        yield RequestsTable(COLUMNS, id="request-table", cursor_type="row", zebra_stripes=True)

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#request-table", KeyedTable)

    def selected(self) -> dict[str, Any] | None:
        key = self.table.cursor_key()
        return None if key is None else self.store.get(key)

    # -- data -------------------------------------------------------------------------------------

    def upsert(self, requests: Iterable[dict[str, Any]]) -> None:
        """Merge requests (from a page read or from events) into the store; cheap, no rendering."""
        store = self.store
        for r in requests:
            rid = r.get("rid")
            if rid is None:
                continue
            rid = str(rid)
            old = store.get(rid)
            if old is not None:
                if old == r:
                    continue
                store[rid] = {**old, **r}
            else:
                store[rid] = r
            self.dirty = True
        overflow = len(store) - self.max_store
        if overflow > 0:
            # evict the oldest finished requests first; in-flight ones stay while they run
            victims = [rid for rid, r in store.items() if r.get("status") not in IN_FLIGHT][:overflow]
            for rid in victims:
                del store[rid]

    @property
    def following(self) -> bool:
        """The cursor on the first row: the table follows the newest requests. Anywhere else the
        operator is reading a row; the rows stay where they are (only their cells update) until
        the cursor goes back to the top (`home`)."""
        table = self.table
        return table.row_count == 0 or table.cursor_row <= 0

    def follow(self) -> None:
        table = self.table
        if table.row_count:
            table.move_cursor(row=0, animate=False)
        table.scroll_to(y=0, animate=False)
        self.render_rows()

    def render_rows(self) -> None:
        """Show the first `max_rows` requests that match the filter (in place)."""
        self.dirty = False
        terms = filter_terms(self.filter_text)
        candidates: Iterable[dict[str, Any]] = self.store.values()
        if terms:
            candidates = [r for r in candidates if request_matches(r, terms)]
        top = heapq.nsmallest(self.max_rows, candidates, key=_rank)
        table = self.table
        following = self.following
        if not following:
            # paused for reading: refresh the rows on screen, add and move none of them
            shown = self._shown
            top_keys = {str(r["rid"]) for r in top}
            self.newer = sum(1 for k in top_keys if k not in shown)
            top = [self.store.get(k, r) for k, r in shown.items()]
        rows: dict[str, tuple[Any, ...]] = {}
        changed_rank = False
        for r in top:
            rid = str(r["rid"])
            cells = table.cells_of(rid)
            if cells is None or self._shown.get(rid) is not r:
                cells = request_cells(r)
                changed_rank = True
            rows[rid] = cells
        structural = table.sync(rows)
        if following:
            self.newer = 0
            if structural or changed_rank:
                table.order({str(r["rid"]): i for i, r in enumerate(top)})
            if table.row_count and table.cursor_row != 0:
                table.move_cursor(row=0, animate=False)
            table.scroll_to(y=0, animate=False)
        self._shown = {str(r["rid"]): r for r in top}
        in_flight = sum(1 for r in self.store.values() if r.get("status") in IN_FLIGHT)
        summary = Text(f"{in_flight} in flight · {len(rows)} shown of {len(self.store)} (cap {self.max_rows})")
        if following:
            summary.append("  ● live: newest first", style="green")
        else:
            summary.append(f"  ⏸ paused for reading · {self.newer} newer · home: back to live",
                           style="bold yellow")
        show(self.query_one("#request-summary", Label), summary)

    # -- user actions -----------------------------------------------------------------------------

    @on(Input.Changed, "#request-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.follow()  # a new filter shows its newest matches

    @on(Input.Submitted, "#request-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def on_key(self, event: Key) -> None:
        if event.key == "escape" and self.query_one("#request-filter", Input).has_focus:
            event.stop()
            self.table.focus()

    @on(DataTable.RowSelected, "#request-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_trace()

    def action_filter(self) -> None:
        self.query_one("#request-filter", Input).focus()

    def action_open_trace(self) -> None:
        r = self.selected()
        if r is None:
            self.notify("No request selected", severity="warning")
            return
        self.post_message(self.TraceRequested(r))

    def action_abort(self) -> None:
        r = self.selected()
        if r is None:
            self.notify("No request selected", severity="warning")
            return
        if r.get("status") not in IN_FLIGHT:
            self.notify(f"{r.get('rid')} is {r.get('status')}: only queued or running requests can be "
                        "aborted", severity="warning")
            return
        self.post_message(self.AbortRequested(r))
