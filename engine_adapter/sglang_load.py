"""SGLang's load and server-info shapes without a transport: `/v1/loads` (0.5.5+), the Prometheus
gauges of older versions, and the KV capacity in `/server_info` under its version renames
(``shared/reference/sglang-surface.md``). Both adapters read them through here."""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from engine_adapter.base import EngineError, EngineLoad

__all__ = ["max_total_tokens", "parse_prometheus_load", "parse_v1_loads"]


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _parse_ts(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def parse_v1_loads(data: Any) -> EngineLoad:
    """``/v1/loads``: current ``loads`` list of LoadSnapshot dicts (summed over DP ranks); v0.5.8's
    ``aggregate`` block is used only when ``loads`` is empty or absent."""
    if not isinstance(data, dict):
        raise EngineError("/v1/loads: not an object")
    loads = [x for x in data.get("loads") or [] if isinstance(x, dict)]
    ts = _parse_ts(data.get("timestamp"))
    if loads:
        running = waiting = used = total = uncached = 0
        thr = hit = 0.0
        for ld in loads:
            running += int(_num(ld.get("num_running_reqs")))
            waiting += int(_num(ld.get("num_waiting_reqs")))
            uncached += int(_num(ld.get("num_waiting_uncached_tokens")))
            cap = int(_num(ld.get("max_total_num_tokens")))
            u = ld.get("num_used_tokens")
            used += int(_num(u)) if u is not None else int(_num(ld.get("token_usage")) * cap)
            total += cap
            thr += _num(ld.get("gen_throughput"))
            hit += _num(ld.get("cache_hit_rate"))
        if isinstance(loads[0].get("timestamp"), (int, float)):
            ts = float(loads[0]["timestamp"])
        return EngineLoad(
            running, waiting, used, total,
            waiting_uncached_tokens=uncached,
            gen_throughput=thr,
            cache_hit_rate=hit / len(loads),
            timestamp=ts,
        )
    agg = data.get("aggregate")
    if isinstance(agg, dict):
        return EngineLoad(
            int(_num(agg.get("total_running_reqs"))),
            int(_num(agg.get("total_waiting_reqs"))),
            int(_num(agg.get("total_used_tokens"))),
            0,  # v0.5.8's total_tokens is not the KV capacity
            gen_throughput=_num(agg.get("avg_throughput")),
            timestamp=ts,
        )
    raise EngineError("/v1/loads: neither loads nor aggregate")


_GAUGES = (
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:num_used_tokens",
    "sglang:token_usage",
    "sglang:max_total_num_tokens",
    "sglang:gen_throughput",
    "sglang:cache_hit_rate",
)


def parse_prometheus_load(text: str) -> EngineLoad | None:
    """An `EngineLoad` from SGLang's ``/metrics`` text, or None if it has none of SGLang's gauges.

    Only attention-TP rank 0 / PP rank 0 samples are counted (``--enable-metrics-for-all-schedulers``
    repeats them on every rank), only the ``priority=""`` totals where per-priority breakdowns exist,
    and the remaining series (one per DP rank) are summed; ``token_usage`` and ``cache_hit_rate`` are
    averaged.
    """
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in _GAUGES:
            continue
        for s in fam.samples:
            if s.name != fam.name:
                continue
            lab = s.labels
            if lab.get("tp_rank", "0") != "0" or lab.get("pp_rank", "0") != "0":
                continue
            if lab.get("priority", "") != "":
                continue
            sums[fam.name] = sums.get(fam.name, 0.0) + s.value
            counts[fam.name] = counts.get(fam.name, 0) + 1
    if not sums:
        return None
    total = int(sums.get("sglang:max_total_num_tokens", 0))
    if "sglang:num_used_tokens" in sums:
        used = int(sums["sglang:num_used_tokens"])
    else:
        usage = sums.get("sglang:token_usage", 0.0) / max(counts.get("sglang:token_usage", 1), 1)
        used = int(round(usage * total))
    hit = sums.get("sglang:cache_hit_rate", 0.0) / max(counts.get("sglang:cache_hit_rate", 1), 1)
    return EngineLoad(
        running=int(sums.get("sglang:num_running_reqs", 0)),
        waiting=int(sums.get("sglang:num_queue_reqs", 0)),
        used_tokens=used,
        total_tokens=total,
        gen_throughput=sums.get("sglang:gen_throughput", 0.0),
        cache_hit_rate=hit,
        timestamp=time.time(),
    )


def max_total_tokens(si: dict[str, Any]) -> int:
    """KV capacity from server_info: ``scheduler_info`` (current), the flat field (older
    ``/get_server_info``), or ``internal_states`` (summed over DP ranks)."""
    sch = si.get("scheduler_info")
    if isinstance(sch, dict) and sch.get("max_total_num_tokens"):
        return int(sch["max_total_num_tokens"])
    if si.get("max_total_num_tokens"):
        return int(si["max_total_num_tokens"])
    total = 0
    for st in si.get("internal_states") or []:
        if not isinstance(st, dict):
            continue
        v = st.get("max_total_num_tokens")
        if not v and isinstance(st.get("memory_usage"), dict):
            v = st["memory_usage"].get("token_capacity")
        total += int(_num(v))
    return total
