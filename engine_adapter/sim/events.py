"""What goes in and out of the simulated engine (`SimCore`): requests, events, step and statistics."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class SimRequest:
    rid: str
    prompt_tokens: int
    max_new_tokens: int
    output_tokens: int | None = None  # None: a length drawn from (seed, rid)
    hash_ids: Sequence[int] | None = None
    priority: int | None = None  # higher runs first


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~10x, and replay builds one per event
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
