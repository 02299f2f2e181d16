"""Completing a planned step of the simulated engine (`SimCore`, engine_adapter/sim/core.py): its
time and energy shared among the requests it served, each decoding request's token, the first
token of a request whose prefill it finished, and the requests that reach their length.

A mixin: the state is SimCore's, and so are the calls back into it (`_finish`, `_event`). The rules
are docs/simulator.md's "Tokens"; `_complete` is the one-step path the fast-forward
(engine_adapter/sim/fastforward.py) reproduces bit for bit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine_adapter.sim.batch import RUNNING, DecodeBatch, Req
from engine_adapter.sim.events import SimEvent, SimStats
from engine_adapter.sim.fastforward import Step
from engine_adapter.sim.meter import GpuMeter
from engine_adapter.sim.prefix import PrefixCache


class StepCompletion:
    """SimCore's step completion (a mixin: the state is SimCore's)."""

    _batch: DecodeBatch
    _running: dict[str, Req]
    _prefilling: dict[str, Req]
    _reserve_prefilling: int
    _cache: PrefixCache
    _meter: GpuMeter
    stats: SimStats
    last_end: float | None

    if TYPE_CHECKING:  # SimCore's, which completing a step calls
        def _finish(self, r: Req, t: float, reason: str, out: list[SimEvent]) -> None: ...

        def _event(self, r: Req, t: float, kind: str, reason: str | None = None,
                   message: str | None = None) -> SimEvent: ...

    def _complete(self, step: Step, events: list[SimEvent], per_token: bool) -> None:
        t = step.end
        dur = t - step.start
        self._meter.account(step.start, t, step.power_w)
        st = self.stats
        st.steps += 1
        st.busy_s += dur
        st.prefill_tokens += step.n_prefill
        self.last_end = t
        share_s = dur / (step.n_decode + step.n_prefill)
        share_j = step.power_w * share_s
        batch = self._batch
        # the decode batch first (so that requests joining it now do not count), its events after
        # the prefills' as when each request was stepped in turn
        done: list[Req] = []
        decoding: list[Req] = []
        if step.n_decode:
            if per_token:
                decoding = [r for r in self._running.values() if r.prefilled]
            st.output_tokens += batch.n
            done = batch.complete(share_s, share_j)
        for r, chunk in step.prefill:
            if r.state != RUNNING:
                continue
            r.gpu_s += share_s * chunk
            r.energy_j += share_j * chunk
            if r.scheduled == r.prefill_target:  # out of the prefilling set, into the batch (or done)
                del self._prefilling[r.req.rid]
                self._reserve_prefilling -= r.reserve()
                self._cache.insert(r.req.hash_ids, r.req.prompt_tokens)
                self._first_token(r, t, events, per_token)
        if per_token:
            self._token_events(decoding, t, events)
        else:
            for r in done:
                self._finish(r, t, "length" if r.length_limited else "stop", events)
        self._meter.record_tokens(t, st.output_tokens)

    def _token_events(self, decoding: list[Req], t: float, events: list[SimEvent]) -> None:
        """per_token: each member of the step's batch emits its token (its live figures, computed
        here rather than through `_event`: this runs once per token), or finishes."""
        b = self._batch
        k_done, g_s, g_j = b.k_done, b.g_s, b.g_j
        for r in decoding:
            generated = r.generated + k_done - r.a_done
            if generated >= r.target:  # (batch.complete returned it)
                self._finish(r, t, "length" if r.length_limited else "stop", events)
            else:
                events.append(SimEvent(r.req.rid, t, "tokens", generated, r.req.prompt_tokens, max(0, r.cached),
                                       None, r.retractions, r.gpu_s + (g_s - r.a_s), r.energy_j + (g_j - r.a_j)))

    def _first_token(self, r: Req, t: float, events: list[SimEvent], per_token: bool) -> None:
        """Its prefill completed (it is in neither the prefilling set nor the batch): its first
        token (or its next one, after a retraction); then it joins the batch or finishes."""
        if r.target == 0:
            self._finish(r, t, "length" if r.length_limited else "stop", events)
            return
        r.generated += 1
        self.stats.output_tokens += 1
        if r.generated == 1:
            events.append(self._event(r, t, "first_token"))
        elif per_token and r.generated < r.target:
            events.append(self._event(r, t, "tokens"))
        if r.generated >= r.target:
            self._finish(r, t, "length" if r.length_limited else "stop", events)
        else:
            r.prefilled = True
            self._batch.join(r)
