"""Runs as text. A virtual run: per-tenant outcomes, fairness and forecast error (seconds,
`format_result`). Any run's replay/report.py `Summary` (a live run's, or a virtual run's
`result.summary()`): bench_serving's table and result block (ms, `format_table`,
`format_benchmark_block`)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from replay.report import Row, Summary

if TYPE_CHECKING:  # the live runner uses this module too: it needs none of a virtual run's imports
    from replay.outcomes import VirtualResult

__all__ = ["format_benchmark_block", "format_result", "format_table"]


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pctf(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_result(result: VirtualResult, title: str | None = None) -> str:
    """Per-tenant outcomes (seconds), fairness and forecast error of one run."""
    heads = ["tenant", "weight", "req", "admit", "rej", "exp", "ok", "good/s", "SLO%adm", "TTFT p50",
             "TTFT p99", "TPOT p50", "share*", "share*/w"]
    rows = []
    for o in list(result.per_tenant.values()) + [result.overall]:
        rows.append([
            "all" if o.tenant == "__all__" else o.tenant, _f(o.weight, 1), str(o.requests), str(o.admitted),
            str(o.rejected), str(o.expired), str(o.completed), _f(o.goodput_rps, 2), _pctf(o.slo_attainment_admitted),
            _f(o.ttft_p50_s), _f(o.ttft_p99_s), _f(o.tpot_p50_s, 4),
            "-" if o.tenant == "__all__" else _f(o.share if o.share_backlogged is None else o.share_backlogged),
            "-" if o.tenant == "__all__" else _f(o.share_ratio if o.share_ratio_backlogged is None
                                                  else o.share_ratio_backlogged)])
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(heads)]

    def line(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(vals, widths)))

    out = []
    if title:
        out.append(title)
    out += [line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[:-1]]
    out += [line(["-" * w for w in widths]), line(rows[-1])]
    fz = result.fairness
    fc = result.forecast.get("ttft", {})
    out.append("share*: of the service delivered while every tenant was backlogged (else of all service)")
    out.append(f"Jain over fair shares of demand {_f(fz['jain_demand'])}   max service difference (backlogged) "
               f"{_f(fz['service_difference'], 0)}   TTFT forecast MdAPE {_pctf(fc.get('median_ape'))}%   "
               f"virtual {result.makespan_s:.0f} s in {result.wall_s:.1f} s wall "
               f"({result.virtual_per_wall:.0f}x)")
    return "\n".join(out)


# -- a Summary's rows (replay/report.py), bench_serving's layout, times in ms ----------------------------

def _fmt(x: float | int | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


_COLUMNS: list[tuple[str, str, int]] = [
    ("tenant / class", "name", 0),
    ("req", "requests", 0),
    ("ok", "completed", 0),
    ("rej", "rejected", 0),
    ("err", "failed", 0),
    ("cxl", "cancelled", 0),
    ("req/s", "request_throughput", 2),
    ("in tok/s", "input_throughput", 1),
    ("out tok/s", "output_throughput", 1),
    ("goodput", "request_goodput", 2),
    ("SLO %", "slo_attainment", 1),
    ("TTFT p50", "median_ttft_ms", 1),
    ("TTFT p99", "p99_ttft_ms", 1),
    ("TPOT p50", "median_tpot_ms", 1),
    ("TPOT p99", "p99_tpot_ms", 1),
    ("ITL p50", "median_itl_ms", 1),
    ("ITL p99", "p99_itl_ms", 1),
    ("E2E p50", "median_e2e_latency_ms", 1),
    ("E2E p99", "p99_e2e_latency_ms", 1),
]


def format_table(summary: Summary) -> str:
    """A fixed-width text table, times in ms: one line per tenant, then one per SLO class
    (``[name]``), then the overall line."""
    groups = [list(summary.per_tenant.values()), list(summary.per_class.values()), [summary.overall]]
    cells: list[list[list[str]]] = []
    for group in groups:
        lines = []
        for row in group:
            line = []
            for _, attr, digits in _COLUMNS:
                v = getattr(row, attr)
                if attr == "name":
                    line.append("all" if row is summary.overall else (f"[{v}]" if group is groups[1] else str(v)))
                elif attr == "slo_attainment":
                    line.append(_fmt(v * 100 if v is not None else None, digits))
                else:
                    line.append(_fmt(v, digits))
            lines.append(line)
        cells.append(lines)
    heads = [c[0] for c in _COLUMNS]
    every = [c for g in cells for c in g]
    widths = [max(len(h), *(len(c[i]) for c in every)) for i, h in enumerate(heads)]

    def render(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    rule = render(["-" * w for w in widths])
    out = [render(heads)]
    for g in cells:
        if g:
            out += [rule] + [render(c) for c in g]
    return "\n".join(out)


def format_benchmark_block(row: Row, title: str = "Serving Benchmark Result") -> str:
    """SGLang's ``bench_serving`` result block layout for one row (rejected and cancelled added)."""
    lines = [f"{' ' + title + ' ':=^50}"]

    def kv(k: str, v: float | int | None, digits: int = 2) -> None:
        lines.append(f"{k:<40}{_fmt(v, digits):>10}")

    def sec(name: str) -> None:
        lines.append(f"{name:-^50}")

    kv("Successful requests:", row.completed, 0)
    kv("Rejected requests (429):", row.rejected, 0)
    kv("Failed requests:", row.failed, 0)
    if row.cancelled:
        kv("Cancelled requests (stopped):", row.cancelled, 0)
    kv("Benchmark duration (s):", row.duration)
    kv("Total input tokens:", row.total_input_tokens, 0)
    kv("Total generated tokens:", row.total_output_tokens, 0)
    kv("Request throughput (req/s):", row.request_throughput)
    if row.request_goodput is not None:
        kv("Request goodput (req/s):", row.request_goodput)
        kv("SLO attainment (%):", row.slo_attainment * 100 if row.slo_attainment is not None else None)
    kv("Input token throughput (tok/s):", row.input_throughput)
    kv("Output token throughput (tok/s):", row.output_throughput)
    kv("Total token throughput (tok/s):", row.total_throughput)
    kv("Concurrency:", row.concurrency)
    for label, key, short in (("End-to-End Latency", "e2e_latency", "E2E Latency"),
                              ("Time to First Token", "ttft", "TTFT"),
                              ("Time per Output Token (excl. 1st token)", "tpot", "TPOT"),
                              ("Inter-Token Latency", "itl", "ITL")):
        sec(label)
        kv(f"Mean {short} (ms):", getattr(row, f"mean_{key}_ms"))
        kv(f"Median {short} (ms):", getattr(row, f"median_{key}_ms"))
        kv(f"P99 {short} (ms):", getattr(row, f"p99_{key}_ms"))
    lines.append("=" * 50)
    return "\n".join(lines)
