"""`SluiceConsole`: the operator console, a Textual app that is a client of the admin API only.

Data flow: background workers (`tui.live`: async `@work`, one exclusive group each) read
`/admin/v1/state` every `refresh_interval` seconds, follow the `/admin/v1/events` stream and page
`/admin/v1/requests`; they post small typed messages (`tui.messages`) and this app's handlers
update the panes' widgets in place. The UI never awaits the network itself. Failures show a
banner (unreachable, token refused) and the workers retry with exponential backoff. The
operator's changes (weights, pause, abort, policy) are `tui.actions`: a dialog, then a worker.
This module is the shell: layout, the handlers of the workers' and panes' messages, tabs, keys and
the command palette.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Header, Static, TabbedContent, TabPane

from .actions import OperatorActions
from .client import AdminClient
from .footer import KeyFooter
from .format import plural, policy_document, unified_diff, utc_time
from .live import LiveUpdates
from .messages import (
    ConnectionChanged,
    HistoryLoaded,
    PolicyUpdated,
    RequestEvent,
    RequestsLoaded,
    StateUpdated,
)
from .modals import ChangeScreen, HelpScreen
from .overview import OverviewPane
from .paint import show
from .policy import PolicyPane, change_summary
from .requests import RequestsPane
from .tenants import TenantsPane
from .trace import TraceScreen

TABS = ("overview", "tenants", "requests", "policy")
GC_THRESHOLDS = (50_000, 20, 10)  # the cyclic GC's, while the console runs (on_mount)
FOCUS_TARGET = {"overview": "#engines", "tenants": "#tenant-table", "requests": "#request-table",
                "policy": "#policy-text"}


class SluiceConsole(LiveUpdates, OperatorActions, App[None]):
    """The sluice operator console.

    `SluiceConsole(url, token)` is all a test or the CLI needs; the rest are knobs:
    `actor` (sent as X-Sluice-Actor, recorded in the audit log), `refresh_interval` (seconds
    between state reads), `requests_interval`, `backoff_initial` / `backoff_max` (reconnects),
    `max_requests` (rows shown in the requests table) and `max_store` (requests kept in memory),
    `live=False` to start no background workers (benchmarks and tests that inject data).
    """

    CSS_PATH = "console.tcss"
    TITLE = "sluice console"

    BINDINGS = [
        # priority: taken as the key arrives, not after ~7 message hops up from the focused table
        # (while the screen repainted the tab being left); a focused text field keeps its digits
        # (Textual leaves it the keys it consumes), and so does a dialog (action_tab_key skips)
        Binding("1", "tab_key('overview')", "Overview", priority=True),
        Binding("2", "tab_key('tenants')", "Tenants", priority=True),
        Binding("3", "tab_key('requests')", "Requests", priority=True),
        Binding("4", "tab_key('policy')", "Policy", priority=True),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("f1", "help", "Help", show=False),
        Binding("ctrl+r", "reconnect", "Reconnect", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        actor: str | None = None,
        refresh_interval: float = 1.0,
        requests_interval: float = 2.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 15.0,
        max_requests: int = 500,
        max_store: int = 10_000,
        live: bool = True,
        client: AdminClient | None = None,
        starting: Callable[[], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.client = client or AdminClient(url, token, actor=actor)
        self.refresh_interval = refresh_interval
        self.requests_interval = requests_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_requests = max_requests
        self.max_store = max_store
        self.live = live
        # a server starting beside the console (`sluice demo`): until the first state arrives the
        # banner says what it is doing (starting() -> text, or None once it has failed) instead of
        # "cannot reach", and the reconnects stay frequent
        self.starting = starting
        self.sub_title = url
        self.state: dict[str, Any] | None = None
        self.last_now: float | None = None
        self.connection = "connecting"
        self.connection_detail = ""
        self.updates = 0
        self._wake: asyncio.Event | None = None
        self._requests_render_pending = False
        self._state_seen = -1e9  # monotonic time of the last state shown
        self._gc_thresholds = gc.get_threshold()
        self.overview = OverviewPane(id="overview-pane")
        self.tenants = TenantsPane(id="tenants-pane")
        self.requests_pane = RequestsPane(id="requests-pane", max_rows=max_requests, max_store=max_store)
        self.policy_pane = PolicyPane(id="policy-pane")

    # -- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon="≈")  # Textual's default "⭘" is missing from browser fonts (an empty box)
        yield Static("", id="banner")
        with TabbedContent(initial="overview", id="tabs"):
            with TabPane("Overview [1]", id="overview"):
                yield self.overview
            with TabPane("Tenants [2]", id="tenants"):
                yield self.tenants
            with TabPane("Requests [3]", id="requests"):
                yield self.requests_pane
            with TabPane("Policy [4]", id="policy"):
                yield self.policy_pane
        yield Static("", id="statusbar")
        yield KeyFooter()

    def main(self, selector: str) -> Any:
        """Query the console's main screen (not whatever dialog or trace is on top)."""
        if not self.screen_stack:
            raise NoMatches("the console is shutting down")
        return self.screen_stack[0].query_one(selector)

    def on_mount(self) -> None:
        self._wake = asyncio.Event()
        self._show_connection()
        self.screen.set_focus(self.main("#engines"))  # now, not deferred: a first key must not race it
        # What exists now (modules, Textual, the widget tree) lives as long as the console: out of
        # the cyclic GC's reach, a full collection walks half as many objects (one took ~110 ms
        # of a key's time to screen under load; bench/bench_console.py).
        gc.collect()
        gc.freeze()
        # A tab switch leaves ~5,000 objects in cycles (Textual's strips cache themselves): at the
        # default thresholds (700, 10, 10) a key held ~30 young collections and, one key in four, a
        # full one (40-130 ms at 1,000 tenants); the garbage stays bounded by GC_THRESHOLDS[0].
        gc.set_threshold(*GC_THRESHOLDS)
        if self.live:
            self.start_workers()

    async def on_unmount(self) -> None:
        gc.unfreeze()  # another app in this process (tests) starts from a clean slate
        gc.set_threshold(*self._gc_thresholds)
        await self.client.close()

    # -- data handlers ----------------------------------------------------------------------------

    def ingest_state(self, state: dict[str, Any]) -> None:
        """Apply one state snapshot (ignored when older than the one shown). A snapshot with a new
        server time adds a point to every sparkline; the same time again only refreshes values."""
        now = state.get("now")
        new_sample = True
        if now is not None and self.last_now is not None:
            if float(now) < self.last_now:
                return
            new_sample = float(now) > self.last_now
        if now is not None:
            self.last_now = float(now)
        self.state = state
        self.updates += 1
        self._state_seen = time.monotonic()
        try:
            with self.batch_update():
                self.overview.update_state(state, new_sample)
                self.policy_pane.set_choices(dict(state.get("policy_choices") or {}))
                self.tenants.update_tenants(list(state.get("tenants") or []),
                                            float(now) if new_sample and now is not None else None)
                self._show_connection()
        except NoMatches:
            pass  # a message that arrived while the app shuts down

    def ingest_requests(self, requests: Iterable[dict[str, Any]], render: bool = True) -> None:
        self.requests_pane.upsert(requests)
        if render:
            self._schedule_requests_render()

    @on(StateUpdated)
    def _on_state(self, message: StateUpdated) -> None:
        self.ingest_state(message.state)

    @on(RequestsLoaded)
    def _on_requests(self, message: RequestsLoaded) -> None:
        self.ingest_requests(message.requests)

    @on(RequestEvent)
    def _on_request_event(self, message: RequestEvent) -> None:
        self.ingest_requests([message.request])

    @on(PolicyUpdated)
    def _on_policy(self, message: PolicyUpdated) -> None:
        with contextlib.suppress(NoMatches):  # a reply that arrives while the app shuts down
            self.policy_pane.update_policy(message.policy)

    @on(HistoryLoaded)
    def _on_history(self, message: HistoryLoaded) -> None:
        with contextlib.suppress(NoMatches):  # a reply that arrives while the app shuts down
            self.policy_pane.update_history(message.changes)

    def _schedule_requests_render(self) -> None:
        if not self._requests_render_pending:
            self._requests_render_pending = True
            self.set_timer(0.2, self._render_requests)

    def _render_requests(self) -> None:
        self._requests_render_pending = False
        pane = self.requests_pane
        try:
            # a hidden table is rendered when its tab is shown (action_show_tab, _tab_activated)
            if pane.dirty and pane.is_mounted and self.main("#tabs").active == "requests":
                pane.render_rows()
        except NoMatches:
            pass  # shutting down

    @on(ConnectionChanged)
    def _on_connection(self, message: ConnectionChanged) -> None:
        if message.status == self.connection and message.status == "ok":
            return
        self.connection = message.status
        detail = message.detail
        if message.retry_in is not None:
            detail = f"{detail} · retrying in {message.retry_in:.1f} s (ctrl+r: now)"
        self.connection_detail = detail
        try:
            self._show_connection()
        except NoMatches:
            pass  # shutting down

    def _show_connection(self) -> None:
        banner = self.main("#banner")
        status = self.connection
        waiting = self.starting() if self.starting is not None and self.state is None else None
        if waiting is not None and status in ("connecting", "unreachable"):
            banner.update(Text.assemble(("⏳ ", "bold"), waiting))
            banner.set_class(True, "-visible")
            banner.set_class(False, "-refused")
        elif status == "unreachable":
            banner.update(Text.assemble(("⚠ Cannot reach the admin API ", "bold"), f"at {self.url}: ",
                                        self.connection_detail))
        elif status == "unauthorized":
            banner.update(Text.assemble(
                ("⛔ The admin token was refused ", "bold"), f"({self.connection_detail}). ",
                "Set SLUICE_ADMIN_TOKEN or pass --token-file with the server's admin token "
                "(tenant API keys are not accepted)."))
        elif status == "error":
            banner.update(Text.assemble(("⚠ Admin API error: ", "bold"), self.connection_detail))
        if waiting is None or status not in ("connecting", "unreachable"):
            banner.set_class(status in ("unreachable", "unauthorized", "error"), "-visible")
            banner.set_class(status == "unauthorized", "-refused")

        bar = Text()
        marks = {"ok": ("● connected", "green"), "connecting": ("○ connecting…", "yellow"),
                 "unreachable": ("● unreachable", "red"), "unauthorized": ("● token refused", "red"),
                 "error": ("● error", "red")}
        label, style = marks.get(status, (status, ""))
        bar.append(label, style=style)
        state = self.state
        if state is not None:
            bar.append(f"  policy v{state.get('policy_version')} ({state.get('scheduler')})")
            bar.append(f"  {plural(len(state.get('tenants') or []), 'tenant')} · "
                       f"{plural(len(state.get('engines') or []), 'engine')}")
            if state.get("now") is not None:
                bar.append(f"  server time {utc_time(state.get('now'))} UTC")
        show(self.main("#statusbar"), bar)

    # -- navigation -------------------------------------------------------------------------------

    def action_tab_key(self, tab: str) -> None:
        if isinstance(self.screen, ModalScreen):
            raise SkipAction()  # not for a dialog: the key goes on to its focused widget
        self.action_show_tab(tab)

    def action_show_tab(self, tab: str) -> None:
        if isinstance(self.screen, ModalScreen):
            return
        if isinstance(self.screen, TraceScreen):
            self.pop_screen()
        # Focus the tab's widget, then show its pane, in one step: switching the pane first would
        # hide the focused widget and Textual would move the focus to a sibling; `focus()` alone
        # left the switch to TabbedContent, messages and frames later.
        target = self.main(FOCUS_TARGET[tab])
        target.screen.set_focus(target)
        self.main("#tabs").active = tab
        # lay out in the next frame: the panes ask only once idle, and the focus change repainted
        # the old pane before that (a full frame for nothing, 15-35 ms at 1,000 tenants)
        self.screen_stack[0].refresh(layout=True)
        if tab == "requests" and self.requests_pane.dirty:
            self.requests_pane.render_rows()

    @on(TabbedContent.TabActivated, "#tabs")
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = event.pane.id or "overview"
        if tab not in TABS:
            return
        pane = event.pane
        if not self.screen_stack:  # a late message while the app shuts down (no screen to focus in)
            return
        if self.main("#tabs").active != tab:
            # stale: another tab was shown since (a key, a click, a focus); pulling the focus back
            # here would re-activate this tab and start a ping-pong of deferred focus changes
            return
        focused = self.focused
        if focused is None or pane not in focused.ancestors:
            self.main(FOCUS_TARGET[tab]).focus()
        if tab == "requests" and self.requests_pane.dirty:
            self.requests_pane.render_rows()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_reconnect(self) -> None:
        self.connection = "connecting"
        self._show_connection()
        self.start_workers()

    # -- operator actions (tui.actions: a dialog, then the admin API) ---------------------------

    @on(TenantsPane.WeightRequested)
    def _weight_requested(self, message: TenantsPane.WeightRequested) -> None:
        self.ask_weight(message.tenant, message.weight)

    @on(TenantsPane.PauseRequested)
    def _pause_requested(self, message: TenantsPane.PauseRequested) -> None:
        self.ask_pause(message.tenant, message.paused)

    @on(RequestsPane.AbortRequested)
    def _abort_requested(self, message: RequestsPane.AbortRequested) -> None:
        self.ask_abort(message.request)

    @on(PolicyPane.ApplyRequested)
    def _apply_requested(self, message: PolicyPane.ApplyRequested) -> None:
        self.ask_apply(message.diff, message.changes, message.version)

    # -- views of one request and one policy change ----------------------------------------------

    @on(RequestsPane.TraceRequested)
    def _trace_requested(self, message: RequestsPane.TraceRequested) -> None:
        self.push_screen(TraceScreen(message.request, self.client.trace, self.client.why))

    @on(PolicyPane.ChangeSelected)
    def _change_selected(self, message: PolicyPane.ChangeSelected) -> None:
        c = message.change
        before, after = c.get("before") or {}, c.get("after") or {}
        labels = (f"v{before.get('version', '?')} (before)", f"v{after.get('version', c.get('version'))} (after)")
        diff = unified_diff(policy_document(before), policy_document(after), labels=labels)
        self.push_screen(ChangeScreen(change_summary(c), diff))

    # -- command palette --------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for tab in TABS:
            yield SystemCommand(f"Go to {tab.title()}", f"Show the {tab} screen",
                                lambda tab=tab: self.action_show_tab(tab))
        yield SystemCommand("Set tenant weight", "Change the weight of the selected tenant",
                            self._cmd_weight)
        yield SystemCommand("Pause or resume tenant", "Pause or resume the selected tenant", self._cmd_pause)
        yield SystemCommand("Open request trace", "Show the selected request's trace as a waterfall",
                            self._cmd_trace)
        yield SystemCommand("Abort request", "Abort the selected queued or running request", self._cmd_abort)
        yield SystemCommand("Review and apply policy", "Diff the edited policy, give a reason, apply",
                            self._cmd_review)
        yield SystemCommand("Revert policy edit", "Reload the server's policy into the editor",
                            lambda: self.policy_pane.action_revert())
        yield SystemCommand("Reconnect", "Reconnect to the admin API and reload everything",
                            self.action_reconnect)
        yield SystemCommand("Keys and help", "Show the keys of every screen", self.action_help)

    def _cmd_weight(self) -> None:
        self.action_show_tab("tenants")
        self.tenants.action_weight()

    def _cmd_pause(self) -> None:
        self.action_show_tab("tenants")
        self.tenants.action_pause()

    def _cmd_trace(self) -> None:
        self.action_show_tab("requests")
        self.requests_pane.action_open_trace()

    def _cmd_abort(self) -> None:
        self.action_show_tab("requests")
        self.requests_pane.action_abort()

    def _cmd_review(self) -> None:
        self.action_show_tab("policy")
        self.policy_pane.action_review()
