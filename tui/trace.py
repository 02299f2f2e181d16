"""One request: why it was admitted, refused or sent where it went (`/why`), and its trace as a
waterfall (spans as bars on the trace's time axis, with the request's phases from `/why`:
admission, queueing in sluice, prefill, decode)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Header, LoadingIndicator, OptionList, Static
from textual.widgets.option_list import Option

from .client import AdminError
from .footer import KeyFooter
from .format import ms, utc_time
from .waterfall import (
    SERVICE_STYLE,
    WaterfallRow,
    axis_line,
    phase_spans,
    waterfall_line,
    waterfall_rows,
    why_text,
)

NAME_WIDTH = 32
FIXED = NAME_WIDTH + 1 + 9 + 9 + 4  # name, service, duration, borders and scrollbar


class TraceScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("q", "close", "Back", show=False),
        Binding("R", "reload", "Reload"),
    ]

    def __init__(self, request: dict[str, Any], loader: Callable[[str], Awaitable[dict[str, Any]]],
                 why_loader: Callable[[str], Awaitable[dict[str, Any]]] | None = None) -> None:
        super().__init__()
        self.request = request
        self.rid = str(request.get("rid"))
        self.loader = loader
        self.why_loader = why_loader
        self.trace: dict[str, Any] | None = None
        self.why: dict[str, Any] | None = None
        self.rows: list[WaterfallRow] = []
        self.total_ms = 0.0
        self.sub_title = f"trace of {self.rid}"

    def compose(self) -> ComposeResult:
        yield Header(icon="≈")
        with Vertical(id="trace-body"):
            yield Static(self._summary(), id="trace-summary")
            with VerticalScroll(id="why-box"):
                yield Static(Text("Why: loading…", style="dim"), id="why")
            yield Static("", id="trace-axis")
            yield LoadingIndicator(id="trace-loading")
            yield OptionList(id="waterfall")
            with VerticalScroll(id="span-detail-box"):
                yield Static("", id="span-detail")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#waterfall", OptionList).display = False
        self.load()
        self.load_why()

    def _summary(self) -> Text:
        r = self.request
        text = Text()
        text.append(f"{self.rid}", style="bold")
        text.append(f"  tenant {r.get('tenant')}  class {r.get('slo_class')}  engine {r.get('engine') or '–'}  ")
        text.append(f"status {r.get('status')}  arrived {utc_time(r.get('arrival_ts'))} UTC  ")
        text.append(f"TTFT {ms(r.get('ttft_ms'))}  E2E {ms(r.get('e2e_ms'))}")
        return text

    @work(exclusive=True, group="trace", exit_on_error=False)
    async def load(self) -> None:
        try:
            trace = await self.loader(self.rid)
        except AdminError as exc:
            self.query_one("#trace-loading").display = False
            self.query_one("#trace-axis", Static).update(Text(f"Cannot load the trace: {exc.message}",
                                                              style="bold red"))
            return
        self.show_trace(trace)

    @work(exclusive=True, group="why", exit_on_error=False)
    async def load_why(self) -> None:
        if self.why_loader is None:
            self.query_one("#why-box").display = False
            return
        try:
            why = await self.why_loader(self.rid)
        except AdminError as exc:
            self.query_one("#why", Static).update(Text(f"Why: cannot load the decisions: {exc.message}", style="red"))
            return
        self.show_why(why)

    def show_why(self, why: dict[str, Any]) -> None:
        self.why = why
        self.query_one("#why", Static).update(why_text(why))
        if self.trace is not None:
            self.show_trace(self.trace)  # add the phases to the waterfall

    def show_trace(self, trace: dict[str, Any]) -> None:
        self.trace = trace
        spans = list(trace.get("spans") or []) + phase_spans(self.why, trace.get("spans") or [])
        self.rows, _t0, total_s = waterfall_rows(spans)
        self.total_ms = total_s * 1000.0
        self.query_one("#trace-loading").display = False
        self.query_one("#waterfall", OptionList).display = True
        services = sorted({str(r.span.get("service") or "?") for r in self.rows})
        summary = self._summary()
        summary.append(f"\ntrace {trace.get('trace_id')}  {len(self.rows)} spans over {ms(self.total_ms)}  ")
        for s in services:
            summary.append("■ ", style=SERVICE_STYLE.get(s, "magenta"))
            summary.append(f"{s}  ")
        summary.append("◆ event", style="dim")
        self.query_one("#trace-summary", Static).update(summary)
        self._render_rows()
        waterfall = self.query_one("#waterfall", OptionList)
        if self.rows:
            waterfall.highlighted = 0
        waterfall.focus()

    def _bar_width(self) -> int:
        width = self.query_one("#waterfall", OptionList).size.width or self.size.width
        return max(10, width - FIXED)

    def _render_rows(self) -> None:
        if self.trace is None:
            return
        width = self._bar_width()
        self.query_one("#trace-axis", Static).update(axis_line(self.total_ms, width, NAME_WIDTH))
        waterfall = self.query_one("#waterfall", OptionList)
        highlighted = waterfall.highlighted
        waterfall.clear_options()
        waterfall.add_options(
            [Option(waterfall_line(row, self.total_ms, width, NAME_WIDTH), id=str(i))
             for i, row in enumerate(self.rows)]
        )
        if highlighted is not None and self.rows:
            waterfall.highlighted = min(highlighted, len(self.rows) - 1)

    def on_resize(self, event: Resize) -> None:
        self.call_after_refresh(self._render_rows)

    @on(OptionList.OptionHighlighted, "#waterfall")
    def _highlight(self, event: OptionList.OptionHighlighted) -> None:
        index = event.option_index
        if not 0 <= index < len(self.rows):
            return
        row = self.rows[index]
        span = row.span
        text = Text()
        text.append(f"{span.get('name')}", style="bold")
        text.append(f"  [{span.get('service')}]  start +{ms(row.offset_ms)}  duration {ms(row.duration_ms)}  "
                    f"span {span.get('span_id')}  parent {span.get('parent_span_id') or '–'}\n")
        for key, value in sorted((span.get("attributes") or {}).items()):
            text.append(f"  {key}", style="cyan")
            text.append(f" = {json.dumps(value)}\n")
        for ev in span.get("events") or []:
            start = float(span.get("start_ts") or 0.0)
            at = (float(ev.get("ts") or start) - start) * 1000.0
            text.append(f"  ◆ {ev.get('name')} at +{ms(at)}", style="yellow")
            attrs = ev.get("attributes") or {}
            if attrs:
                text.append(" " + json.dumps(attrs))
            text.append("\n")
        self.query_one("#span-detail", Static).update(text)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_reload(self) -> None:
        self.query_one("#trace-loading").display = True
        self.load()
