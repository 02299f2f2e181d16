"""Fast-forward over the simulated engine's decode steps (`SimCore`, engine_adapter/sim/core.py).

Between events the engine often runs stretches of decode-only steps with a fixed batch: no
prefill, no admission (nothing was submitted, and admission that was blocked stays blocked), no
request reaching its length, no KV shortage. Each such step only adds to the decode batch's
totals (engine_adapter/sim/batch.py), so

* `next_event_time` tells a driver when the engine's next event (first token, finish) can come,
  without running anything: the replay loop then stops there instead of at every step end;
* `_run_merged` completes the whole stretch in one tight loop, without planning each step or
  touching any request.

Neither is a closed-form sum: each step's duration, energy and shares get exactly the float
operations `SimCore._plan` and `SimCore._complete` would give them, in the same order, so results
are identical, bit for bit, to stepping one step at a time (tests/test_sim_fastforward.py holds
this). What is left per step is a dozen float operations: 0.2-0.7 us inside a stretch, against
~3 us for a step planned and completed on its own (bench/bench_sim_clock.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine_adapter.sim.batch import DecodeBatch, Req
from engine_adapter.sim.meter import GpuMeter

if TYPE_CHECKING:
    from engine_adapter.sim.events import SimEvent, SimStats


@dataclass(slots=True, eq=False)
class Step:
    """A planned step: its span and composition."""

    start: float
    end: float
    n_decode: int  # the decode batch when planned
    prefill: list[tuple[Req, int]]
    kv_decode: int
    n_prefill: int
    power_w: float
    pairs: float  # prefill attention work: sum of chunk * (context + chunk / 2)


class DecodeFastForward:
    """SimCore's fast-forward (a mixin: the state is SimCore's)."""

    _batch: DecodeBatch
    _running: dict[str, Req]
    _pending: list[SimEvent]
    _step: Step | None
    _dirty: bool
    _used: int
    _cap: int
    _c: float
    _d: float
    _e: float
    _dscale: float
    _power: tuple[float, float]
    _meter: GpuMeter
    stats: SimStats
    last_end: float | None

    if TYPE_CHECKING:  # SimCore's, which this mixin calls after a merged stretch
        def _plan(self, t: float) -> None: ...

    def next_event_time(self, limit: float = math.inf) -> float | None:
        """The earliest time an event can come out of `advance` if nothing is submitted or aborted
        meanwhile (None when idle): events already pending, else the end of the step in progress
        when it has prefill or could change the batch, else the end of the decode step in which the
        first request of the batch finishes (or before which the KV pool fills up), summed exactly as
        the steps will run. Every step ending before it emits nothing. Past `limit` the sum stops
        and returns what it reached (> limit)."""
        if self._pending:
            return min(e.time for e in self._pending)
        st = self._step
        if st is None:
            return None
        b = self._batch
        n = st.n_decode
        if st.prefill or self._dirty or not n or n != len(self._running) or n != b.n:
            return st.end
        m = b.steps_to_finish()
        cap, scale, e = self._cap, self._dscale, self._e
        base = self._c + self._d * n
        t, used, kv = st.end, self._used, b.kv
        while m > 1 and t <= limit:
            if used + n > cap:  # the next plan retracts (or stops one request): stop here
                return t
            used += n
            kv += n
            t = t + (base + e * kv) * scale
            m -= 1
        return t

    def _run_merged(self, step: Step, until: float) -> bool:
        """Complete the decode-only `step` and the identical steps after it in one go (per_token=False).

        Used only while nothing but the batch's totals changes: no prefill, no submit or abort
        since `step` was planned (so admission stays blocked: each step adds n KV tokens and takes
        at most n * new_token_ratio off the reserve), no request reaches its length and each
        step's KV allocation fits. Each step gets the float operations `_complete` and `_plan`
        would give it, in the same order (time, energy, shares, statistics, throughput window), so
        everything is the same bit for bit; what is saved is the per-step planning and events.
        """
        batch = self._batch
        n = step.n_decode
        if not n or n != len(self._running) or n != batch.n:
            return False
        kmax = batch.steps_to_finish() - 1  # steps with no finish, `step` included
        if kmax < 1:
            return False
        cap, scale, e, power = self._cap, self._dscale, self._e, self._power[0]
        base = self._c + self._d * n
        st, meter = self.stats, self._meter
        t = step.end
        meter.account(step.start, t, step.power_w)  # `step` itself, as _complete does
        dur = t - step.start
        share_s = dur / n
        g_s, g_j = batch.g_s + share_s, batch.g_j + step.power_w * share_s
        steps, busy_s, out = st.steps + 1, st.busy_s + dur, st.output_tokens + n
        used, kv, energy_j, run_start = self._used, batch.kv, meter.energy_j, t
        # steps `step` + 1 .. kstop - 1 have no finish and their KV allocation fits
        kstop = min(kmax, (cap - used) // n + 1)
        k = 1
        planned = None
        ends = [t]  # of `step` and the steps after it, for the throughput window
        while k < kstop:
            kv += n  # plan the next step at t, as _plan does
            end = t + (base + e * kv) * scale
            if end > until:
                planned = Step(t, end, n, [], kv, 0, power, 0.0)
                break
            dur = end - t  # and complete it, as _complete does
            energy_j += power * dur
            busy_s += dur
            share_s = dur / n
            g_s += share_s
            g_j += power * share_s
            k += 1
            ends.append(end)
            t = end
        allocated = k - 1 + (planned is not None)
        batch.k_done += k
        batch.k_alloc += allocated
        batch.g_s, batch.g_j, batch.kv = g_s, g_j, kv
        st.steps, st.busy_s, st.output_tokens = steps + k - 1, busy_s, out + n * (k - 1)
        self._used, meter.energy_j, meter.energy_t, self.last_end = used + n * allocated, energy_j, t, t
        meter.record_token_run(ends, out - n, n)
        if k > 1:
            meter.record_busy(run_start, t, power)
        self._resume_after(planned, t)
        return True

    def _resume_after(self, planned: Step | None, t: float) -> None:
        """Carry on after a merged stretch that ended at `t`: with the step it planned but could not
        complete before `until`, else with a new step planned at `t`."""
        if planned is not None:
            self._step = planned
        else:
            self._plan(t)
