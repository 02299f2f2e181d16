"""What a virtual run (or a recorded window, replay/whatif.py) comes to: per tenant, per SLO class
and overall outcomes, fairness figures, and the run's result. Seconds throughout; tables are
replay/tables.py's and replay/report.py's.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from controlplane.core.policy import Policy
from controlplane.driver import slo_met
from fairness.metrics import (DemandFairness, Served, demand_fairness, fairness_summary, intersect_intervals,
                              request_service, service_curves, shares, weighted_jain)
from replay.records import RequestRecord
from replay.report import CANCELLED, ERROR, EXPIRED, OK, REJECTED, STATUSES, SLOSpec, Summary, resolve_slo, summarize

if TYPE_CHECKING:
    from engine_adapter.sim.core import SimCore

__all__ = ["W_P", "W_Q", "TenantOutcome", "VirtualResult", "engine_figures", "fairness_figures", "judge", "outcomes",
           "served", "tenant_outcome"]

W_P, W_Q = 1.0, 2.0  # VTC's service weights for the fairness metrics


@dataclass(slots=True)
class TenantOutcome:
    """Per-tenant outcome of a virtual run. Times in seconds; rates per second of `duration_s`."""

    tenant: str
    weight: float
    requests: int = 0
    admitted: int = 0  # admitted or deferred by the core
    rejected: int = 0  # refused at arrival (429/503)
    expired: int = 0  # deferred, then its deadline passed in the queue
    completed: int = 0
    errors: int = 0
    cancelled: int = 0  # still queued or running at the horizon
    good: int = 0  # completed within every bound of its SLO
    goodput_rps: float = 0.0
    goodput_tps: float = 0.0  # prompt + output tokens/s of the good requests
    refused: float | None = None  # share of requests refused at arrival (rejected) or expired in the queue
    slo_attainment: float | None = None  # good / requests
    slo_attainment_admitted: float | None = None  # good / admitted
    ttft_p50_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p99_s: float | None = None
    queue_p50_s: float | None = None
    # forecast error of admitted, completed requests: |predicted - actual| / actual
    ttft_ape_p50: float | None = None
    ttft_ape_p90: float | None = None
    output_ape_p50: float | None = None  # the output-length prediction (the core saw only max_tokens)
    cache_hit_rate: float | None = None  # prefix-cache hits / prompt tokens of completed requests
    service: float = 0.0  # w_p * prompt + w_q * output of completed requests
    energy_j: float = 0.0  # GPU energy attributed to its requests (finished or aborted on the engine)
    share: float = 0.0  # of all service
    weight_share: float = 0.0  # of the weights of tenants present
    share_ratio: float = 0.0  # share / weight_share (1 = exactly the weighted share)
    # the same, counting only service delivered while every tenant was backlogged (None if never)
    share_backlogged: float | None = None
    share_ratio_backlogged: float | None = None
    # service that met its SLO over the tenant's weighted max-min fair share of what was asked
    fair_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class VirtualResult:
    policy: Policy
    records: list[RequestRecord]
    per_tenant: dict[str, TenantOutcome]
    overall: TenantOutcome
    per_class: dict[str, TenantOutcome]
    duration_s: float  # the workload's span: last arrival (or the horizon)
    makespan_s: float  # the last event
    wall_s: float
    fairness: dict[str, Any]
    forecast: dict[str, Any]
    engines: dict[str, dict[str, Any]]
    decisions: list[dict[str, Any]] = field(default_factory=list)  # recorder-format rows (record_decisions)
    served: list[Served] = field(default_factory=list)
    backlogged: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def virtual_per_wall(self) -> float:
        return self.makespan_s / self.wall_s if self.wall_s > 0 else math.inf

    def status_counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATUSES}
        for r in self.records:
            out[r.status or CANCELLED] += 1
        return out

    def summary(self) -> Summary:
        """replay.report's per-tenant and per-class rows of the same records (bench_serving's fields)."""
        return summarize(self.records, self.duration_s)

    def to_dict(self, *, requests: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy.to_dict(),
            "duration_s": self.duration_s,
            "makespan_s": self.makespan_s,
            "wall_s": self.wall_s,
            "virtual_s_per_wall_s": self.virtual_per_wall,
            "statuses": self.status_counts(),
            "overall": self.overall.to_dict(),
            "per_tenant": {t: o.to_dict() for t, o in self.per_tenant.items()},
            "per_class": {c: o.to_dict() for c, o in self.per_class.items()},
            "fairness": self.fairness,
            "forecast": self.forecast,
            "engines": self.engines,
            "report": self.summary().to_dict(),
        }
        if requests:
            out["requests"] = [r.to_dict() for r in self.records]
        return _clean(out)

    def to_json(self, *, requests: bool = False, **kw: Any) -> str:
        return json.dumps(self.to_dict(requests=requests), **kw)


# -- per request ------------------------------------------------------------------------------------

def judge(records: Sequence[RequestRecord], policy: Policy, slo: SLOSpec) -> None:
    """Each record's SLO class (its own, else its tenant's) and whether it met it: a completed request
    by its class, as serving judges it, or by `slo` when given (replay/report.py's); others did not."""
    for rec in records:
        rec.slo_class = rec.slo_class or policy.tenant(rec.tenant).slo_class
        if rec.status == OK:
            if slo is None:
                rec.slo_met = slo_met(policy.slo(rec.slo_class), rec.input_tokens, rec.ttft_s, rec.tpot_s, rec.e2e_s)
            else:
                s = resolve_slo(slo, rec.tenant, rec.slo_class)
                rec.slo_met = True if s is None else s.met(rec.ttft_s, rec.tpot_s, rec.e2e_s)
        else:
            rec.slo_met = False


def served(records: Sequence[RequestRecord]) -> list[Served]:
    """The service each completed request delivered, from its first token to its finish."""
    return [Served(r.tenant, r.first_token_s if r.first_token_s is not None else r.finish_s, r.finish_s,
                   request_service(r.input_tokens, r.output_tokens, W_P, W_Q), r.arrival_s)
            for r in records if r.status == OK and r.finish_s is not None]


# -- per tenant, per class, overall ------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else None


def tenant_outcome(tenant: str, weight: float, recs: list[RequestRecord], duration: float) -> TenantOutcome:
    o = TenantOutcome(tenant, weight, requests=len(recs))
    statuses = Counter(r.status for r in recs)
    o.admitted = sum(r.admitted for r in recs)
    o.rejected, o.expired = statuses[REJECTED], statuses[EXPIRED]
    o.errors, o.cancelled = statuses[ERROR], statuses[CANCELLED]
    # one pass over the completed requests (each figure once per request), the lists and sums in
    # request order as before
    ttft: list[float] = []
    tpot: list[float] = []
    queue: list[float] = []
    ttft_ape: list[float] = []
    out_ape: list[float] = []
    service: list[float] = []
    completed = good = good_tokens = prompt = cached = 0
    for r in recs:
        if r.status != OK:
            continue
        completed += 1
        inp, out = r.input_tokens, r.output_tokens
        if r.slo_met:
            good += 1
            good_tokens += inp + out
        tt = r.ttft_s
        if tt is not None:
            ttft.append(tt)
        tp = r.tpot_s
        if tp is not None:
            tpot.append(tp)
        q = r.queue_s
        if q is not None:
            queue.append(q)
        if r.predicted_ttft_s is not None and tt:
            ttft_ape.append(abs(r.predicted_ttft_s - tt) / tt)
        if r.predicted_output_tokens is not None and out:
            out_ape.append(abs(r.predicted_output_tokens - out) / out)
        prompt += inp
        cached += r.cached_tokens
        service.append(request_service(inp, out, W_P, W_Q))
    o.completed = completed
    o.good = good
    o.goodput_rps = o.good / duration if duration > 0 else 0.0
    o.goodput_tps = good_tokens / duration if duration > 0 else 0.0
    o.refused = (o.rejected + o.expired) / o.requests if o.requests else None
    o.slo_attainment = o.good / o.requests if o.requests else None
    o.slo_attainment_admitted = o.good / o.admitted if o.admitted else None
    o.ttft_p50_s, o.ttft_p99_s = _pct(ttft, 50), _pct(ttft, 99)
    o.tpot_p50_s, o.tpot_p99_s = _pct(tpot, 50), _pct(tpot, 99)
    o.queue_p50_s = _pct(queue, 50)
    o.ttft_ape_p50, o.ttft_ape_p90 = _pct(ttft_ape, 50), _pct(ttft_ape, 90)
    o.output_ape_p50 = _pct(out_ape, 50)
    o.cache_hit_rate = cached / prompt if prompt else None
    o.service = float(sum(service))
    o.energy_j = float(sum(r.energy_j for r in recs))
    return o


def outcomes(records: Sequence[RequestRecord], weights: Mapping[str, float], duration: float
             ) -> tuple[dict[str, TenantOutcome], TenantOutcome, dict[str, TenantOutcome], DemandFairness]:
    """Per tenant (with its shares of the service and its fair share of what was asked), overall and
    per SLO class (`judge` first); `weights`: every tenant's (the policy's), in the order they first arrived."""
    groups: dict[str, list[RequestRecord]] = {}
    classes: dict[str, list[RequestRecord]] = {}
    for r in records:
        groups.setdefault(r.tenant, []).append(r)
        classes.setdefault(r.slo_class or "", []).append(r)
    per_tenant = {t: tenant_outcome(t, weights[t], rs, duration) for t, rs in sorted(groups.items())}
    overall = tenant_outcome("__all__", sum(weights.values()), list(records), duration)
    per_class = {c: tenant_outcome(c, sum(weights[t] for t in {r.tenant for r in rs}), rs, duration)
                 for c, rs in sorted(classes.items())}
    overall.service = sum(o.service for o in per_tenant.values())
    total_w = sum(weights.values())
    for o in per_tenant.values():
        o.share = o.service / overall.service if overall.service > 0 else 0.0
        o.weight_share = o.weight / total_w if total_w > 0 else 0.0
        o.share_ratio = o.share / o.weight_share if o.weight_share > 0 else 0.0
    asked: dict[str, float] = {}
    good_service: dict[str, float] = {}
    for r in records:  # what each tenant asked for (refused requests too) and what met its SLO
        svc = request_service(r.input_tokens, r.requested_output_tokens, W_P, W_Q)
        asked[r.tenant] = asked.get(r.tenant, 0.0) + svc
        good_service[r.tenant] = good_service.get(r.tenant, 0.0) + (svc if r.slo_met else 0.0)
    df = demand_fairness(asked, good_service, dict(weights))
    for t, o in per_tenant.items():
        o.fair_ratio = df.tenants[t].ratio
    return per_tenant, overall, per_class, df


# -- fairness ---------------------------------------------------------------------------------------

def fairness_figures(per_tenant: Mapping[str, TenantOutcome], df: DemandFairness, served_: list[Served],
                     backlogged: Mapping[str, list[tuple[float, float]]], weights: Mapping[str, float],
                     duration: float, want_sd: bool, n_ticks: int) -> dict[str, Any]:
    """Jain over fair shares of demand, VTC's service difference (`want_sd`), the shares while every
    tenant was backlogged (set on `per_tenant` too) and the windowed differences at `n_ticks` instants.
    `weights`: every tenant of the run, in the order they first arrived."""
    ticks = list(np.linspace(0.0, max(duration, 1e-9), n_ticks + 1)[1:]) if n_ticks else None
    fs = fairness_summary(served_, dict(weights), backlogged if want_sd else None, ticks)
    sd = fs.get("service_difference")
    fairness: dict[str, Any] = {
        "w_p": W_P, "w_q": W_Q,
        "jain_demand": df.jain,  # Jain over good service / max-min fair share of offered demand
        "min_fair_ratio": df.min_ratio, "min_fair_tenant": df.min_tenant,
        "jain_weighted": fs["jain"],
        "service_difference": sd.value if sd is not None else None,  # type: ignore[attr-defined]
        "service_difference_pair": list(sd.tenants) if sd is not None and sd.tenants else None,  # type: ignore[attr-defined]
        "service_difference_interval": list(sd.interval) if sd is not None and sd.interval else None,  # type: ignore[attr-defined]
        "backlogged_s": {t: sum(b - a for a, b in iv) for t, iv in sorted(backlogged.items())},
    }
    common = _all_backlogged(backlogged, list(weights))
    fairness["all_backlogged_s"] = sum(b - a for a, b in common)
    if common and len(weights) > 1:
        curves = service_curves(served_)
        got = {t: sum(float(curves[t].at(b)) - float(curves[t].at(a)) for a, b in common) if t in curves else 0.0
               for t in weights}
        sh = shares(got, dict(weights))
        fairness["jain_backlogged"] = weighted_jain(got, dict(weights))
        for t, o in per_tenant.items():
            o.share_backlogged, o.share_ratio_backlogged = sh[t].share, sh[t].ratio
        fairness["shares_backlogged"] = {t: {"service": v.service, "share": v.share, "weight_share": v.weight_share,
                                             "ratio": v.ratio} for t, v in sh.items()}
    for key in ("accumulated_difference", "windowed_difference"):
        if key in fs:
            fairness[key] = fs[key]
    if ticks is not None:
        fairness["ticks_s"] = ticks
    return fairness


def _all_backlogged(backlogged: Mapping[str, list[tuple[float, float]]], tenants: list[str]
                    ) -> list[tuple[float, float]]:
    """Intervals in which every tenant was backlogged (queued in the core)."""
    common: list[tuple[float, float]] | None = None
    for t in tenants:
        ivs = sorted(backlogged.get(t, []))
        common = ivs if common is None else intersect_intervals(common, ivs)
    return common or []


# -- per engine -------------------------------------------------------------------------------------

def engine_figures(sims: Mapping[str, SimCore], windows: Mapping[str, Any],
                   clock_log: Mapping[str, list[tuple[float, float]]], makespan: float) -> dict[str, dict[str, Any]]:
    """Per engine: the simulator's step statistics, utilisation, energy and clocks up to `makespan`;
    `windows`: each engine's window as its core's snapshot holds it."""
    engines = {}
    for name, sim in sims.items():
        st = sim.stats
        engines[name] = {"steps": st.steps, "busy_s": st.busy_s, "output_tokens": st.output_tokens,
                         "prefill_tokens": st.prefill_tokens, "cached_tokens": st.cached_tokens,
                         "retractions": st.retractions, "finished": st.finished, "aborted": st.aborted,
                         "cache_hit_rate": (st.cached_tokens / st.admitted_prompt_tokens
                                            if st.admitted_prompt_tokens else None),
                         "utilization": st.busy_s / makespan if makespan > 0 else 0.0,
                         "window": windows[name],
                         "energy_j": sim.gpu(makespan)["energy_j"],  # idle between steps included
                         "idle_w": sim.profile.idle_w,
                         "clock_changes": len(clock_log.get(name, [])[1:]),
                         "mean_clock_mhz": _time_mean(clock_log.get(name) or [(0.0, sim.frequency_mhz)], makespan)}
    return engines


def _time_mean(log: list[tuple[float, float]], end: float) -> float | None:
    """The time-weighted mean of a step function given as (from, value) pairs, up to `end`."""
    if end <= 0 or not log:
        return log[-1][1] if log else None
    total = sum(v * (min(end, t1) - t0) for (t0, v), (t1, _) in zip(log, log[1:] + [(end, 0.0)]) if t1 > t0)
    return total / end


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating,)):
        return _clean(float(x))
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x
