"""`SluiceConsole`: the operator console, a Textual app that is a client of the admin API only.

Data flow: background workers (async `@work`, one exclusive group each) read `/admin/v1/state`
every `refresh_interval` seconds, follow the `/admin/v1/events` stream and page
`/admin/v1/requests`; they post small typed messages (`tui.messages`) and the panes update their
widgets in place. The UI never awaits the network itself. Failures show a banner (unreachable,
token refused) and the workers retry with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Header, Static, TabbedContent, TabPane

from .client import AdminClient, AdminError, ApiError, Unauthorized, Unreachable
from .footer import KeyFooter
from .format import plural, policy_document, unified_diff, utc_time
from .messages import (
    ConnectionChanged,
    HistoryLoaded,
    PolicyUpdated,
    RequestEvent,
    RequestsLoaded,
    StateUpdated,
)
from .modals import ChangeScreen, ConfirmScreen, HelpScreen, PolicyReviewScreen, WeightScreen
from .overview import OverviewPane
from .policy import PolicyPane, change_summary
from .requests import RequestsPane
from .tenants import TenantsPane
from .trace import TraceScreen

TABS = ("overview", "tenants", "requests", "policy")
FOCUS_TARGET = {"overview": "#engines", "tenants": "#tenant-table", "requests": "#request-table",
                "policy": "#policy-text"}


class Backoff:
    """Exponential backoff with a little jitter: initial, 2x, 4x, ... capped at `maximum`."""

    def __init__(self, initial: float = 0.5, maximum: float = 15.0, jitter: float = 0.1) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return delay * (1.0 + random.uniform(0.0, self.jitter)) if self.jitter else delay

    def reset(self) -> None:
        self.attempt = 0


class SluiceConsole(App[None]):
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
        Binding("1", "show_tab('overview')", "Overview"),
        Binding("2", "show_tab('tenants')", "Tenants"),
        Binding("3", "show_tab('requests')", "Requests"),
        Binding("4", "show_tab('policy')", "Policy"),
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
        if self.live:
            self.start_workers()

    async def on_unmount(self) -> None:
        gc.unfreeze()  # another app in this process (tests) starts from a clean slate
        await self.client.close()

    def start_workers(self) -> None:
        """(Re)start every background worker; exclusive groups cancel the previous ones."""
        self.state_loop()
        self.events_loop()
        self.requests_loop()
        self.load_policy()

    # -- background workers -----------------------------------------------------------------------

    async def _sleep(self, delay: float) -> None:
        wake = self._wake
        if wake is None:
            await asyncio.sleep(delay)
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=delay)
        except TimeoutError:
            pass
        wake.clear()

    def poke(self) -> None:
        """Read the state now instead of at the next tick (after a change)."""
        if self._wake is not None:
            self._wake.set()

    @work(exclusive=True, group="state", exit_on_error=False)
    async def state_loop(self) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            if self.connection == "ok" and time.monotonic() - self._state_seen < self.refresh_interval * 0.9:
                # the event stream brought a state within the interval: reading another would
                # double the work of every refresh for nothing new (this loop still reports the
                # connection: it reads whenever the connection is not known to be fine)
                await self._sleep(self.refresh_interval)
                continue
            try:
                state = await self.client.get_state()
            except Unauthorized as exc:
                delay = backoff.next()
                self.post_message(ConnectionChanged("unauthorized", f"{exc.status}: {exc.message}", delay))
            except Unreachable as exc:
                delay = backoff.next()
                if self.starting is not None and self.state is None:
                    delay = min(delay, 0.25)  # the server is on its way: pick it up at once
                self.post_message(ConnectionChanged("unreachable", exc.message, delay))
            except ApiError as exc:
                delay = backoff.next()
                self.post_message(ConnectionChanged("error", str(exc), delay))
            except Exception as exc:  # noqa: BLE001 - keep the loop alive whatever the server sends
                delay = backoff.next()
                self.post_message(ConnectionChanged("error", f"{type(exc).__name__}: {exc}", delay))
            else:
                recovered = backoff.attempt > 0
                backoff.reset()
                delay = self.refresh_interval
                self.post_message(StateUpdated(state))
                self.post_message(ConnectionChanged("ok"))
                if recovered:
                    self.requests_loop()
                    self.load_policy()
                    self.events_loop()
            await self._sleep(delay)

    @work(exclusive=True, group="events", exit_on_error=False)
    async def events_loop(self) -> None:
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            try:
                async for event in self.client.events():
                    backoff.reset()
                    if event.kind == "state" and isinstance(event.data, dict):
                        self.post_message(StateUpdated(event.data))
                    elif event.kind == "request" and isinstance(event.data, dict):
                        self.post_message(RequestEvent(event.data))
                    elif event.kind == "policy" and isinstance(event.data, dict):
                        self.post_message(PolicyUpdated(event.data))
                        self.load_history()
            except Unauthorized as exc:
                self.post_message(ConnectionChanged("unauthorized", f"{exc.status}: {exc.message}",
                                                    self.backoff_max))
            except AdminError:
                pass  # the state loop reports reachability; just reconnect
            except Exception:  # noqa: BLE001
                pass
            await asyncio.sleep(backoff.next())

    @work(exclusive=True, group="requests", exit_on_error=False)
    async def requests_loop(self) -> None:
        while True:
            try:
                page = await self.client.requests(limit=self.max_requests)
            except Exception:  # noqa: BLE001 - reported by the state loop
                await asyncio.sleep(max(self.requests_interval, self.backoff_initial))
                continue
            self.post_message(RequestsLoaded(page))
            await asyncio.sleep(self.requests_interval)

    @work(exclusive=True, group="policy", exit_on_error=False)
    async def load_policy(self) -> None:
        try:
            policy = await self.client.get_policy()
            changes = await self.client.policy_history()
        except AdminError:
            return  # the state loop shows the banner and reloads on recovery
        self.post_message(PolicyUpdated(policy))
        self.post_message(HistoryLoaded(changes))

    @work(exclusive=True, group="history", exit_on_error=False)
    async def load_history(self) -> None:
        try:
            changes = await self.client.policy_history()
        except AdminError:
            return
        self.post_message(HistoryLoaded(changes))

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
        self.main("#statusbar").update(bar)

    # -- navigation -------------------------------------------------------------------------------

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

    # -- tenants ----------------------------------------------------------------------------------

    @on(TenantsPane.WeightRequested)
    def _weight_requested(self, message: TenantsPane.WeightRequested) -> None:
        tenant = message.tenant

        def done(result: tuple[float, str] | None) -> None:
            if result is not None:
                self.set_weight(tenant, result[0], result[1])

        self.push_screen(WeightScreen(tenant, message.weight), done)

    @work(group="actions", exit_on_error=False)
    async def set_weight(self, tenant: str, weight: float, reason: str) -> None:
        try:
            await self.client.set_weight(tenant, weight, reason)
        except AdminError as exc:
            self.notify(f"Weight of {tenant} not changed: {exc.message}", severity="error", timeout=8)
            return
        self.notify(f"Weight of {tenant} set to {weight:g}")
        self.poke()
        self.load_policy()

    @on(TenantsPane.PauseRequested)
    def _pause_requested(self, message: TenantsPane.PauseRequested) -> None:
        tenant, paused = message.tenant, message.paused
        if paused:
            title, body, verb = (f"Resume tenant {tenant}?", "Its queued requests will be scheduled again "
                                 "and new requests admitted.", "Resume")
        else:
            title, body, verb = (f"Pause tenant {tenant}?", "New requests get 429 tenant_paused; queued "
                                 "requests stay queued until it is resumed.", "Pause")

        def done(reason: str | None) -> None:
            if reason is not None:
                self.pause_tenant(tenant, not paused, reason)

        reason = f"{verb.lower()}d from the console"
        self.push_screen(ConfirmScreen(title, body, verb, reason=reason, danger=not paused), done)

    @work(group="actions", exit_on_error=False)
    async def pause_tenant(self, tenant: str, pause: bool, reason: str) -> None:
        try:
            if pause:
                await self.client.pause_tenant(tenant, reason)
            else:
                await self.client.resume_tenant(tenant, reason)
        except AdminError as exc:
            self.notify(f"{tenant}: {exc.message}", severity="error", timeout=8)
            return
        self.notify(f"Tenant {tenant} {'paused' if pause else 'resumed'}")
        self.poke()
        self.load_policy()

    # -- requests ---------------------------------------------------------------------------------

    @on(RequestsPane.TraceRequested)
    def _trace_requested(self, message: RequestsPane.TraceRequested) -> None:
        self.push_screen(TraceScreen(message.request, self.client.trace, self.client.why))

    @on(RequestsPane.AbortRequested)
    def _abort_requested(self, message: RequestsPane.AbortRequested) -> None:
        r = message.request
        rid = str(r.get("rid"))

        def done(reason: str | None) -> None:
            if reason is not None:
                self.abort_request(rid, reason)

        self.push_screen(ConfirmScreen(
            f"Abort request {rid}?",
            f"Tenant {r.get('tenant')}, status {r.get('status')}, engine {r.get('engine') or '–'}. "
            "The client gets an error and the engine stops generating.",
            "Abort", reason="aborted from the console", danger=True), done)

    @work(group="actions", exit_on_error=False)
    async def abort_request(self, rid: str, reason: str) -> None:
        try:
            await self.client.abort(rid, reason)
        except AdminError as exc:
            self.notify(f"{rid} not aborted: {exc.message}", severity="error", timeout=8)
            return
        self.notify(f"Request {rid} aborted")
        try:
            page = await self.client.requests(limit=self.max_requests)
        except AdminError:
            return
        self.post_message(RequestsLoaded(page))

    # -- policy -----------------------------------------------------------------------------------

    @on(PolicyPane.ApplyRequested)
    def _apply_requested(self, message: PolicyPane.ApplyRequested) -> None:
        changes, version = message.changes, message.version

        def done(reason: str | None) -> None:
            if reason is not None:
                self.apply_policy(changes, reason, version)

        self.push_screen(PolicyReviewScreen(message.diff, changes, version), done)

    @work(group="actions", exit_on_error=False)
    async def apply_policy(self, changes: dict[str, Any], reason: str, version: int | None) -> None:
        try:
            policy = await self.client.patch_policy(changes, reason, expected_version=version)
        except ApiError as exc:
            if exc.status == 409:
                text = (f"The policy changed on the server since v{version}: {exc.message}. "
                        "Revert (ctrl+o) to load it, then redo your edit.")
            else:
                text = f"Policy not applied ({exc.status}): {exc.message}"
            self.policy_pane.show_error(text)
            self.notify(text, severity="error", timeout=10)
            return
        except AdminError as exc:
            self.policy_pane.show_error(f"Policy not applied: {exc.message}")
            self.notify(f"Policy not applied: {exc.message}", severity="error", timeout=10)
            return
        self.policy_pane.update_policy(policy, force=True)
        self.notify(f"Policy v{policy.get('version')} applied")
        self.load_history()
        self.poke()

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
