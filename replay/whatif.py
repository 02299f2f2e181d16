"""What-if: a recorded window replayed on the virtual clock under another policy, beside what was recorded.

The recorded run's figures come from the `requests` rows (serving's own TTFT, TPOT, `slo_met`,
statuses), aggregated by the same code as a virtual run's (replay/runner.py), so every column means
the same in both. The replays get only what serving knew: each request's arrival, prompt length,
tenant, class and the client's `max_tokens` (the core's cap, `DEFAULT_MAX_TOKENS` when the client
set none); the engine is told where the output stops, the length serving observed. A request that
never completed has no observed length: it is estimated (the median completed length of its tenant,
at least what it produced, at most its cap) and the estimates are counted in the report.

Besides the what-if, the window is replayed under the policy it was recorded under: how closely that
reproduces the recorded outcomes (its fidelity) says how far to trust the what-if's differences.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.core.policy import Policy
from replay.audit import policies_from_changes
# the recorded window is aggregated by the very code that aggregates a virtual run
from replay.outcomes import TenantOutcome, VirtualResult, outcomes
from replay.records import RequestRecord
from replay.runner import default_policy, run_virtual
from replay.workload import DEFAULT_MAX_TOKENS, WorkloadRequest

__all__ = ["WhatIf", "fidelity", "format_whatif", "load_window", "recorded_policy", "recorded_result", "recorded_run",
           "what_if", "whatif_policy", "workload_from_requests"]

_STATUS = {"ok": "ok", "rejected": "rejected", "expired": "expired", "error": "error", "aborted": "cancelled"}
# the fidelity figures: (name, how TenantOutcome gives it, compared as a difference or a ratio)
_FIDELITY = (("admitted_pp", lambda o: _share(o.admitted, o.requests), "pp"),
             ("refused_pp", lambda o: o.refused, "pp"),
             ("slo_attainment_pp", lambda o: o.slo_attainment, "pp"),
             ("goodput_ratio", lambda o: o.goodput_rps, "ratio"),
             ("ttft_p50_ratio", lambda o: o.ttft_p50_s, "ratio"),
             ("ttft_p99_ratio", lambda o: o.ttft_p99_s, "ratio"))


def _share(a: int, b: int) -> float | None:
    return a / b if b else None


def _since(value: Any, origin: float, scale: float = 1.0) -> float | None:
    return None if value is None else float(value) / scale - origin


def _estimated_lengths(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    done: dict[str, list[int]] = {}
    for r in rows:
        if r.get("status") == "ok" and (r.get("completion_tokens") or 0) > 0:
            done.setdefault(str(r.get("tenant")), []).append(int(r["completion_tokens"]))
    everyone = [n for ns in done.values() for n in ns]
    default = statistics.median(everyone) if everyone else 256.0
    return {t: statistics.median(ns) for t, ns in done.items()} | {"*": default}


def workload_from_requests(rows: Sequence[Mapping[str, Any]]) -> tuple[list[WorkloadRequest], int]:
    """(workload, how many output lengths were estimated) from `requests` rows, timed from the first
    arrival. The core sees each request's recorded `max_tokens` (None: DEFAULT_MAX_TOKENS), never the
    output length; the engine stops at the observed length, or the estimate for requests that did
    not complete."""
    rows = sorted((r for r in rows if r.get("arrival_ts") is not None), key=lambda r: (r["arrival_ts"], r["rid"]))
    if not rows:
        return [], 0
    t0 = float(rows[0]["arrival_ts"])
    typical = _estimated_lengths(rows)
    out, estimated = [], 0
    for r in rows:
        produced = int(r.get("completion_tokens") or 0)
        cap = int(r["max_tokens"]) if r.get("max_tokens") else None
        if r.get("status") == "ok" and produced > 0:
            length = produced
        else:
            estimated += 1
            guess = max(produced, round(typical.get(str(r.get("tenant")), typical["*"])))
            length = min(guess, cap or DEFAULT_MAX_TOKENS)
        out.append(WorkloadRequest(round((float(r["arrival_ts"]) - t0) * 1e3, 3), max(1, int(r.get("prompt_tokens")
                                                                                         or 1)),
                                   max(1, length), str(r.get("tenant") or "default"), r.get("slo_class"),
                                   max_tokens=cap, extra={"rid": r.get("rid")}))
    return out, estimated


def recorded_result(rows: Sequence[Mapping[str, Any]], workload: Sequence[WorkloadRequest], policy: Policy
                    ) -> VirtualResult:
    """The recorded window as a run (seconds from its first arrival), `workload` being
    `workload_from_requests(rows)` (for each request's demand), aggregated as runner.py does."""
    by_rid = {w.extra["rid"]: w for w in workload}
    rows = [r for r in rows if r.get("rid") in by_rid]
    t0 = min(float(r["arrival_ts"]) for r in rows) if rows else 0.0
    records = []
    for i, r in enumerate(sorted(rows, key=lambda r: (r["arrival_ts"], r["rid"]))):
        w, arrival = by_rid[r["rid"]], float(r["arrival_ts"]) - t0
        ms = {k: (None if r.get(k) is None else float(r[k]) / 1e3) for k in ("ttft_ms", "e2e_ms")}
        records.append(RequestRecord(
            i, str(r["rid"]), w.tenant, r.get("slo_class") or policy.tenant(w.tenant).slo_class, arrival,
            w.input_length, w.output_length, max_tokens=w.output_cap,
            status=_STATUS.get(str(r.get("status")), "cancelled"), reason=r.get("reason"),
            decision=r.get("decision"), engine=r.get("engine"), dispatch_s=_since(r.get("dispatch_ts"), t0),
            first_token_s=None if ms["ttft_ms"] is None else arrival + ms["ttft_ms"],
            finish_s=None if ms["e2e_ms"] is None else arrival + ms["e2e_ms"],
            cached_tokens=int(r.get("cached_tokens") or 0), output_tokens=int(r.get("completion_tokens") or 0),
            predicted_ttft_s=_since(r.get("predicted_ttft_ms"), 0.0, 1e3),
            predicted_tpot_s=_since(r.get("predicted_tpot_ms"), 0.0, 1e3),
            predicted_output_tokens=r.get("predicted_output_tokens"), slo_met=bool(r.get("slo_met"))))
    duration = max((r.arrival_s for r in records), default=0.0)  # as a virtual run: to the last arrival
    weights = {t: policy.tenant(t).weight for t in dict.fromkeys(r.tenant for r in records)}
    per_tenant, overall, per_class, df = outcomes(records, weights, duration)
    makespan = max([duration] + [r.finish_s for r in records if r.finish_s is not None])
    fairness = {"jain_demand": df.jain if records else None, "min_fair_ratio": df.min_ratio,
                "min_fair_tenant": df.min_tenant, "service_difference": None}
    # recorded in real time: its makespan took as long on the wall
    return VirtualResult(policy, records, per_tenant, overall, per_class, duration, makespan, makespan, fairness,
                         {}, {})


def fidelity(recorded: VirtualResult, replayed: VirtualResult) -> dict[str, dict[str, float | None]]:
    """Per tenant, class (`[name]`) and `all`: replayed minus recorded, in percentage points for
    shares (admitted, refused, SLO attainment of all requests), replayed over recorded for goodput and
    TTFT quantiles (None where either side has no value)."""
    out: dict[str, dict[str, float | None]] = {}
    groups: list[tuple[str, TenantOutcome | None, TenantOutcome | None]] = [
        *((t, o, replayed.per_tenant.get(t)) for t, o in recorded.per_tenant.items()),
        *((f"[{c}]", o, replayed.per_class.get(c)) for c, o in recorded.per_class.items()),
        ("all", recorded.overall, replayed.overall)]
    for name, rec, new in groups:
        row: dict[str, float | None] = {}
        for key, get, how in _FIDELITY:
            a, b = (get(rec), get(new)) if new is not None else (None, None)
            if a is None or b is None:
                row[key] = None
            elif how == "pp":
                row[key] = (b - a) * 100
            else:
                row[key] = b / a if a > 0 else (1.0 if b == 0 else math.inf)
        out[name] = row
    return out


@dataclass(slots=True)
class WhatIf:
    since: float | None
    until: float | None
    t0: float  # the first arrival of the window (epoch s): time 0 of every run
    recorded: VirtualResult
    fidelity_run: VirtualResult  # the window replayed under the recorded policy
    whatif: VirtualResult
    recorded_policy_source: str
    versions: dict[int, int]  # policy version -> requests of the window recorded under it
    estimated_lengths: int
    notes: list[str] = field(default_factory=list)

    @property
    def fidelity(self) -> dict[str, dict[str, float | None]]:
        return fidelity(self.recorded, self.fidelity_run)

    def runs(self) -> dict[str, VirtualResult]:
        """recorded, replayed under the recorded policy (its version), the what-if (its policy)."""
        return {"recorded": self.recorded, f"replayed v{self.fidelity_run.policy.version}": self.fidelity_run,
                f"what-if {_label(self.whatif.policy)}": self.whatif}

    def to_dict(self, requests: bool = False) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "t0": self.t0,
                "recorded_policy_source": self.recorded_policy_source, "versions": self.versions,
                "estimated_lengths": self.estimated_lengths, "notes": self.notes, "fidelity": self.fidelity,
                "runs": {k: r.to_dict(requests=requests) for k, r in self.runs().items()}}


def _label(p: Policy) -> str:
    return f"{p.scheduler}{'+admission' if p.admission else ''} v{p.version}"


def recorded_policy(changes: Sequence[Mapping[str, Any]], versions: Mapping[int, int], fallback: Policy | None
                    ) -> tuple[Policy, str]:
    """The policy most of the window was recorded under, from the audit log; else `fallback` (the
    `--config` given). Raises ValueError when neither knows it."""
    known = policies_from_changes(changes)
    version = max(versions, key=lambda v: versions[v]) if versions else None
    if version is not None and version in known:
        return known[version], f"v{version} from the audit log"
    if fallback is not None:
        return fallback, f"v{version} has no audit row: taken from --config"
    raise ValueError(f"the window was recorded under policy v{version}, which the audit log does not hold "
                     "(no change was ever made through the admin API): pass --config with the config the "
                     "server ran with")


def load_window(db: Any, since: float | None, until: float | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the `requests` rows that arrived in [since, until), the audit log) of a store (`db`: a path
    opened read-only, a DuckDB connection or a Store)."""
    from telemetry.queries import policy_timeline, requests_for_replay
    from telemetry.store import open_read_only

    con = open_read_only(db) if isinstance(db, (str, os.PathLike)) else db
    try:
        return requests_for_replay(con, since or 0.0, until), policy_timeline(con, limit=1_000_000)
    finally:
        if con is not db:
            con.close()


def _versions(rows: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    return dict(Counter(int(r["policy_version"]) for r in rows if r.get("policy_version") is not None))


def recorded_run(db: Any, since: float | None, until: float | None, fallback: Policy | None = None
                 ) -> tuple[VirtualResult, str]:
    """The window as recorded (for reports), judged and weighted by its recorded policy when the
    audit log holds it, else by `fallback`, else by the default policy (said in the returned note)."""
    rows, changes = load_window(db, since, until)
    workload, _ = workload_from_requests(rows)
    try:
        policy, source = recorded_policy(changes, _versions(rows), fallback)
    except ValueError:
        policy, source = default_policy("fcfs"), "unknown (no audit row): tenants weighted 1, default SLO classes"
    return recorded_result(rows, workload, policy), f"recorded policy {source}"


def what_if(db: Any, since: float | None, until: float | None, policy: Policy | None = None, *,
            scheduler: str | None = None, admission: bool | None = None, config_policy: Policy | None = None,
            engines: int | None = None, **run_kw: Any) -> WhatIf:
    """Replay the requests that arrived in [since, until) of a store (see `load_window`) under the
    policy they were recorded under and under `policy` (default: `config_policy`, else the recorded
    one, with `scheduler` and `admission` overridden where given). `config_policy` also stands in
    for a recorded policy the audit log does not hold. engines: simulated engines (default: as
    many as served the window); run_kw: run_virtual's."""
    rows, changes = load_window(db, since, until)
    workload, estimated = workload_from_requests(rows)
    if not workload:
        raise ValueError(f"no request arrived in the window [{since}, {until})")
    versions = _versions(rows)
    base, source = recorded_policy(changes, versions, config_policy)
    if policy is None:
        policy = whatif_policy(config_policy or base, scheduler, admission)
    served = {r["engine"] for r in rows if r.get("engine")}
    n_engines = engines or max(1, len(served))
    notes = [f"{len(workload)} requests, {n_engines} simulated engine(s); recorded policy {source}"]
    if len(versions) > 1:
        notes.append(f"the window spans policy versions {sorted(versions)}: the fidelity replay runs the most "
                     "frequent one throughout")
    if estimated:
        notes.append(f"{estimated} requests did not complete: their output length is estimated (tenant median)")
    if policy.slo_classes != base.slo_classes:
        notes.append("the what-if's SLO classes differ from the recorded ones: each run is judged by its own")
    recorded = recorded_result(rows, workload, base)
    fid = run_virtual(workload, base, engines=n_engines, **run_kw)
    new = run_virtual(workload, policy, engines=n_engines, **run_kw)
    return WhatIf(since, until, float(min(r["arrival_ts"] for r in rows)), recorded, fid, new, source, versions,
                  estimated, notes)


def whatif_policy(base: Policy, scheduler: str | None, admission: bool | None) -> Policy:
    """`base` with the scheduler and the admission switch overridden where given."""
    return dataclasses.replace(base, scheduler=scheduler or base.scheduler,
                               admission=base.admission if admission is None else admission).validate()


def format_whatif(w: WhatIf) -> str:
    from replay.simulate import format_side_by_side

    fmt = lambda x, d=1: "-" if x is None else ("inf" if math.isinf(x) else f"{x:+.{d}f}")  # noqa: E731
    ratio = lambda x: "-" if x is None else ("inf" if math.isinf(x) else f"{x:.2f}")  # noqa: E731
    heads = ["group", "Δadm pp", "Δref pp", "ΔSLO pp", "good x", "TTFT50 x", "TTFT99 x"]
    rows = [[g, fmt(f["admitted_pp"]), fmt(f["refused_pp"]), fmt(f["slo_attainment_pp"]), ratio(f["goodput_ratio"]),
             ratio(f["ttft_p50_ratio"]), ratio(f["ttft_p99_ratio"])] for g, f in w.fidelity.items()]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(heads)]
    line = lambda v: "  ".join(x.ljust(n) if k == 0 else x.rjust(n) for k, (x, n) in enumerate(zip(v, widths)))  # noqa: E731
    out = [f"window [{w.since}, {w.until}): " + "; ".join(w.notes), "", format_side_by_side(w.runs()), "",
           "fidelity: the window replayed under its recorded policy, against the recording "
           "(pp: replayed minus recorded; x: replayed over recorded; SLO = attainment of all requests)",
           line(heads), line(["-" * n for n in widths]), *[line(r) for r in rows]]
    return "\n".join(out)
