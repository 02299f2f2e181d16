"""The console's background workers: what keeps it live, apart from what it shows.

`LiveUpdates` is mixed into `SluiceConsole`: async `@work` workers, one exclusive group each, read
`/admin/v1/state` every `refresh_interval` seconds, follow the `/admin/v1/events` stream, page
`/admin/v1/requests` and load the policy and its history. They only post the small typed messages
of `tui.messages`; the app's handlers update the panes, so the UI never awaits the network. A
failed read posts a `ConnectionChanged` (the app shows the banner) and the loop retries with
`Backoff`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from textual import work
from textual.message import Message

from .client import AdminClient, AdminError, ApiError, Unauthorized, Unreachable
from .messages import (
    ConnectionChanged,
    HistoryLoaded,
    PolicyUpdated,
    RequestEvent,
    RequestsLoaded,
    StateUpdated,
)


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


class LiveUpdates:
    """The workers of `SluiceConsole` (an `App`, which sets these attributes in its `__init__` and
    provides `post_message` and `run_worker`, which `@work` calls)."""

    client: AdminClient
    refresh_interval: float
    requests_interval: float
    backoff_initial: float
    backoff_max: float
    max_requests: int
    starting: Callable[[], str | None] | None
    state: dict[str, Any] | None
    connection: str
    _wake: asyncio.Event | None
    _state_seen: float  # monotonic time of the last state shown (set by the app's ingest_state)

    post_message: Callable[[Message], bool]

    def start_workers(self) -> None:
        """(Re)start every background worker; exclusive groups cancel the previous ones."""
        self.state_loop()
        self.events_loop()
        self.requests_loop()
        self.load_policy()

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
