"""Audit: re-derive recorded decisions from their recorded inputs, and replay a recorded window.

Every admission decision (`admit`, `defer`, `reject` by the forecast) is written to the `decisions`
table with its complete `AdmissionInputs` (engines as a list of `EngineView` dicts, plus the SLO
class) and its `AdmissionResult` as outputs (controlplane/observe.py). `decide()` is a pure
function, so re-running it on the recorded inputs must give the recorded outputs bit for bit
(JSON round-trips Python floats exactly). `audit_decisions` does that for each row and, when the
policy versions are known (the `policy_changes` audit log), also checks that the recorded inputs
carry the policy of the recorded version (margin, admission switch, SLO bounds of the class) and
that dispatch priorities and operator-pause refusals follow it.

Rows that cannot be re-derived from what is recorded are counted, not silently passed: rate-limit
refusals (the token bucket's level is not recorded), expiries and aborts.

`compare_window` replays the requests recorded in a time window (`requests_for_replay`) under
another policy in virtual time and sets the recorded outcomes beside the replayed ones.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from controlplane.core.admission import AdmissionInputs, EngineView, decide
from controlplane.core.policy import Policy, policy_from_dict
from replay.runner import VirtualResult, format_result, run_virtual
from replay.workload import WorkloadRequest

__all__ = [
    "AuditMismatch",
    "AuditReport",
    "WindowComparison",
    "audit_db",
    "audit_decisions",
    "compare_window",
    "format_comparison",
    "policies_from_changes",
    "rederive",
    "workload_from_requests",
]

ADMISSION_KINDS = ("admit", "defer", "reject")
_INPUT_FIELDS = tuple(f.name for f in fields(AdmissionInputs))
_REQUIRED_INPUTS = tuple(f.name for f in fields(AdmissionInputs) if f.default is MISSING)
_VIEW_FIELDS = tuple(f.name for f in fields(EngineView))
_NOT_REDERIVABLE = {"rate_limited_requests": "rate limit (bucket level not recorded)",
                    "rate_limited_tokens": "rate limit (bucket level not recorded)"}


@dataclass(frozen=True, slots=True)
class AuditMismatch:
    index: int  # position of the row in the audited sequence
    ts: float | None
    rid: str | None
    kind: str
    field: str  # which recorded value disagrees ("outputs.ttft_ms", "kind", "inputs.margin", ...)
    recorded: Any
    derived: Any
    message: str = ""


@dataclass(slots=True)
class AuditReport:
    rows: int = 0
    rederived: int = 0  # admission decisions re-run through decide()
    checked: int = 0  # other rows checked against the policy (dispatch priority, pauses)
    policy_checked: int = 0  # rows whose inputs were checked against their policy version
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows not re-derivable
    by_kind: dict[str, int] = field(default_factory=dict)
    mismatches: list[AuditMismatch] = field(default_factory=list)
    unknown_versions: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return json.loads(json.dumps(out, default=str))

    def format(self, limit: int = 20) -> str:
        lines = [f"audited {self.rows} decisions: {self.rederived} re-derived through decide(), "
                 f"{self.checked} other rows checked, {self.policy_checked} checked against their policy "
                 f"version; {len(self.mismatches)} mismatch(es)"]
        if self.by_kind:
            lines.append("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())))
        if self.skipped:
            lines.append("not re-derivable: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())))
        if self.unknown_versions:
            lines.append(f"policy versions not in the audit log: {sorted(set(self.unknown_versions))}")
        for m in self.mismatches[:limit]:
            lines.append(f"  MISMATCH row {m.index} rid={m.rid} {m.kind} {m.field}: recorded {m.recorded!r}, "
                         f"derived {m.derived!r} {m.message}".rstrip())
        if len(self.mismatches) > limit:
            lines.append(f"  ... {len(self.mismatches) - limit} more")
        return "\n".join(lines)


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def rederive(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Run `decide()` on a recorded inputs record; returns the AdmissionResult as a dict.
    Raises ValueError if the record is not a complete AdmissionInputs."""
    missing = [k for k in _REQUIRED_INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}")
    kw = {k: inputs[k] for k in _INPUT_FIELDS if k in inputs}  # later fields have defaults: older rows lack them
    views = []
    for e in kw["engines"]:
        if not isinstance(e, Mapping) or any(k not in e for k in _VIEW_FIELDS):
            raise ValueError(f"bad engine view {e!r}")
        views.append(EngineView(**{k: e[k] for k in _VIEW_FIELDS}))
    kw["engines"] = tuple(views)
    return asdict(decide(AdmissionInputs(**kw)))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (an int recorded for a float is fine), bools and
    everything else exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def policies_from_changes(changes: Iterable[Mapping[str, Any]]) -> dict[int, Policy]:
    """{version: Policy} from `policy_changes` rows (each carries the whole policy before and after)."""
    out: dict[int, Policy] = {}
    for row in changes:
        for key in ("before", "after"):
            doc = _json(row.get(key))
            if isinstance(doc, Mapping):
                p = policy_from_dict(dict(doc))
                out.setdefault(p.version, p)
    return out


def audit_decisions(rows: Iterable[Mapping[str, Any]], policies: Mapping[int, Policy] | None = None) -> AuditReport:
    """Re-derive every admission decision in `rows` (as the `decisions` table stores them: kind,
    reason, engine, policy_version, inputs and outputs as JSON text or decoded) and check the rest
    against the policy of their version when `policies` is given."""
    rep = AuditReport()
    classes: dict[str, str] = {}  # rid -> SLO class, from its admission decision
    for index, row in enumerate(rows):
        rep.rows += 1
        kind = str(row.get("kind"))
        rep.by_kind[kind] = rep.by_kind.get(kind, 0) + 1
        inputs = _json(row.get("inputs")) or {}
        outputs = _json(row.get("outputs")) or {}
        rid, ts, reason = row.get("rid"), row.get("ts"), row.get("reason")
        version = row.get("policy_version")
        policy = policies.get(int(version)) if policies is not None and version is not None else None
        if policies is not None and version is not None and policy is None:
            rep.unknown_versions.append(int(version))

        def bad(name: str, recorded: Any, derived: Any, message: str = "") -> None:
            rep.mismatches.append(AuditMismatch(index, ts, rid, kind, name, recorded, derived, message))

        if not isinstance(inputs, Mapping) or not isinstance(outputs, Mapping):
            bad("inputs/outputs", inputs, None, "not JSON objects")
            continue
        if kind in ADMISSION_KINDS and "engines" in inputs:
            if isinstance(inputs.get("slo_class"), str) and rid is not None:
                classes[str(rid)] = inputs["slo_class"]
            try:
                derived = rederive(inputs)
            except (ValueError, TypeError) as exc:
                bad("inputs", None, None, f"cannot re-derive: {exc}")
                continue
            rep.rederived += 1
            for key, value in derived.items():
                if key not in outputs or not _same(outputs[key], value):
                    bad(f"outputs.{key}", outputs.get(key), value)
            if derived["decision"] != kind:
                bad("kind", kind, derived["decision"])
            if derived["reason"] != reason:
                bad("reason", reason, derived["reason"])
            if derived["engine"] != row.get("engine", derived["engine"]):
                bad("engine", row.get("engine"), derived["engine"])
            if policy is not None:
                rep.policy_checked += 1
                _check_policy_inputs(policy, inputs, bad)
        elif kind == "reject" and reason == "tenant_paused":
            if policy is None:
                rep.skipped["tenant_paused (policy version unknown)"] = rep.skipped.get(
                    "tenant_paused (policy version unknown)", 0) + 1
            else:
                rep.checked += 1
                if not policy.tenant(str(row.get("tenant"))).paused:
                    bad("reason", reason, None, f"tenant is not paused in policy v{version}")
        elif kind == "reject" and reason in _NOT_REDERIVABLE:
            why = _NOT_REDERIVABLE[str(reason)]
            rep.skipped[why] = rep.skipped.get(why, 0) + 1
            if policy is not None:
                tp = policy.tenant(str(row.get("tenant")))
                limit = tp.rate_limit_rps if reason == "rate_limited_requests" else tp.rate_limit_tpm
                if limit is None:
                    bad("reason", reason, None, f"policy v{version} sets no such limit for the tenant")
        elif kind == "dispatch":
            rep.checked += 1
            candidates = inputs.get("candidates")
            if isinstance(candidates, list) and row.get("engine") not in candidates:
                bad("engine", row.get("engine"), candidates, "dispatched to an engine that was not a candidate")
            if policy is not None and rid is not None and str(rid) in classes:
                cls = policy.slo(classes[str(rid)])
                expected = cls.priority if policy.pass_priority else None
                if outputs.get("priority") != expected:
                    bad("outputs.priority", outputs.get("priority"), expected)
            if reason is not None and policy is not None and reason != policy.scheduler:
                bad("reason", reason, policy.scheduler, f"scheduler of policy v{version}")
        else:
            rep.skipped[kind] = rep.skipped.get(kind, 0) + 1
    return rep


def _check_policy_inputs(policy: Policy, inputs: Mapping[str, Any], bad: Any) -> None:
    cls_name = inputs.get("slo_class")
    if not isinstance(cls_name, str):
        bad("inputs.slo_class", cls_name, None, "missing")
        return
    cls = policy.slo(cls_name)
    expected = {"margin": policy.admission_margin, "admission": policy.admission, "ttft_slo_ms": cls.ttft_ms,
                "tpot_slo_ms": cls.tpot_ms, "deadline_s": cls.deadline_s, "on_miss": cls.on_miss}
    for key, value in expected.items():
        if not _same(inputs.get(key), value) and not (inputs.get(key) is None and value is None):
            bad(f"inputs.{key}", inputs.get(key), value, f"policy v{policy.version}")


def audit_db(path: str | os.PathLike[str], since: float = 0.0, until: float | None = None) -> AuditReport:
    """Audit the decisions of a sluice DuckDB file, opened read-only (no process may be writing it)."""
    from telemetry.queries import decisions_for_audit, policy_timeline
    from telemetry.store import open_read_only

    con = open_read_only(path)
    try:
        rows = decisions_for_audit(con, since, until)
        changes = policy_timeline(con, limit=1_000_000)
    finally:
        con.close()
    return audit_decisions(rows, policies_from_changes(changes) if changes else None)


# -- a recorded window replayed under another policy ---------------------------------------------

def workload_from_requests(rows: Sequence[Mapping[str, Any]], since: float | None = None) -> list[WorkloadRequest]:
    """Request rows (the `requests` table) as a workload timed from `since` (default: the first
    arrival). The output length is what the engine produced for completed requests and `max_tokens`
    for the others (their true length was never observed)."""
    rows = [r for r in rows if r.get("arrival_ts") is not None]
    if not rows:
        return []
    t0 = since if since is not None else min(float(r["arrival_ts"]) for r in rows)
    out = []
    for r in rows:
        done = r.get("status") == "ok" and (r.get("completion_tokens") or 0) > 0
        output = int(r["completion_tokens"]) if done else int(r.get("max_tokens") or r.get("completion_tokens") or 1)
        out.append(WorkloadRequest(round((float(r["arrival_ts"]) - t0) * 1e3, 3), max(1, int(r.get("prompt_tokens")
                                                                                         or 1)),
                                   max(1, output), str(r.get("tenant") or "default"), r.get("slo_class"),
                                   extra={"rid": r.get("rid")}))
    out.sort(key=lambda w: w.timestamp_ms)
    return out


@dataclass(slots=True)
class WindowComparison:
    since: float
    until: float | None
    recorded: dict[str, dict[str, Any]]  # tenant -> recorded outcome
    replayed: VirtualResult

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "recorded": self.recorded,
                "replayed": self.replayed.to_dict()}


def _recorded_outcomes(rows: Sequence[Mapping[str, Any]], duration: float) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("tenant")), []).append(r)
    groups["__all__"] = list(rows)
    out = {}
    for tenant, rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("status") == "ok"]
        admitted = [r for r in rs if r.get("decision") in ("admit", "defer")]
        good = sum(1 for r in ok if r.get("slo_met"))
        ttft = [r["ttft_ms"] / 1e3 for r in ok if r.get("ttft_ms") is not None]
        out[tenant] = {
            "requests": len(rs), "admitted": len(admitted), "completed": len(ok),
            "rejected": sum(r.get("status") == "rejected" for r in rs),
            "expired": sum(r.get("status") == "expired" for r in rs), "good": good,
            "goodput_rps": good / duration if duration > 0 else None,
            "slo_attainment_admitted": good / len(admitted) if admitted else None,
            "ttft_p50_s": float(np.percentile(ttft, 50)) if ttft else None,
            "ttft_p99_s": float(np.percentile(ttft, 99)) if ttft else None,
        }
    return out


def compare_window(db: Any, since: float, until: float | None, policy: Policy | str, **run_kw: Any
                   ) -> WindowComparison:
    """Replay the requests recorded in [since, until) (`db`: a Store, a DuckDB connection, or a
    path opened read-only) under `policy` in virtual time, beside what was recorded."""
    from telemetry.queries import requests_for_replay

    if isinstance(db, (str, os.PathLike)):
        from telemetry.store import open_read_only

        con = open_read_only(db)
        try:
            rows = requests_for_replay(con, since, until)
        finally:
            con.close()
    else:
        rows = requests_for_replay(db, since, until)
    workload = workload_from_requests(rows, since)
    result = run_virtual(workload, policy, **run_kw)
    duration = result.duration_s
    return WindowComparison(since, until, _recorded_outcomes(rows, duration), result)


def format_comparison(cmp: WindowComparison) -> str:
    heads = ["tenant", "req", "rec adm", "new adm", "rec good/s", "new good/s", "rec SLO%adm", "new SLO%adm",
             "rec TTFT p50", "new TTFT p50", "rec TTFT p99", "new TTFT p99"]
    new = {**cmp.replayed.per_tenant, "__all__": cmp.replayed.overall}

    def f(x: Any, scale: float = 1.0, d: int = 3) -> str:
        return "-" if x is None else f"{x * scale:.{d}f}"

    rows = []
    for tenant, rec in cmp.recorded.items():
        n = new.get(tenant)
        rows.append(["all" if tenant == "__all__" else tenant, str(rec["requests"]), str(rec["admitted"]),
                     str(n.admitted) if n else "-", f(rec["goodput_rps"], d=2), f(n.goodput_rps if n else None, d=2),
                     f(rec["slo_attainment_admitted"], 100, 1), f(n.slo_attainment_admitted if n else None, 100, 1),
                     f(rec["ttft_p50_s"]), f(n.ttft_p50_s if n else None), f(rec["ttft_p99_s"]),
                     f(n.ttft_p99_s if n else None)])
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(heads)]

    def line(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(vals, widths)))

    out = [f"recorded window [{cmp.since}, {cmp.until}) vs replayed under "
           f"{cmp.replayed.policy.scheduler} (admission {'on' if cmp.replayed.policy.admission else 'off'})",
           line(heads), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append("")
    out.append(format_result(cmp.replayed, "replayed:"))
    return "\n".join(out)
