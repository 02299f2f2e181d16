"""Rolling per-tenant and global statistics for the admin API and the console.

Fed with each finished request row; everything is windowed (last `window_s` seconds) and bounded
in memory, whatever the traffic. Time is passed in.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class _Tenant:
    admitted: int = 0
    rejected: int = 0
    finished: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # rejected, by reason code
    energy_j: float = 0.0  # GPU joules attributed to its requests (engines that report it), since start
    recent: deque[tuple[float, float | None, float | None, bool | None, float]] = field(
        default_factory=lambda: deque(maxlen=4096))  # (ts, ttft_ms, tpot_ms, slo_met, service)


class LiveStats:
    def __init__(self, window_s: float = 60.0, recent_requests: int = 10_000, w_p: float = 1.0,
                 w_q: float = 2.0) -> None:
        self.window_s = window_s
        self.w_p, self.w_q = w_p, w_q
        self.tenants: dict[str, _Tenant] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=recent_requests)
        self._events: deque[tuple[float, str, bool | None, int]] = deque(maxlen=200_000)  # (ts, status, slo_met, tokens)

    def record(self, row: dict[str, Any]) -> None:
        t = self.tenants.setdefault(row["tenant"] or "?", _Tenant())
        now = row["finish_ts"]
        if row["status"] == "rejected":
            t.rejected += 1
            code = row.get("error_code") or "unknown"
            t.refused[code] = t.refused.get(code, 0) + 1
        else:
            t.admitted += 1
        if row["status"] == "ok":
            t.finished += 1
            service = self.w_p * (row["prompt_tokens"] - (row["cached_tokens"] or 0)) + self.w_q * row["completion_tokens"]
            t.recent.append((now, row["ttft_ms"], row["tpot_ms"], row["slo_met"], service))
        t.energy_j += row.get("energy_j") or 0.0
        self.requests.append(row)
        self._events.append((now, row["status"], row["slo_met"], row["completion_tokens"] or 0))

    def totals(self, now: float, span_s: float = 10.0) -> dict[str, float]:
        since = now - span_s
        recent = list(itertools.takewhile(lambda e: e[0] >= since, reversed(self._events)))  # newest first
        ok = [e for e in recent if e[1] == "ok"]
        good = sum(1 for e in ok if e[2])
        return {"request_rate": len(recent) / span_s, "goodput": good / span_s,
                "attainment": good / len(ok) if ok else 1.0,
                "rejections_per_s": sum(1 for e in recent if e[1] == "rejected") / span_s,
                "output_tokens_per_s": sum(e[3] for e in ok) / span_s}

    def tenant(self, name: str, now: float) -> dict[str, Any]:
        t = self.tenants.get(name) or _Tenant()
        since = now - self.window_s
        while t.recent and t.recent[0][0] < since:
            t.recent.popleft()
        ttfts = [r[1] for r in t.recent if r[1] is not None]
        tpots = [r[2] for r in t.recent if r[2] is not None]
        met = [r[3] for r in t.recent if r[3] is not None]
        return {"ttft_p50_ms": _quantile(ttfts, 0.5), "ttft_p99_ms": _quantile(ttfts, 0.99),
                "tpot_p50_ms": _quantile(tpots, 0.5), "attainment": sum(met) / len(met) if met else None,
                "admitted": t.admitted, "rejected": t.rejected, "rejected_by_reason": dict(t.refused),
                "finished": t.finished, "energy_j": t.energy_j,
                "service": sum(r[4] for r in t.recent)}
