"""Per-tenant and per-SLO-class outcome tables shared by the live runner and virtual-time replay.

Input: one :class:`Outcome` per request (tenant, SLO class, status, TTFT, TPOT, ITLs, e2e in
seconds, tokens, SLO met): a live run's :class:`RequestResult` (what a client saw) or a virtual
run's ``replay.records.RequestRecord``, one vocabulary for both. Output: :class:`Summary` with one
:class:`Row` per tenant, per SLO class and overall, in the vocabulary (and JSON field names, ms) of
SGLang's ``bench_serving``. Milliseconds appear only at the edges: the rows, their text tables
(replay/tables.py's) and JSON, and an :class:`SLO`'s bounds as users write them.

The rows:

- ``ttft``: time from sending the request to the first streamed output token;
- ``tpot``: per request, ``(e2e - ttft) / (output_tokens - 1)`` (requests with > 1 token);
- ``itl``: every gap between consecutive streamed chunks, pooled over requests;
- ``e2e_latency``: send to last byte;
- ``request_throughput`` = completed / duration, ``input_throughput`` / ``output_throughput`` =
  input / output tokens of completed requests / duration, ``total_throughput`` = their sum
  (vLLM's ``total_token_throughput``), ``concurrency`` = sum of e2e / duration;
- ``request_goodput`` (vLLM's name) = completed requests meeting every given SLO / duration (a
  request is good iff ``ttft <= ttft_ms``, ``tpot <= tpot_ms`` and ``e2e <= e2e_ms`` for each
  bound given); ``slo_attainment`` = good / requests offered (rejected and failed count as missed).

Percentiles use ``numpy.percentile`` (linear interpolation), as both benchmarks do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "OVERALL",
    "SLO",
    "Outcome",
    "RequestResult",
    "Row",
    "Summary",
    "clean_json",
    "resolve_slo",
    "summarize",
]

OVERALL = "__all__"

# Status values of an Outcome.
OK = "ok"
REJECTED = "rejected"  # refused by policy: HTTP 429 (live), the core's reject (virtual time)
EXPIRED = "expired"  # virtual time: deferred, then its deadline passed in the queue (a table counts it rejected)
ERROR = "error"  # HTTP error, connection error, broken stream; an engine's abort (virtual time)
CANCELLED = "cancelled"  # the run was stopped (or reached its horizon) before the request finished
STATUSES = (OK, REJECTED, EXPIRED, ERROR, CANCELLED)


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency objectives in ms; ``None`` means not constrained (vLLM ``--goodput`` keys).

    ``ttft_ms_per_ktok`` raises the TTFT bound by that much per 1,000 prompt tokens (sluice's
    long-context classes: a long prompt's prefill alone takes longer than a flat target).
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    ttft_ms_per_ktok: float = 0.0

    @classmethod
    def parse(cls, spec: str | Mapping[str, float] | SLO) -> SLO:
        """From ``"ttft:500 tpot:50 e2el:10000"`` (vLLM syntax) or a mapping with those keys."""
        if isinstance(spec, SLO):
            return spec
        items: Iterable[tuple[str, Any]]
        if isinstance(spec, str):
            parts = [part.split(":", 1) for part in spec.replace(",", " ").split()]
            bad = [p[0] for p in parts if len(p) != 2]
            if bad:
                raise ValueError(f"SLO {spec!r}: expected KEY:MS pairs such as 'ttft:500 tpot:50', got {bad[0]!r}")
            items = ((k, v) for k, v in parts)
        else:
            items = spec.items()
        kw: dict[str, float] = {}
        for key, value in items:
            k = key.strip().lower().removesuffix("_ms")
            name = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2e_ms", "e2e": "e2e_ms"}.get(k)
            if name is None:
                raise ValueError(f"unknown SLO key {key!r} (use ttft, tpot, e2el)")
            try:
                kw[name] = float(value)
            except ValueError:
                raise ValueError(f"SLO {key}: {value!r} is not a number of ms") from None
            if not kw[name] > 0:
                raise ValueError(f"SLO {key} must be > 0 ms, got {value}")
        if not kw:
            raise ValueError(f"SLO {spec!r} sets no bound")
        return cls(**kw)

    def ttft_bound_ms(self, input_tokens: int = 0) -> float | None:
        if self.ttft_ms is None:
            return None
        return self.ttft_ms + self.ttft_ms_per_ktok * input_tokens / 1e3

    def met(self, ttft_s: float | None, tpot_s: float | None, e2e_s: float | None, *,
            input_tokens: int = 0) -> bool:
        """Whether a request's times (seconds, as every outcome holds them) meet each bound given (ms)."""
        bound = self.ttft_bound_ms(input_tokens)
        if bound is not None and (ttft_s is None or ttft_s * 1e3 > bound):
            return False
        # TPOT is undefined for a one-token answer: nothing to miss.
        if self.tpot_ms is not None and tpot_s is not None and tpot_s * 1e3 > self.tpot_ms:
            return False
        return self.e2e_ms is None or (e2e_s is not None and e2e_s * 1e3 <= self.e2e_ms)


SLOSpec = SLO | Mapping[str, SLO] | None


def resolve_slo(slo: SLOSpec, tenant: str, slo_class: str | None) -> SLO | None:
    """The SLO of a request: ``slo`` itself, or ``slo[slo_class]``, else ``slo[tenant]``, else ``slo["*"]``."""
    if slo is None or isinstance(slo, SLO):
        return slo
    for key in (slo_class, tenant, "*"):
        if key is not None and key in slo:
            return slo[key]
    return None


class Outcome(Protocol):
    """One request's outcome as the tables read it; times in seconds (None: not reached)."""

    @property
    def tenant(self) -> str: ...
    @property
    def slo_class(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...  # one of STATUSES
    @property
    def ttft_s(self) -> float | None: ...
    @property
    def tpot_s(self) -> float | None: ...
    @property
    def e2e_s(self) -> float | None: ...
    @property
    def itl_s(self) -> Sequence[float]: ...
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def retry_after_s(self) -> float | None: ...

    slo_met: bool | None  # (re)judged by summarize when it is given an SLO


@dataclass(slots=True)
class RequestResult:
    """What a client saw for one request. Times in seconds; ``sent_s`` from the start of the run."""

    tenant: str
    status: str  # ok | rejected | error | cancelled
    index: int = -1  # position in the workload
    slo_class: str | None = None
    http_status: int | None = None
    scheduled_s: float | None = None  # workload timestamp / speedup
    sent_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    requested_output_tokens: int = 0
    slo_met: bool | None = None
    error: str | None = None
    error_code: str | None = None  # the error body's code: sluice's refusal reason
    retry_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`--json`'s `requests`): times in ms, as bench_serving writes them."""
        return {_MS_KEYS.get(k, k): _ms(v) if k in _MS_KEYS else v for k, v in asdict(self).items()}


_MS_KEYS = {f"{k}_s": f"{k}_ms" for k in ("scheduled", "sent", "ttft", "tpot", "e2e", "itl")}


def _ms(seconds: Any) -> Any:
    if isinstance(seconds, list):
        return [x * 1e3 for x in seconds]
    return None if seconds is None else seconds * 1e3


_METRICS = ("ttft", "tpot", "itl", "e2e_latency")
_STATS = ("mean", "median", "std", "p90", "p95", "p99")


@dataclass(slots=True)
class Row:
    """Aggregated outcome of one tenant, one SLO class, or all requests (``name`` = ``__all__``).

    Field names are SGLang ``bench_serving``'s where they mean the same (``duration``,
    ``completed``, ``total_input_tokens``, ``request_throughput``, ``input_throughput``,
    ``output_throughput``, ``total_throughput``, ``concurrency``, ``{mean,median,std,p99}_{ttft,tpot,
    itl,e2e_latency}_ms``) and vLLM's ``request_goodput`` for goodput; p90/p95 as vLLM's
    ``--metric-percentiles`` names them.
    """

    name: str
    requests: int = 0
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    cancelled: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    duration: float = 0.0
    request_throughput: float = 0.0
    input_throughput: float = 0.0
    output_throughput: float = 0.0
    total_throughput: float = 0.0
    request_goodput: float | None = None
    good: int | None = None
    slo_attainment: float | None = None
    concurrency: float = 0.0
    mean_ttft_ms: float | None = None
    median_ttft_ms: float | None = None
    std_ttft_ms: float | None = None
    p90_ttft_ms: float | None = None
    p95_ttft_ms: float | None = None
    p99_ttft_ms: float | None = None
    mean_tpot_ms: float | None = None
    median_tpot_ms: float | None = None
    std_tpot_ms: float | None = None
    p90_tpot_ms: float | None = None
    p95_tpot_ms: float | None = None
    p99_tpot_ms: float | None = None
    mean_itl_ms: float | None = None
    median_itl_ms: float | None = None
    std_itl_ms: float | None = None
    p90_itl_ms: float | None = None
    p95_itl_ms: float | None = None
    p99_itl_ms: float | None = None
    mean_e2e_latency_ms: float | None = None
    median_e2e_latency_ms: float | None = None
    std_e2e_latency_ms: float | None = None
    p90_e2e_latency_ms: float | None = None
    p95_e2e_latency_ms: float | None = None
    p99_e2e_latency_ms: float | None = None
    mean_retry_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Summary:
    duration_s: float
    per_tenant: dict[str, Row]
    overall: Row
    slo: dict[str, Any] | None = None
    per_class: dict[str, Row] = field(default_factory=dict)  # empty when no request names a class

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "slo": self.slo,
            "overall": self.overall.to_dict(),
            "per_tenant": {t: r.to_dict() for t, r in self.per_tenant.items()},
            "per_class": {c: r.to_dict() for c, r in self.per_class.items()},
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(clean_json(self.to_dict()), **kw)


def clean_json(x: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean_json(v) for v in x]
    return x


def _set_stats(row: Row, metric: str, values: Sequence[float]) -> None:
    if not values:
        return
    a = np.asarray(values, dtype=float)
    stats = {"mean": a.mean(), "median": np.median(a), "std": a.std(), "p90": np.percentile(a, 90),
             "p95": np.percentile(a, 95), "p99": np.percentile(a, 99)}
    for stat in _STATS:
        setattr(row, f"{stat}_{metric}_ms", float(stats[stat]))


def _row(name: str, results: Sequence[Outcome], duration_s: float, with_slo: bool) -> Row:
    row = Row(name=name, requests=len(results), duration=duration_s)
    ok = [r for r in results if r.status == OK]
    row.completed = len(ok)
    row.rejected = sum(r.status in (REJECTED, EXPIRED) for r in results)
    row.failed = sum(r.status == ERROR for r in results)
    row.cancelled = sum(r.status == CANCELLED for r in results)
    row.total_input_tokens = sum(r.input_tokens for r in ok)
    row.total_output_tokens = sum(r.output_tokens for r in ok)
    e2e = [r.e2e_s * 1e3 for r in ok if r.e2e_s is not None]  # the Row's unit, bench_serving's
    if duration_s > 0:
        row.request_throughput = row.completed / duration_s
        row.input_throughput = row.total_input_tokens / duration_s
        row.output_throughput = row.total_output_tokens / duration_s
        row.total_throughput = (row.total_input_tokens + row.total_output_tokens) / duration_s
        row.concurrency = sum(e2e) / 1e3 / duration_s  # SGLang's: mean requests in flight
    _set_stats(row, "ttft", [r.ttft_s * 1e3 for r in ok if r.ttft_s is not None])
    _set_stats(row, "tpot", [r.tpot_s * 1e3 for r in ok if r.tpot_s is not None])
    _set_stats(row, "itl", [x * 1e3 for r in ok for x in r.itl_s])
    _set_stats(row, "e2e_latency", e2e)
    ra = [r.retry_after_s for r in results if r.retry_after_s is not None]
    row.mean_retry_after_s = float(np.mean(ra)) if ra else None
    if with_slo:
        row.good = sum(1 for r in ok if r.slo_met)
        row.request_goodput = row.good / duration_s if duration_s > 0 else None
        row.slo_attainment = row.good / len(results) if results else None
    return row


NO_CLASS = "-"  # the per-class key of requests without an SLO class


def summarize(results: Iterable[Outcome], duration_s: float, slo: SLOSpec = None) -> Summary:
    """Per-tenant rows, per-SLO-class rows (when some request names a class) and an overall row.

    ``duration_s`` is the benchmark duration (rates are per second of it, for every tenant and
    class, so their throughputs add up to the overall one). When ``slo`` is given, each completed
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
                r.slo_met = s.met(r.ttft_s, r.tpot_s, r.e2e_s, input_tokens=r.input_tokens)
    with_slo = any(r.slo_met is not None for r in res)
    tenants: dict[str, list[Outcome]] = {}
    classes: dict[str, list[Outcome]] = {}
    for r in res:
        tenants.setdefault(r.tenant, []).append(r)
        classes.setdefault(r.slo_class or NO_CLASS, []).append(r)
    if set(classes) == {NO_CLASS}:
        classes = {}
    slo_desc: dict[str, Any] | None = None
    if isinstance(slo, SLO):
        slo_desc = asdict(slo)
    elif slo is not None:
        slo_desc = {k: asdict(v) for k, v in slo.items()}
    return Summary(duration_s,
                   {t: _row(t, rs, duration_s, with_slo) for t, rs in sorted(tenants.items())},
                   _row(OVERALL, res, duration_s, with_slo), slo_desc,
                   {c: _row(c, rs, duration_s, with_slo) for c, rs in sorted(classes.items())})
