"""The operator's actions: each asks in a dialog, then calls the admin API in a worker.

`OperatorActions` is mixed into `SluiceConsole`; its handlers of the panes' requests
(`TenantsPane.WeightRequested`, ...) call `ask_*`, which pushes the dialog; on confirmation an
`@work` worker (group "actions", not exclusive: two changes in a row both go out) sends the change
with the operator's reason and reports the outcome as a notification. After a change the state is
read at once (`poke`) so the console shows it without waiting for the next tick.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from textual import work

from .client import AdminClient, AdminError, ApiError
from .messages import RequestsLoaded
from .modals import ConfirmScreen, PolicyReviewScreen, WeightScreen
from .policy import PolicyPane


class OperatorActions:
    """The actions of `SluiceConsole` (an `App`, which provides `push_screen`, `notify`,
    `post_message` and `run_worker`; `poke`, `load_policy` and `load_history` are `LiveUpdates`')."""

    client: AdminClient
    max_requests: int
    policy_pane: PolicyPane

    push_screen: Callable[..., Any]
    notify: Callable[..., None]
    post_message: Callable[..., bool]
    poke: Callable[[], None]
    load_policy: Callable[[], Any]
    load_history: Callable[[], Any]

    # -- tenants ----------------------------------------------------------------------------------

    def ask_weight(self, tenant: str, weight: float | None) -> None:
        def done(result: tuple[float, str] | None) -> None:
            if result is not None:
                self.set_weight(tenant, result[0], result[1])

        self.push_screen(WeightScreen(tenant, weight), done)

    @work(group="actions", exit_on_error=False)
    async def set_weight(self, tenant: str, weight: float, reason: str) -> None:
        await self._tenant_change(self.client.set_weight(tenant, weight, reason),
                                  f"Weight of {tenant} not changed", f"Weight of {tenant} set to {weight:g}")

    def ask_pause(self, tenant: str, paused: bool) -> None:
        """Confirm pausing `tenant` (or resuming it when it is `paused`)."""
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
        call = self.client.pause_tenant if pause else self.client.resume_tenant
        await self._tenant_change(call(tenant, reason), tenant, f"Tenant {tenant} {'paused' if pause else 'resumed'}")

    async def _tenant_change(self, call: Awaitable[Any], failed: str, done: str) -> None:
        """Send a change to a tenant's policy entry; say how it went, then read the state and policy."""
        try:
            await call
        except AdminError as exc:
            self.notify(f"{failed}: {exc.message}", severity="error", timeout=8)
            return
        self.notify(done)
        self.poke()
        self.load_policy()

    # -- requests ---------------------------------------------------------------------------------

    def ask_abort(self, r: dict[str, Any]) -> None:
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

    def ask_apply(self, diff: list[str], changes: dict[str, Any], version: int | None) -> None:
        def done(reason: str | None) -> None:
            if reason is not None:
                self.apply_policy(changes, reason, version)

        self.push_screen(PolicyReviewScreen(diff, changes, version), done)

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
