"""Simulated-engine profiles: the step-time model, capacities and the simulated GPU.

A profile is a JSON file in ``engine_adapter/sim/profiles/<name>.json``. The default,
``h100-llama3.1-8b``, is produced by ``bench/calibrate_sim.py`` from public measurements (see
docs/simulator.md); do not edit it by hand, re-run the script.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine_adapter.base import StepProfile
from engine_adapter.clock import ClockModel

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "h100-llama3.1-8b"
ZERO_DELAY = "zero-delay"


@dataclass(slots=True)
class SimProfile:
    name: str
    model: str
    gpu: str
    step: StepProfile  # seconds at f_max: prefill a + b*tokens + f*tokens*(context + tokens/2); decode c + d*B + e*KV
    kv_capacity_tokens: int  # KV pool size in tokens
    chunked_prefill_size: int  # per-step token budget (decode tokens + prefill chunks)
    max_running_requests: int
    prefix_block_size: int = 512  # Mooncake hash_ids block
    prefix_cache_blocks: int = 0  # LRU capacity of the prefix cache, in blocks (0: disabled)
    new_token_ratio: float = 0.3  # admission reserve: fraction of each running request's remaining max_new_tokens
    context_length: int = 131072  # the model's context window (Llama 3.1: max_position_embeddings)
    # simulated GPU
    f_max_mhz: float = 1980.0
    f_min_mhz: float = 345.0
    idle_w: float = 70.0
    max_w: float = 700.0
    decode_power_fraction: float = 0.6  # dynamic power of a decode-only step relative to a prefill step
    sm_power_share: float = 0.7  # of the dynamic power, the part that scales as f^3 (engine_adapter/clock.py)
    decode_clock_share: float = 0.3  # of a decode step's time, the part that scales as 1/f (the rest is HBM)
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0  # weights + preallocated KV pool, as NVML would report it
    kv_bytes_per_token: int = 0
    calibration: dict[str, Any] = field(default_factory=dict)  # provenance, free-form

    @property
    def clock(self) -> ClockModel:
        """Step time and power as functions of the SM clock (engine_adapter/clock.py)."""
        return ClockModel(self.f_min_mhz, self.f_max_mhz, self.idle_w, self.max_w, self.decode_power_fraction,
                          self.sm_power_share, self.decode_clock_share)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["step"] = dataclasses.asdict(self.step)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimProfile:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown profile fields: {sorted(unknown)}")
        kwargs = dict(data)
        kwargs["step"] = StepProfile(**data["step"])
        profile = cls(**kwargs)
        profile.validate()
        return profile

    def validate(self) -> None:
        s = self.step
        if min(s.prefill_a, s.prefill_b, s.decode_c, s.decode_d, s.decode_e, s.prefill_f) < 0:
            raise ValueError("step-time coefficients must be >= 0")
        if (self.kv_capacity_tokens < 2 or self.chunked_prefill_size < 1 or self.max_running_requests < 1
                or self.context_length < 2):
            raise ValueError("capacities must be positive")
        if self.prefix_block_size < 1 or self.prefix_cache_blocks < 0:
            raise ValueError("bad prefix cache settings")
        if not 0 < self.f_min_mhz <= self.f_max_mhz:
            raise ValueError("need 0 < f_min_mhz <= f_max_mhz")
        if not (0.0 <= self.sm_power_share <= 1.0 and 0.0 <= self.decode_clock_share <= 1.0):
            raise ValueError("sm_power_share and decode_clock_share must be in [0, 1]")
        if not 0.0 <= self.new_token_ratio <= 1.0:
            raise ValueError("new_token_ratio must be in [0, 1]")


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> SimProfile:
    """Load a profile by name (``profiles/<name>.json``), by path, or ``"zero-delay"``."""
    if str(name_or_path) == ZERO_DELAY:
        return zero_delay()
    path = Path(name_or_path)
    if path.suffix != ".json" or not path.exists():
        candidate = PROFILES_DIR / f"{name_or_path}.json"
        if not candidate.exists():
            known = sorted(p.stem for p in PROFILES_DIR.glob("*.json")) + [ZERO_DELAY]
            raise FileNotFoundError(f"no simulator profile {name_or_path!r}; known: {known}")
        path = candidate
    return SimProfile.from_json(json.loads(path.read_text()))


def zero_delay(base: SimProfile | None = None) -> SimProfile:
    """The default profile with every step time 0: the engine costs nothing, for proxy benchmarks.

    Capacities are kept (KV, budget, max running), so scheduling still behaves like an engine; only
    time stands still. Energy is 0 because no step takes time.
    """
    if base is None:
        try:
            base = load_profile(DEFAULT_PROFILE)
        except FileNotFoundError:  # pragma: no cover - the default ships with the package
            base = SimProfile(
                name=DEFAULT_PROFILE, model="meta-llama/Llama-3.1-8B-Instruct", gpu="NVIDIA H100 80GB HBM3",
                step=StepProfile(0, 0, 0, 0, 0), kv_capacity_tokens=450_000, chunked_prefill_size=8192,
                max_running_requests=2048, prefix_cache_blocks=880,
            )
    return dataclasses.replace(
        base,
        name=ZERO_DELAY,
        step=StepProfile(0.0, 0.0, 0.0, 0.0, 0.0),
        calibration={"note": f"zero-delay copy of {base.name}: all step times are 0"},
    )
