"""The data model of an HTML report (replay/html_report.py), independent of the producer: a run's
requests (`ReportRequest`, times in seconds from the run's start), the run (`ReportRun`), a class's
SLO bounds (`SLOBound`); a virtual-time replay's run (`run_from_virtual`); and each tenant's share of
the service delivered against its fair share, per time window (`share_over_time`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fairness.metrics import Asked, request_service, windowed_demand_fairness

if TYPE_CHECKING:
    from replay.outcomes import VirtualResult

__all__ = ["REFUSED", "W_P", "W_Q", "ReportRequest", "ReportRun", "SLOBound", "ShareWindow", "run_from_virtual",
           "share_over_time"]

# Service of a request, as the runner's fairness metrics count it (VTC): W_P * prompt + W_Q * output.
W_P, W_Q = 1.0, 2.0
REFUSED = ("rejected", "expired")  # refused at arrival, or deferred and then past its deadline in the queue


@dataclass(frozen=True, slots=True)
class SLOBound:
    """A class's latency bounds, seconds (None: not bounded). The TTFT bound of a request with p
    prompt tokens is ttft_s + ttft_s_per_ktok * p / 1000."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    ttft_s_per_ktok: float = 0.0
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """One request as a report sees it. Times in seconds from the run's start; None = never happened.

    status: ok | rejected (refused at arrival) | expired (deferred, deadline passed in the queue) |
    error | aborted | cancelled (unfinished at the end of the run).
    finish_s: the last token; for a request that did not complete, when it stopped (refused,
    expired, aborted) if known, else None.
    requested_output_tokens: what the tenant asked for, for demand (refused requests included);
    None = output_tokens."""

    tenant: str
    slo_class: str | None
    arrival_s: float
    status: str
    reason: str | None = None
    engine: str | None = None
    dispatch_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    requested_output_tokens: int | None = None
    slo_met: bool | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2 or self.status != "ok":
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def completed(self) -> bool:
        return self.status == "ok"

    @property
    def refused(self) -> bool:
        return self.status in REFUSED

    @property
    def service(self) -> float:
        """Service delivered if completed (W_P * prompt + W_Q * output tokens)."""
        return request_service(self.input_tokens, self.output_tokens, W_P, W_Q)

    @property
    def asked_service(self) -> float:
        out = self.output_tokens if self.requested_output_tokens is None else self.requested_output_tokens
        return request_service(self.input_tokens, out, W_P, W_Q)


@dataclass(slots=True)
class ReportRun:
    """One run shown in a report: a policy's virtual replay, a recorded window, a live run.

    weights: tenant weights (missing tenants weigh 1); slo: bounds per SLO class name.
    duration_s: the span rates are computed over; default: from 0 to the last arrival."""

    name: str
    requests: Sequence[ReportRequest]
    weights: Mapping[str, float] = field(default_factory=dict)
    slo: Mapping[str, SLOBound] = field(default_factory=dict)
    notes: Sequence[str] = ()
    duration_s: float | None = None

    @property
    def span_s(self) -> float:
        if self.duration_s is not None:
            return self.duration_s
        return max((r.arrival_s for r in self.requests), default=0.0)

    def weight(self, tenant: str) -> float:
        return float(self.weights.get(tenant, 1.0))


def run_from_virtual(result: VirtualResult, name: str) -> ReportRun:
    """A virtual-time replay's run. An expired request's record has no expiry time: it is taken as
    arrival + its class's deadline (the core expires it at the first tick past that)."""
    policy = result.policy
    # the policy document's form (ms, as the admin API and the audit log give it): the same for a
    # policy read back from the store
    slo = {c: SLOBound(_s(p.get("ttft_ms")), _s(p.get("tpot_ms")), (p.get("ttft_ms_per_ktok") or 0.0) / 1e3,
                       p.get("deadline_s"))
           for c, p in policy.to_dict()["slo_classes"].items()}
    reqs = []
    for r in result.records:
        finish = r.finish_s
        if r.status == "expired" and finish is None:
            deadline = slo[r.slo_class].deadline_s if r.slo_class in slo else None
            finish = r.arrival_s + deadline if deadline is not None else None
        elif r.status == "rejected":
            finish = r.arrival_s
        reqs.append(ReportRequest(
            r.tenant, r.slo_class, r.arrival_s, r.status or "cancelled", r.reason, r.engine, r.dispatch_s,
            r.first_token_s, finish, r.input_tokens, r.output_tokens, r.requested_output_tokens, r.slo_met))
    tenants = {r.tenant for r in result.records}
    weights = {t: policy.tenant(t).weight for t in sorted(tenants)}
    return ReportRun(name, reqs, weights, slo, duration_s=result.duration_s)


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


# -- fair share over time ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ShareWindow:
    """One time window: each tenant with demand in it -> (its share of the service delivered in the
    window, its weighted max-min fair share of that service given what each tenant asked for)."""

    start_s: float
    end_s: float
    delivered: float  # service delivered in the window, all tenants
    tenants: dict[str, tuple[float, float]]


def _asked(run: ReportRun) -> list[Asked]:
    """Every request as demand: completed ones delivered over [first token, finish]; the others
    owed until they stopped (refused at arrival: only then; unfinished: to the end)."""
    out = []
    for r in run.requests:
        if r.completed and r.first_token_s is not None and r.finish_s is not None:
            out.append(Asked(r.tenant, r.arrival_s, r.service, max(r.first_token_s, r.arrival_s),
                             max(r.finish_s, r.first_token_s, r.arrival_s), counted=True))
        elif r.status == "rejected":
            out.append(Asked(r.tenant, r.arrival_s, r.asked_service))
        else:
            until = math.inf if r.finish_s is None else max(r.finish_s, r.arrival_s)
            out.append(Asked(r.tenant, r.arrival_s, r.asked_service, until=until))
    return out


def share_over_time(run: ReportRun, window_s: float, end_s: float | None = None) -> list[ShareWindow]:
    """Per window of `window_s` from 0: every tenant's share of the service delivered in it against
    its weighted max-min fair share (`windowed_demand_fairness`: the demand a tenant had outstanding
    in the window, counted in service W_P * prompt + W_Q * output tokens; every completion counts
    as delivered). Windows in which nothing was delivered are left out."""
    asked = _asked(run)
    if not asked:
        return []
    wf = windowed_demand_fairness(asked, {t: run.weight(t) for t in {a.tenant for a in asked}}, window_s,
                                  start=0.0, end=end_s)
    out = []
    for w in wf.windows:
        c = w.fairness.capacity
        if c <= 0:
            continue
        out.append(ShareWindow(w.start, w.end, c, {t: (x.delivered / c, x.fair_share / c)
                                                   for t, x in w.fairness.tenants.items() if x.demand > 0}))
    return out
