"""VTC's fairness measure, the service difference between backlogged tenants (weight-normalised):
max over pairs (f, g) and t1 < t2 with f and g both backlogged throughout [t1, t2) of
|(S_f(t2) - S_f(t1)) / w_f - (S_g(t2) - S_g(t1)) / w_g|.

`service_difference` computes it exactly for any number of tenants, with per-tenant bounds that
skip most pairs; `service_difference_pairwise` is the O(pairs) reference.

Why it is exact. Let N_i = S_i/w_i on the grid of points (every knot and span end, as left
limit and right value: the points the reference evaluates) and let c be ANY function of the
grid. For a pair (f, g) and a common interval I (inside one span of f and one span of g),
D = N_f - N_g = y_f - y_g with y_i = N_i - c, so for points s <= t in I
    D(t) - D(s) = (y_f(t) - y_f(s)) + (y_g(s) - y_g(t)),
and the pair's value, max over I of max D - min D, is at most any bound of the right side in
both directions. Two bounds, from per-tenant numbers only:
  1. rise_f + drop_g (and rise_g + drop_f), rise_i / drop_i the largest increase / decrease of
     y_i between two ordered points of one of i's spans;
  2. a blocked bound (`_blocked_bound`): the grid cut into BLOCKS runs of points, with y_i's
     max and min per block and which block boundaries a span of i crosses; s and t in one
     block, or in blocks i < j with both tenants' spans crossing every boundary between.
Ordered pairs are visited best-first by bound 1 (a heap over the tenants sorted by rise and by
drop), BATCH at a time; each batch is filtered by bound 2 (vectorised) and the survivors are
computed exactly (`_pair_difference`: one pass over both curves for all common intervals),
largest bound 2 first. The search stops when the largest remaining bound 1 is <= the best
difference found, and a pair is skipped when its bound 2 is: no skipped pair can exceed it.

Why it is fast. c only decides how tight the bounds are. We take c = the virtual time of the
backlogged tenants: on each grid step it grows by the mean increment of N_i over the tenants
backlogged there; y_i is then tenant i's lead over the average backlogged tenant. Bound 1
separates tenants that run ahead from those that fall behind; bound 2 confines a tenant that
is backlogged briefly (most tenants, when there are many) to the blocks where it was, so its
pairs with steadily served tenants are bounded by what happened there, not over the whole run.
Cost: O(K log K) for the grid (K times); O(P) for c, the bounds and the blocks, P = sum over
tenants of the grid points inside its spans <= 2K x T; O(BLOCKS) per pair taken from the heap,
O(knots_f + knots_g + spans_f + spans_g) per pair computed exactly. How many pairs are
computed depends on the data (on the synthetic overload runs of bench/bench_fairness.py: a few
for VTC at 100 tenants); in the worst case, all of them. `max_pairs` caps the exact
computations: the result is then value (attained by the reported pair) <= true maximum <=
upper_bound (the largest bound left).
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fairness.service import Served, ServiceCurve, service_curves


@dataclass(frozen=True, slots=True)
class ServiceDifference:
    value: float  # the maximum weight-normalised service difference (found, attained by `tenants`)
    tenants: tuple[str, str] | None  # the pair that attains it (the first is the one served more)
    interval: tuple[float, float] | None  # [t1, t2) that attains it
    upper_bound: float | None = None  # the true maximum is in [value, upper_bound]; == value when exact
    pairs_evaluated: int | None = None  # pairs whose difference was computed exactly


def intersect_intervals(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The overlaps of two sorted lists of disjoint intervals."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def service_difference_pairwise(
    responses: Iterable[Served],
    backlogged: Mapping[str, Iterable[tuple[float, float]]],
    weights: Mapping[str, float] | None = None,
) -> ServiceDifference:
    """The reference for `service_difference`: every pair, every common backlogged interval.

    For each pair (f, g) and each interval [lo, hi) in which both were backlogged, D = S_f/w_f -
    S_g/w_g is evaluated at lo, at every knot of both curves inside (left limit, then right value:
    a jump at t is service in [t, t2)) and at hi (left limit: [t1, hi) excludes hi); the largest
    |D(t2) - D(t1)| with t1 <= t2 comes from the running min and max. Exact for piecewise-linear
    service. O(sum over pairs of common intervals x (knots_f + knots_g)): it scans both curves'
    knots again for every common interval."""
    curves = service_curves(responses)
    w = weights or {}
    spans = {t: _merge(iv) for t, iv in backlogged.items()}
    names = sorted(spans)
    best = ServiceDifference(0.0, None, None)
    empty = ServiceCurve(())
    for x, f in enumerate(names):
        cf, wf = curves.get(f, empty), w.get(f, 1.0)
        for g in names[x + 1:]:
            cg, wg = curves.get(g, empty), w.get(g, 1.0)
            for lo, hi in intersect_intervals(spans[f], spans[g]):
                inner = np.concatenate([cf.knots, cg.knots, [lo]])
                inner = np.unique(inner[(inner >= lo) & (inner < hi)])
                pts = np.concatenate([np.repeat(inner, 2), [hi]])
                side_right = np.zeros(len(pts), dtype=bool)
                side_right[1::2][: len(inner)] = True
                d = (np.where(side_right, cf.at(pts), cf.before(pts)) / wf
                     - np.where(side_right, cg.at(pts), cg.before(pts)) / wg)
                run_min = np.minimum.accumulate(d)
                run_max = np.maximum.accumulate(d)
                up, down = d - run_min, run_max - d
                i_up, i_down = int(np.argmax(up)), int(np.argmax(down))
                if up[i_up] >= down[i_down]:
                    value, i2, pair = float(up[i_up]), i_up, (f, g)
                    i1 = int(np.argmin(d[: i2 + 1]))
                else:
                    value, i2, pair = float(down[i_down]), i_down, (g, f)
                    i1 = int(np.argmax(d[: i2 + 1]))
                if value > best.value:
                    best = ServiceDifference(value, pair, (float(pts[i1]), float(pts[i2])))
    n = len(names)
    return ServiceDifference(best.value, best.tenants, best.interval, best.value, n * (n - 1) // 2)


_BLOCKS = 64  # time blocks for the pair bounds: finer is tighter and costs O(T x BLOCKS) memory
_BATCH = 256  # candidate pairs bounded together (vectorised) before any is computed exactly


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, lengths)), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out: np.ndarray = np.repeat(starts, lengths) + (np.arange(total) - offsets)
    return out


class _Normalised:
    """One backlogged tenant on the global point grid: its spans as grid indices and S/w there.

    The grid: every time tau_j (all knots, all span ends) gives two points, 2j = S(tau_j-) (left
    limit) and 2j+1 = S(tau_j) (right value). A span [lo, hi) covers points 2*j(lo) .. 2*j(hi)
    inclusive, i.e. lo-, lo, every knot inside (both sides), hi-: the points `service_difference_
    pairwise` evaluates for any interval inside the span."""

    def __init__(self, curve: ServiceCurve, weight: float, spans: list[tuple[float, float]],
                 times: np.ndarray) -> None:
        self.curve, self.weight, self.spans = curve, weight, spans
        lo = np.searchsorted(times, [a for a, _ in spans])
        hi = np.searchsorted(times, [b for _, b in spans])
        self.lengths = 2 * (hi - lo) + 1
        self.idx = _ranges(2 * lo, self.lengths)  # point indices, span after span
        self.first = np.cumsum(self.lengths) - self.lengths  # where each span starts in idx

    def values(self, times: np.ndarray) -> np.ndarray:
        t = times[self.idx // 2]
        right = (self.idx % 2).astype(bool)
        return np.where(right, self.curve.at(t), self.curve.before(t)) / self.weight


def _rise_and_drop(y: np.ndarray, first: np.ndarray, lengths: np.ndarray) -> tuple[float, float]:
    """Over the spans (consecutive runs of y): the largest y(t) - y(s) and y(s) - y(t), s <= t."""
    rise = drop = 0.0
    for a, n in zip(first.tolist(), lengths.tolist(), strict=True):
        seg = y[a:a + n]
        rise = max(rise, float(np.max(seg - np.minimum.accumulate(seg))))
        drop = max(drop, float(np.max(np.maximum.accumulate(seg) - seg)))
    return rise, drop


def _pair_difference(f: str, g: str, nf: _Normalised, ng: _Normalised
                     ) -> tuple[float, tuple[str, str], tuple[float, float]] | None:
    """Exact max over the common backlogged intervals of (max D - min D), D = S_f/w_f - S_g/w_g,
    on `service_difference_pairwise`'s points; one pass over both curves' knots for all the
    intervals together. (max - min over an interval is max |D(t2) - D(t1)|, t1 <= t2.)"""
    common = intersect_intervals(nf.spans, ng.spans)
    if not common:
        return None
    lo = np.array([a for a, _ in common])
    hi = np.array([b for _, b in common])
    m = len(common)
    kn = np.union1d(nf.curve.knots, ng.curve.knots)
    seg = np.searchsorted(lo, kn, side="right") - 1
    safe = np.maximum(seg, 0)
    keep = (seg >= 0) & (kn > lo[safe]) & (kn < hi[safe])  # strictly inside; lo is added below
    inner_t = np.concatenate([lo, kn[keep]])
    inner_s = np.concatenate([np.arange(m), seg[keep]])
    # each inner time twice (left limit, right value), then hi (left limit); the intervals are
    # disjoint and do not touch, so sorting by (time, side) keeps each interval contiguous
    t = np.concatenate([inner_t, inner_t, hi])
    right = np.concatenate([np.zeros(len(inner_t), bool), np.ones(len(inner_t), bool), np.zeros(m, bool)])
    s = np.concatenate([inner_s, inner_s, np.arange(m)])
    order = np.lexsort((right, t))
    t, right, s = t[order], right[order], s[order]
    d = (np.where(right, nf.curve.at(t), nf.curve.before(t)) / nf.weight
         - np.where(right, ng.curve.at(t), ng.curve.before(t)) / ng.weight)
    starts = np.searchsorted(s, np.arange(m))
    spread = np.maximum.reduceat(d, starts) - np.minimum.reduceat(d, starts)
    k = int(np.argmax(spread))
    a, b = int(starts[k]), int(starts[k + 1]) if k + 1 < m else len(d)
    i_max, i_min = a + int(np.argmax(d[a:b])), a + int(np.argmin(d[a:b]))
    if i_min <= i_max:  # D rose: f was served more over [t(i_min), t(i_max))
        return float(spread[k]), (f, g), (float(t[i_min]), float(t[i_max]))
    return float(spread[k]), (g, f), (float(t[i_max]), float(t[i_min]))


def _blocked_bound(hi_f: np.ndarray, lo_f: np.ndarray, hi_g: np.ndarray, lo_g: np.ndarray,
                   joint: np.ndarray) -> np.ndarray:
    """Per row (a pair f, g): an upper bound of max |D(t) - D(s)| over s < t in one common
    interval, from the max (hi) and min (lo) of y_f and y_g in each block of the grid (-inf / +inf
    where the tenant has no point) and joint[:, k]: both have a span reaching across the boundary
    between blocks k and k + 1.
    s, t in one block b: (hi_f - lo_f)[b] + (hi_g - lo_g)[b]. s in block i < j holding t, which
    needs a span of each across every boundary from i to j - 1, in the direction where f gains:
    (hi_f[j] - lo_f[i]) + (hi_g[i] - lo_g[j]) = A[j] + C[i] with A = hi_f - lo_g, C = hi_g - lo_f,
    maximised with a running max of C that restarts at a boundary not jointly crossed; and the
    same with f and g swapped. Empty blocks give -inf terms, never NaN (-inf - +inf = -inf)."""
    out: np.ndarray = np.max((hi_f - lo_f) + (hi_g - lo_g), axis=1)
    for a, c in ((hi_f - lo_g, hi_g - lo_f), (hi_g - lo_f, hi_f - lo_g)):
        running = np.full(len(out), -np.inf)
        for j in range(1, a.shape[1]):
            running = np.where(joint[:, j - 1], np.maximum(running, c[:, j - 1]), -np.inf)
            out = np.maximum(out, a[:, j] + running)
    return out


def service_difference(
    responses: Iterable[Served],
    backlogged: Mapping[str, Iterable[tuple[float, float]]],
    weights: Mapping[str, float] | None = None,
    *,
    max_pairs: int | None = None,
) -> ServiceDifference:
    """VTC's measure for any number of tenants: the largest |W_f(t1,t2)/w_f - W_g(t1,t2)/w_g| over
    pairs of tenants and intervals [t1, t2) in which both were backlogged (`backlogged[tenant]`:
    [start, end) intervals). The same value as `service_difference_pairwise` (to within 1e-9 of
    the largest normalised cumulative service: floating rounding), without computing every pair:
    why that is exact and fast is in this module's docstring. `max_pairs` caps the exact
    computations: the result is then value <= true maximum <= upper_bound."""
    curves = service_curves(responses)
    w = weights or {}
    spans = {t: _merge(iv) for t, iv in backlogged.items()}
    names = sorted(t for t, sp in spans.items() if sp)
    if len(names) < 2:
        return ServiceDifference(0.0, None, None, 0.0, 0)
    empty = ServiceCurve(())
    cv = {t: curves.get(t, empty) for t in names}
    times = np.unique(np.concatenate([c.knots for c in cv.values()]
                                     + [np.array(spans[t], dtype=float).ravel() for t in names]))
    norm = {t: _Normalised(cv[t], float(w.get(t, 1.0)), spans[t], times) for t in names}
    return _search_pairs(_tenant_bounds(names, norm, times), max_pairs)


def _virtual_time(names: list[str], norm: dict[str, _Normalised], times: np.ndarray) -> np.ndarray:
    """c on the grid: per grid step p -> p + 1, the mean increment of N over the tenants whose
    span holds it."""
    npts = 2 * len(times)
    inc_sum = np.zeros(npts)
    count = np.zeros(npts)
    for t in names:
        nt = norm[t]
        v = nt.values(times)
        inner = np.ones(len(v), dtype=bool)
        inner[nt.first + nt.lengths - 1] = False  # a span's last point starts no step of that span
        steps = nt.idx[inner]
        inc_sum[steps] += (np.roll(v, -1) - v)[inner]  # no duplicate indices within one tenant
        count[steps] += 1
    c: np.ndarray = np.concatenate([[0.0], np.cumsum(np.divide(inc_sum, count, out=np.zeros(npts),
                                                               where=count > 0))])
    return c


@dataclass(frozen=True, slots=True)
class _TenantBounds:
    """Per-tenant numbers for the pair bounds, y = N - c (rows of the arrays: `names` in order)."""

    names: list[str]
    norm: dict[str, _Normalised]
    rise: dict[str, float]  # largest increase of y within one span (bound 1)
    drop: dict[str, float]  # largest decrease of y within one span (bound 1)
    hi_y: np.ndarray  # max of y per block (-inf where no point), for bound 2
    lo_y: np.ndarray  # min of y per block (+inf where no point)
    across: np.ndarray  # a span crosses the boundary between blocks k and k + 1
    tol: float  # floating rounding: bounds within tol of the best found do not beat it


def _tenant_bounds(names: list[str], norm: dict[str, _Normalised], times: np.ndarray) -> _TenantBounds:
    """Rise, drop, and per block of the grid (BLOCKS equal runs of points) y's max and min."""
    npts = 2 * len(times)
    c = _virtual_time(names, norm, times)
    rise, drop = {}, {}
    scale = 0.0
    blocks = min(_BLOCKS, npts)
    hi_y = np.full((len(names), blocks), -np.inf)
    lo_y = np.full((len(names), blocks), np.inf)
    across = np.zeros((len(names), max(blocks - 1, 1)), dtype=bool)
    for k, t in enumerate(names):
        nt = norm[t]
        v = nt.values(times)
        scale = max(scale, float(np.max(np.abs(v))))
        y = v - c[nt.idx]
        rise[t], drop[t] = _rise_and_drop(y, nt.first, nt.lengths)
        blk = nt.idx * blocks // npts  # non-decreasing: idx is
        starts = np.flatnonzero(np.concatenate([[True], blk[1:] != blk[:-1]]))
        hi_y[k, blk[starts]] = np.maximum.reduceat(y, starts)
        lo_y[k, blk[starts]] = np.minimum.reduceat(y, starts)
        first_blk, last_blk = blk[nt.first], blk[nt.first + nt.lengths - 1]
        crossed = np.zeros(blocks, dtype=np.int64)  # +1 at a span's first block, -1 at its last
        np.add.at(crossed, first_blk, 1)
        np.add.at(crossed, last_blk, -1)
        across[k] = np.cumsum(crossed)[:-1] > 0 if blocks > 1 else False
    tol = 1e-9 * max(scale, float(np.max(np.abs(c))), 1.0)
    return _TenantBounds(names, norm, rise, drop, hi_y, lo_y, across, tol)


class _PairQueue:
    """Unordered pairs of tenants best-first by bound 1, rise_f + drop_g: a heap over ordered
    pairs (by_rise[a], by_drop[b]), each unordered pair handed out once."""

    def __init__(self, names: list[str], rise: dict[str, float], drop: dict[str, float]) -> None:
        self._rise, self._drop = rise, drop
        self._by_rise = sorted(names, key=lambda t: (-rise[t], t))
        self._by_drop = sorted(names, key=lambda t: (-drop[t], t))
        self._heap = [(-(rise[self._by_rise[0]] + drop[self._by_drop[0]]), 0, 0)]
        self._done: set[tuple[str, str]] = set()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def largest_bound(self) -> float:
        """Bound 1 of the best pair not handed out yet (0 when none is left)."""
        return -self._heap[0][0] if self._heap else 0.0

    def next_batch(self, floor: float) -> list[tuple[str, str]]:
        """Up to BATCH pairs not handed out yet whose bound 1 is above `floor`, best first."""
        heap, rise, drop = self._heap, self._rise, self._drop
        by_rise, by_drop, n = self._by_rise, self._by_drop, len(self._by_rise)
        batch: list[tuple[str, str]] = []
        while heap and len(batch) < _BATCH:
            neg, a, b = heap[0]
            if -neg <= floor:
                break
            heapq.heappop(heap)
            if b + 1 < n:
                heapq.heappush(heap, (-(rise[by_rise[a]] + drop[by_drop[b + 1]]), a, b + 1))
            if b == 0 and a + 1 < n:
                heapq.heappush(heap, (-(rise[by_rise[a + 1]] + drop[by_drop[0]]), a + 1, 0))
            f, g = by_rise[a], by_drop[b]
            key = (f, g) if f < g else (g, f)
            if f != g and key not in self._done:
                self._done.add(key)
                batch.append(key)
        return batch


def _search_pairs(tb: _TenantBounds, max_pairs: int | None) -> ServiceDifference:
    """Batches by bound 1, filtered by bound 2, survivors computed exactly (largest bound 2
    first), until no pair left can beat the best found (or `max_pairs` were computed)."""
    queue = _PairQueue(tb.names, tb.rise, tb.drop)
    row = {t: k for k, t in enumerate(tb.names)}
    best: tuple[float, tuple[str, str] | None, tuple[float, float] | None] = (0.0, None, None)
    evaluated = 0
    bound_left = 0.0
    while queue and bound_left == 0.0:
        batch = queue.next_batch(best[0] + tb.tol)
        if not batch:
            break
        fi = np.array([row[f] for f, _ in batch])
        gi = np.array([row[g] for _, g in batch])
        bounds = _blocked_bound(tb.hi_y[fi], tb.lo_y[fi], tb.hi_y[gi], tb.lo_y[gi], tb.across[fi] & tb.across[gi])
        for k in np.argsort(-bounds, kind="stable").tolist():
            if bounds[k] <= best[0] + tb.tol:
                break  # the rest of the batch is no larger
            if max_pairs is not None and evaluated >= max_pairs:
                bound_left = max(float(bounds[k]), queue.largest_bound())
                break
            evaluated += 1
            f, g = batch[k]
            got = _pair_difference(f, g, tb.norm[f], tb.norm[g])
            if got is not None and got[0] > best[0]:
                best = got
    return ServiceDifference(best[0], best[1], best[2], max(best[0], bound_left), evaluated)
