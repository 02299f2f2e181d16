"""The simulated engine's decode batch, advanced in O(1) per step (engine_adapter/sim/core.py).

Every request in the decode batch gains the same things in a step: one KV slot when the step is
planned, and one token plus the same share of the step's time and energy when it completes. So
instead of updating each request, the batch keeps running totals (steps planned, steps completed,
time and energy per decoding request) and each request remembers the totals at the moment it
joined; its own figures are its values at joining plus the totals' growth since. A request is
materialised (its fields brought up to date) only when it leaves the batch (finish, retraction,
abort) or an event reports it. Which request finishes at which step is known when it joins (its
remaining output), so finishes come from a heap keyed by step, not from a scan of the batch.

The same arithmetic runs whether the engine steps one at a time or fast-forwards a stretch of
decode steps (`SimCore._run_merged`): the totals receive the same float additions in the same
order, so per-request times, GPU seconds and energy are identical either way, bit for bit.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine_adapter.sim.events import SimRequest

CLIP_MAX_NEW_TOKENS = 4096  # SGLang clips each request's reserve at this many tokens

WAITING, RUNNING, DONE = 0, 1, 2


@dataclass(slots=True, eq=False)
class Req:
    """One request inside the engine. While it is in the decode batch, `generated`, `kv`, `gpu_s`
    and `energy_j` hold its values when it joined (`DecodeBatch.live` gives the current ones)."""

    req: SimRequest
    seq: int
    key: tuple[int, int]
    target: int  # tokens it will produce
    length_limited: bool  # reaching `target` means max_new_tokens ("length") rather than EOS ("stop")
    state: int = WAITING
    generated: int = 0
    kv: int = 0  # KV tokens held
    prefill_target: int = 0  # tokens its (re)prefill must cover
    scheduled: int = 0  # prefill tokens covered so far (cached + scheduled chunks)
    prefilled: bool = False  # in the decode batch (when running)
    cached: int = -1  # cached tokens at first admission (-1: not admitted yet)
    retractions: int = 0
    gpu_s: float = 0.0
    energy_j: float = 0.0
    run_seq: int = 0  # order of its current admission (the running dict's order); identifies heap entries
    # the batch totals when it joined
    a_alloc: int = 0
    a_done: int = 0
    a_s: float = 0.0
    a_j: float = 0.0
    linear: bool = False  # its admission reserve is its remaining tokens (below the clip), not the clip
    lin_key: int = 0  # reserve = lin_key - steps completed, while linear

    def reserve(self) -> int:
        """Its term of SGLang's admission reserve (materialised `generated`)."""
        return min(self.req.max_new_tokens - self.generated, CLIP_MAX_NEW_TOKENS)


class DecodeBatch:
    """The running requests whose prefill is complete, with O(1) totals per step."""

    __slots__ = ("n", "kv", "k_alloc", "k_done", "g_s", "g_j", "fixed", "lin_n", "lin_sum", "_fin", "_zone")

    def __init__(self) -> None:
        self.n = 0  # requests in the batch
        self.kv = 0  # KV tokens they hold (after the current step's allocation)
        self.k_alloc = 0  # decode steps planned (each gives every member one KV slot)
        self.k_done = 0  # decode steps completed (each gives every member one token)
        self.g_s = 0.0  # GPU seconds attributed to one member over all completed steps
        self.g_j = 0.0  # energy attributed to one member likewise
        # the members' admission reserve: clipped ones in `fixed`, the others lin_sum - lin_n * k_done
        self.fixed = self.lin_n = self.lin_sum = 0
        self._fin: list[tuple[int, int, Req]] = []  # (k_done at which it finishes, run_seq, request)
        self._zone: list[tuple[int, int, Req]] = []  # (k_done at which its reserve drops below the clip, ...)

    def join(self, r: Req) -> None:
        """`r` (materialised) decodes from the next planned step on."""
        r.a_alloc, r.a_done, r.a_s, r.a_j = self.k_alloc, self.k_done, self.g_s, self.g_j
        self.n += 1
        self.kv += r.kv
        left = r.target - r.generated
        heapq.heappush(self._fin, (self.k_done + left, r.run_seq, r))
        rem = r.req.max_new_tokens - r.generated
        r.lin_key = rem + self.k_done
        r.linear = rem <= CLIP_MAX_NEW_TOKENS
        if r.linear:
            self.lin_n += 1
            self.lin_sum += r.lin_key
        else:
            self.fixed += CLIP_MAX_NEW_TOKENS
            if rem - CLIP_MAX_NEW_TOKENS < left:  # it drops below the clip before it finishes
                heapq.heappush(self._zone, (self.k_done + rem - CLIP_MAX_NEW_TOKENS, r.run_seq, r))

    def leave(self, r: Req) -> None:
        """Take `r` out of the batch, its fields brought up to date."""
        r.generated, r.kv, r.gpu_s, r.energy_j = self.live(r)
        self.n -= 1
        self.kv -= r.kv
        if r.linear:
            self.lin_n -= 1
            self.lin_sum -= r.lin_key
        else:
            self.fixed -= CLIP_MAX_NEW_TOKENS

    def live(self, r: Req) -> tuple[int, int, float, float]:
        """A member's current (generated, kv, gpu_s, energy_j)."""
        return (r.generated + self.k_done - r.a_done, r.kv + self.k_alloc - r.a_alloc,
                r.gpu_s + (self.g_s - r.a_s), r.energy_j + (self.g_j - r.a_j))

    def allocate(self) -> None:
        """A decode step is planned: one KV slot per member."""
        self.k_alloc += 1
        self.kv += self.n

    def complete(self, share_s: float, share_j: float) -> list[Req]:
        """A decode step completed: one token and these shares per member. Returns the members that
        reached their length, in admission order (still members: the caller finishes them)."""
        self.k_done += 1
        self.g_s += share_s
        self.g_j += share_j
        out = []
        fin, k = self._fin, self.k_done
        while fin and fin[0][0] <= k:
            _, seq, r = heapq.heappop(fin)
            if r.state == RUNNING and r.prefilled and r.run_seq == seq:
                out.append(r)
        return out

    def steps_to_finish(self) -> int:
        """Completed steps until the first member reaches its length (1: the step in progress)."""
        fin = self._fin
        while fin:
            k, seq, r = fin[0]
            if r.state == RUNNING and r.prefilled and r.run_seq == seq:
                return k - self.k_done
            heapq.heappop(fin)  # left the batch since it joined
        raise RuntimeError("steps_to_finish of an empty decode batch")

    def reserve(self) -> int:
        """The members' admission reserve: sum of min(max_new_tokens - generated, clip)."""
        zone, k = self._zone, self.k_done
        while zone and zone[0][0] <= k:
            _, seq, r = heapq.heappop(zone)
            if r.state == RUNNING and r.prefilled and r.run_seq == seq and not r.linear:
                r.linear = True
                self.fixed -= CLIP_MAX_NEW_TOKENS
                self.lin_n += 1
                self.lin_sum += r.lin_key
        return self.fixed + self.lin_sum - self.lin_n * k
