"""The simulated GPU's meters: energy, busy spans and the output-token window (docs/simulator.md).

`SimCore` feeds them each completed step; `readings` gives NVML-like figures at any time (power
and utilisation averaged over the last `GPU_WINDOW_S`, energy since the first submit, memory in
use) and `throughput` the engine's generation rate over the last `THROUGHPUT_WINDOW_S`.

The token window is two lists (step ends, output tokens so far) and the index of its oldest
entry, trimmed when read rather than at every step: recording a step is then one append each, and
a fast-forwarded stretch two `extend`s. Trimming drops the oldest entry while more than two are left
and the second is a window old; step ends never decrease, so with each step's cut or only the
last one (each later cut is >= the earlier ones) it drops the same entries.
"""
from __future__ import annotations

from bisect import bisect_right
from collections import deque

from engine_adapter.sim.profile import SimProfile

THROUGHPUT_WINDOW_S = 5.0
# GPU readings average over the last second, as NVML's do (H100: power is a 1 s average,
# utilisation the busy fraction of a sample period of up to 1 s).
GPU_WINDOW_S = 1.0


class GpuMeter:
    def __init__(self, profile: SimProfile) -> None:
        self.profile = profile
        self.energy_j = 0.0  # up to energy_t
        self.energy_t: float | None = None
        self.origin: float | None = None  # the first submit: readings do not average over before it
        self.busy: deque[tuple[float, float, float]] = deque()  # completed busy spans (start, end, W)
        self.tput_t: list[float] = []  # the token window: step ends (never decreasing) ...
        self.tput_n: list[int] = []  # ... and output tokens so far at each
        self.tput_head = 0  # its oldest entry (those before it have left the window)
        self._trim_at = 4096  # trim (and compact) on a record once the lists are this long

    def start(self, now: float) -> None:
        """The first submit: energy and readings count from here."""
        if self.energy_t is None:
            self.energy_t = self.origin = now

    def account(self, start: float, end: float, power: float) -> None:
        """A step ran over [start, end] at `power` (idle power before it since the last one)."""
        if self.energy_t is None:
            self.energy_t = start
        self.energy_j += self.profile.idle_w * max(0.0, start - self.energy_t) + power * (end - start)
        self.energy_t = end
        self.record_busy(start, end, power)

    def record_busy(self, start: float, end: float, power: float) -> None:
        """Keep the busy spans of the last GPU window (back-to-back steps at one power merge)."""
        busy = self.busy
        if busy and busy[-1][1] == start and busy[-1][2] == power:
            busy[-1] = (busy[-1][0], end, power)
        else:
            busy.append((start, end, power))
        while len(busy) > 1 and busy[0][1] < end - GPU_WINDOW_S:
            busy.popleft()

    def record_tokens(self, t: float, output_tokens: int) -> None:
        """A step ended at `t` with `output_tokens` produced so far (t never decreases)."""
        self.tput_t.append(t)
        self.tput_n.append(output_tokens)
        if len(self.tput_t) > self._trim_at:
            self._trim()

    def record_token_run(self, ends: list[float], tokens: int, per_step: int) -> None:
        """Steps ending at `ends` (increasing) each produced `per_step` (> 0) tokens after `tokens`:
        `record_tokens` for each in turn, in one go."""
        self.tput_t.extend(ends)
        self.tput_n.extend(range(tokens + per_step, tokens + per_step * (len(ends) + 1), per_step))
        if len(self.tput_t) > self._trim_at:
            self._trim()

    def _trim(self) -> None:
        """Drop the entries that left the window as of the last step end: the oldest while more
        than two are left and the second is a window old (a bisection: the ends never decrease);
        compact the lists once the dropped part is long."""
        times, head = self.tput_t, self.tput_head
        n = len(times)
        if n - head > 2:
            second_new = bisect_right(times, times[-1] - THROUGHPUT_WINDOW_S, head + 1)  # first still in
            head = max(head, min(n - 2, second_new - 1))
        if head > 1024 and head * 2 > n:
            del times[:head]
            del self.tput_n[:head]
            head = 0
        self.tput_head = head
        self._trim_at = max(4096, 2 * (len(times) - head))

    def throughput(self, now: float) -> float:
        """Output tokens per second over the recorded window."""
        self._trim()
        times, head = self.tput_t, self.tput_head
        if head >= len(times):
            return 0.0
        t0, c0 = times[head], self.tput_n[head]
        t1, c1 = times[-1], self.tput_n[-1]
        if len(times) - head == 1 or c1 == c0:
            return 0.0
        return (c1 - c0) / max(now - t0, t1 - t0, 1e-9)

    def readings(self, now: float, step: tuple[float, float, float] | None, mhz: float,
                 used_tokens: int) -> dict[str, float]:
        """NVML-like readings at `now`, `step` being the (start, end, W) of the step in progress."""
        p = self.profile
        energy = self.energy_j
        t0 = self.energy_t if self.energy_t is not None else now
        if step is not None and now > step[0]:
            start, end, power = step
            energy += p.idle_w * max(0.0, start - t0) + power * (min(now, end) - start)
            energy += p.idle_w * max(0.0, now - end)
        else:
            energy += p.idle_w * max(0.0, now - t0)
        w0 = now - GPU_WINDOW_S if self.origin is None else max(now - GPU_WINDOW_S, self.origin)
        busy = above_idle_j = 0.0
        spans = list(self.busy)
        if step is not None and step[0] < now:
            spans.append((step[0], min(now, step[1]), step[2]))
        for start, end, power in spans:
            overlap = min(end, now) - max(start, w0)
            if overlap > 0:
                busy += overlap
                above_idle_j += (power - p.idle_w) * overlap
        if now > w0:
            utilization, power_w = min(1.0, busy / (now - w0)), p.idle_w + above_idle_j / (now - w0)
        elif step is not None and step[0] <= now:  # nothing to average over yet (the first submit)
            utilization, power_w = 1.0, step[2]
        else:
            utilization, power_w = 0.0, p.idle_w
        # SGLang preallocates its KV pool (NVML shows it whole, a constant): the simulator reports
        # the weights plus the KV tokens in use instead, so that memory follows the load
        kv_bytes = p.kv_bytes_per_token
        weights = max(0, p.memory_used_bytes - p.kv_capacity_tokens * kv_bytes)
        return {
            "power_w": power_w,
            "energy_j": energy,
            "sm_clock_mhz": mhz,
            "utilization": utilization,
            "memory_used_bytes": float(weights + used_tokens * kv_bytes if kv_bytes else p.memory_used_bytes),
            "memory_total_bytes": float(p.memory_total_bytes),
        }
