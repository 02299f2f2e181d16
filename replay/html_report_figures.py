"""The figures of an HTML report (replay/html_report.py), plotly, every run of the call in the same
figure: the share of service against the fair share over time, TTFT and TPOT CDFs per SLO class,
admitted and refused requests over time, and the engines' load over time (`figures`: all of them, by
the id of their <div>)."""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from replay.html_report_model import ReportRun, SLOBound, share_over_time

__all__ = ["figures"]


def figures(runs: Sequence[ReportRun]) -> dict[str, Any]:
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
    from plotly.subplots import make_subplots

    classes = sorted({r.slo_class or "-" for run in runs for r in run.requests})
    slo: dict[str, SLOBound] = {}
    for run in runs:
        for c, b in run.slo.items():
            slo.setdefault(c, b)
    titles = [_cdf_title(c, slo.get(c), metric) for c in classes]
    fig = make_subplots(rows=1, cols=len(classes), subplot_titles=[html.escape(t) for t in titles],
                        horizontal_spacing=0.08)
    colors = _palette()
    for j, c in enumerate(classes, start=1):
        for k, run in enumerate(runs):
            _add_cdf_trace(fig, run, c, j, metric, colors[k % len(colors)])
        bound = _bound(slo.get(c), metric)
        if bound is not None:
            _add_bound_trace(fig, bound, j)
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


def _bound(b: SLOBound | None, metric: str) -> float | None:
    """The class's TTFT or TPOT bound, seconds (None: not bounded)."""
    return None if b is None else (b.ttft_s if metric == "ttft" else b.tpot_s)


def _cdf_title(c: str, b: SLOBound | None, metric: str) -> str:
    """A CDF panel's title: the class and its bound (or that it has none, and its deadline if any)."""
    bound = _bound(b, metric)
    if bound is None:
        extra = f", deadline {b.deadline_s:g} s" if b is not None and b.deadline_s is not None else ""
        return f"class {c}: no {metric.upper()} bound{extra}"
    per_k = (f" + {b.ttft_s_per_ktok * 1e3:g} ms per 1k prompt tokens"
             if metric == "ttft" and b is not None and b.ttft_s_per_ktok else "")
    return f"class {c}: {metric.upper()} bound {bound * 1e3:g} ms{per_k}"


def _add_cdf_trace(fig: Any, run: ReportRun, c: str, j: int, metric: str, color: str) -> None:
    """One run's CDF of the metric (ms) over class c's requests, in panel j; none if nothing completed."""
    import plotly.graph_objects as go

    rs = [r for r in run.requests if (r.slo_class or "-") == c]
    vals = np.sort([v * 1e3 for v in (r.ttft_s if metric == "ttft" else r.tpot_s for r in rs
                                      if r.completed) if v is not None])
    if not len(vals):
        return
    # y: fraction of the class's requests, so that refused or unfinished ones keep the curve below 1
    denom = len(rs) if metric == "ttft" else sum(1 for r in rs if r.completed and r.output_tokens >= 2
                                                 or not r.completed)
    idx = np.unique(np.linspace(0, len(vals) - 1, min(len(vals), 400)).astype(int))
    fig.add_trace(go.Scatter(
        x=vals[idx], y=(idx + 1) / max(denom, 1), mode="lines", line={"color": color, "shape": "hv", "width": 2},
        name=run.name, legendgroup=run.name, showlegend=j == 1,
        hovertemplate=f"{html.escape(run.name)}: %{{y:.1%}} within %{{x:.1f}} ms<extra></extra>"),
        row=1, col=j)


def _add_bound_trace(fig: Any, bound: float, j: int) -> None:
    """The class's bound (s) as a dotted vertical line in panel j, one legend entry for every panel.
    A trace, not a shape: shapes on a log axis take log10 coordinates."""
    import plotly.graph_objects as go

    # labelled at the foot, right of the line: by then a CDF has usually risen out of the way
    fig.add_trace(go.Scatter(x=[bound * 1e3] * 2, y=[0, 1], mode="lines+text", text=[f" SLO {bound * 1e3:g} ms", ""],
                             textposition="top right", cliponaxis=False,
                             line={"color": "black", "dash": "dot", "width": 1.5},
                             name="the class's bound", legendgroup="bound", hoverinfo="skip",
                             showlegend=not any(t.legendgroup == "bound" for t in fig.data)),
                  row=1, col=j)


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

