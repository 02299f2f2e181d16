"""The canonical replay workload: one request per JSON line, a superset of Mooncake's trace format.

A line looks like::

    {"timestamp": 1250, "input_length": 812, "output_length": 140,
     "tenant": "acme", "slo_class": "interactive", "hash_ids": [17, 18]}

``timestamp`` is in milliseconds from the start of the workload, ``input_length`` and
``output_length`` in tokens. Optional: ``tenant`` (default ``"default"``), ``slo_class`` (default:
the tenant's class, i.e. ``None`` here), ``hash_ids`` (512-token prefix blocks, Mooncake's
convention), ``max_tokens`` (the client's cap on the output, as it would send it) and ``model``
(the model pool it goes to in a replay with several, docs/replay.md; default: the first pool).
``output_length`` is what the engine will generate (it stops there); replay never shows it to the
decision core, which sees only ``max_tokens`` (default: :data:`DEFAULT_MAX_TOKENS`).
Any other field is kept in :attr:`WorkloadRequest.extra` and written back
unchanged, so a plain Mooncake trace is a valid single-tenant workload and round-trips losslessly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "ALL_TENANTS",
    "CANONICAL_FIELDS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TENANT",
    "TenantLoad",
    "WorkloadFormatError",
    "WorkloadRequest",
    "by_tenant",
    "merge",
    "offered_load",
    "read_workload",
    "scale_rate",
    "window",
    "with_tenant",
    "write_workload",
]

DEFAULT_TENANT = "default"
#: Key of the all-tenants row in :func:`offered_load`'s answer.
ALL_TENANTS = "__all__"
CANONICAL_FIELDS = ("timestamp", "input_length", "output_length", "tenant", "slo_class", "hash_ids", "max_tokens",
                    "model")
HASH_BLOCK_TOKENS = 512
#: The output cap a request without ``max_tokens`` is replayed with: what a client that sends no
#: ``max_tokens`` gets from an engine with a 32k context. Never the true output length (an oracle).
DEFAULT_MAX_TOKENS = 32768


class WorkloadFormatError(ValueError):
    """A workload line that is not a valid canonical request; names the source and the line number."""

    def __init__(self, message: str, *, line: int | None = None, source: str | None = None) -> None:
        self.line = line
        self.source = source
        where = ""
        if source is not None:
            where += f"{source}:"
        if line is not None:
            where += f"line {line}: "
        elif where:
            where += " "
        super().__init__(where + message)


@dataclass(slots=True)
class WorkloadRequest:
    """One request of a workload (times in ms from the workload start, lengths in tokens)."""

    timestamp_ms: float
    input_length: int
    output_length: int
    tenant: str = DEFAULT_TENANT
    slo_class: str | None = None
    hash_ids: list[int] | None = None
    max_tokens: int | None = None  # the client's output cap; None: DEFAULT_MAX_TOKENS
    extra: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # its model pool (replay with several pools); None: the first

    @property
    def output_cap(self) -> int:
        """The cap the core and the engine see (the output stops at min(output_length, cap))."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON object of this request (``tenant`` always written)."""
        ts: float | int = self.timestamp_ms
        if isinstance(ts, float) and ts.is_integer():
            ts = int(ts)
        out: dict[str, Any] = {
            "timestamp": ts,
            "input_length": self.input_length,
            "output_length": self.output_length,
            "tenant": self.tenant,
        }
        if self.slo_class is not None:
            out["slo_class"] = self.slo_class
        if self.hash_ids is not None:
            out["hash_ids"] = list(self.hash_ids)
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.model is not None:
            out["model"] = self.model
        for key, value in self.extra.items():
            if key in CANONICAL_FIELDS:
                raise ValueError(f"extra field {key!r} collides with a canonical field")
            out[key] = value
        return out

    @classmethod
    def from_json(cls, obj: Any) -> WorkloadRequest:
        """Validate one decoded JSON value; raises :class:`WorkloadFormatError` (without a line number)."""
        if not isinstance(obj, dict):
            raise WorkloadFormatError(f"expected a JSON object, got {type(obj).__name__}")
        for key in ("timestamp", "input_length", "output_length"):
            if key not in obj:
                raise WorkloadFormatError(f"missing required field {key!r}")
        ts = obj["timestamp"]
        if not _is_number(ts) or not math.isfinite(ts) or ts < 0:
            raise WorkloadFormatError(f"'timestamp' must be a finite number >= 0 (ms), got {ts!r}")
        input_length = _token_count(obj["input_length"], "input_length")
        output_length = _token_count(obj["output_length"], "output_length")
        tenant = obj.get("tenant", DEFAULT_TENANT)
        if tenant is None:
            tenant = DEFAULT_TENANT
        if not isinstance(tenant, str) or not tenant:
            raise WorkloadFormatError(f"'tenant' must be a non-empty string, got {tenant!r}")
        slo_class = obj.get("slo_class")
        if slo_class is not None and (not isinstance(slo_class, str) or not slo_class):
            raise WorkloadFormatError(f"'slo_class' must be a non-empty string or null, got {slo_class!r}")
        hash_ids = obj.get("hash_ids")
        if hash_ids is not None:
            if not isinstance(hash_ids, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hash_ids
            ):
                raise WorkloadFormatError("'hash_ids' must be a list of integers")
            hash_ids = list(hash_ids)
        max_tokens = obj.get("max_tokens")
        if max_tokens is not None:
            max_tokens = _token_count(max_tokens, "max_tokens")
            if max_tokens < 1:
                raise WorkloadFormatError(f"'max_tokens' must be at least 1, got {max_tokens!r}")
        model = obj.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise WorkloadFormatError(f"'model' must be a non-empty string or null, got {model!r}")
        extra = {k: v for k, v in obj.items() if k not in CANONICAL_FIELDS}
        return cls(
            timestamp_ms=ts,
            input_length=input_length,
            output_length=output_length,
            tenant=tenant,
            slo_class=slo_class,
            hash_ids=hash_ids,
            max_tokens=max_tokens,
            extra=extra,
            model=model,
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _token_count(x: Any, name: str) -> int:
    if not _is_number(x) or not math.isfinite(x) or x < 0 or (isinstance(x, float) and not x.is_integer()):
        raise WorkloadFormatError(f"{name!r} must be a non-negative integer (tokens), got {x!r}")
    return int(x)


PathOrLines = str | os.PathLike[str] | Iterable[str]


def _lines(path_or_lines: PathOrLines) -> tuple[Iterator[str], str | None, Any]:
    if isinstance(path_or_lines, (str, os.PathLike)):
        p = Path(path_or_lines)
        fh = p.open("r", encoding="utf-8")
        return iter(fh), str(p), fh
    return iter(path_or_lines), None, None


def read_workload(path_or_lines: PathOrLines) -> list[WorkloadRequest]:
    """Read a canonical (or plain Mooncake) JSONL workload, sorted by timestamp (stable).

    ``path_or_lines`` is a path (``str`` or ``PathLike``) or an iterable of lines. Blank lines are
    skipped. A malformed line raises :class:`WorkloadFormatError` naming the file and 1-based line.
    """
    it, source, fh = _lines(path_or_lines)
    out: list[WorkloadRequest] = []
    try:
        for lineno, raw in enumerate(it, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise WorkloadFormatError(f"invalid JSON: {exc.msg} (column {exc.colno})",
                                          line=lineno, source=source) from None
            try:
                out.append(WorkloadRequest.from_json(obj))
            except WorkloadFormatError as exc:
                raise WorkloadFormatError(str(exc), line=lineno, source=source) from None
    finally:
        if fh is not None:
            fh.close()
    out.sort(key=lambda r: r.timestamp_ms)
    return out


def write_workload(path: str | os.PathLike[str], requests: Iterable[WorkloadRequest]) -> int:
    """Write requests as canonical JSONL (one compact object per line); returns the number written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as fh:
        for r in requests:
            fh.write(json.dumps(r.to_json(), separators=(", ", ": ")))
            fh.write("\n")
            n += 1
    return n


def scale_rate(requests: Iterable[WorkloadRequest], factor: float) -> list[WorkloadRequest]:
    """Multiply the arrival rate by ``factor``: timestamps are divided by it.

    ``factor=2`` compresses the workload into half the time (twice the req/s); ``0.5`` stretches it.
    Lengths are unchanged.
    """
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}")
    return [replace(r, timestamp_ms=r.timestamp_ms / factor, extra=dict(r.extra)) for r in requests]


def window(requests: Iterable[WorkloadRequest], start_ms: float, end_ms: float | None = None,
           *, rebase: bool = True) -> list[WorkloadRequest]:
    """Requests with ``start_ms <= timestamp < end_ms``; with ``rebase`` timestamps restart at 0."""
    out = []
    for r in requests:
        if r.timestamp_ms < start_ms or (end_ms is not None and r.timestamp_ms >= end_ms):
            continue
        ts = r.timestamp_ms - start_ms if rebase else r.timestamp_ms
        out.append(replace(r, timestamp_ms=ts, extra=dict(r.extra)))
    return out


def by_tenant(requests: Iterable[WorkloadRequest]) -> dict[str, list[WorkloadRequest]]:
    """Group requests by tenant (tenants in order of first appearance, requests in input order)."""
    out: dict[str, list[WorkloadRequest]] = {}
    for r in requests:
        out.setdefault(r.tenant, []).append(r)
    return out


def with_tenant(requests: Iterable[WorkloadRequest], tenant: str,
                slo_class: str | None = None) -> list[WorkloadRequest]:
    """A copy with every request assigned to ``tenant`` (and ``slo_class`` when given)."""
    return [replace(r, tenant=tenant, slo_class=slo_class if slo_class is not None else r.slo_class,
                    extra=dict(r.extra)) for r in requests]


def merge(*workloads: Iterable[WorkloadRequest]) -> list[WorkloadRequest]:
    """Interleave several workloads (all timed from 0) into one, sorted by timestamp (stable)."""
    out = [r for w in workloads for r in w]
    out.sort(key=lambda r: r.timestamp_ms)
    return out


@dataclass(frozen=True, slots=True)
class TenantLoad:
    """Offered load of one tenant (or of all tenants) over ``duration_s``."""

    requests: int
    duration_s: float
    request_rate: float  # req/s
    input_tokens_per_s: float
    output_tokens_per_s: float
    mean_input_length: float
    mean_output_length: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def offered_load(requests: Sequence[WorkloadRequest] | Iterable[WorkloadRequest],
                 duration_s: float | None = None) -> dict[str, TenantLoad]:
    """Offered load per tenant plus an :data:`ALL_TENANTS` row.

    The duration defaults to the span from time 0 (the workload start) to the last arrival; pass
    ``duration_s`` when the workload was generated for a known duration (the last arrival is
    slightly before its end).
    """
    reqs = list(requests)
    if duration_s is None:
        duration_s = max((r.timestamp_ms for r in reqs), default=0.0) / 1000.0
    if duration_s <= 0:
        duration_s = float("nan")

    def load(rs: list[WorkloadRequest]) -> TenantLoad:
        n = len(rs)
        tin = sum(r.input_length for r in rs)
        tout = sum(r.output_length for r in rs)
        return TenantLoad(
            requests=n,
            duration_s=duration_s,
            request_rate=n / duration_s,
            input_tokens_per_s=tin / duration_s,
            output_tokens_per_s=tout / duration_s,
            mean_input_length=tin / n if n else 0.0,
            mean_output_length=tout / n if n else 0.0,
        )

    out = {t: load(rs) for t, rs in by_tenant(reqs).items()}
    out[ALL_TENANTS] = load(reqs)
    return out


def tenants_of(requests: Iterable[WorkloadRequest]) -> list[str]:
    """Distinct tenants in order of first appearance."""
    return list(by_tenant(requests))


def as_mapping(requests: Iterable[WorkloadRequest]) -> list[Mapping[str, Any]]:
    """Canonical JSON objects of the requests (for tests and debugging)."""
    return [r.to_json() for r in requests]
