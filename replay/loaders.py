"""Loaders from public traces and synthetic generators into the canonical workload.

Sources (see ``shared/traces/SOURCES.md`` for commits, licences and checksums):

- Azure LLM inference trace 2023 (Splitwise, CC-BY 4.0): CSV ``TIMESTAMP, ContextTokens,
  GeneratedTokens``, no tenant column -> :func:`load_azure` (tenant is a parameter).
- Mooncake FAST'25 traces (Apache-2.0): already canonical -> :func:`load_mooncake`.
- Length tables such as Vidur's ``arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv``
  (``num_prefill_tokens, num_decode_tokens, ...``; no timestamps) -> :func:`load_length_table` +
  :func:`poisson_workload` (Poisson arrivals at a given rate, deterministic for a seed).
- VTC (OSDI'24) synthetic suites from its artifact (``fair_bench/exp_suite.py``, ``trace.py``):
  :func:`vtc_overload`, :func:`vtc_weighted`.

ServeGen per-client profiles live in :mod:`replay.servegen`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from replay.workload import (
    DEFAULT_TENANT,
    WorkloadFormatError,
    WorkloadRequest,
    merge,
    read_workload,
    with_tenant,
)

__all__ = [
    "SHARED_TRACES",
    "LengthTable",
    "load_azure",
    "load_length_table",
    "load_mooncake",
    "poisson_workload",
    "shared_trace",
    "vtc_overload",
    "vtc_weighted",
]

#: ``/work/shared/traces`` style location: ``shared/`` is a sibling of the repository.
SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def shared_trace(name: str) -> Path:
    """Path of a file in the shared traces folder (it may not exist on this machine)."""
    return SHARED_TRACES / name


# --------------------------------------------------------------------------- Azure 2023


def _parse_azure_ts(text: str) -> datetime:
    # '2023-11-16 18:17:03.9799600': 7 fractional digits; fromisoformat (3.11+) accepts and truncates
    # them, but be explicit so that other Python versions and odd rows behave the same.
    text = text.strip()
    if "." in text:
        head, frac = text.split(".", 1)
        frac = frac[:6]
        text = f"{head}.{frac}"
    return datetime.fromisoformat(text)


def load_azure(path: str | os.PathLike[str], tenant: str = DEFAULT_TENANT, *,
               slo_class: str | None = None, limit: int | None = None) -> list[WorkloadRequest]:
    """Azure LLM inference trace CSV (``TIMESTAMP, ContextTokens, GeneratedTokens``).

    Timestamps become ms from the first request (the earliest one); every request gets ``tenant``.
    ``limit`` keeps only the first ``limit`` rows of the file.
    """
    p = Path(path)
    rows: list[tuple[datetime, int, int]] = []
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return []
        cols = [h.strip() for h in header]
        try:
            i_ts, i_in, i_out = (cols.index(c) for c in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
        except ValueError:
            raise WorkloadFormatError(
                f"expected columns TIMESTAMP, ContextTokens, GeneratedTokens, got {cols}", line=1,
                source=str(p)) from None
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                ts = _parse_azure_ts(row[i_ts])
                n_in = int(row[i_in])
                n_out = int(row[i_out])
            except (ValueError, IndexError) as exc:
                raise WorkloadFormatError(f"bad Azure row {row!r}: {exc}", line=lineno, source=str(p)) from None
            if n_in < 0 or n_out < 0:
                raise WorkloadFormatError(f"negative token count in {row!r}", line=lineno, source=str(p))
            rows.append((ts, n_in, n_out))
    if not rows:
        return []
    t0 = min(r[0] for r in rows)
    out = [
        WorkloadRequest(
            timestamp_ms=round((ts - t0).total_seconds() * 1000.0, 3),
            input_length=n_in,
            output_length=n_out,
            tenant=tenant,
            slo_class=slo_class,
        )
        for ts, n_in, n_out in rows
    ]
    out.sort(key=lambda r: r.timestamp_ms)
    return out


# --------------------------------------------------------------------------- Mooncake


def load_mooncake(path: str | os.PathLike[str], tenant: str | None = None,
                  slo_class: str | None = None) -> list[WorkloadRequest]:
    """A Mooncake JSONL trace (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``).

    It is already a canonical workload (tenant ``"default"``); ``tenant`` re-tags every request.
    """
    reqs = read_workload(path)
    if tenant is not None or slo_class is not None:
        reqs = with_tenant(reqs, tenant if tenant is not None else DEFAULT_TENANT, slo_class)
    return reqs


# --------------------------------------------------------------------------- length tables


@dataclass(frozen=True)
class LengthTable:
    """Paired (input, output) token lengths to sample requests from (rows are sampled whole)."""

    inputs: np.ndarray
    outputs: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.outputs):
            raise ValueError("inputs and outputs must have the same length")
        if len(self.inputs) == 0:
            raise ValueError("a length table needs at least one row")

    def __len__(self) -> int:
        return len(self.inputs)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` rows drawn uniformly with replacement: (input lengths, output lengths)."""
        idx = rng.integers(0, len(self.inputs), size=n)
        return self.inputs[idx], self.outputs[idx]

    @classmethod
    def from_workload(cls, requests: Iterable[WorkloadRequest], source: str = "workload") -> LengthTable:
        reqs = list(requests)
        return cls(np.array([r.input_length for r in reqs], dtype=np.int64),
                   np.array([r.output_length for r in reqs], dtype=np.int64), source)

    @classmethod
    def constant(cls, input_length: int, output_length: int) -> LengthTable:
        return cls(np.array([input_length]), np.array([output_length]), f"constant {input_length}/{output_length}")


def load_length_table(path: str | os.PathLike[str], input_column: str = "num_prefill_tokens",
                      output_column: str = "num_decode_tokens") -> LengthTable:
    """A CSV length table (default columns: Vidur/Sarathi ``num_prefill_tokens, num_decode_tokens``).

    Azure CSVs work too with ``input_column="ContextTokens", output_column="GeneratedTokens"``.
    """
    p = Path(path)
    ins: list[int] = []
    outs: list[int] = []
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        for col in (input_column, output_column):
            if col not in fields:
                raise WorkloadFormatError(f"column {col!r} not in {fields}", line=1, source=str(p))
        for lineno, row in enumerate(reader, start=2):
            try:
                ins.append(int(float(row[input_column])))
                outs.append(int(float(row[output_column])))
            except (TypeError, ValueError) as exc:
                raise WorkloadFormatError(f"bad length row: {exc}", line=lineno, source=str(p)) from None
    return LengthTable(np.array(ins, dtype=np.int64), np.array(outs, dtype=np.int64), str(p))


def poisson_workload(lengths: LengthTable, rate: float, *, duration_s: float | None = None,
                     num_requests: int | None = None, seed: int = 0, tenant: str = DEFAULT_TENANT,
                     slo_class: str | None = None, start_ms: float = 0.0) -> list[WorkloadRequest]:
    """Poisson arrivals at ``rate`` req/s with lengths drawn from ``lengths``; deterministic for ``seed``.

    Give ``duration_s`` (arrivals in ``[0, duration_s)``) or ``num_requests`` (exactly that many).
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    if (duration_s is None) == (num_requests is None):
        raise ValueError("give exactly one of duration_s or num_requests")
    rng = np.random.default_rng(seed)
    if num_requests is not None:
        gaps = rng.exponential(1.0 / rate, size=num_requests)
        times = np.cumsum(gaps)
    else:
        assert duration_s is not None
        chunks = []
        total = 0.0
        expected = max(16, int(rate * duration_s * 1.2) + 16)
        while total < duration_s:
            g = rng.exponential(1.0 / rate, size=expected)
            c = total + np.cumsum(g)
            chunks.append(c)
            total = float(c[-1])
        times = np.concatenate(chunks)
        times = times[times < duration_s]
    ins, outs = lengths.sample(len(times), rng)
    return [
        WorkloadRequest(timestamp_ms=round(start_ms + float(t) * 1000.0, 3), input_length=int(i),
                        output_length=int(o), tenant=tenant, slo_class=slo_class)
        for t, i, o in zip(times, ins, outs)
    ]


# --------------------------------------------------------------------------- VTC suites

Arrival = Literal["uniform", "poisson"]


def _vtc_clients(rates: Sequence[float], duration_s: float, input_length: int, output_length: int,
                 seed: int, arrival: Arrival, prefix: str) -> list[WorkloadRequest]:
    rng = np.random.default_rng(seed)
    parts = []
    for i, rate in enumerate(rates):
        tenant = f"{prefix}{i}"
        if arrival == "uniform":
            # The artifact's "uniform" mode: a constant interval 1/rate after a random phase in
            # [0, 1/rate), int(rate * duration) requests (fair_bench/trace.py generate_requests_uniform).
            n = int(rate * duration_s)
            phase = rng.random() / rate
            times = phase + np.arange(1, n + 1) / rate
            parts.append([WorkloadRequest(round(float(t) * 1000.0, 3), input_length, output_length, tenant)
                          for t in times])
        elif arrival == "poisson":
            parts.append(poisson_workload(LengthTable.constant(input_length, output_length), rate,
                                          duration_s=duration_s, seed=int(rng.integers(2**31)),
                                          tenant=tenant))
        else:
            raise ValueError(f"arrival must be 'uniform' or 'poisson', got {arrival!r}")
    return merge(*parts)


def vtc_overload(duration_s: float = 360.0, *, seed: int = 42, input_length: int = 256,
                 output_length: int = 256, arrival: Arrival = "uniform",
                 rates: Sequence[float] = (1.5, 3.0), prefix: str = "client") -> list[WorkloadRequest]:
    """VTC's ``overload`` suite: 2 clients at 1.5 and 3 req/s, 256/256 tokens, 6 minutes by default.

    Tenants are ``client0``, ``client1``. ``arrival="uniform"`` reproduces the artifact's constant
    intervals; ``"poisson"`` draws exponential gaps at the same rates.
    """
    return _vtc_clients(rates, duration_s, input_length, output_length, seed, arrival, prefix)


def vtc_weighted(duration_s: float = 360.0, *, seed: int = 42, input_length: int = 256,
                 output_length: int = 256, arrival: Arrival = "uniform",
                 prefix: str = "client") -> tuple[list[WorkloadRequest], dict[str, float]]:
    """VTC's ``overload-weighted`` suite: 4 clients at 0.8, 0.8, 1.2, 1.6 req/s, weights 1:2:3:4.

    Returns ``(workload, {tenant: weight})``; lengths default to 256/256 as in the other overload suites.
    """
    rates = (0.8, 0.8, 1.2, 1.6)
    weights = {f"{prefix}{i}": float(i + 1) for i in range(len(rates))}
    return _vtc_clients(rates, duration_s, input_length, output_length, seed, arrival, prefix), weights
