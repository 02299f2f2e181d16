"""A virtual run as text: per-tenant outcomes, fairness and forecast error (seconds). The same run's
bench_serving table (ms) is replay/report.py's `format_table(result.summary())`."""
from __future__ import annotations

import math

from replay.outcomes import VirtualResult

__all__ = ["format_result"]


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

