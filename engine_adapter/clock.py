"""How a GPU's SM clock changes step time and power: the model the simulator runs and the frequency
rule (controlplane/core/frequency.py) plans with, so both speak of the same GPU.

A step at SM clock f (x = f / f_max) takes, relative to f_max:

* prefill (compute-bound GEMMs and attention): ``1 / x``;
* decode (memory-bound: weights and KV read from HBM, whose clock the SM clock does not move):
  ``(1 - phi) + phi / x``, ``phi = decode_clock_share``, the part of a decode step that is SM work
  (kernel compute, launches, sampling).

A busy step draws ``idle_w + (max_w - idle_w) * activity * ((1 - k) + k * x^3)``: `activity` is 1
for a step with prefill and `decode_power_fraction` for a decode-only step; ``k = sm_power_share``
is the share of the dynamic power that scales with the clock as f^3 (frequency times voltage
squared, voltage roughly linear in f over the DVFS range); the rest (HBM, memory controller,
interconnect) does not move with the SM clock. An idle GPU draws `idle_w` at any clock.

The consequence the rule uses: the dynamic energy of a unit of work, ``dynamic(f) * time(f)``, is
U-shaped in f (GreenLLM): below the minimum, the f-independent power is paid for longer than the
clock saves. docs/simulator.md has the numbers; the shares are estimates, not fits.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClockModel"]


@dataclass(frozen=True, slots=True)
class ClockModel:
    f_min_mhz: float = 345.0
    f_max_mhz: float = 1980.0
    idle_w: float = 70.0
    max_w: float = 700.0
    decode_power_fraction: float = 0.6  # dynamic power of a decode-only step relative to a prefill step
    sm_power_share: float = 0.7  # of the dynamic power, the part that scales as f^3
    decode_clock_share: float = 0.3  # of a decode step's time at f_max, the part that scales as 1/f

    def clamp(self, mhz: float) -> float:
        return min(self.f_max_mhz, max(self.f_min_mhz, float(mhz)))

    def prefill_scale(self, mhz: float) -> float:
        """A prefill's time at `mhz` over its time at f_max."""
        return self.f_max_mhz / mhz

    def decode_scale(self, mhz: float) -> float:
        """A decode step's time at `mhz` over its time at f_max."""
        phi = self.decode_clock_share
        return 1.0 - phi + phi * self.f_max_mhz / mhz

    def dynamic_w(self, mhz: float, prefill: bool) -> float:
        """Power above idle of a busy step at `mhz` (with prefill, or decode only)."""
        activity = 1.0 if prefill else self.decode_power_fraction
        k = self.sm_power_share
        return (self.max_w - self.idle_w) * activity * (1.0 - k + k * (mhz / self.f_max_mhz) ** 3)

    def power_w(self, mhz: float, prefill: bool) -> float:
        return self.idle_w + self.dynamic_w(mhz, prefill)
