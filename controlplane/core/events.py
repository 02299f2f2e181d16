"""What goes into the decision core (requests, finishes) and what comes out (actions)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fairness.value import value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # a dataclass's field names (dataclasses.fields is slow)


def shallow_dict(obj: object) -> dict[str, object]:
    """A flat dataclass as a dict, for decision records (dataclasses.asdict deep-copies every value:
    10x slower)."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))  # type: ignore[arg-type]
    return {name: getattr(obj, name) for name in names}


@value
class RequestSpec:
    rid: str
    tenant: str
    prompt_tokens: int  # estimated until the engine reports the real count
    max_tokens: int
    slo_class: str | None = None  # None: the tenant's class
    stream: bool = True
    # chained hashes of the prompt's leading blocks of `block_tokens` tokens each (block k's hash
    # stands for the prefix up to k): where dispatch expects the prompt to be cached
    # (core/prefix_index.py). Serving hashes the prompt's text (controlplane/prefix_hash.py), replay
    # passes Mooncake's hash_ids.
    prefix_hashes: tuple[int, ...] = ()
    block_tokens: int = 512
    adapter: str | None = None  # the LoRA adapter it runs with (dispatch prefers an engine holding it)


@value
class FinishReport:
    """What the driver saw when a dispatched request ended."""

    status: str  # "ok" | "aborted" | "error"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    first_token_at: float | None  # same clock as the core's `now`


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """An engine as the core plans for it (from Engine.info())."""

    name: str
    kv_capacity: int
    prefill_a: float
    prefill_b: float
    decode_c: float
    decode_d: float
    decode_e: float
    chunk: int = 8192
    max_running: int = 256


# -- actions ------------------------------------------------------------------------------


@value
class Dispatch:
    rid: str
    engine: str
    priority: int | None


@value
class Reject:
    """A refusal and its reason; the HTTP status is the runtime's choice (controlplane/errors.py)."""

    rid: str
    code: str  # machine-readable reason, e.g. "ttft_unattainable"
    message: str
    retry_after_s: float | None


ADMISSION_KINDS = ("admit", "defer", "reject")  # the decisions `decide()` makes (the rest: dispatch, expire...)


@value
class Decision:
    """A record of one decision and the inputs that produced it (written to `decisions`)."""

    ts: float
    rid: str
    tenant: str
    kind: str  # admit | defer | reject | dispatch | expire | abort
    reason: str
    engine: str | None
    policy_version: int
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


Action = Dispatch | Reject | Decision
