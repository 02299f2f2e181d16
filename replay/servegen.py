"""ServeGen per-client profiles (Alibaba Model Studio, arXiv:2505.09999) -> multi-tenant workloads.

Format of the released data (``alibaba/ServeGen`` ``data/<category>/<model>/``; in this project the
``language`` group is packed in ``shared/traces/ServeGen_language.tar.gz`` as
``ServeGen/data/language/{m-large,m-mid,m-small}/``), one client = ``chunk-<id>``:

- ``chunk-<id>-trace.csv``: no header, one row per 600-s window (2,016 windows = 14 days):
  ``window_start_s, rate_req_per_s, cv_of_interarrival, dist, p1, p2`` where ``dist`` is
  ``Gamma`` (shape ``p1``, scale ``p2``), ``Weibull`` (shape ``p1``, scale ``p2``) or empty when the
  client is idle (rate 0). The fitted inter-arrival distribution's mean is ~1/rate.
- ``chunk-<id>-dataset.json``: ``{window_start_s: {"input_tokens": "<pmf>", "output_tokens": "<pmf>"}}``
  over 6-hour windows, each PMF a *Python dict literal* ``{tokens: probability}`` (``"{}"`` when the
  client had no traffic in that window). Only ``m-small`` ships these here (38 of its 43 clients).

Sampling (:func:`sample_servegen`), per client and per 600-s window overlapping the requested span:

- the number of arrivals is the window's expected count ``rate * rate_scale * seconds`` rounded
  stochastically (floor plus one with probability of the fractional part), so the expected count is
  exactly the profile's;
- their spacing follows the window's fitted distribution: ``n + 1`` inter-arrival times are drawn
  from it and rescaled to span the window (as ServeGen's own ``construct.py`` does), which keeps the
  window's burstiness (CV) while matching its rate;
- lengths come from the client's PMF of the 6-hour window containing it (the latest non-empty one at
  or before the window, else the next non-empty one); clients without PMFs use ``fallback_lengths``:
  ``"pooled"`` (a request borrows the PMF of another client of the same profile, picked in
  proportion to the clients' rates in that window) or a :class:`~replay.loaders.LengthTable`.

Every client is one tenant, named ``f"{tenant_prefix}{id}"`` (``chunk-5``). Each client draws from its
own random stream seeded by ``(seed, client_id)``, so the result is deterministic for a seed and a
client's requests do not change when other clients are added or removed.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from replay.loaders import SHARED_TRACES, LengthTable
from replay.workload import WorkloadFormatError, WorkloadRequest

__all__ = [
    "SERVEGEN_ARCHIVE",
    "ArrivalWindow",
    "ServeGenClient",
    "ServeGenProfile",
    "busiest_hour",
    "load_servegen",
    "sample_servegen",
]

SERVEGEN_ARCHIVE = SHARED_TRACES / "ServeGen_language.tar.gz"
_MEMBER = re.compile(r"(?:^|/)(?P<cat>[^/]+)/(?P<group>[^/]+)/chunk-(?P<id>\d+)-(?P<kind>trace\.csv|dataset\.json)$")


@dataclass(frozen=True, slots=True)
class ArrivalWindow:
    """One row of a client's ``trace.csv``."""

    start_s: int
    rate: float  # req/s
    cv: float  # coefficient of variation of inter-arrival times
    dist: str  # "Gamma" | "Weibull" | "" (idle)
    p1: float  # shape
    p2: float  # scale (s)


_Pmf = tuple[np.ndarray, np.ndarray]  # (sorted values, cumulative probabilities ending at 1)


def _parse_pmf(text: str) -> _Pmf | None:
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"not a dict literal: {body[:40]!r}")
    body = body[1:-1].strip()
    if not body:
        return None
    arr = np.array(body.replace(":", ",").split(","), dtype=float).reshape(-1, 2)
    order = np.argsort(arr[:, 0], kind="stable")
    values = arr[order, 0]
    probs = arr[order, 1]
    total = probs.sum()
    if not total > 0:
        return None
    return values, np.cumsum(probs) / total


@dataclass
class ServeGenClient:
    """One ServeGen client (``chunk-<id>``): arrival windows and, where published, length PMFs."""

    client_id: int
    windows: list[ArrivalWindow]
    raw_lengths: dict[int, dict[str, str]] = field(default_factory=dict, repr=False)
    _parsed: dict[int, dict[str, _Pmf | None]] = field(default_factory=dict, repr=False)

    @property
    def has_lengths(self) -> bool:
        return bool(self.raw_lengths)

    def _pmfs_at(self, ds_start: int) -> dict[str, _Pmf | None]:
        got = self._parsed.get(ds_start)
        if got is None:
            raw = self.raw_lengths[ds_start]
            got = {k: _parse_pmf(v) for k, v in raw.items()}
            self._parsed[ds_start] = got
        return got

    def length_pmfs(self, t_s: float) -> tuple[_Pmf, _Pmf] | None:
        """(input PMF, output PMF) for time ``t_s``: latest non-empty 6-h window <= t, else the next one."""
        if not self.raw_lengths:
            return None
        starts = sorted(self.raw_lengths)
        before = [s for s in starts if s <= t_s][::-1]
        after = [s for s in starts if s > t_s]
        for s in before + after:
            pm = self._pmfs_at(s)
            pin, pout = pm.get("input_tokens"), pm.get("output_tokens")
            if pin is not None and pout is not None:
                return pin, pout
        return None


@dataclass
class ServeGenProfile:
    """The clients of one ServeGen workload (e.g. ``language/m-small``) on a common window grid."""

    name: str
    clients: dict[int, ServeGenClient]
    window_s: int
    starts: np.ndarray  # window start times (s), shared by all clients
    rates: np.ndarray  # (clients, windows) req/s, rows in client_ids() order

    def client_ids(self) -> list[int]:
        return sorted(self.clients)

    @property
    def horizon_s(self) -> int:
        return int(self.starts[-1]) + self.window_s if len(self.starts) else 0

    def _row(self, client_id: int) -> int:
        return self.client_ids().index(client_id)

    def _overlap(self, start_s: float, end_s: float) -> np.ndarray:
        """Seconds of each window inside [start_s, end_s)."""
        lo = np.maximum(self.starts, start_s)
        hi = np.minimum(self.starts + self.window_s, end_s)
        return np.clip(hi - lo, 0, None)

    def expected_requests(self, client_id: int, start_s: float = 0, end_s: float | None = None) -> float:
        """Profile's expected request count for a client over [start_s, end_s) (rate x seconds)."""
        end = self.horizon_s if end_s is None else end_s
        return float(self.rates[self._row(client_id)] @ self._overlap(start_s, end))

    def expected_rate(self, client_id: int, start_s: float = 0, end_s: float | None = None) -> float:
        end = self.horizon_s if end_s is None else end_s
        return self.expected_requests(client_id, start_s, end) / (end - start_s)

    def top_clients(self, n: int | None = None, start_s: float = 0, end_s: float | None = None) -> list[int]:
        """Client ids by expected requests over the span, busiest first (ties by id)."""
        end = self.horizon_s if end_s is None else end_s
        totals = self.rates @ self._overlap(start_s, end)
        ids = self.client_ids()
        order = sorted(range(len(ids)), key=lambda i: (-totals[i], ids[i]))
        picked = [ids[i] for i in order]
        return picked if n is None else picked[:n]

    def busiest_window(self, duration_s: float = 3600, clients: Iterable[int] | None = None) -> int:
        """Start (s, on the window grid) of the ``duration_s`` span with most expected requests."""
        ids = self.client_ids()
        rows = [ids.index(c) for c in clients] if clients is not None else list(range(len(ids)))
        per_window = self.rates[rows].sum(axis=0)
        k = max(1, math.ceil(duration_s / self.window_s))
        if k >= len(per_window):
            return int(self.starts[0])
        csum = np.concatenate([[0.0], np.cumsum(per_window)])
        sums = csum[k:] - csum[:-k]
        return int(self.starts[int(np.argmax(sums))])


def _client_from_texts(client_id: int, trace_text: str, dataset_text: str | None, source: str) -> ServeGenClient:
    windows = []
    for lineno, line in enumerate(trace_text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            raise WorkloadFormatError(f"expected 6 columns, got {len(parts)}", line=lineno, source=source)
        try:
            w = ArrivalWindow(int(float(parts[0])), float(parts[1]), float(parts[2]), parts[3],
                              float(parts[4] or 0), float(parts[5] or 0))
        except ValueError as exc:
            raise WorkloadFormatError(f"bad number: {exc}", line=lineno, source=source) from None
        if w.dist not in ("", "Gamma", "Weibull"):
            raise WorkloadFormatError(f"unknown arrival distribution {w.dist!r}", line=lineno, source=source)
        windows.append(w)
    windows.sort(key=lambda w: w.start_s)
    raw: dict[int, dict[str, str]] = {}
    if dataset_text is not None:
        data = json.loads(dataset_text)
        raw = {int(k): {f: str(v) for f, v in fields.items()} for k, fields in data.items()}
    return ServeGenClient(client_id, windows, raw)


def load_servegen(source: str | os.PathLike[str] | None = None, group: str = "m-small",
                  category: str = "language", clients: Iterable[int] | None = None) -> ServeGenProfile:
    """Load one ServeGen workload (``category/group``) from the ``.tar.gz`` or an unpacked folder.

    ``source`` defaults to ``shared/traces/ServeGen_language.tar.gz``. ``clients`` restricts loading
    to those client ids. Length PMFs are parsed lazily, on first use.
    """
    src = Path(source) if source is not None else SERVEGEN_ARCHIVE
    wanted = set(clients) if clients is not None else None
    traces: dict[int, str] = {}
    datasets: dict[int, str] = {}
    seen: set[int] = set()

    def take(name: str, read) -> None:  # type: ignore[no-untyped-def]
        m = _MEMBER.search(name.replace(os.sep, "/"))
        if not m or m["cat"] != category or m["group"] != group:
            return
        cid = int(m["id"])
        seen.add(cid)
        if wanted is not None and cid not in wanted:
            return
        text = read()
        (traces if m["kind"] == "trace.csv" else datasets)[cid] = text

    if src.is_dir():
        for p in sorted(src.rglob("chunk-*-*")):
            if p.is_file():
                take(str(p.relative_to(src)) if p != src else p.name, lambda p=p: p.read_text("utf-8"))
    else:
        with tarfile.open(src, "r:*") as tar:
            for member in tar:
                if member.isfile():
                    def read(member: tarfile.TarInfo = member) -> str:
                        fh = tar.extractfile(member)
                        assert fh is not None
                        return io.TextIOWrapper(fh, encoding="utf-8").read()
                    take(member.name, read)
    if wanted is not None and (missing := wanted - set(traces)) and seen:
        raise KeyError(f"ServeGen {category}/{group} has no client(s) {sorted(missing)}")
    if not traces:
        raise FileNotFoundError(f"no ServeGen {category}/{group} chunk-*-trace.csv files in {src}")
    cl = {cid: _client_from_texts(cid, text, datasets.get(cid), f"{src}:{category}/{group}/chunk-{cid}-trace.csv")
          for cid, text in traces.items()}
    ids = sorted(cl)
    starts = np.array([w.start_s for w in cl[ids[0]].windows], dtype=float)
    for cid in ids:
        if len(cl[cid].windows) != len(starts) or any(w.start_s != s for w, s in zip(cl[cid].windows, starts)):
            raise WorkloadFormatError(f"client {cid} is not on the same window grid as client {ids[0]}",
                                      source=str(src))
    window_s = int(starts[1] - starts[0]) if len(starts) > 1 else 600
    rates = np.array([[w.rate for w in cl[cid].windows] for cid in ids], dtype=float)
    return ServeGenProfile(f"{category}/{group}", cl, window_s, starts, rates)


def _iats(w: ArrivalWindow, n: int, rng: np.random.Generator) -> np.ndarray:
    if w.dist == "Gamma" and w.p1 > 0 and w.p2 > 0:
        x = rng.gamma(w.p1, w.p2, size=n)
    elif w.dist == "Weibull" and w.p1 > 0 and w.p2 > 0:
        x = rng.weibull(w.p1, size=n) * w.p2
    else:  # degenerate fit: fall back to Poisson spacing
        x = rng.exponential(1.0, size=n)
    return x


def _draw(pmf: _Pmf, u: np.ndarray) -> np.ndarray:
    values, cdf = pmf
    idx = np.minimum(np.searchsorted(cdf, u, side="left"), len(values) - 1)
    return values[idx]


FallbackLengths = Literal["pooled"] | LengthTable | None


def sample_servegen(profile: ServeGenProfile, *, start_s: float = 0, duration_s: float = 3600,
                    clients: Sequence[int] | None = None, top_n: int | None = None, seed: int = 0,
                    rate_scale: float = 1.0, fallback_lengths: FallbackLengths = "pooled",
                    tenant_prefix: str = "chunk-", slo_class: str | None = None) -> list[WorkloadRequest]:
    """Sample a multi-tenant workload over ``[start_s, start_s + duration_s)`` of the profile.

    Timestamps are rebased to start at 0. ``clients`` picks client ids; ``top_n`` picks the busiest
    N clients over the span (among ``clients`` when both are given); default: every client.
    ``rate_scale`` multiplies every client's rate (ServeGen rates go up to hundreds of req/s).
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be > 0")
    if not rate_scale > 0:
        raise ValueError("rate_scale must be > 0")
    end_s = start_s + duration_s
    chosen = _chosen_clients(profile, clients, top_n, start_s, end_s)
    donors = _length_donors(profile, chosen, fallback_lengths)

    overlap = profile._overlap(start_s, end_s)
    out: list[WorkloadRequest] = []
    for cid in chosen:
        client = profile.clients[cid]
        rng = np.random.default_rng([seed, cid])
        tenant = f"{tenant_prefix}{cid}"
        for wi, w in enumerate(client.windows):
            size = float(overlap[wi])
            if size <= 0 or w.rate <= 0 or not w.dist:
                continue
            expected = w.rate * rate_scale * size
            n = int(expected)
            if rng.random() < expected - n:
                n += 1
            if n == 0:
                continue
            iats = _iats(w, n + 1, rng)
            total = float(iats.sum())
            if not (total > 0 and math.isfinite(total)):
                iats = np.ones(n + 1)
                total = float(n + 1)
            t0 = max(float(w.start_s), start_s)
            times = t0 + np.cumsum(iats)[:n] * (size / total)
            ins, outs, how = _lengths(profile, client, w, n, rng, fallback_lengths, donors)
            for t, i, o in zip(times, ins, outs):
                r = WorkloadRequest(round((float(t) - start_s) * 1000.0, 3), max(1, int(i)), max(1, int(o)),
                                    tenant, slo_class)
                if how:
                    r.extra["length_source"] = how
                out.append(r)
    out.sort(key=lambda r: r.timestamp_ms)
    return out


def _chosen_clients(profile: ServeGenProfile, clients: Sequence[int] | None, top_n: int | None,
                    start_s: float, end_s: float) -> list[int]:
    """`clients` (default: all), checked, then the busiest `top_n` of them over [start_s, end_s)."""
    chosen = list(clients) if clients is not None else profile.client_ids()
    for c in chosen:
        if c not in profile.clients:
            raise KeyError(f"client {c} not in {profile.name}")
    if top_n is not None:
        ranked = profile.top_clients(None, start_s, end_s)
        chosen_set = set(chosen)
        chosen = [c for c in ranked if c in chosen_set][:top_n]
    return chosen


def _length_donors(profile: ServeGenProfile, chosen: list[int], fallback_lengths: FallbackLengths) -> list[int]:
    """The clients a pooled fallback draws lengths from; an error if a chosen client can get none."""
    no_pmf = [c for c in chosen if not profile.clients[c].has_lengths]
    if no_pmf and fallback_lengths is None:
        raise ValueError(f"clients {no_pmf} of {profile.name} have no length distribution; "
                         "pass fallback_lengths ('pooled' or a LengthTable)")
    donors = [c for c in profile.client_ids() if profile.clients[c].has_lengths]
    if no_pmf and fallback_lengths == "pooled" and not donors:
        raise ValueError(f"{profile.name} ships no length distributions to pool; pass a LengthTable "
                         "as fallback_lengths (e.g. load_length_table(...) or LengthTable.from_workload(...))")
    return donors


def _lengths(profile: ServeGenProfile, client: ServeGenClient, w: ArrivalWindow, n: int,
             rng: np.random.Generator, fallback: FallbackLengths, donors: list[int]
             ) -> tuple[np.ndarray, np.ndarray, str]:
    own = client.length_pmfs(w.start_s)
    if own is not None:
        u = rng.random((2, n))
        return _draw(own[0], u[0]), _draw(own[1], u[1]), ""
    if isinstance(fallback, LengthTable):
        ins, outs = fallback.sample(n, rng)
        return ins, outs, "table"
    if fallback == "pooled":
        wi = int(np.searchsorted(profile.starts, w.start_s))
        cand = [(d, profile.clients[d].length_pmfs(w.start_s)) for d in donors]
        cand = [(d, p) for d, p in cand if p is not None]
        if cand:
            weights = np.array([profile.rates[profile._row(d), wi] for d, _ in cand], dtype=float)
            weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(cand), 1.0 / len(cand))
            pick = rng.choice(len(cand), size=n, p=weights)
            u = rng.random((2, n))
            ins = np.empty(n)
            outs = np.empty(n)
            for k, (_, (pin, pout)) in enumerate(cand):
                mask = pick == k
                if mask.any():
                    ins[mask] = _draw(pin, u[0][mask])
                    outs[mask] = _draw(pout, u[1][mask])
            return ins, outs, "pooled"
    raise ValueError(f"no length distribution for client {client.client_id} of {profile.name} "
                     f"at t={w.start_s}s; pass a LengthTable as fallback_lengths")


def busiest_hour(profile: ServeGenProfile, clients: Iterable[int] | None = None) -> int:
    """Start (s) of the busiest hour of the profile (summed over ``clients``, default all)."""
    return profile.busiest_window(3600, clients)
