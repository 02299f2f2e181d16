"""Modal screens: set a weight, confirm an action (with an optional reason), review a policy
change (diff + required reason), show an audited change, and the help screen."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, Static

from .format import changed_paths, diff_text, num


class WeightScreen(ModalScreen[tuple[float, str] | None]):
    """Ask for a tenant's new weight and the reason; dismisses with (weight, reason) or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, tenant: str, weight: float | None) -> None:
        super().__init__()
        self.tenant = tenant
        self.weight = weight

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Weight of tenant [b]{self.tenant}[/b] (now {num(self.weight, 2)})",
                        classes="dialog-title")
            yield Input(value="" if self.weight is None else f"{self.weight:g}", placeholder="new weight > 0",
                        id="weight-value", type="number")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="weight-reason")
            yield Static("", id="weight-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Set weight", variant="primary", id="weight-ok")
                yield Button("Cancel", id="weight-cancel")

    def on_mount(self) -> None:
        self.query_one("#weight-value", Input).focus()

    def _submit(self) -> None:
        raw = self.query_one("#weight-value", Input).value.strip()
        reason = self.query_one("#weight-reason", Input).value.strip()
        error = self.query_one("#weight-error", Static)
        try:
            weight = float(raw)
        except ValueError:
            error.update("the weight must be a number")
            return
        if not weight > 0:
            error.update("the weight must be greater than 0")
            return
        if not reason:
            error.update("a reason is required")
            self.query_one("#weight-reason", Input).focus()
            return
        self.dismiss((weight, reason))

    @on(Input.Submitted, "#weight-value")
    def _next(self) -> None:
        self.query_one("#weight-reason", Input).focus()

    @on(Input.Submitted, "#weight-reason")
    @on(Button.Pressed, "#weight-ok")
    def _ok(self) -> None:
        self._submit()

    @on(Button.Pressed, "#weight-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[str | None]):
    """Confirm a steering action; dismisses with its reason (required: every steering action is
    audited with one, prefilled with `reason` for the operator to keep or edit), or None."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, body: str, confirm: str = "Confirm", *, reason: str = "",
                 danger: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm = confirm
        self.reason = reason
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body, classes="dialog-body")
            yield Input(value=self.reason, placeholder="reason (required, recorded in the audit log)",
                        id="confirm-reason")
            yield Static("", id="confirm-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.confirm, variant="error" if self.danger else "primary", id="confirm-ok")
                yield Button("Cancel", id="confirm-cancel")

    def on_mount(self) -> None:
        self.query_one("#confirm-reason", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm-ok")
    def _ok(self) -> None:
        reason = self.query_one("#confirm-reason", Input).value.strip()
        if not reason:
            self.query_one("#confirm-error", Static).update("a reason is required")
            self.query_one("#confirm-reason", Input).focus()
            return
        self.dismiss(reason)

    @on(Button.Pressed, "#confirm-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class PolicyReviewScreen(ModalScreen[str | None]):
    """Show the difference a policy change makes and ask for a reason before applying it."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, diff_lines: list[str], changes: dict[str, Any], version: int | None) -> None:
        super().__init__()
        self.diff_lines = diff_lines
        self.changes = changes
        self.version = version

    def compose(self) -> ComposeResult:
        paths = ", ".join(changed_paths(self.changes)) or "nothing"
        with Vertical(classes="dialog wide"):
            yield Label(f"Review policy change (from version {self.version}): {paths}",
                        classes="dialog-title")
            with VerticalScroll(id="review-diff"):
                yield Static(diff_text(self.diff_lines), id="review-diff-text")
            yield Static(Text("PATCH changes: " + json.dumps(self.changes, ensure_ascii=False),
                              style="dim", overflow="ellipsis", no_wrap=True), id="review-patch")
            yield Input(placeholder="reason (required, recorded in the audit log)", id="review-reason")
            yield Static("", id="review-error", classes="dialog-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply", variant="warning", id="review-apply", disabled=True)
                yield Button("Cancel", id="review-cancel")

    def on_mount(self) -> None:
        self.query_one("#review-reason", Input).focus()

    @on(Input.Changed, "#review-reason")
    def _reason_changed(self, event: Input.Changed) -> None:
        self.query_one("#review-apply", Button).disabled = not event.value.strip()

    @on(Input.Submitted, "#review-reason")
    @on(Button.Pressed, "#review-apply")
    def _apply(self) -> None:
        reason = self.query_one("#review-reason", Input).value.strip()
        if not reason:
            self.query_one("#review-error", Static).update("a reason is required")
            return
        self.dismiss(reason)

    @on(Button.Pressed, "#review-cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ChangeScreen(ModalScreen[None]):
    """One audited policy change: who, when, why, and its diff."""

    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, header: str, diff_lines: list[str]) -> None:
        super().__init__()
        self.header = header
        self.diff_lines = diff_lines

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.header, classes="dialog-title")  # wraps: who, why and what, whole
            with VerticalScroll(id="change-diff"):
                yield Static(diff_text(self.diff_lines))
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", id="change-close")

    @on(Button.Pressed, "#change-close")
    def action_close(self) -> None:
        self.dismiss(None)


HELP = """\
# sluice console

A live view of one sluice server through its admin API. Data refreshes every second; nothing
here blocks on the network. When the server is unreachable or refuses the admin token a banner
says so and the console reconnects by itself (exponential backoff).

## Everywhere

| key | action |
|---|---|
| `1` `2` `3` `4` | Overview, Tenants, Requests, Policy |
| `ctrl+p` | command palette: every action by name |
| `ctrl+r` | reconnect now and reload everything |
| `?` | this help |
| `q` / `ctrl+q` | quit |
| `tab` / `shift+tab` | move focus; `escape` leaves a filter box |

## Overview
Totals over the last 10 s (request rate, goodput, SLO attainment, rejections, output tokens/s,
GPU power) with charts of the last 5 minutes on fixed scales (named under each card: ratios
0-100%, rates 0 to the peak shown, watts 0 to the power limit); engines (sim or real, load, KV
cache usage, throughput, forecasts); GPUs (power, energy, clocks, utilisation, memory).

## Tenants
| key | action |
|---|---|
| `/` | filter by name or SLO class |
| `s` / `r` | sort by the next column / reverse (or click a header) |
| `w` | change the selected tenant's weight (asks for a reason) |
| `p` | pause or resume the selected tenant (asks for a reason, prefilled) |

Share 60s is the tenant's part of the service finished over the last 60 s; Fair 60s is weight /
the weights of the tenants with work queued, averaged over the same 60 s. U: weighted tokens /
weight; R: GPU-seconds / weight; H: both against the mean of the queued tenants (1.00 = mean).
Refused: rejections by reason. The legend under the table says the same.

## Requests
In-flight requests first, then the most recent. With the cursor on the top row the table is
live (the newest on top); elsewhere it is paused for reading (rows stay put, the summary counts
the newer ones). `/` filters: words match rid, tenant, status, engine; `status:running`,
`status:inflight`, `tenant:acme` match a field.
| key | action |
|---|---|
| `enter` | open the request: why (its decisions in words and numbers) and its trace as a waterfall |
| `home` / `g` | back to live |
| `a` | abort the selected request (asks first, with a reason) |

## Policy
Edit the policy as JSON (the valid values are listed under the editor and checked as you type;
`tab` leaves the editor), press `ctrl+s` to see the difference, give a reason and apply it.
The change is validated and applied atomically by the server and lands in the history list
with its version, who and when. `ctrl+o` reverts your edit to the server's policy; `enter` on a
history row shows that change's diff.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide help"):
            with VerticalScroll(id="help-scroll"):
                yield Markdown(HELP)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", id="help-close")

    def on_mount(self) -> None:
        self.query_one("#help-scroll").focus()  # PageDown and the arrows scroll at once

    @on(Button.Pressed, "#help-close")
    def action_close(self) -> None:
        self.dismiss(None)
