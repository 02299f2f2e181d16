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
import pathlib
from collections.abc import Sequence

from replay.html_report_figures import figures
from replay.html_report_model import ReportRequest, ReportRun, SLOBound, ShareWindow, run_from_virtual, share_over_time
from replay.html_report_tables import summary_table

# the public entry point of the report: the data model is imported from here (docs/replay.md)
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

# the figures of a page, by the id of their <div> (tests and readers can find them)
FIGURES = ("share", "ttft-cdf", "tpot-cdf", "admission", "engine-load")

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
    for key, fig in figures(runs).items():
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
        f"<h3>Per tenant</h3>{summary_table(runs, 'tenant', 'tenant')}"
        f"<h3>Per SLO class</h3>{summary_table(runs, 'slo_class', 'SLO class')}</section>")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Runs: {runs_line}.</p>"
        f'<ul class="notes">{page_notes}{run_notes}</ul>'
        f"{tables}{''.join(parts)}</body></html>")
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path

