"""Audit: re-derive every recorded decision from its recorded inputs and policy version.

Every admission decision (`admit`, `defer`, `reject` by the forecast) is written to the `decisions`
table with its complete `AdmissionInputs` (engines as a list of `EngineView` dicts, plus the SLO
class) and its `AdmissionResult` as outputs; every dispatch with the views of the free engines, each
engine's expected cached tokens, the request's sizes, the scorer weights and every candidate's
scores that `dispatch.choose` saw and gave (controlplane/core). Both functions are pure, so
re-running them on the recorded inputs (replay/rederive.py) must give the recorded outputs bit for
bit (JSON round-trips Python floats exactly). When the policy versions are known (the `policy_changes` audit log), each
row is also checked against the policy of its version: the margin, admission switch and SLO bounds
its inputs carry, dispatch priorities, scheduler and scorer weights, operator pauses, rate limits,
deadlines.

Rows that cannot be re-derived from what is recorded are counted, not silently passed: rate-limit
refusals (the token bucket's level is not recorded), aborts (a client's or operator's act).

The what-if (a recorded window replayed under another policy) lives in replay/whatif.py.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from controlplane.core.events import ADMISSION_KINDS
from controlplane.core.frequency import rederive as rederive_clock
from controlplane.core.policy import Policy, policy_from_dict
from replay.rederive import rederive, rederive_choice

__all__ = ["AuditMismatch", "AuditReport", "PolicyChange", "audit_db", "audit_decisions", "policies_from_changes",
           "policy_diff", "timeline_from_changes"]

_RATE_LIMITED = ("rate_limited_requests", "rate_limited_tokens")
_DECISION_COLUMNS = ("ts", "rid", "tenant", "kind", "reason", "engine", "policy_version", "inputs", "outputs")


@dataclass(frozen=True, slots=True)
class AuditMismatch:
    index: int  # position of the row in the audited sequence
    ts: float | None
    rid: str | None
    kind: str
    field: str  # which recorded value disagrees ("outputs.ttft_s", "kind", "inputs.margin", ...)
    recorded: Any
    derived: Any
    message: str = ""


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """One audit-log row: the version it made, when, who, why, and what changed ([path, before, after])."""
    version: int
    ts: float | None
    actor: str | None
    reason: str | None
    changes: list[tuple[str, Any, Any]]


@dataclass(slots=True)
class AuditReport:
    rows: int = 0
    rederived: int = 0  # admission decisions re-run through decide()
    dispatch_rederived: int = 0  # dispatches re-run through dispatch.choose()
    checked: int = 0  # other rows checked against their policy (pauses, rate limits, deadlines, old dispatches)
    policy_checked: int = 0  # admission rows whose inputs were checked against their policy version
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows neither re-derived nor checked
    by_kind: dict[str, int] = field(default_factory=dict)
    by_version: dict[int, int] = field(default_factory=dict)  # policy version -> decisions made under it
    mismatches: list[AuditMismatch] = field(default_factory=list)
    timeline: list[PolicyChange] = field(default_factory=list)
    audited_versions: list[int] = field(default_factory=list)  # versions with an audit row of their own
    known_versions: list[int] = field(default_factory=list)  # versions whose policy is known (own row or a before)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def unaudited_versions(self) -> dict[int, int]:
        """Policy versions decisions were made under that have no audit row: version -> decisions."""
        return {v: n for v, n in sorted(self.by_version.items()) if v not in self.audited_versions}

    @property
    def decisions_per_s(self) -> float | None:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ok=self.ok, unaudited_versions=self.unaudited_versions, decisions_per_s=self.decisions_per_s)
        return json.loads(json.dumps(out, default=str))

    def format(self, limit: int = 20) -> str:
        lines = [f"audited {self.rows} decisions: {self.rederived} admissions re-derived through decide(), "
                 f"{self.dispatch_rederived} dispatches through dispatch.choose(), {self.checked} other rows "
                 f"checked against their policy, {self.policy_checked} admissions checked against their policy "
                 f"version; {len(self.mismatches)} mismatch(es)"]
        if self.by_kind:
            lines.append("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items())))
        if self.skipped:
            lines.append("neither re-derived nor checked: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())))
        lines.append(f"policy timeline ({len(self.timeline)} audit row(s)):")
        for c in self.timeline:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.ts)) + "Z" if c.ts is not None else "?"
            lines.append(f"  v{c.version}  {when}  by {c.actor}  ({self.by_version.get(c.version, 0)} decisions): "
                         f"{c.reason}")
            lines += [f"      {path}: {before!r} -> {after!r}" for path, before, after in c.changes]
        for v, n in self.unaudited_versions.items():
            how = ("its policy is known as the 'before' of a later change (the config file's, never changed "
                   "through the admin API)" if v in self.known_versions else "its policy is unknown: the policy "
                   "checks could not run")
            lines.append(f"  v{v}: no audit row, {n} decisions; {how}")
        for m in self.mismatches[:limit]:
            lines.append(f"  MISMATCH row {m.index} ts={m.ts} rid={m.rid} {m.kind} {m.field}: recorded "
                         f"{m.recorded!r}, derived {m.derived!r} {m.message}".rstrip())
        if len(self.mismatches) > limit:
            lines.append(f"  ... {len(self.mismatches) - limit} more")
        if self.decisions_per_s:
            lines.append(f"{self.decisions_per_s:,.0f} decisions/s")
        lines.append("OK: every checked decision matches" if self.ok else "FAILED: recorded decisions differ")
        return "\n".join(lines)


def _json(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            try:  # NaN / Infinity as Python's json writes them
                return json.loads(value)
            except ValueError:
                return value
    return value


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: numbers by value (an int recorded for a float is fine), bools and
    everything else exactly."""
    if type(a) is type(b) and a == b:  # the common case, exact
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _same_scores(recorded: Any, derived: list[dict[str, float] | None]) -> bool:
    if not isinstance(recorded, list) or len(recorded) != len(derived):
        return False
    for r, d in zip(recorded, derived):
        if r is None or d is None:
            if r is not d:
                return False
        elif not isinstance(r, Mapping) or set(r) != set(d) or not all(_same(r[k], d[k]) for k in d):
            return False
    return True


def policies_from_changes(changes: Iterable[Mapping[str, Any]]) -> dict[int, Policy]:
    """{version: Policy} from `policy_changes` rows (each carries the whole policy before and after)."""
    out: dict[int, Policy] = {}
    for row in changes:
        for key in ("after", "before"):
            doc = _json(row.get(key))
            if isinstance(doc, Mapping):
                p = policy_from_dict(dict(doc))
                if key == "after" and row.get("version") is not None:
                    p = policy_from_dict({**doc, "version": int(row["version"])})  # a row's own version counts
                out.setdefault(p.version, p)
    return out


def policy_diff(before: Any, after: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """What changed between two policy documents, as (dotted path, before, after) leaves."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return [] if _same(before, after) else [(prefix.rstrip(".") or "(policy)", before, after)]
    out = []
    for key in sorted(set(before) | set(after), key=str):
        if key == "version" and not prefix:
            continue
        a, b = before.get(key), after.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += policy_diff(a, b, f"{prefix}{key}.")
        elif not _same(a, b) and not (a is None and b is None):
            out.append((f"{prefix}{key}", a, b))
    return out


def timeline_from_changes(changes: Iterable[Mapping[str, Any]]) -> list[PolicyChange]:
    """The audit log, oldest first, each change with its diff."""
    rows = sorted(changes, key=lambda r: (int(r["version"]), r.get("ts") or 0.0))
    return [PolicyChange(int(r["version"]), r.get("ts"), r.get("actor"), r.get("reason"),
                         policy_diff(_json(r.get("before")), _json(r.get("after")))) for r in rows]


class _Auditor:
    """One pass over the rows, in recorded order (dispatch and expiry checks use the request's
    admission row, which precedes them)."""

    def __init__(self, policies: Mapping[int, Policy] | None) -> None:
        self.policies = policies
        self.rep = AuditReport()
        self.admitted: dict[str, tuple[str, float, float | None]] = {}  # rid -> (class, ts, deadline_s)

    def bad(self, row: tuple[Any, ...], name: str, recorded: Any, derived: Any, message: str = "") -> None:
        self.rep.mismatches.append(AuditMismatch(self.index, row[0], row[1], str(row[3]), name, recorded, derived,
                                                 message))

    def rederived(self, row: tuple[Any, ...], fn: Any, inputs: Mapping[str, Any]) -> Any:
        """fn(inputs), or None (and a mismatch) when the recorded inputs cannot be re-run."""
        try:
            return fn(inputs)
        except (ValueError, TypeError, KeyError) as exc:
            self.bad(row, "inputs", None, None, f"cannot re-derive: {exc}")
            return None

    def skip(self, why: str) -> None:
        self.rep.skipped[why] = self.rep.skipped.get(why, 0) + 1

    def row(self, index: int, row: tuple[Any, ...]) -> None:
        """`row`: the `decisions` columns in _DECISION_COLUMNS order, inputs/outputs as JSON text or decoded."""
        rep, self.index = self.rep, index
        ts, rid, tenant, kind, reason, engine, version, inputs, outputs = row
        rep.rows += 1
        rep.by_kind[kind] = rep.by_kind.get(kind, 0) + 1
        policy = None
        if version is not None:
            version = int(version)
            rep.by_version[version] = rep.by_version.get(version, 0) + 1
            policy = self.policies.get(version) if self.policies else None
        inputs, outputs = _json(inputs) or {}, _json(outputs) or {}
        if not isinstance(inputs, Mapping) or not isinstance(outputs, Mapping):
            self.bad(row, "inputs/outputs", inputs, None, "not JSON objects")
        elif kind in ADMISSION_KINDS and "engines" in inputs:
            self.admission(row, inputs, outputs, policy)
        elif kind == "dispatch":
            self.dispatch(row, inputs, outputs, policy)
        elif kind == "clock":  # an engine's SM clock (controlplane/core/frequency.py): the rule re-run
            wanted = self.rederived(row, rederive_clock, inputs)
            if wanted is not None:
                rep.checked += 1
                if not _same(outputs.get("wanted_mhz"), wanted):
                    self.bad(row, "outputs.wanted_mhz", outputs.get("wanted_mhz"), wanted)
        elif kind == "expire" and rid in self.admitted:
            rep.checked += 1
            _, admitted_ts, deadline = self.admitted[rid]
            if deadline is None or ts < admitted_ts + deadline:
                self.bad(row, "kind", kind, None, f"expired before its deadline ({deadline} s after admission)")
        elif policy is None and kind == "reject":
            self.skip(f"reject {reason} (policy version unknown)")
        elif kind == "reject" and reason == "tenant_paused":
            rep.checked += 1
            if not policy.tenant(str(tenant)).paused:
                self.bad(row, "reason", reason, None, f"tenant is not paused in policy v{version}")
        elif kind == "reject" and reason in _RATE_LIMITED:
            self.skip("rate limit (bucket level not recorded; the limit is checked)")
            tp = policy.tenant(str(tenant))
            if (tp.rate_limit_rps if reason == "rate_limited_requests" else tp.rate_limit_tpm) is None:
                self.bad(row, "reason", reason, None, f"policy v{version} sets no such limit for the tenant")
        else:
            self.skip(f"{kind} {reason}" if kind != "expire" else "expire (admission before the window)")

    def admission(self, row: tuple[Any, ...], inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                  policy: Policy | None) -> None:
        kind, reason, engine = row[3], row[4], row[5]
        if isinstance(inputs.get("slo_class"), str) and row[1] is not None:
            self.admitted[row[1]] = (inputs["slo_class"], row[0], inputs.get("deadline_s"))
        derived = self.rederived(row, rederive, inputs)
        if derived is None:
            return
        self.rep.rederived += 1
        for key, value in derived.items():
            if key not in outputs or not _same(outputs[key], value):
                self.bad(row, f"outputs.{key}", outputs.get(key), value)
        if derived["decision"] != kind:
            self.bad(row, "kind", kind, derived["decision"])
        if derived["reason"] != reason:
            self.bad(row, "reason", reason, derived["reason"])
        if derived["engine"] != engine:
            self.bad(row, "engine", engine, derived["engine"])
        if policy is not None:
            self.rep.policy_checked += 1
            cls = policy.slo(str(inputs.get("slo_class")))
            budget = cls.ttft_budget_s(float(inputs.get("prompt_tokens") or 0))
            expected = {"margin": policy.admission_margin, "admission": policy.admission, "ttft_slo_s": budget,
                        "tpot_slo_s": cls.tpot_s, "deadline_s": cls.deadline_s, "on_miss": cls.on_miss}
            for key, value in expected.items():
                if not _same(inputs.get(key), value) and not (inputs.get(key) is None and value is None):
                    self.bad(row, f"inputs.{key}", inputs.get(key), value, f"policy v{policy.version}")

    def dispatch(self, row: tuple[Any, ...], inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                 policy: Policy | None) -> None:
        rid, reason, engine, version = row[1], row[4], row[5], row[6]
        candidates = inputs.get("candidates")
        if isinstance(candidates, list) and engine not in candidates:
            self.bad(row, "engine", engine, candidates, "dispatched to an engine that was not a candidate")
        if "engines" in inputs:
            derived = self.rederived(row, rederive_choice, inputs)
            if derived is None:
                return
            views, choice = derived
            self.rep.dispatch_rederived += 1
            if views[choice.index].name != engine:
                self.bad(row, "engine", engine, views[choice.index].name, "dispatch.choose picks another engine")
            if "scores" in inputs:
                scores = [s.record() if s else None for s in choice.scored]
                if not _same_scores(inputs["scores"], scores):
                    self.bad(row, "inputs.scores", inputs["scores"], scores)
        else:
            self.rep.checked += 1  # recorded before dispatches carried their views: candidates only
        if policy is not None:
            if reason != policy.scheduler:
                self.bad(row, "reason", reason, policy.scheduler, f"scheduler of policy v{version}")
            weights = inputs.get("weights")
            if weights is not None and weights != policy.dispatch.scorers:
                self.bad(row, "inputs.weights", weights, policy.dispatch.scorers, f"scorers of policy v{version}")
            if weights is not None and "engine_cached" in inputs and policy.dispatch.cache_estimate != "prefix":
                self.bad(row, "inputs.engine_cached", inputs["engine_cached"], None,
                         f"policy v{version} estimates cached tokens from the tenant's hit share")
            if rid in self.admitted:
                cls = policy.slo(self.admitted[rid][0])
                expected = cls.priority if policy.pass_priority else None
                if outputs.get("priority") != expected:
                    self.bad(row, "outputs.priority", outputs.get("priority"), expected, f"policy v{version}")


def audit_decisions(rows: Iterable[Mapping[str, Any] | tuple[Any, ...]], policies: Mapping[int, Policy] | None = None,
                    changes: Iterable[Mapping[str, Any]] = ()) -> AuditReport:
    """Re-derive every decision in `rows` (as the `decisions` table stores them, as dicts or as tuples
    in its column order; inputs and outputs as JSON text or decoded) and check each against the
    policy of its version when `policies` is given. `changes`: the audit-log rows, for the timeline."""
    start = time.perf_counter()
    auditor = _Auditor(policies)
    for index, row in enumerate(rows):
        auditor.row(index, row if isinstance(row, tuple) else tuple(row.get(c) for c in _DECISION_COLUMNS))
    rep = auditor.rep
    changes = list(changes)
    rep.timeline = timeline_from_changes(changes)
    rep.audited_versions = sorted({c.version for c in rep.timeline})
    rep.known_versions = sorted(policies or ())
    rep.elapsed_s = time.perf_counter() - start
    return rep


def _decision_rows(con: Any, since: float, until: float | None, batch: int = 20_000) -> Iterator[tuple[Any, ...]]:
    """The window's decisions in recorded order, fetched in batches (an hour of load does not fit
    in memory decoded)."""
    cur = con.cursor()
    try:
        cur.execute(f"SELECT {', '.join(_DECISION_COLUMNS)} FROM decisions WHERE ts >= ? AND ts < ? "
                    "ORDER BY ts", [since, until if until is not None else math.inf])
        while chunk := cur.fetchmany(batch):
            yield from chunk
    finally:
        cur.close()


def audit_db(db: Any, since: float = 0.0, until: float | None = None) -> AuditReport:
    """Audit the decisions of a sluice store in [since, until): `db` is a path (opened read-only: no
    process may be writing it; see docs/replay.md for a running server's file), a DuckDB connection
    or a Store."""
    from telemetry.queries import policy_timeline
    from telemetry.store import open_read_only

    con = open_read_only(db) if isinstance(db, (str, os.PathLike)) else db
    try:
        changes = policy_timeline(con, limit=1_000_000)
        return audit_decisions(_decision_rows(con, since, until), policies_from_changes(changes), changes)
    finally:
        if con is not db:
            con.close()
