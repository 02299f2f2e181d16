"""Versioned, audited policy changes: validated whole, written to the audit log, then applied.

The audit log (the store's `policy_changes` table) is the source of truth for the policy in
force: every change is committed there before it takes effect, and at start-up the policy of the
highest recorded version is restored (`restore`), so changes survive restarts and versions never
repeat. The config file is reconciled with it by one rule (docs/admin-api.md, "The policy across
restarts"): each audit row records the policy the config file gave at the time (`config`); at
start-up, the fields in which the config file now differs from that baseline (the operator edited
the file) are applied over the persisted policy as a new, audited version by the actor
`config`; fields the file did not change keep their live values.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from controlplane.core.policy import Policy, PolicyError, apply_patch, policy_from_dict
from controlplane.errors import ApiError
from controlplane.service import Sluice

log = logging.getLogger("sluice.policy")

CONFIG_ACTOR = "config"  # the actor of start-up reconciliation rows


@dataclass(frozen=True)
class Restored:
    """What start-up reconciliation decided: the policy to put in force, the audit row it wrote
    (None when nothing changed), and one line saying why."""

    policy: Policy
    record: dict[str, Any] | None
    message: str
    differs_from_config: bool


def merge_diff(base: Any, new: Any) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386, as `apply_patch` reads it) that turns `base` into `new`."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        old = base.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, dict):
            sub = merge_diff(old, value)
            if sub:
                patch[key] = sub
        elif old is _MISSING or not _same(old, value):
            patch[key] = value
    for key in base:
        if key not in new:
            patch[key] = None  # removed from the file: a tenant or an SLO class goes
    return patch


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (a TOML `2` is the JSON `2.0` of an earlier start)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return bool(a == b)


def _paths(patch: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            out.extend(_paths(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def _unversioned(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "version"}


def reconcile(config_policy: Policy, latest: dict[str, Any] | None, *, now: float | None = None) -> Restored:
    """The policy in force at start-up, from the config file's policy and the newest audit row.

    Pure: the caller writes `record` (when not None) to the audit log before applying `policy`.
    """
    ts = time.time() if now is None else now
    cfg = config_policy.to_dict()
    if latest is None:  # the first start: the starting policy is audited too, so every decision's version has a row
        reason = f"start-up: policy v{config_policy.version} from the config file (the audit log held no policy)"
        return Restored(config_policy, _record(config_policy.version, ts, reason, None, config_policy, cfg), reason,
                        False)
    last_version = int(latest["version"])
    after = latest.get("after")
    try:
        persisted = policy_from_dict(after if isinstance(after, dict) else json.loads(after or "null"))
    except (PolicyError, TypeError, ValueError) as exc:
        policy = replace(config_policy, version=last_version + 1)
        reason = (f"start-up: the persisted policy v{last_version} is not a valid policy for this sluice ({exc}); "
                  "the config file's policy applies")
        record = _record(policy.version, ts, reason, latest.get("after"), policy, cfg)
        return Restored(policy, record, reason, False)
    if persisted.version != last_version:  # a row's own version is the one that counts
        persisted = replace(persisted, version=last_version)
    base = latest.get("config")
    base = base if isinstance(base, dict) else None
    differs = bool(merge_diff(_unversioned(cfg), _unversioned(persisted.to_dict())))
    if base is None:  # written by an older sluice: the previous start's config is unknown
        return Restored(persisted, None, _kept(persisted, cfg, "the audit log does not say what the config file "
                                                               "gave at the previous start"), differs)
    patch = merge_diff(_unversioned(_normalised(base)), _unversioned(cfg))
    if not patch:
        return Restored(persisted, None, _kept(persisted, cfg, "the config file is unchanged since the previous "
                                                               "start"), differs)
    fields = ", ".join(_paths(patch))
    try:
        policy = apply_patch(persisted, patch)
        reason = (f"start-up: the config file changed since the previous start ({fields}); "
                  f"applied over the persisted policy v{persisted.version}")
    except PolicyError as exc:
        policy = replace(config_policy, version=persisted.version + 1)
        reason = (f"start-up: the config file changed since the previous start ({fields}) and does not merge with "
                  f"the persisted policy v{persisted.version} ({exc}); the config file's policy applies whole")
    record = _record(policy.version, ts, reason, persisted.to_dict(), policy, cfg)
    return Restored(policy, record, reason, bool(merge_diff(_unversioned(cfg), _unversioned(policy.to_dict()))))


def _normalised(doc: dict[str, Any]) -> dict[str, Any]:
    """A recorded policy document as this sluice writes it: fields added since it was recorded take
    their defaults (so an upgrade is not mistaken for an edited config file)."""
    try:
        return policy_from_dict(doc).to_dict()
    except (PolicyError, TypeError, ValueError):
        return doc


def _kept(persisted: Policy, cfg: dict[str, Any], why: str) -> str:
    msg = f"policy v{persisted.version} restored from the audit log ({why})"
    diff = merge_diff(_unversioned(cfg), _unversioned(persisted.to_dict()))
    if diff:
        msg += "; it differs from the config file, by live changes, in " + ", ".join(_paths(diff))
    return msg


def _record(version: int, ts: float, reason: str, before: Any, after: Policy, cfg: dict[str, Any]) -> dict[str, Any]:
    if isinstance(before, str):
        try:
            before = json.loads(before)
        except ValueError:
            pass
    return {"version": version, "ts": ts, "actor": CONFIG_ACTOR, "reason": reason, "before": before,
            "after": after.to_dict(), "config": cfg}


class PolicyStore:
    """Reads and changes the live policy; `store` (a telemetry Store) holds the audit log."""

    def __init__(self, sluice: Sluice, history: int = 1000, *, store: Any = None) -> None:
        self.sluice = sluice
        self.store = store
        self.history: deque[dict[str, Any]] = deque(maxlen=history)  # without a store: this process's changes
        self.config_policy = sluice.config.policy
        self._lock = asyncio.Lock()
        self.restored: Restored | None = None

    @property
    def current(self) -> Policy:
        return self.sluice.policy

    # -- start-up --------------------------------------------------------------------------
    def reconcile_with_store(self) -> Restored:
        """Blocking (run it off the event loop): read the audit log, decide, write the decision's row."""
        from telemetry import queries

        latest = queries.latest_policy_change(self.store) if self.store is not None else None
        restored = reconcile(self.config_policy, latest)
        if restored.record is not None:
            recorder = self.sluice.recorder
            if recorder is not None:
                recorder.policy_change(restored.record)  # durable before it takes effect; raises if not
        return restored

    async def restore(self) -> Restored:
        """At start-up, before serving: put the persisted (and reconciled) policy in force."""
        restored = await asyncio.to_thread(self.reconcile_with_store)
        self.restored = restored
        if restored.record is not None:
            self.history.appendleft(restored.record)
        if restored.policy != self.current:
            self.sluice.set_policy(restored.policy)
        replaced = restored.record is not None and restored.record["before"] is not None  # not the first start
        level = logging.WARNING if replaced or restored.differs_from_config else logging.INFO
        log.log(level, "%s", restored.message)
        return restored

    # -- reads -----------------------------------------------------------------------------
    def changes(self, limit: int) -> list[dict[str, Any]]:
        """The audit log, newest first, across restarts (blocking when it reads the store)."""
        if self.store is None:
            rows = list(self.history)[:limit]
        else:
            from telemetry import queries

            rows = queries.policy_timeline(self.store, limit)
        return [{k: r.get(k) for k in ("version", "ts", "actor", "reason", "before", "after")} for r in rows]

    # -- changes ---------------------------------------------------------------------------
    async def change(self, changes: Any, *, reason: Any, actor: str, expected_version: Any = None) -> Policy:
        """Validate, write the audit row (off the event loop), then apply; one change at a time."""
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(422, "'reason' is required: say why the policy changes", code="reason_required",
                           param="reason")
        async with self._lock:
            before = self.current
            if expected_version is not None and expected_version != before.version:
                raise ApiError(409, f"policy is at version {before.version}, not {expected_version}",
                               code="version_conflict", param="expected_version")
            try:
                after = apply_patch(before, changes)
                self.sluice.check_policy(after)  # e.g. a class that queued requests still belong to
            except (PolicyError, TypeError, RecursionError) as exc:
                raise ApiError(422, f"invalid policy change: {exc}", code="invalid_policy") from None
            record = {"version": after.version, "ts": time.time(), "actor": actor, "reason": reason.strip(),
                      "before": before.to_dict(), "after": after.to_dict(), "config": self.config_policy.to_dict()}
            recorder = self.sluice.recorder
            if recorder is not None:
                try:
                    await asyncio.to_thread(recorder.policy_change, record)  # durable before it takes effect
                except Exception as exc:
                    raise ApiError(503, f"the audit log could not be written, policy unchanged: {exc}",
                                   code="audit_unavailable", retry_after=5) from None
            self.history.appendleft(record)
            self.sluice.set_policy(after)
            return after
