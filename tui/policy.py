"""Policy: the current policy as editable JSON, review (diff + reason) and apply, audit history."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, DataTable, Label, Static, TextArea

from .format import (
    entry_fields,
    changed_paths,
    dump_json,
    merge_patch_diff,
    policy_document,
    policy_problems,
    unified_diff,
    utc_time,
)
from .tables import KeyedTable

HISTORY_COLUMNS: list[tuple[str, str, int | None]] = [
    ("version", "Ver", 3), ("when", "When (UTC)", 14), ("actor", "Who", 8), ("reason", "Reason", 26),
    ("changed", "Changed", 40),
]


def _short_time(ts: Any) -> str:
    full = utc_time(ts, with_date=True)
    return full[5:16] if len(full) >= 16 else full  # MM-DD HH:MM


class HistoryTable(KeyedTable):
    BINDINGS = [Binding("enter", "select_cursor", "Show change")]


def change_summary(c: dict[str, Any]) -> str:
    """One audited change in full: version, when, who, why and what it changed."""
    patch = merge_patch_diff(policy_document(c.get("before") or {}), policy_document(c.get("after") or {}))
    return (f"v{c.get('version')} · {utc_time(c.get('ts'), with_date=True)} UTC · by {c.get('actor') or '?'}\n"
            f"why: {c.get('reason') or '–'}\nchanged: {', '.join(changed_paths(patch)) or 'nothing'}")


class PolicyPane(Vertical):
    BINDINGS = [
        Binding("ctrl+s", "review", "Review & apply", priority=True),
        Binding("ctrl+o", "revert", "Revert edit"),
    ]

    class ApplyRequested(Message):
        """The operator wants to review `changes` (a merge patch) against policy `version`."""

        def __init__(self, changes: dict[str, Any], diff: list[str], version: int | None) -> None:
            super().__init__()
            self.changes = changes
            self.diff = diff
            self.version = version

    class ChangeSelected(Message):
        def __init__(self, change: dict[str, Any]) -> None:
            super().__init__()
            self.change = change

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy: dict[str, Any] | None = None
        self.loaded_text = ""
        self.history: dict[str, dict[str, Any]] = {}
        self.choices: dict[str, list[str]] = {}

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="policy-editor"):
                yield Label("Policy (loading…)", id="policy-title", classes="section-title")
                # tab moves focus (to the history): JSON needs no tab characters
                yield TextArea("", id="policy-text", show_line_numbers=True, soft_wrap=False,
                               tab_behavior="focus")
                yield Static("", id="policy-hint")
                yield Static("", id="policy-error")
                with Horizontal(classes="buttons"):
                    yield Button("Review & apply (ctrl+s)", id="policy-review", variant="primary")
                    yield Button("Revert (ctrl+o)", id="policy-revert")
            with Vertical(id="policy-history"):
                yield Label("History (enter: show the change)", classes="section-title")
                yield HistoryTable(HISTORY_COLUMNS, id="history", cursor_type="row", zebra_stripes=True)
                yield Static("", id="history-detail")

    @property
    def editor(self) -> TextArea:
        return self.query_one("#policy-text", TextArea)

    # -- data -------------------------------------------------------------------------------------

    def is_edited(self) -> bool:
        return self.editor.text != self.loaded_text

    def update_policy(self, policy: dict[str, Any], force: bool = False) -> None:
        """Show a new server policy. An edit in progress is kept (and flagged as based on an older
        version) unless `force`."""
        old = self.policy
        if old is not None and not force and int(policy.get("version", 0)) < int(old.get("version", 0)):
            return  # stale
        edited = self.is_edited() and old is not None
        self.policy = policy
        text = dump_json(policy_document(policy))
        title = self.query_one("#policy-title", Label)
        if edited and not force:
            title.update(f"Policy v{policy.get('version')} on the server · your edit is based on "
                         f"v{old.get('version') if old else '?'} (ctrl+o reverts)")
            return
        self.loaded_text = text
        self.editor.load_text(text)
        title.update(f"Policy v{policy.get('version')} · scheduler {policy.get('scheduler')} "
                     f"· edit the JSON, then ctrl+s")
        self.query_one("#policy-error", Static).update("")
        self._show_hint()

    def set_choices(self, choices: dict[str, list[str]]) -> None:
        """The server's values for enumerated fields (from the state); shown and checked."""
        if choices != self.choices:
            self.choices = choices
            self._show_hint()

    def _show_hint(self) -> None:
        doc = policy_document(self.policy or {})
        lines = []
        if self.choices.get("scheduler"):
            lines.append("scheduler: " + " | ".join(self.choices["scheduler"]))
        for key, what in (("slo_classes", "an SLO class"), ("tenants", "a tenant")):
            entries = doc.get(key)
            if isinstance(entries, dict) and entries:
                fields = ", ".join(sorted(entry_fields(entries)))
                extra = f" (on_miss: {' | '.join(self.choices['on_miss'])})" if (
                    key == "slo_classes" and self.choices.get("on_miss")) else ""
                lines.append(f"{what}: {fields}{extra}")
        self.query_one("#policy-hint", Static).update(Text("\n".join(lines), style="dim"))

    @on(TextArea.Changed, "#policy-text")
    def _edited(self) -> None:
        if self.policy is not None:
            self.proposed()  # checks as you type; the server validates again on apply

    @on(DataTable.RowHighlighted, "#history")
    def _history_highlighted(self, event: DataTable.RowHighlighted) -> None:
        change = self.history.get(str(event.row_key.value))
        if change is not None:
            self.query_one("#history-detail", Static).update(change_summary(change))

    def update_history(self, changes: list[dict[str, Any]]) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        self.history = {}
        for c in changes:
            key = str(c.get("version"))
            self.history[key] = c
            patch = merge_patch_diff(policy_document(c.get("before") or {}), policy_document(c.get("after") or {}))
            paths = ", ".join(changed_paths(patch)) or "–"
            rows[key] = (Text(key), _short_time(c.get("ts")), Text(str(c.get("actor") or "?")),
                         Text(str(c.get("reason") or "")), Text(paths, style="dim"))
        table = self.query_one("#history", HistoryTable)
        newest_selected = table.cursor_row <= 0  # else the operator is reading an older change
        table.sync(rows)
        table.order({k: -int(k) if k.lstrip("-").isdigit() else 0 for k in rows})
        if newest_selected and table.row_count:
            table.move_cursor(row=0, animate=False)

    # -- actions ----------------------------------------------------------------------------------

    def proposed(self) -> tuple[dict[str, Any], list[str]] | None:
        """Parse the editor; return (merge patch, diff lines) or None (the error is shown)."""
        error = self.query_one("#policy-error", Static)
        if self.policy is None:
            error.update(Text("The policy has not been loaded yet.", style="red"))
            return None
        try:
            edited = json.loads(self.editor.text)
        except ValueError as exc:
            error.update(Text(f"Invalid JSON: {exc}", style="bold red"))
            return None
        if not isinstance(edited, dict):
            error.update(Text("The policy must be a JSON object.", style="bold red"))
            return None
        edited.pop("version", None)
        current = policy_document(self.policy)
        problems = policy_problems(edited, current, self.choices)
        if problems:
            error.update(Text("\n".join(problems[:4]) + (f"\n… {len(problems) - 4} more" if len(problems) > 4 else ""),
                              style="bold red"))
            return None
        error.update("")
        return merge_patch_diff(current, edited), unified_diff(current, edited)

    def action_review(self) -> None:
        result = self.proposed()
        if result is None:
            return
        changes, diff = result
        if not changes:
            self.notify("No changes to apply", severity="warning")
            return
        self.post_message(self.ApplyRequested(changes, diff, (self.policy or {}).get("version")))

    def action_revert(self) -> None:
        if self.policy is not None:
            self.update_policy(self.policy, force=True)

    def show_error(self, message: str) -> None:
        self.query_one("#policy-error", Static).update(Text(message, style="bold red"))

    @on(Button.Pressed, "#policy-review")
    def _review_pressed(self) -> None:
        self.action_review()

    @on(Button.Pressed, "#policy-revert")
    def _revert_pressed(self) -> None:
        self.action_revert()

    @on(DataTable.RowSelected, "#history")
    def _history_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        change = self.history.get(str(event.row_key.value))
        if change is not None:
            self.post_message(self.ChangeSelected(change))
