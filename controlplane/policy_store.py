"""Versioned, audited policy changes: validated whole, written to the audit log, then applied."""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from controlplane.core.policy import Policy, PolicyError, apply_patch
from controlplane.gateway.errors import ApiError
from controlplane.service import Sluice


class PolicyStore:
    def __init__(self, sluice: Sluice, history: int = 1000) -> None:
        self.sluice = sluice
        self.history: deque[dict[str, Any]] = deque(maxlen=history)

    @property
    def current(self) -> Policy:
        assert self.sluice.core is not None
        return self.sluice.core.policy

    def change(self, changes: Any, *, reason: Any, actor: str, expected_version: Any = None) -> Policy:
        if not isinstance(reason, str) or not reason.strip():
            raise ApiError(422, "'reason' is required: say why the policy changes", code="reason_required",
                           param="reason")
        before = self.current
        if expected_version is not None and expected_version != before.version:
            raise ApiError(409, f"policy is at version {before.version}, not {expected_version}",
                           code="version_conflict", param="expected_version")
        try:
            after = apply_patch(before, changes)
        except (PolicyError, TypeError) as exc:
            raise ApiError(422, f"invalid policy change: {exc}", code="invalid_policy") from None
        record = {"version": after.version, "ts": time.time(), "actor": actor, "reason": reason.strip(),
                  "before": before.to_dict(), "after": after.to_dict()}
        recorder = self.sluice.recorder
        if recorder is not None:
            try:
                recorder.policy_change(record)  # durable before the change takes effect
            except Exception as exc:
                raise ApiError(503, f"the audit log could not be written, policy unchanged: {exc}",
                               code="audit_unavailable", retry_after=5) from None
        self.history.appendleft(record)
        self.sluice.set_policy(after)
        return after
