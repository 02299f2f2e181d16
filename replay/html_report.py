"""HTML reports: one self-contained page per `simulate` / `replay` / `audit` call (`--report DIR`).

The page (DIR/index.html) has plotly.js inlined once, so it opens offline, and one figure per
question a reader asks of a run, every run of the call in the same figure:

- each tenant's share of the service delivered against its weighted max-min fair share, per time
  window (fairness/metrics.py `windowed_demand_fairness`: demand outstanding in the window, refusals
  included; one panel per run);
- TTFT and TPOT CDFs per SLO class, runs overlaid, with the class's bound drawn;
- admitted and refused requests per second by arrival time, refusals by reason (one panel per run);
- engine load: requests at each engine (before the first token / decoding) and the gateway's queue,
  derived from the requests' timestamps (one panel per run);
- per-tenant and per-class summary tables.

The data model is independent of the producer: virtual-time replay (`run_from_virtual`), the
telemetry store's `requests` rows and live replay each build `ReportRun`s of `ReportRequest`s, times
in seconds from the run's start.
"""
from __future__ import annotations

import html
import math
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fairness.metrics import Asked, demand_fairness, request_service, windowed_demand_fairness

if TYPE_CHECKING:
    from replay.outcomes import VirtualResult

__all__ = [
    "FIGURES",
    "ReportRequest",
    "ReportRun",
    "SLOBound",
    "ShareWindow",
    "run_from_virtual",
    "share_over_time",
    "write_report",
]

# Service of a request, as the runner's fairness metrics count it (VTC): W_P * prompt + W_Q * output.
W_P, W_Q = 1.0, 2.0
REFUSED = ("rejected", "expired")  # refused at arrival, or deferred and then past its deadline in the queue
# the figures of a page, by the id of their <div> (tests and readers can find them)
FIGURES = ("share", "ttft-cdf", "tpot-cdf", "admission", "engine-load")


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


# -- summaries -----------------------------------------------------------------------------------

def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def _summary_rows(run: ReportRun, key: str) -> list[dict[str, Any]]:
    """Per tenant (key="tenant") or per SLO class (key="slo_class"), then all requests."""
    groups: dict[str, list[ReportRequest]] = {}
    for r in run.requests:
        groups.setdefault(getattr(r, key) or "-", []).append(r)
    fair: dict[str, float | None] = {}
    if key == "tenant":  # SLO-met service over the max-min fair share of what was asked (as runner.fair_ratio)
        demand: dict[str, float] = {}
        good_service: dict[str, float] = {}
        for r in run.requests:
            demand[r.tenant] = demand.get(r.tenant, 0.0) + r.asked_service
            good_service[r.tenant] = good_service.get(r.tenant, 0.0) + (r.asked_service if r.slo_met else 0.0)
        df = demand_fairness(demand, good_service, {t: run.weight(t) for t in demand})
        fair = {t: x.ratio for t, x in df.tenants.items()}
    total_service = sum(r.service for r in run.requests if r.completed)
    span = run.span_s
    rows = []
    for name, rs in sorted(groups.items()) + [("all", list(run.requests))]:
        ok = [r for r in rs if r.completed]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
        service = sum(r.service for r in ok)
        good = sum(1 for r in ok if r.slo_met)
        rows.append({
            "name": name, "weight": run.weight(name) if key == "tenant" and name != "all" else None,
            "requests": len(rs), "admitted": sum(r.status != "rejected" for r in rs),
            "rejected": sum(r.status == "rejected" for r in rs), "expired": sum(r.status == "expired" for r in rs),
            "completed": len(ok), "good": good,
            "slo_attainment": good / len(rs) if rs else None,
            "goodput_rps": good / span if span > 0 else None,
            "ttft_p50_ms": _ms(_pct(ttft, 50)), "ttft_p99_ms": _ms(_pct(ttft, 99)),
            "tpot_p50_ms": _ms(_pct(tpot, 50)), "tpot_p99_ms": _ms(_pct(tpot, 99)),
            "share": service / total_service if total_service > 0 and name != "all" else None,
            "fair_ratio": fair.get(name) if name != "all" else None,
        })
    return rows


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


_COLUMNS = [  # (key, header, tooltip, format)
    ("weight", "weight", "the tenant's weight in the policy", "{:g}"),
    ("requests", "requests", "requests offered", "{:d}"),
    ("admitted", "admitted", "admitted or deferred by the policy (not refused at arrival)", "{:d}"),
    ("rejected", "refused", "refused at arrival (429/503)", "{:d}"),
    ("expired", "expired", "deferred, then past its deadline in the queue", "{:d}"),
    ("completed", "completed", "finished with every token", "{:d}"),
    ("slo_attainment", "SLO met %", "requests that completed within every bound of their class / requests offered",
     "pct"),
    ("goodput_rps", "goodput req/s", "requests that met their SLO per second of the run", "{:.2f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "time to first token, completed requests", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "", "{:.0f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "time per output token after the first, completed requests", "{:.1f}"),
    ("tpot_p99_ms", "TPOT p99 ms", "", "{:.1f}"),
    ("share", "share of service %", "of all service delivered (prompt + 2 x output tokens)", "pct"),
    ("fair_ratio", "SLO-met service / fair share",
     "service that met its SLO over the tenant's weighted max-min fair share of what it asked for "
     "(refusals included); 1 = exactly fair", "{:.2f}"),
]


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "pct":
        return f"{100 * value:.1f}"
    return fmt.format(value)


def _table(runs: Sequence[ReportRun], key: str, label: str) -> str:
    per_run = {run.name: _summary_rows(run, key) for run in runs}
    names: list[str] = []
    for rows in per_run.values():
        names += [r["name"] for r in rows if r["name"] not in names and r["name"] != "all"]
    names.append("all")
    cols = [c for c in _COLUMNS if key == "tenant" or c[0] not in ("weight", "share", "fair_ratio")]
    head = "".join(f'<th title="{html.escape(tip)}">{html.escape(h)}</th>' for _, h, tip, _ in cols)
    body = []
    for name in names:
        rows = [(run, next((r for r in per_run[run] if r["name"] == name), None)) for run in per_run]
        rows = [(run, r) for run, r in rows if r is not None]
        for k, (run, r) in enumerate(rows):
            first = f'<th rowspan="{len(rows)}">{html.escape(name)}</th>' if k == 0 else ""
            cells = "".join(f"<td>{_cell(r[c[0]], c[3])}</td>" for c in cols)
            cls = ' class="group"' if k == 0 else ""
            body.append(f"<tr{cls}>{first}<td>{html.escape(run)}</td>{cells}</tr>")
    return (f'<table class="summary" id="table-{key}"><thead><tr><th>{label}</th><th>run</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


# -- figures -------------------------------------------------------------------------------------

def _window(span: float) -> float:
    """A round window giving 20-50 windows over the span (fewer are too coarse to see a burst; more
    are mostly the noise of a few long requests per window)."""
    target = max(span, 1e-3) / 25
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200):
        if step >= target:
            return float(step)
    return 3600.0 * math.ceil(target / 3600)


def _palette() -> list[str]:
    import plotly.colors

    return list(plotly.colors.qualitative.Plotly) + list(plotly.colors.qualitative.Dark24)


def _panels(n: int, titles: Sequence[str], y_title: str, height: int = 260) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=min(0.08, 0.3 / max(n, 1)),
                        subplot_titles=[html.escape(t) for t in titles])
    fig.update_layout(height=height * n + 160)
    for k in range(1, n + 1):
        fig.update_yaxes(title_text=y_title, row=k, col=1)
    fig.update_xaxes(title_text="time since the start of the run (s)", row=n, col=1)
    return fig


def _share_figure(runs: Sequence[ReportRun], window_s: float, end_s: float) -> Any:
    import plotly.graph_objects as go

    colors = _palette()
    tenants = sorted({r.tenant for run in runs for r in run.requests})
    color = {t: colors[k % len(colors)] for k, t in enumerate(tenants)}
    fig = _panels(len(runs), [f"run: {run.name}" for run in runs], "share of service")
    for k, run in enumerate(runs, start=1):
        windows = share_over_time(run, window_s, end_s)
        mids = [(w.start_s + w.end_s) / 2 for w in windows]
        for t in tenants:
            got = [w.tenants[t][0] if t in w.tenants else None for w in windows]
            fair = [w.tenants[t][1] if t in w.tenants else None for w in windows]
            if all(x is None for x in got):
                continue
            fig.add_trace(go.Scatter(x=mids, y=got, mode="lines+markers", name=f"{t} (weight {run.weight(t):g})",
                                     line={"color": color[t], "width": 2}, marker={"size": 4},
                                     legendgroup=t, showlegend=k == 1, connectgaps=False,
                                     hovertemplate=f"{html.escape(t)} received %{{y:.1%}} at %{{x:.0f}} s"
                                     "<extra></extra>"), row=k, col=1)
            fig.add_trace(go.Scatter(x=mids, y=fair, mode="lines", name=f"{t}: fair share",
                                     line={"color": color[t], "width": 1.5, "dash": "dash"},
                                     legendgroup=t, showlegend=False, connectgaps=False,
                                     hovertemplate=f"{html.escape(t)} fair share %{{y:.1%}} at %{{x:.0f}} s"
                                     "<extra></extra>"), row=k, col=1)
        fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=k, col=1)
    for what, dash in (("solid: share received", "solid"), ("dashed: fair share", "dash")):  # a key to the styles
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=what, legendrank=2000,
                                 line={"color": "#777", "dash": dash}), row=1, col=1)
    fig.update_layout(title={"text": "Each tenant's share of the service delivered (solid) against its weighted "
                             f"max-min fair share (dashed), per {window_s:g} s window<br><sup>service = prompt "
                             "tokens + 2 × output tokens of completed requests; fair share: water-filling over the "
                             "work each tenant had outstanding in the window, refused requests included; "
                             "windows with nothing delivered are gaps</sup>"})
    return fig


def _cdf_figure(runs: Sequence[ReportRun], metric: str) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = sorted({r.slo_class or "-" for run in runs for r in run.requests})
    slo = {}
    for run in runs:
        for c, b in run.slo.items():
            slo.setdefault(c, b)
    titles = []
    for c in classes:
        b = slo.get(c)
        bound = None if b is None else (b.ttft_s if metric == "ttft" else b.tpot_s)
        if bound is None:
            extra = f", deadline {b.deadline_s:g} s" if b is not None and b.deadline_s is not None else ""
            titles.append(f"class {c}: no {metric.upper()} bound{extra}")
        else:
            per_k = (f" + {b.ttft_s_per_ktok * 1e3:g} ms per 1k prompt tokens"
                     if metric == "ttft" and b is not None and b.ttft_s_per_ktok else "")
            titles.append(f"class {c}: {metric.upper()} bound {bound * 1e3:g} ms{per_k}")
    fig = make_subplots(rows=1, cols=len(classes), subplot_titles=[html.escape(t) for t in titles],
                        horizontal_spacing=0.08)
    colors = _palette()
    for j, c in enumerate(classes, start=1):
        for k, run in enumerate(runs):
            rs = [r for r in run.requests if (r.slo_class or "-") == c]
            vals = np.sort([v * 1e3 for v in (r.ttft_s if metric == "ttft" else r.tpot_s for r in rs
                                              if r.completed) if v is not None])
            if not len(vals):
                continue
            # y: fraction of the class's requests, so that refused or unfinished ones keep the curve below 1
            denom = len(rs) if metric == "ttft" else sum(1 for r in rs if r.completed and r.output_tokens >= 2
                                                         or not r.completed)
            idx = np.unique(np.linspace(0, len(vals) - 1, min(len(vals), 400)).astype(int))
            fig.add_trace(go.Scatter(
                x=vals[idx], y=(idx + 1) / max(denom, 1), mode="lines", line={"color": colors[k % len(colors)],
                                                                           "shape": "hv", "width": 2},
                name=run.name, legendgroup=run.name, showlegend=j == 1,
                hovertemplate=f"{html.escape(run.name)}: %{{y:.1%}} within %{{x:.1f}} ms<extra></extra>"),
                row=1, col=j)
        b = slo.get(c)
        bound = None if b is None else (b.ttft_s if metric == "ttft" else b.tpot_s)
        if bound is not None:  # a trace, not a shape: shapes on a log axis take log10 coordinates
            # labelled at the foot, right of the line: by then a CDF has usually risen out of the way
            fig.add_trace(go.Scatter(x=[bound * 1e3] * 2, y=[0, 1], mode="lines+text", text=[f" SLO {bound * 1e3:g} ms", ""],
                                     textposition="top right", cliponaxis=False,
                                     line={"color": "black", "dash": "dot", "width": 1.5},
                                     name="the class's bound", legendgroup="bound", hoverinfo="skip",
                                     showlegend=not any(t.legendgroup == "bound" for t in fig.data)),
                          row=1, col=j)
        ticks = _log_ticks([float(x) for t in fig.data if t.xaxis == ("x" if j == 1 else f"x{j}") for x in t.x
                            if x is not None])
        fig.update_xaxes(type="log", title_text=f"{metric.upper()} (log scale)", tickvals=ticks,
                         ticktext=[_duration_label(v) for v in ticks], row=1, col=j)
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1 if j == 1 else j,
                         title_text="requests of the class within x" if j == 1 else None)
    what = ("time to first token, from arrival at the gateway" if metric == "ttft" else
            "time per output token after the first, requests with 2 or more output tokens")
    fig.update_layout(height=430, title={"text": f"{metric.upper()} CDF per SLO class ({what})<br><sup>a curve "
                                         "ending below 100% = requests refused, expired or unfinished; the dotted "
                                         "line is the class's bound</sup>"})
    return fig


def _log_ticks(values: Sequence[float]) -> list[float]:
    """1-2-5 ticks (ms) covering the values, for a log axis readable without knowing plotly's minor ticks."""
    pos = [v for v in values if v > 0]
    if not pos:
        return []
    lo, hi = math.floor(math.log10(min(pos))), math.ceil(math.log10(max(pos)))
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
    return [t for t in ticks if min(pos) / 2 <= t <= max(pos) * 2]


def _duration_label(ms: float) -> str:
    if ms < 1000:
        return f"{ms:g} ms"
    if ms < 120_000:
        return f"{ms / 1e3:g} s"
    return f"{ms / 6e4:g} min"


def _admission_figure(runs: Sequence[ReportRun], window_s: float, end_s: float) -> Any:
    import plotly.graph_objects as go

    refusal_colors = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f", "#17becf"]
    cats = ["admitted"] + sorted({f"{r.status}: {r.reason or 'no reason recorded'}" for run in runs
                                  for r in run.requests if r.refused})
    color = {c: ("#4c9a2a" if c == "admitted" else refusal_colors[(k - 1) % len(refusal_colors)]) for k, c in enumerate(cats)}
    n = max(1, math.ceil(end_s / window_s))
    edges = np.arange(n + 1) * window_s
    fig = _panels(len(runs), [f"run: {run.name}" for run in runs], "requests/s")
    for k, run in enumerate(runs, start=1):
        by: dict[str, list[float]] = {}
        for r in run.requests:
            by.setdefault(f"{r.status}: {r.reason or 'no reason recorded'}" if r.refused else "admitted",
                          []).append(r.arrival_s)
        for c in cats:
            if c not in by:
                continue
            counts, _ = np.histogram(by[c], bins=edges)
            label = c.replace("rejected:", "refused at arrival:").replace("expired:", "expired in queue:")
            fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts / window_s, width=window_s * 0.95,
                                 name=label, legendgroup=c, showlegend=c not in {t.legendgroup for t in fig.data},
                                 marker={"color": color[c]},
                                 hovertemplate=f"{html.escape(label)}: %{{y:.2f}} req/s<extra></extra>"),
                          row=k, col=1)
    fig.update_layout(barmode="stack", title={"text": f"Admitted and refused requests per second, by arrival "
                                              f"time ({window_s:g} s bins), refusals by reason<br><sup>expired = "
                                              "deferred by the policy, then past its deadline while queued</sup>"})
    return fig


def _counts_at(starts: list[float], ends: list[float], grid: np.ndarray) -> np.ndarray:
    """Number of intervals [start, end) containing each grid time."""
    s = np.sort(np.asarray(starts, dtype=float))
    e = np.sort(np.asarray(ends, dtype=float))
    return np.searchsorted(s, grid, "right") - np.searchsorted(e, grid, "right")


def _load_figure(runs: Sequence[ReportRun], end_s: float) -> Any:
    import plotly.graph_objects as go

    colors = _palette()
    engines = sorted({r.engine for run in runs for r in run.requests if r.engine})
    color = {e: colors[k % len(colors)] for k, e in enumerate(engines)}
    grid = np.linspace(0.0, end_s, 600)
    fig = _panels(len(runs), [f"run: {run.name}" for run in runs], "requests")
    for k, run in enumerate(runs, start=1):
        for e in engines:
            rs = [r for r in run.requests if r.engine == e and r.dispatch_s is not None]
            if not rs:
                continue
            inf = math.inf
            waiting = _counts_at([r.dispatch_s for r in rs],  # type: ignore[misc]
                                 [r.first_token_s if r.first_token_s is not None else
                                  (r.finish_s if r.finish_s is not None else inf) for r in rs], grid)
            decoding = _counts_at([r.first_token_s for r in rs if r.first_token_s is not None],
                                  [r.finish_s if r.finish_s is not None else inf for r in rs
                                   if r.first_token_s is not None], grid)
            for series, what, dash in ((decoding, "decoding", "solid"), (waiting, "waiting or in prefill", "dot")):
                name = f"{e}: {what}"
                fig.add_trace(go.Scatter(x=grid, y=series, mode="lines", name=name, legendgroup=name,
                                         showlegend=k == 1, line={"color": color[e], "dash": dash, "shape": "hv"},
                                         hovertemplate=f"{html.escape(name)}: %{{y}} at %{{x:.0f}} s<extra></extra>"),
                              row=k, col=1)
        queued = [r for r in run.requests if r.status != "rejected"]
        gw = _counts_at([r.arrival_s for r in queued],
                        [r.dispatch_s if r.dispatch_s is not None else (r.finish_s if r.finish_s is not None
                                                                       else math.inf) for r in queued], grid)
        fig.add_trace(go.Scatter(x=grid, y=gw, mode="lines", name="queued at the gateway (all engines)",
                                 legendgroup="gateway", showlegend=k == 1,
                                 line={"color": "#555", "dash": "dash", "shape": "hv"},
                                 hovertemplate="queued at the gateway: %{y} at %{x:.0f} s<extra></extra>"),
                      row=k, col=1)
        fig.update_yaxes(rangemode="tozero", row=k, col=1)
    fig.update_layout(title={"text": "Engine load: requests at each engine and queued at the gateway<br><sup>from "
                             "the requests' timestamps: waiting or in prefill = dispatched, no token yet; decoding "
                             "= first token out, not finished</sup>"})
    return fig


# -- the page ------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1400px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
p.how { color: #444; max-width: 1100px; }
ul.notes { color: #444; }
table.summary { border-collapse: collapse; font-size: 0.88em; margin: 8px 0 24px; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.summary thead th { background: #f0f0f0; position: sticky; top: 0; }
table.summary tbody th, table.summary td:first-of-type, table.summary thead th:nth-child(-n+2) { text-align: left; }
table.summary tr.group td, table.summary tr.group th { border-top: 2px solid #888; }
.figure { margin: 8px 0 24px; }
"""

_HOW = {
    "share": "Per time window, the solid line is the fraction of the service delivered in that window that "
             "went to the tenant; the dashed line of the same colour is the fraction it should have had: its "
             "weighted max-min fair share of that service, given what every tenant had outstanding. Solid "
             "below dashed = the tenant was under-served in that window.",
    "ttft-cdf": "For each SLO class, the fraction of its requests that saw their first token within x ms; a curve "
                "further left is faster, and where a curve crosses the dotted bound is the class's TTFT "
                "attainment among completed requests.",
    "tpot-cdf": "The same for the time per output token (decode speed) of completed requests.",
    "admission": "Requests per second by arrival time: admitted, and each reason for refusing (at arrival or by "
                 "expiring in the queue).",
    "engine-load": "How many requests each engine held over time (waiting or in prefill, decoding) and how many "
                   "admitted requests waited in the gateway's queue for an engine.",
}

_FIG_TITLES = {
    "share": "Share of service against fair share, over time",
    "ttft-cdf": "Time to first token (TTFT) per SLO class",
    "tpot-cdf": "Time per output token (TPOT) per SLO class",
    "admission": "Admitted and refused over time",
    "engine-load": "Engine load over time",
}


def _figures(runs: Sequence[ReportRun]) -> dict[str, Any]:
    end = max([run.span_s for run in runs] + [r.finish_s or r.arrival_s for run in runs for r in run.requests]
              + [1e-3])
    window = _window(end)
    return {
        "share": _share_figure(runs, window, end),
        "ttft-cdf": _cdf_figure(runs, "ttft"),
        "tpot-cdf": _cdf_figure(runs, "tpot"),
        "admission": _admission_figure(runs, window, end),
        "engine-load": _load_figure(runs, end),
    }


def write_report(out_dir: str | pathlib.Path, title: str, runs: Sequence[ReportRun], *,
                 notes: Sequence[str] = ()) -> pathlib.Path:
    """Write out_dir/index.html (creating out_dir): the figures and tables of `runs`, one page,
    plotly.js inlined (no network needed to open it). Returns the page's path."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    if not runs:
        raise ValueError("a report needs at least one run")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be distinct, got {names}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for key, fig in _figures(runs).items():
        fig.update_layout(template="plotly_white", font={"size": 13}, margin={"t": 110},
                          legend={"orientation": "v", "groupclick": "toggleitem"})
        div = pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{key}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f'<section id="{key}"><h2>{html.escape(_FIG_TITLES[key])}</h2>'
                     f'<p class="how">{html.escape(_HOW[key])}</p><div class="figure">{div}</div></section>')
    run_notes = "".join(f"<li><b>{html.escape(run.name)}</b>: {html.escape(n)}</li>" for run in runs for n in run.notes)
    page_notes = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    runs_line = ", ".join(f"<b>{html.escape(run.name)}</b> ({len(run.requests)} requests)" for run in runs)
    tables = (
        '<section id="tables"><h2>Summary per tenant and per SLO class</h2><p class="how">Times in ms; '
        "rates per second of the run; hover a column header for its definition.</p>"
        f"<h3>Per tenant</h3>{_table(runs, 'tenant', 'tenant')}"
        f"<h3>Per SLO class</h3>{_table(runs, 'slo_class', 'SLO class')}</section>")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Runs: {runs_line}.</p>"
        f'<ul class="notes">{page_notes}{run_notes}</ul>'
        f"{tables}{''.join(parts)}</body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path

