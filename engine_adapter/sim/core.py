"""SimCore: a pure discrete-event model of one SGLang-like engine on one GPU.

No clock reads, no asyncio, no I/O: the caller passes every time in (seconds, any origin) and
the model is deterministic for a seed. The asyncio `SimEngine` drives it with the wall clock; the
replay runner drives it with a virtual clock. The exact rules are documented in docs/simulator.md;
in short:

* **Steps.** The engine runs one step at a time, back to back while it has work. A step is planned
  when the previous one ends (or when a request arrives at an idle engine):
  1. every running request whose prefill is complete *decodes* one token; each needs one more KV
     slot. While the KV pool cannot hold them, the newest running request is *retracted* (its KV
     is freed, it goes back to the waiting queue and will recompute prompt + generated tokens);
  2. the step's token budget is ``chunked_prefill_size``; decoding requests use 1 each, the rest
     goes to prefill chunks: first to running requests whose prefill is in progress (oldest first),
     then to newly admitted waiting requests;
  3. a waiting request is admitted (head of the queue only; the queue is FCFS, higher
     ``priority`` first) while there is budget, fewer than ``max_running_requests`` are running, and
     ``used + pending prefill + its uncached prompt + new_token_ratio * sum(remaining max_new_tokens,
     each clipped at 4096) <= kv_capacity`` (SGLang's admission reserve); a request alone is always
     admitted;
  4. its duration at SM clock f is
     ``[n_decode > 0] * (c + d*n_decode + e*kv_decode) * D(f) + [n_prefill > 0] * (a + b*n_prefill + f*pairs) * P(f)``
     with P(f) = f_max / f (compute-bound) and D(f) = 1 - phi + phi * f_max / f (memory-bound:
     only the share phi scales; engine_adapter/clock.py), and its power is the clock model's
     where ``kv_decode`` is the KV tokens held by the decoding requests (after this step's
     allocation), ``n_prefill`` the prefill tokens computed (prefix-cache hits are not computed) and
     ``pairs`` the attention work of the chunks: ``sum chunk * (context + chunk / 2)``, ``context``
     being the tokens of that request already in the KV (its cached prefix and earlier chunks).
* **Tokens.** At the end of a step each decoding request gains one token; a request whose last
  prefill chunk was in the step gains its first token (TTFT). A request finishes when it reaches
  its output length (``"stop"``) or ``max_new_tokens`` (``"length"``); its KV is freed.
* **Prefix cache.** An LRU of Mooncake ``hash_ids`` (engine_adapter/sim/prefix.py).

How it runs: the requests whose prefill is complete form a decode batch that keeps running totals
(engine_adapter/sim/batch.py), so a step costs the same whatever the batch size (planning and
completing it, engine_adapter/sim/completion.py, touch only the prefill chunks and the requests
that finish); stretches of identical decode steps run in one loop and a driver can ask when the
next event can come (engine_adapter/sim/fastforward.py); the GPU's energy and readings are
engine_adapter/sim/meter.py.
Results are identical, bit for bit, however the engine is advanced.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from statistics import NormalDist

from engine_adapter.base import EngineLoad
from engine_adapter.sim.batch import CLIP_MAX_NEW_TOKENS, DONE, RUNNING, WAITING, DecodeBatch, Req
from engine_adapter.sim.completion import StepCompletion
from engine_adapter.sim.events import SimEvent, SimRequest, SimStats, StepInfo
from engine_adapter.sim.fastforward import DecodeFastForward, Step
from engine_adapter.sim.meter import GPU_WINDOW_S, GpuMeter
from engine_adapter.sim.prefix import PrefixCache
from engine_adapter.sim.profile import SimProfile

__all__ = ["CLIP_MAX_NEW_TOKENS", "GPU_WINDOW_S", "SimCore", "SimEvent", "SimRequest", "SimStats", "StepInfo"]

OUTPUT_LEN_MEDIAN = 180.0  # drawn output lengths: log-normal, median 180, sigma 1.0 (mean ~300)
OUTPUT_LEN_SIGMA = 1.0

_NORMAL = NormalDist()


class SimCore(StepCompletion, DecodeFastForward):
    def __init__(self, profile: SimProfile, seed: int = 0) -> None:
        profile.validate()
        self.profile = profile
        self.seed = seed
        s = profile.step
        self._a, self._b, self._c, self._d, self._e, self._f = (
            s.prefill_a, s.prefill_b, s.decode_c, s.decode_d, s.decode_e, s.prefill_f)
        self._cap = profile.kv_capacity_tokens
        self._clock = profile.clock
        self._freq = profile.f_max_mhz
        self._pscale = self._dscale = 1.0  # prefill and decode time factors at the current clock
        self._power = (self._clock.power_w(self._freq, False), self._clock.power_w(self._freq, True))
        self._reqs: dict[str, Req] = {}
        self._waiting: list[tuple[tuple[int, int], str]] = []  # sorted by key
        self._waiting_tokens = 0
        self._running: dict[str, Req] = {}  # admission order: the last is the newest
        self._prefilling: dict[str, Req] = {}  # the running ones whose prefill is in progress (same order)
        self._batch = DecodeBatch()  # the running ones whose prefill is complete
        self._reserve_prefilling = 0  # their terms of the admission reserve
        self._used = 0
        self._seq = self._run_seq = 0
        self._step: Step | None = None
        self._pending: list[SimEvent] = []
        self._dirty = False  # a submit or abort happened since the current step was planned
        self._cache = PrefixCache(profile.prefix_block_size, profile.prefix_cache_blocks)
        self._meter = GpuMeter(profile)
        self.last_end: float | None = None  # end of the last completed step
        self.stats = SimStats()

    # -- public API ------------------------------------------------------------------------
    def submit(self, now: float, req: SimRequest) -> None:
        """Queue a request at `now` (advance to `now` first: earlier steps must have run)."""
        if req.rid in self._reqs:
            raise ValueError(f"duplicate rid {req.rid!r}")
        if req.prompt_tokens < 1 or req.max_new_tokens < 0:
            raise ValueError("need prompt_tokens >= 1 and max_new_tokens >= 0")
        self._meter.start(now)
        if req.output_tokens is not None:
            target = min(max(0, req.output_tokens), req.max_new_tokens)
            length_limited = req.output_tokens >= req.max_new_tokens
        else:
            drawn = self._draw_output_len(req.rid)
            target = min(drawn, req.max_new_tokens)
            length_limited = drawn >= req.max_new_tokens
        self._seq += 1
        key = (-(req.priority or 0), self._seq)
        r = Req(req, self._seq, key, target, length_limited, prefill_target=req.prompt_tokens)
        if req.prompt_tokens + 1 > self._cap:
            self._pending.append(self._event(r, now, "finish", "abort",
                                             message="prompt longer than the KV capacity"))
            self.stats.aborted += 1
            return
        self._reqs[req.rid] = r
        bisect.insort(self._waiting, (key, req.rid))
        self._waiting_tokens += r.prefill_target
        self._dirty = True
        if self._step is None:
            self._plan(now)

    def abort(self, now: float, rid: str) -> bool:
        """Drop a waiting or running request; its finish event ("abort") comes with the next advance."""
        r = self._reqs.get(rid)
        if r is None or r.state == DONE:
            return False
        if r.state == RUNNING:
            self._leave(r)
        else:
            self._remove_waiting(r)
        r.state = DONE
        del self._reqs[rid]
        self._dirty = True
        self.stats.aborted += 1
        self._pending.append(self._event(r, now, "finish", "abort"))
        return True

    def next_time(self) -> float | None:
        """End of the step in progress; None when idle."""
        return self._step.end if self._step is not None else None

    def due(self, until: float) -> bool:
        """Would `advance(until)` run a step or return an event?"""
        return bool(self._pending) or (self._step is not None and self._step.end <= until)

    def advance(self, until: float, per_token: bool = True) -> list[SimEvent]:
        """Run every step ending at or before `until`; return the events in time order.

        With per_token=False only first_token and finish events are emitted, and stretches of
        identical decode steps run in one go (`_run_merged`), with the same results bit for bit."""
        events = self._pending
        self._pending = []
        step = self._step
        while step is not None and step.end <= until:
            if per_token or step.prefill or self._dirty or not self._run_merged(step, until):
                self._complete(step, events, per_token)
                self._plan(step.end)
            if self._pending:
                events.extend(self._pending)
                self._pending = []
            step = self._step
        return events

    def current_step(self) -> StepInfo | None:
        """The step in progress (planned, not yet completed), or None when idle."""
        st = self._step
        if st is None:
            return None
        decoding = tuple(r.req.rid for r in self._running.values() if r.prefilled)
        return StepInfo(st.start, st.end, st.n_decode, st.kv_decode, st.n_prefill,
                        tuple(r.req.rid for r, _ in st.prefill), decoding, st.power_w, st.pairs)

    def load(self, now: float) -> EngineLoad:
        st = self.stats
        return EngineLoad(
            running=len(self._running),
            waiting=len(self._waiting),
            used_tokens=self._used,
            total_tokens=self._cap,
            waiting_uncached_tokens=self._waiting_tokens,
            gen_throughput=self._meter.throughput(now),
            cache_hit_rate=st.cached_tokens / st.admitted_prompt_tokens if st.admitted_prompt_tokens else 0.0,
            timestamp=now,
        )

    def gpu(self, now: float) -> dict[str, float]:
        """Simulated NVML-like readings at `now`: power and utilisation averaged over the last
        `GPU_WINDOW_S` (since the first submit, if later), energy since then, memory in use."""
        st = self._step
        return self._meter.readings(now, None if st is None else (st.start, st.end, st.power_w), self._freq,
                                    self._used)

    def set_frequency(self, mhz: float) -> float:
        """Lock the SM clock (clamped to [f_min, f_max]); applies from the next step. Returns it."""
        self._freq = self._clock.clamp(mhz)
        self._pscale = self._clock.prefill_scale(self._freq)
        self._dscale = self._clock.decode_scale(self._freq)
        self._power = (self._clock.power_w(self._freq, False), self._clock.power_w(self._freq, True))
        return self._freq

    @property
    def frequency_mhz(self) -> float:
        return self._freq

    def step_time(self, n_decode: int, kv_decode: int, n_prefill: int, prefill_pairs: float = 0.0) -> float:
        """Duration of a step with this composition at the current frequency (the model's rule).

        `prefill_pairs` is the chunks' attention work, sum of chunk * (context + chunk / 2).
        """
        t = 0.0
        if n_decode:
            t += (self._c + self._d * n_decode + self._e * kv_decode) * self._dscale
        if n_prefill:
            t += (self._a + self._b * n_prefill + self._f * prefill_pairs) * self._pscale
        return t

    def active(self) -> int:
        return len(self._reqs)

    # -- internals ---------------------------------------------------------------------------
    def _draw_output_len(self, rid: str) -> int:
        h = hashlib.blake2b(f"{self.seed}\x00{rid}".encode(), digest_size=8).digest()
        u = (int.from_bytes(h, "big") + 0.5) / 2.0**64
        z = _NORMAL.inv_cdf(u)
        return max(1, int(round(OUTPUT_LEN_MEDIAN * math.exp(OUTPUT_LEN_SIGMA * z))))

    def _event(self, r: Req, t: float, kind: str, reason: str | None = None,
               message: str | None = None) -> SimEvent:
        if r.prefilled and r.state == RUNNING:  # in the decode batch: its live figures
            generated, _, gpu_s, energy_j = self._batch.live(r)
        else:
            generated, gpu_s, energy_j = r.generated, r.gpu_s, r.energy_j
        return SimEvent(r.req.rid, t, kind, generated, r.req.prompt_tokens, max(0, r.cached), reason,
                        r.retractions, gpu_s, energy_j, message)

    def _remove_waiting(self, r: Req) -> None:
        item = (r.key, r.req.rid)
        i = bisect.bisect_left(self._waiting, item)
        del self._waiting[i]
        self._waiting_tokens -= r.prefill_target

    def _admit(self, r: Req) -> None:
        """Waiting -> running (its prefill in progress)."""
        r.state = RUNNING
        self._run_seq += 1
        r.run_seq = self._run_seq
        self._running[r.req.rid] = r
        self._prefilling[r.req.rid] = r
        self._reserve_prefilling += r.reserve()

    def _leave(self, r: Req) -> None:
        """Running -> out (finish, retraction, abort): its KV is freed, its fields up to date."""
        if r.prefilled:
            self._batch.leave(r)
        elif self._prefilling.pop(r.req.rid, None) is not None:  # (else: between the two, see _complete)
            self._reserve_prefilling -= r.reserve()
        del self._running[r.req.rid]
        self._used -= r.kv
        r.kv = 0

    def _retract(self, r: Req) -> None:
        self._leave(r)
        r.state = WAITING
        r.prefilled = False
        r.scheduled = 0
        r.prefill_target = r.req.prompt_tokens + r.generated
        r.retractions += 1
        self.stats.retractions += 1
        bisect.insort(self._waiting, (r.key, r.req.rid))
        self._waiting_tokens += r.prefill_target

    def _finish(self, r: Req, t: float, reason: str, out: list[SimEvent]) -> None:
        """A running request ends (its last token, or the context limit)."""
        self._leave(r)
        r.state = DONE
        del self._reqs[r.req.rid]
        self.stats.finished += 1
        out.append(self._event(r, t, "finish", reason))

    def _plan(self, t: float) -> None:
        """Plan the step starting at t (or go idle)."""
        self._dirty = False
        cap, running, batch = self._cap, self._running, self._batch
        unprefilled = 0  # prompt tokens admitted requests still have to prefill (already committed)
        for r in self._prefilling.values():
            unprefilled += r.prefill_target - r.scheduled
        # 1. room for one more KV token per decoding request (and for the committed prefills),
        #    retracting the newest running request while it does not fit
        while batch.n and self._used + batch.n + unprefilled > cap:
            victim = next(reversed(running.values()))
            if not victim.prefilled:
                unprefilled -= victim.prefill_target - victim.scheduled
            if len(running) == 1:  # alone and the pool is full: it has hit the context limit
                self._finish(victim, t, "length", self._pending)
            else:
                self._retract(victim)
        n = batch.n
        if n:
            batch.allocate()
            self._used += n
        kv_decode = batch.kv if n else 0
        # 2. prefill chunks: in-progress prefills first, then admissions
        budget = budget0 = self.profile.chunked_prefill_size - n
        prefill: list[tuple[Req, int]] = []
        pending_prefill = 0
        pairs = 0.0  # attention work of the chunks: each attends to its context and causally to itself
        for r in self._prefilling.values():
            left = r.prefill_target - r.scheduled
            chunk = min(left, budget) if budget > 0 else 0
            if chunk:
                pairs += chunk * (r.scheduled + chunk / 2)
                r.scheduled += chunk
                r.kv += chunk
                self._used += chunk
                budget -= chunk
                prefill.append((r, chunk))
            pending_prefill += left - chunk
        if self._waiting and budget > 0 and len(running) < self.profile.max_running_requests:
            pairs, budget = self._admit_waiting(t, budget, pending_prefill, pairs, prefill)
        n_prefill = budget0 - budget  # the chunks' tokens: the budget they took
        if not n and not n_prefill:
            self._step = None
            return
        dur = self.step_time(n, kv_decode, n_prefill, pairs)
        self._step = Step(t, t + dur, n, prefill, kv_decode, n_prefill, self._power[n_prefill > 0], pairs)

    def _admit_waiting(self, t: float, budget: int, pending_prefill: int, pairs: float,
                       prefill: list[tuple[Req, int]]) -> tuple[float, int]:
        """Admit from the head of the waiting queue while SGLang's rule allows (step 3 above);
        their first chunks join `prefill`. Returns the chunks' attention work so far and the budget left."""
        cap, running, cache = self._cap, self._running, self._cache
        ratio = self.profile.new_token_ratio
        reserve = ratio * (self._reserve_prefilling + self._batch.reserve()) if ratio else 0.0
        while self._waiting and budget > 0 and len(running) < self.profile.max_running_requests:
            r = self._reqs[self._waiting[0][1]]
            if r.prefill_target + 1 > cap:  # recompute no longer fits: it hit the context limit
                self._remove_waiting(r)
                self._admit(r)
                self._finish(r, t, "length", self._pending)
                continue
            hit, blocks = cache.hit(r.req.hash_ids, r.req.prompt_tokens)
            own = ratio * r.reserve()
            if running and self._used + pending_prefill + r.prefill_target + reserve + own > cap:
                break  # head-of-line: wait for KV to free up
            self._waiting.pop(0)
            self._waiting_tokens -= r.prefill_target
            if blocks:
                cache.touch(r.req.hash_ids[:blocks])  # type: ignore[index]
            if r.cached < 0:
                r.cached = hit
                self.stats.cached_tokens += hit
                self.stats.admitted_prompt_tokens += r.req.prompt_tokens
            self._admit(r)
            reserve += own
            chunk = min(r.prefill_target - hit, budget)
            pairs += chunk * (hit + chunk / 2)
            r.scheduled = hit + chunk
            r.kv = hit + chunk
            self._used += hit + chunk
            budget -= chunk
            pending_prefill += r.prefill_target - r.scheduled
            prefill.append((r, chunk))
        return pairs, budget
