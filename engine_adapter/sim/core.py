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
* **Prefix cache.** An LRU of Mooncake ``hash_ids`` (one id per ``prefix_block_size``-token block).
  At admission the longest run of leading ids present is a hit: those tokens are cached (at most
  prompt - 1, so one token is always computed). A request's blocks enter the cache when its
  prefill completes. The cache is accounted apart from the KV pool.
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from engine_adapter.base import EngineLoad
from engine_adapter.sim.profile import SimProfile

CLIP_MAX_NEW_TOKENS = 4096  # SGLang clips each request's reserve at this many tokens
OUTPUT_LEN_MEDIAN = 180.0  # drawn output lengths: log-normal, median 180, sigma 1.0 (mean ~300)
OUTPUT_LEN_SIGMA = 1.0
THROUGHPUT_WINDOW_S = 5.0
# GPU readings average over the last second, as NVML's do (H100: power is a 1 s average,
# utilisation the busy fraction of a sample period of up to 1 s).
GPU_WINDOW_S = 1.0

_WAITING, _RUNNING, _DONE = 0, 1, 2
_NORMAL = NormalDist()


@dataclass(slots=True)
class SimRequest:
    rid: str
    prompt_tokens: int
    max_new_tokens: int
    output_tokens: int | None = None  # None: a length drawn from (seed, rid)
    hash_ids: Sequence[int] | None = None
    priority: int | None = None  # higher runs first


@dataclass(slots=True, frozen=True)
class SimEvent:
    rid: str
    time: float
    kind: str  # "first_token" | "tokens" | "finish"
    completion_tokens: int  # cumulative
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "abort" on "finish"
    num_retractions: int = 0
    gpu_seconds: float = 0.0  # step time attributed to this request so far (share of each step's tokens)
    energy_j: float = 0.0  # simulated energy attributed the same way
    message: str | None = None


@dataclass(slots=True, eq=False)
class _Req:
    req: SimRequest
    seq: int
    key: tuple[int, int]
    target: int  # tokens it will produce
    length_limited: bool  # reaching `target` means max_new_tokens ("length") rather than EOS ("stop")
    state: int = _WAITING
    generated: int = 0
    kv: int = 0  # KV tokens held
    prefill_target: int = 0  # tokens its (re)prefill must cover
    scheduled: int = 0  # prefill tokens covered so far (cached + scheduled chunks)
    prefilled: bool = False
    cached: int = -1  # cached tokens at first admission (-1: not admitted yet)
    retractions: int = 0
    gpu_s: float = 0.0
    energy_j: float = 0.0


@dataclass(slots=True, eq=False)
class _Step:
    start: float
    end: float
    decoders: list[_Req]
    prefill: list[tuple[_Req, int]]
    kv_decode: int
    n_prefill: int
    power_w: float
    pairs: float  # prefill attention work: sum of chunk * (context + chunk / 2)


@dataclass(slots=True, frozen=True)
class StepInfo:
    """The step in progress: its span and composition (for introspection, attribution and tests)."""

    start: float
    end: float
    n_decode: int
    kv_decode: int
    n_prefill: int
    prefill_rids: tuple[str, ...]
    decode_rids: tuple[str, ...]
    power_w: float
    prefill_pairs: float = 0.0  # sum over prefill chunks of chunk * (context + chunk / 2)


@dataclass(slots=True)
class SimStats:
    steps: int = 0
    busy_s: float = 0.0
    output_tokens: int = 0
    prefill_tokens: int = 0  # computed
    cached_tokens: int = 0
    admitted_prompt_tokens: int = 0
    retractions: int = 0
    finished: int = 0
    aborted: int = 0


class SimCore:
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
        self._reqs: dict[str, _Req] = {}
        self._waiting: list[tuple[tuple[int, int], str]] = []  # sorted by key
        self._waiting_tokens = 0
        self._running: dict[str, _Req] = {}  # admission order: the last is the newest
        self._used = 0
        self._seq = 0
        self._step: _Step | None = None
        self._pending: list[SimEvent] = []
        self._dirty = False  # a submit or abort happened since the current step was planned
        self._lru: OrderedDict[int, None] = OrderedDict()
        self._energy_j = 0.0
        self._energy_t: float | None = None
        self._origin: float | None = None  # the first submit: readings do not average over before it
        self._busy: deque[tuple[float, float, float]] = deque()  # completed busy spans (start, end, W)
        self._tput: deque[tuple[float, int]] = deque()
        self.stats = SimStats()

    # -- public API ------------------------------------------------------------------------
    def submit(self, now: float, req: SimRequest) -> None:
        """Queue a request at `now` (advance to `now` first: earlier steps must have run)."""
        if req.rid in self._reqs:
            raise ValueError(f"duplicate rid {req.rid!r}")
        if req.prompt_tokens < 1 or req.max_new_tokens < 0:
            raise ValueError("need prompt_tokens >= 1 and max_new_tokens >= 0")
        if self._energy_t is None:
            self._energy_t = self._origin = now
        if req.output_tokens is not None:
            target = min(max(0, req.output_tokens), req.max_new_tokens)
            length_limited = req.output_tokens >= req.max_new_tokens
        else:
            drawn = self._draw_output_len(req.rid)
            target = min(drawn, req.max_new_tokens)
            length_limited = drawn >= req.max_new_tokens
        self._seq += 1
        key = (-(req.priority or 0), self._seq)
        r = _Req(req, self._seq, key, target, length_limited, prefill_target=req.prompt_tokens)
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
        if r is None or r.state == _DONE:
            return False
        if r.state == _WAITING:
            self._remove_waiting(r)
        else:
            del self._running[rid]
            self._used -= r.kv
            r.kv = 0
        r.state = _DONE
        del self._reqs[rid]
        self._dirty = True
        self.stats.aborted += 1
        self._pending.append(self._event(r, now, "finish", "abort"))
        return True

    def next_time(self) -> float | None:
        """End of the step in progress; None when idle."""
        return self._step.end if self._step is not None else None

    def advance(self, until: float, per_token: bool = True) -> list[SimEvent]:
        """Run every step ending at or before `until`; return the events in time order."""
        events = self._pending
        self._pending = []
        while self._step is not None and self._step.end <= until:
            step = self._step
            if per_token or step.prefill or self._dirty or not self._run_merged(step, until):
                self._complete(step, events, per_token)
                self._plan(step.end)
            if self._pending:
                events.extend(self._pending)
                self._pending = []
        return events

    def current_step(self) -> StepInfo | None:
        """The step in progress (planned, not yet completed), or None when idle."""
        st = self._step
        if st is None:
            return None
        return StepInfo(st.start, st.end, len(st.decoders), st.kv_decode, st.n_prefill,
                        tuple(r.req.rid for r, _ in st.prefill), tuple(r.req.rid for r in st.decoders), st.power_w,
                        st.pairs)

    def load(self, now: float) -> EngineLoad:
        st = self.stats
        return EngineLoad(
            running=len(self._running),
            waiting=len(self._waiting),
            used_tokens=self._used,
            total_tokens=self._cap,
            waiting_uncached_tokens=self._waiting_tokens,
            gen_throughput=self._throughput(now),
            cache_hit_rate=st.cached_tokens / st.admitted_prompt_tokens if st.admitted_prompt_tokens else 0.0,
            timestamp=now,
        )

    def gpu(self, now: float) -> dict[str, float]:
        """Simulated NVML-like readings at `now`: power and utilisation averaged over the last
        `GPU_WINDOW_S` (since the first submit, if later), energy since then, memory in use."""
        p = self.profile
        step = self._step
        energy = self._energy_j
        t0 = self._energy_t if self._energy_t is not None else now
        if step is not None and now > step.start:
            energy += p.idle_w * max(0.0, step.start - t0) + step.power_w * (min(now, step.end) - step.start)
            energy += p.idle_w * max(0.0, now - step.end)
        else:
            energy += p.idle_w * max(0.0, now - t0)
        w0 = now - GPU_WINDOW_S if self._origin is None else max(now - GPU_WINDOW_S, self._origin)
        busy = above_idle_j = 0.0
        spans = list(self._busy)
        if step is not None and step.start < now:
            spans.append((step.start, min(now, step.end), step.power_w))
        for start, end, power in spans:
            overlap = min(end, now) - max(start, w0)
            if overlap > 0:
                busy += overlap
                above_idle_j += (power - p.idle_w) * overlap
        if now > w0:
            utilization, power_w = min(1.0, busy / (now - w0)), p.idle_w + above_idle_j / (now - w0)
        elif step is not None and step.start <= now:  # nothing to average over yet (the first submit)
            utilization, power_w = 1.0, step.power_w
        else:
            utilization, power_w = 0.0, p.idle_w
        # SGLang preallocates its KV pool (NVML shows it whole, a constant): the simulator reports
        # the weights plus the KV tokens in use instead, so that memory follows the load
        kv_bytes = p.kv_bytes_per_token
        weights = max(0, p.memory_used_bytes - p.kv_capacity_tokens * kv_bytes)
        return {
            "power_w": power_w,
            "energy_j": energy,
            "sm_clock_mhz": self._freq,
            "utilization": utilization,
            "memory_used_bytes": float(weights + self._used * kv_bytes if kv_bytes else p.memory_used_bytes),
            "memory_total_bytes": float(p.memory_total_bytes),
        }

    def set_frequency(self, mhz: float) -> float:
        """Lock the SM clock (clamped to [f_min, f_max]); applies from the next step. Returns it."""
        self._freq = self._clock.clamp(mhz)
        self._pscale = self._clock.prefill_scale(self._freq)
        self._dscale = self._clock.decode_scale(self._freq)
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
            t += self._decode_time(n_decode, kv_decode) * self._dscale
        if n_prefill:
            t += (self._a + self._b * n_prefill + self._f * prefill_pairs) * self._pscale
        return t

    def active(self) -> int:
        return len(self._reqs)

    # -- internals ---------------------------------------------------------------------------
    def _decode_time(self, n: int, kv: int) -> float:
        return self._c + self._d * n + self._e * kv

    def _draw_output_len(self, rid: str) -> int:
        h = hashlib.blake2b(f"{self.seed}\x00{rid}".encode(), digest_size=8).digest()
        u = (int.from_bytes(h, "big") + 0.5) / 2.0**64
        z = _NORMAL.inv_cdf(u)
        return max(1, int(round(OUTPUT_LEN_MEDIAN * math.exp(OUTPUT_LEN_SIGMA * z))))

    def _event(self, r: _Req, t: float, kind: str, reason: str | None = None,
               message: str | None = None) -> SimEvent:
        return SimEvent(r.req.rid, t, kind, r.generated, r.req.prompt_tokens, max(0, r.cached), reason,
                        r.retractions, r.gpu_s, r.energy_j, message)

    def _remove_waiting(self, r: _Req) -> None:
        item = (r.key, r.req.rid)
        i = bisect.bisect_left(self._waiting, item)
        del self._waiting[i]
        self._waiting_tokens -= r.prefill_target

    def _block_sizes(self, r: _Req) -> list[int]:
        ids = r.req.hash_ids
        if not ids:
            return []
        bs = self.profile.prefix_block_size
        n = min(len(ids), -(-r.req.prompt_tokens // bs))
        return [min(bs, r.req.prompt_tokens - bs * i) for i in range(n)]

    def _prefix_hit(self, r: _Req) -> tuple[int, int]:
        """(cached tokens, blocks hit) for r's prompt, without touching the LRU."""
        if not self.profile.prefix_cache_blocks or not r.req.hash_ids:
            return 0, 0
        tokens = blocks = 0
        for hid, size in zip(r.req.hash_ids, self._block_sizes(r)):
            if hid not in self._lru:
                break
            tokens += size
            blocks += 1
        return min(tokens, r.req.prompt_tokens - 1), blocks

    def _cache_insert(self, r: _Req) -> None:
        cap = self.profile.prefix_cache_blocks
        if not cap or not r.req.hash_ids:
            return
        lru = self._lru
        for hid in r.req.hash_ids[: len(self._block_sizes(r))]:
            if hid in lru:
                lru.move_to_end(hid)
            else:
                lru[hid] = None
        while len(lru) > cap:
            lru.popitem(last=False)

    def _retract(self, r: _Req) -> None:
        del self._running[r.req.rid]
        self._used -= r.kv
        r.kv = 0
        r.state = _WAITING
        r.prefilled = False
        r.scheduled = 0
        r.prefill_target = r.req.prompt_tokens + r.generated
        r.retractions += 1
        self.stats.retractions += 1
        bisect.insort(self._waiting, (r.key, r.req.rid))
        self._waiting_tokens += r.prefill_target

    def _finish(self, r: _Req, t: float, reason: str, out: list[SimEvent]) -> None:
        del self._running[r.req.rid]
        del self._reqs[r.req.rid]
        self._used -= r.kv
        r.kv = 0
        r.state = _DONE
        self.stats.finished += 1
        out.append(self._event(r, t, "finish", reason))

    def _plan(self, t: float) -> None:
        """Plan the step starting at t (or go idle)."""
        self._dirty = False
        cap = self._cap
        running = self._running
        decoders = []
        unprefilled = 0  # prompt tokens admitted requests still have to prefill (already committed)
        for r in running.values():
            if r.prefilled:
                decoders.append(r)
            else:
                unprefilled += r.prefill_target - r.scheduled
        n = len(decoders)
        # 1. room for one more KV token per decoding request (and for the committed prefills),
        #    retracting the newest running request while it does not fit
        while n and self._used + n + unprefilled > cap:
            victim = next(reversed(running.values()))
            if not victim.prefilled:
                unprefilled -= victim.prefill_target - victim.scheduled
            if len(running) == 1:  # alone and the pool is full: it has hit the context limit
                self._finish(victim, t, "length", self._pending)
            else:
                self._retract(victim)
            decoders = [r for r in decoders if r is not victim]
            n = len(decoders)
        kv_decode = 0
        for r in decoders:
            r.kv += 1
            kv_decode += r.kv
        self._used += n
        # 2. prefill chunks: in-progress prefills first, then admissions
        budget = self.profile.chunked_prefill_size - n
        prefill: list[tuple[_Req, int]] = []
        pending_prefill = 0
        pairs = 0.0  # attention work of the chunks: each attends to its context and causally to itself
        for r in running.values():
            if r.prefilled:
                continue
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
            ratio = self.profile.new_token_ratio
            reserve = ratio * sum(min(r.req.max_new_tokens - r.generated, CLIP_MAX_NEW_TOKENS)
                                  for r in running.values()) if ratio else 0.0
            while self._waiting and budget > 0 and len(running) < self.profile.max_running_requests:
                r = self._reqs[self._waiting[0][1]]
                if r.prefill_target + 1 > cap:  # recompute no longer fits: it hit the context limit
                    self._remove_waiting(r)
                    r.state = _RUNNING
                    running[r.req.rid] = r
                    self._finish(r, t, "length", self._pending)
                    continue
                hit, blocks = self._prefix_hit(r)
                own = ratio * min(r.req.max_new_tokens - r.generated, CLIP_MAX_NEW_TOKENS)
                if running and self._used + pending_prefill + r.prefill_target + reserve + own > cap:
                    break  # head-of-line: wait for KV to free up
                self._waiting.pop(0)
                self._waiting_tokens -= r.prefill_target
                if blocks:
                    for hid in r.req.hash_ids[:blocks]:  # type: ignore[index]
                        self._lru.move_to_end(hid)
                if r.cached < 0:
                    r.cached = hit
                    self.stats.cached_tokens += hit
                    self.stats.admitted_prompt_tokens += r.req.prompt_tokens
                r.state = _RUNNING
                running[r.req.rid] = r
                reserve += own
                chunk = min(r.prefill_target - hit, budget)
                pairs += chunk * (hit + chunk / 2)
                r.scheduled = hit + chunk
                r.kv = hit + chunk
                self._used += hit + chunk
                budget -= chunk
                pending_prefill += r.prefill_target - r.scheduled
                prefill.append((r, chunk))
        n_prefill = sum(c for _, c in prefill)
        if not n and not n_prefill:
            self._step = None
            return
        dur = self.step_time(n, kv_decode, n_prefill, pairs)
        power = self._clock.power_w(self._freq, n_prefill > 0)
        self._step = _Step(t, t + dur, decoders, prefill, kv_decode, n_prefill, power, pairs)

    def _account_energy(self, start: float, end: float, power: float) -> None:
        if self._energy_t is None:
            self._energy_t = start
        self._energy_j += self.profile.idle_w * max(0.0, start - self._energy_t) + power * (end - start)
        self._energy_t = end
        self._record_busy(start, end, power)

    def _record_busy(self, start: float, end: float, power: float) -> None:
        """Keep the busy spans of the last GPU window (back-to-back steps at one power merge)."""
        busy = self._busy
        if busy and busy[-1][1] == start and busy[-1][2] == power:
            busy[-1] = (busy[-1][0], end, power)
        else:
            busy.append((start, end, power))
        while len(busy) > 1 and busy[0][1] < end - GPU_WINDOW_S:
            busy.popleft()

    def _record_tput(self, t: float) -> None:
        self._tput.append((t, self.stats.output_tokens))
        while len(self._tput) > 2 and self._tput[1][0] <= t - THROUGHPUT_WINDOW_S:
            self._tput.popleft()

    def _throughput(self, now: float) -> float:
        if not self._tput:
            return 0.0
        t0, c0 = self._tput[0]
        t1, c1 = self._tput[-1]
        if len(self._tput) == 1 or c1 == c0:
            return 0.0
        return (c1 - c0) / max(now - t0, t1 - t0, 1e-9)

    def _complete(self, step: _Step, events: list[SimEvent], per_token: bool) -> None:
        t = step.end
        dur = t - step.start
        self._account_energy(step.start, t, step.power_w)
        st = self.stats
        st.steps += 1
        st.busy_s += dur
        st.prefill_tokens += step.n_prefill
        total_tokens = len(step.decoders) + step.n_prefill
        share_s = dur / total_tokens
        share_j = step.power_w * share_s
        for r, chunk in step.prefill:
            if r.state != _RUNNING:
                continue
            r.gpu_s += share_s * chunk
            r.energy_j += share_j * chunk
            if r.scheduled == r.prefill_target:
                r.prefilled = True
                self._cache_insert(r)
                self._token(r, t, events, per_token)
        for r in step.decoders:
            if r.state != _RUNNING:
                continue
            r.gpu_s += share_s
            r.energy_j += share_j
            self._token(r, t, events, per_token)
        self._record_tput(t)

    def _token(self, r: _Req, t: float, events: list[SimEvent], per_token: bool) -> None:
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

    def _run_merged(self, step: _Step, until: float) -> bool:
        """Complete `step` and the identical decode-only steps after it in one go (per_token=False).

        Used only when nothing can change between those steps: no prefill, no submit or abort
        since `step` was planned (so admission stays blocked or the queue empty), nobody reaches
        its output length, and each step's KV allocation fits. Step times are summed exactly as
        step-by-step planning computes them, so event times are the same bit for bit.
        """
        decoders = step.decoders
        n = len(decoders)
        if not n or n != len(self._running):  # a starved prefill pending: step one at a time
            return False
        kmax = min(r.target - r.generated for r in decoders) - 1  # steps with no finish
        if kmax < 2:
            return False
        cap, scale = self._cap, self._dscale
        power = self._clock.power_w(self._freq, False)
        t, used, kv, k = step.end, self._used, step.kv_decode, 1
        busy = step.end - step.start
        extra_j = 0.0
        while k < kmax and used + n <= cap:
            dur = self._decode_time(n, kv + n) * scale
            end = t + dur
            if end > until:
                break
            used += n
            kv += n
            t = end
            busy += dur
            extra_j += power * dur
            k += 1
        if k < 2:
            return False
        self._account_energy(step.start, step.end, step.power_w)
        self._energy_j += extra_j
        self._energy_t = t
        self._record_busy(step.end, t, power)
        st = self.stats
        st.steps += k
        st.busy_s += busy
        st.output_tokens += n * k
        self._used = used
        share_s = busy / n
        share_j = (step.power_w * (step.end - step.start) + extra_j) / n
        for r in decoders:
            r.generated += k
            r.kv += k - 1
            r.gpu_s += share_s
            r.energy_j += share_j
        self._record_tput(t)
        self._plan(t)
        return True
