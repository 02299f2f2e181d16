"""The summary tables of an HTML report (replay/html_report.py): per tenant and per SLO class, one
row per run (`summary_rows`: the figures; `summary_table`: the HTML table)."""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from fairness.metrics import demand_fairness
from replay.html_report_model import ReportRequest, ReportRun

__all__ = ["summary_rows", "summary_table"]


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summary_rows(run: ReportRun, key: str) -> list[dict[str, Any]]:
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


def summary_table(runs: Sequence[ReportRun], key: str, label: str) -> str:
    per_run = {run.name: summary_rows(run, key) for run in runs}
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

