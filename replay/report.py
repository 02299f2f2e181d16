"""Per-tenant outcome tables shared by the live runner and virtual-time replay.

Input: one :class:`RequestResult` per request (tenant, status, TTFT, TPOT, ITLs, e2e, tokens, SLO met).
Output: :class:`Summary` with one :class:`Row` per tenant plus an overall row, in the vocabulary of
vLLM's ``bench serve`` and SGLang's ``bench_serving``:

- ``ttft_ms``: time from sending the request to the first streamed output token;
- ``tpot_ms``: per request, ``(e2e - ttft) / (output_tokens - 1)`` (requests with > 1 token);
- ``itl_ms``: every gap between consecutive streamed chunks, pooled over requests;
- ``e2e_latency_ms``: send to last byte;
- ``request_throughput`` = completed / duration, ``output_throughput`` = output tokens / duration,
  ``total_token_throughput`` = (input + output tokens of completed requests) / duration;
- ``goodput`` = completed requests meeting every given SLO / duration (vLLM's ``request_goodput``;
  a request is good iff ``ttft <= ttft_ms``, ``tpot <= tpot_ms`` and ``e2e <= e2e_ms`` for each SLO
  bound given); ``slo_attainment`` = good / requests offered (rejected and failed count as missed).

Percentiles use ``numpy.percentile`` (linear interpolation), as vLLM does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "OVERALL",
    "SLO",
    "RequestResult",
    "Row",
    "Summary",
    "format_benchmark_block",
    "format_table",
    "resolve_slo",
    "summarize",
]

OVERALL = "__all__"

# Status values of a RequestResult.
OK = "ok"
REJECTED = "rejected"  # admission refused (HTTP 429 / 503 with Retry-After, or the core's reject)
ERROR = "error"  # HTTP error, connection error, broken stream
CANCELLED = "cancelled"  # the run was stopped before the request finished


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency objectives in ms; ``None`` means not constrained (vLLM ``--goodput`` keys)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, spec: str | Mapping[str, float] | SLO) -> SLO:
        """From ``"ttft:500 tpot:50 e2el:10000"`` (vLLM syntax) or a mapping with those keys."""
        if isinstance(spec, SLO):
            return spec
        items: Iterable[tuple[str, Any]]
        if isinstance(spec, str):
            items = (part.split(":", 1) for part in spec.split())
        else:
            items = spec.items()
        kw: dict[str, float] = {}
        for key, value in items:
            k = key.strip().lower().removesuffix("_ms")
            name = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2e_ms", "e2e": "e2e_ms"}.get(k)
            if name is None:
                raise ValueError(f"unknown SLO key {key!r} (use ttft, tpot, e2el)")
            kw[name] = float(value)
        return cls(**kw)

    def met(self, ttft_ms: float | None, tpot_ms: float | None, e2e_ms: float | None) -> bool:
        if self.ttft_ms is not None and (ttft_ms is None or ttft_ms > self.ttft_ms):
            return False
        # TPOT is undefined for a one-token answer: nothing to miss.
        if self.tpot_ms is not None and tpot_ms is not None and tpot_ms > self.tpot_ms:
            return False
        if self.e2e_ms is not None and (e2e_ms is None or e2e_ms > self.e2e_ms):
            return False
        return True


SLOSpec = SLO | Mapping[str, SLO] | None


def resolve_slo(slo: SLOSpec, tenant: str, slo_class: str | None) -> SLO | None:
    """The SLO of a request: ``slo`` itself, or ``slo[slo_class]``, else ``slo[tenant]``, else ``slo["*"]``."""
    if slo is None or isinstance(slo, SLO):
        return slo
    for key in (slo_class, tenant, "*"):
        if key is not None and key in slo:
            return slo[key]
    return None


@dataclass(slots=True)
class RequestResult:
    """What a client saw for one request. Times in ms; ``sent_ms`` from the start of the run."""

    tenant: str
    status: str  # ok | rejected | error | cancelled
    index: int = -1  # position in the workload
    slo_class: str | None = None
    http_status: int | None = None
    scheduled_ms: float | None = None  # workload timestamp / speedup
    sent_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    requested_output_tokens: int = 0
    slo_met: bool | None = None
    error: str | None = None
    retry_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Row:
    """Aggregated outcome of one tenant (or of all: tenant ``__all__``)."""

    tenant: str
    requests: int = 0
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    cancelled: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    duration_s: float = 0.0
    request_throughput: float = 0.0
    output_throughput: float = 0.0
    total_token_throughput: float = 0.0
    goodput: float | None = None
    good: int | None = None
    slo_attainment: float | None = None
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    p90_ttft_ms: float | None = None
    p99_ttft_ms: float | None = None
    mean_tpot_ms: float | None = None
    median_tpot_ms: float | None = None
    p90_tpot_ms: float | None = None
    p99_tpot_ms: float | None = None
    mean_itl_ms: float | None = None
    median_itl_ms: float | None = None
    p90_itl_ms: float | None = None
    p99_itl_ms: float | None = None
    mean_e2e_latency_ms: float | None = None
    median_e2e_latency_ms: float | None = None
    p90_e2e_latency_ms: float | None = None
    p99_e2e_latency_ms: float | None = None
    retry_after_s_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Summary:
    duration_s: float
    per_tenant: dict[str, Row]
    overall: Row
    slo: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "slo": self.slo,
            "overall": self.overall.to_dict(),
            "per_tenant": {t: r.to_dict() for t, r in self.per_tenant.items()},
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(_clean(self.to_dict()), **kw)


def _clean(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _stats(values: Sequence[float]) -> tuple[float | None, float | None, float | None, float | None]:
    if not values:
        return None, None, None, None
    a = np.asarray(values, dtype=float)
    return (float(a.mean()), float(np.median(a)), float(np.percentile(a, 90)), float(np.percentile(a, 99)))


def _row(tenant: str, results: Sequence[RequestResult], duration_s: float, with_slo: bool) -> Row:
    row = Row(tenant=tenant, requests=len(results), duration_s=duration_s)
    ok = [r for r in results if r.status == OK]
    row.completed = len(ok)
    row.rejected = sum(r.status == REJECTED for r in results)
    row.failed = sum(r.status == ERROR for r in results)
    row.cancelled = sum(r.status == CANCELLED for r in results)
    row.total_input_tokens = sum(r.input_tokens for r in ok)
    row.total_output_tokens = sum(r.output_tokens for r in ok)
    if duration_s > 0:
        row.request_throughput = row.completed / duration_s
        row.output_throughput = row.total_output_tokens / duration_s
        row.total_token_throughput = (row.total_input_tokens + row.total_output_tokens) / duration_s
    row.mean_ttft_ms, row.median_ttft_ms, row.p90_ttft_ms, row.p99_ttft_ms = _stats(
        [r.ttft_ms for r in ok if r.ttft_ms is not None])
    row.mean_tpot_ms, row.median_tpot_ms, row.p90_tpot_ms, row.p99_tpot_ms = _stats(
        [r.tpot_ms for r in ok if r.tpot_ms is not None])
    row.mean_itl_ms, row.median_itl_ms, row.p90_itl_ms, row.p99_itl_ms = _stats(
        [x for r in ok for x in r.itl_ms])
    (row.mean_e2e_latency_ms, row.median_e2e_latency_ms, row.p90_e2e_latency_ms,
     row.p99_e2e_latency_ms) = _stats([r.e2e_ms for r in ok if r.e2e_ms is not None])
    ra = [r.retry_after_s for r in results if r.retry_after_s is not None]
    row.retry_after_s_mean = float(np.mean(ra)) if ra else None
    if with_slo:
        row.good = sum(1 for r in ok if r.slo_met)
        row.goodput = row.good / duration_s if duration_s > 0 else None
        row.slo_attainment = row.good / len(results) if results else None
    return row


def summarize(results: Iterable[RequestResult], duration_s: float, slo: SLOSpec = None) -> Summary:
    """Per-tenant rows and an overall row.

    ``duration_s`` is the benchmark duration (rates are per second of it, for every tenant, so the
    per-tenant throughputs add up to the overall one). When ``slo`` is given, each completed
    request's ``slo_met`` is (re)computed from it; otherwise results' own ``slo_met`` values are used
    and goodput is reported only if some result carries one.
    """
    res = list(results)
    if slo is not None:
        for r in res:
            s = resolve_slo(slo, r.tenant, r.slo_class)
            if r.status != OK:
                r.slo_met = False if s is not None else r.slo_met
            elif s is not None:
                r.slo_met = s.met(r.ttft_ms, r.tpot_ms, r.e2e_ms)
    with_slo = any(r.slo_met is not None for r in res)
    groups: dict[str, list[RequestResult]] = {}
    for r in res:
        groups.setdefault(r.tenant, []).append(r)
    per_tenant = {t: _row(t, rs, duration_s, with_slo) for t, rs in sorted(groups.items())}
    slo_desc: dict[str, Any] | None = None
    if isinstance(slo, SLO):
        slo_desc = asdict(slo)
    elif slo is not None:
        slo_desc = {k: asdict(v) for k, v in slo.items()}
    return Summary(duration_s, per_tenant, _row(OVERALL, res, duration_s, with_slo), slo_desc)


def _fmt(x: float | int | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


_COLUMNS: list[tuple[str, str, int]] = [
    ("tenant", "tenant", 0),
    ("req", "requests", 0),
    ("ok", "completed", 0),
    ("rej", "rejected", 0),
    ("err", "failed", 0),
    ("req/s", "request_throughput", 2),
    ("out tok/s", "output_throughput", 1),
    ("goodput", "goodput", 2),
    ("SLO %", "slo_attainment", 1),
    ("TTFT p50", "median_ttft_ms", 1),
    ("TTFT p99", "p99_ttft_ms", 1),
    ("TPOT p50", "median_tpot_ms", 1),
    ("TPOT p99", "p99_tpot_ms", 1),
    ("ITL p50", "median_itl_ms", 1),
    ("E2E p50", "median_e2e_latency_ms", 1),
    ("E2E p99", "p99_e2e_latency_ms", 1),
]


def format_table(summary: Summary) -> str:
    """A fixed-width text table: one line per tenant, then the overall line (times in ms)."""
    rows = list(summary.per_tenant.values()) + [summary.overall]
    cells: list[list[str]] = []
    for row in rows:
        line = []
        for _, attr, digits in _COLUMNS:
            v = getattr(row, attr)
            if attr == "tenant":
                line.append("all" if v == OVERALL else str(v))
            elif attr == "slo_attainment":
                line.append(_fmt(v * 100 if v is not None else None, digits))
            else:
                line.append(_fmt(v, digits))
        cells.append(line)
    heads = [c[0] for c in _COLUMNS]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def render(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    out = [render(heads), render(["-" * w for w in widths])]
    out += [render(c) for c in cells[:-1]]
    out += [render(["-" * w for w in widths]), render(cells[-1])]
    return "\n".join(out)


def format_benchmark_block(row: Row, title: str = "Serving Benchmark Result") -> str:
    """The vLLM/SGLang ``bench serve`` result block layout for one row."""
    lines = [f"{'=' * 18}{title:^14}{'=' * 18}" if len(title) <= 14 else f"{'=' * 10} {title} {'=' * 10}"]

    def kv(k: str, v: float | int | None, digits: int = 2) -> None:
        lines.append(f"{k:<40}{_fmt(v, digits):>10}")

    def sec(name: str) -> None:
        lines.append(f"{name:-^50}")

    kv("Successful requests:", row.completed, 0)
    kv("Rejected requests:", row.rejected, 0)
    kv("Failed requests:", row.failed, 0)
    kv("Benchmark duration (s):", row.duration_s)
    kv("Total input tokens:", row.total_input_tokens, 0)
    kv("Total generated tokens:", row.total_output_tokens, 0)
    kv("Request throughput (req/s):", row.request_throughput)
    if row.goodput is not None:
        kv("Request goodput (req/s):", row.goodput)
    kv("Output token throughput (tok/s):", row.output_throughput)
    kv("Total Token throughput (tok/s):", row.total_token_throughput)
    for label, key in (("Time to First Token", "ttft"), ("Time per Output Token (excl. 1st token)", "tpot"),
                       ("Inter-token Latency", "itl"), ("End-to-end Latency", "e2e_latency")):
        sec(label)
        short = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e_latency": "E2EL"}[key]
        kv(f"Mean {short} (ms):", getattr(row, f"mean_{key}_ms"))
        kv(f"Median {short} (ms):", getattr(row, f"median_{key}_ms"))
        kv(f"P99 {short} (ms):", getattr(row, f"p99_{key}_ms"))
    lines.append("=" * 50)
    return "\n".join(lines)
