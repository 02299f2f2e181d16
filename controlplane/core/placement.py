"""Placement advice: which models fit on which GPUs or MIG profiles, with how much KV room, and
whether each model's pool is over- or under-provisioned for its load. It advises: nothing here, or
anywhere in sluice, moves an engine. Pure (no I/O, no clock); `sluice plan` and `GET
/admin/v1/plan` gather the inputs (docs/placement.md).

CARMA's rule, with an LLM engine's memory need in closed form instead of a learned estimator: place
a model only where its estimated need fits the device, keeping a reserve.

    memory    = weights + reserve + KV pool
    weights   = parameters x bytes per parameter
    reserve   = what SGLang keeps outside `mem_fraction_static` for activations and CUDA-graph
                buffers, by the device's memory as CUDA sees it (a MIG instance's own): 2.9 GiB under
                35 GiB, 10 GiB under 90 GiB, 12.5 GiB under 160 GiB, 32 GiB above (TP 1;
                server_args.py), with mem_fraction_static rounded to 3 decimals as SGLang does
    KV pool   = mem_fraction_static x memory - weights      (SGLang's profile_max_num_token)
    KV tokens = KV pool / (2 x layers x kv_heads x head_dim x bytes)

A pool is under-provisioned when its demand (concurrent sequences x their mean context, in KV
tokens) fills more than HIGH_WATER of its replicas' KV capacity, over-provisioned when one replica
fewer would stay within it (or each replica's share fits a profile of half its device or less).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.core.placement_catalog import MIB, ModelSpec, Target

__all__ = ["HIGH_WATER", "Demand", "Fit", "ModelPlan", "PoolAdvice", "Replica", "advise_pool", "assumptions",
           "document", "fit", "plan_model", "reserve_mib", "static_fraction_milli"]

# A pool's demand may fill this much of its KV capacity: SGLang also reserves room for its running
# requests' future output (new_token_ratio) and retracts requests when the pool fills; the rest
# absorbs bursts.
HIGH_WATER = 0.8


def reserve_mib(memory_mib: float, parallel: int = 1) -> float:
    """SGLang's activation and CUDA-graph reserve (MiB) for a device of `memory_mib`, at TP x PP =
    `parallel`, no speculative decoding, no DP attention (ServerArgs, mem_fraction_static unset)."""
    if memory_mib < 35 * 1024:  # chunked prefill 2k, CUDA graphs up to batch 8
        return (2.8 + parallel / 10) * 1024
    if memory_mib < 90 * 1024:  # H100, A100: chunked prefill 8k, CUDA graphs up to batch 160
        return (9.5 + parallel / 2) * 1024
    if memory_mib < 160 * 1024:  # H20, H200: CUDA graphs up to batch 256
        return (12 + parallel / 2) * 1024
    return 32 * 1024  # B200, MI300: chunked prefill 16k, CUDA graphs up to batch 512


def static_fraction_milli(memory_bytes: int, parallel: int = 1) -> int:
    """SGLang's mem_fraction_static in thousandths (it rounds the fraction to 3 decimals)."""
    mib = memory_bytes / MIB
    return round((mib - reserve_mib(mib, parallel)) / mib * 1000)


@dataclass(frozen=True, slots=True)
class Fit:
    """One model on one target."""

    target: Target
    reserve_bytes: int
    kv_pool_bytes: int  # <= 0: weights and reserve alone exceed the device
    kv_tokens: int
    sequences: int | None  # concurrent sequences at the mean context (None: no mean context known)
    holds_context: bool  # the KV pool holds one sequence of the model's full context window

    @property
    def fits(self) -> bool:
        return self.kv_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        t = self.target
        return {"target": t.name, "board": t.board, "profile": t.profile, "per_board": t.per_board,
                "memory_bytes": t.memory_bytes, "memory_measured": t.measured, "reserve_bytes": self.reserve_bytes,
                "kv_pool_bytes": self.kv_pool_bytes, "fits": self.fits, "kv_tokens": self.kv_tokens,
                "sequences": self.sequences, "holds_context": self.holds_context}


def fit(model: ModelSpec, target: Target, mean_context: float | None = None, parallel: int = 1) -> Fit:
    static = target.memory_bytes * static_fraction_milli(target.memory_bytes, parallel) // 1000
    pool = static - model.weights_bytes
    tokens = max(0, pool // model.kv_bytes_per_token)
    seqs = int(tokens // mean_context) if mean_context and mean_context > 0 else None
    return Fit(target, target.memory_bytes - static, pool, tokens, seqs, tokens >= model.context_length)


@dataclass(frozen=True, slots=True)
class Demand:
    """A model's load as KV: concurrent sequences and the tokens each holds."""

    sequences: float
    mean_context: float
    source: str  # where it was observed ("core snapshot", "store: ...", "command line")

    @property
    def tokens(self) -> float:
        return self.sequences * self.mean_context

    def to_dict(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "mean_context": self.mean_context, "tokens": self.tokens,
                "source": self.source}


@dataclass(frozen=True, slots=True)
class Replica:
    """An engine serving the model: where it runs (when known) and the KV capacity it reports."""

    engine: str
    target: Target | None = None
    kv_tokens: int | None = None  # the engine's own report; preferred over the estimate


@dataclass(frozen=True, slots=True)
class PoolAdvice:
    replicas: int
    capacity_tokens: int | None
    demand_tokens: float | None
    utilisation: float | None
    needed: int | None  # replicas of the current size that hold the demand within HIGH_WATER
    verdict: str  # ok | under-provisioned | over-provisioned | does not fit | unknown
    reason: str
    smallest_fit: str | None  # the smallest candidate holding one replica's share within HIGH_WATER

    def to_dict(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "capacity_tokens": self.capacity_tokens,
                "demand_tokens": self.demand_tokens, "utilisation": self.utilisation, "needed": self.needed,
                "verdict": self.verdict, "reason": self.reason, "smallest_fit": self.smallest_fit}


def _smallest(model: ModelSpec, share: float, mean_context: float, candidates: Sequence[Target]) -> Target | None:
    want = max(share, mean_context, 1.0)  # room for at least one typical sequence
    for t in sorted(candidates, key=lambda c: c.memory_bytes):
        if fit(model, t).kv_tokens * HIGH_WATER >= want:
            return t
    return None


def _capacity(model: ModelSpec, replica: Replica) -> int:
    if replica.kv_tokens is not None:
        return replica.kv_tokens
    assert replica.target is not None  # advise_pool sets aside replicas with neither
    return fit(model, replica.target).kv_tokens


def advise_pool(model: ModelSpec, demand: Demand | None, replicas: Sequence[Replica],
                candidates: Sequence[Target] = ()) -> PoolAdvice:
    """The verdict on a model's pool (see the module's docstring)."""
    n = len(replicas)
    homeless = [r.engine for r in replicas if r.kv_tokens is None and r.target is None]
    if homeless:
        return PoolAdvice(n, None, demand.tokens if demand else None, None, None, "unknown",
                          f"no KV capacity reported and no device known for {', '.join(homeless)}", None)
    sizes = [_capacity(model, r) for r in replicas]
    crammed = [r.engine for r, size in zip(replicas, sizes) if size <= 0]
    if crammed:
        return PoolAdvice(n, 0, None, None, None, "does not fit", f"{model.name} does not fit the device of "
                          f"{', '.join(crammed)}: weights and reserve exceed its memory", None)
    capacity = sum(sizes)
    if demand is None or n == 0:
        why = "no load observed" if n else "no engine serves it"
        return PoolAdvice(n, capacity, None, None, None, "unknown", why, None)
    share = demand.tokens / n
    smallest = _smallest(model, share, demand.mean_context, candidates)
    needed = max(1, math.ceil(demand.tokens / (HIGH_WATER * capacity / n)))
    util = demand.tokens / capacity
    said = (f"{demand.tokens:,.0f} KV tokens ({demand.sequences:,.1f} sequences x {demand.mean_context:,.0f}) "
            f"fill {util:.0%} of {capacity:,} over {n} replica(s); {needed} hold it within {HIGH_WATER:.0%}")
    if needed > n:
        return PoolAdvice(n, capacity, demand.tokens, util, needed, "under-provisioned", said,
                          smallest.name if smallest else None)
    devices = [r.target.memory_bytes for r in replicas if r.target is not None]
    roomy = smallest is not None and len(devices) == n and smallest.memory_bytes * 2 <= min(devices)
    if needed < n or roomy:
        if roomy and smallest is not None:
            said += f"; each replica's share fits a {smallest.name}"
        return PoolAdvice(n, capacity, demand.tokens, util, needed, "over-provisioned", said,
                          smallest.name if smallest else None)
    return PoolAdvice(n, capacity, demand.tokens, util, needed, "ok", said, smallest.name if smallest else None)


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: ModelSpec
    demand: Demand | None
    fits: tuple[Fit, ...]
    pool: PoolAdvice | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {"model": m.name, "params": m.params, "weight_bytes_per_param": m.weight_bytes,
                "weights_bytes": m.weights_bytes, "kv_bytes_per_token": m.kv_bytes_per_token,
                "context_length": m.context_length,
                "demand": self.demand.to_dict() if self.demand else None,
                "fits": [f.to_dict() for f in self.fits], "pool": self.pool.to_dict() if self.pool else None,
                "notes": list(self.notes)}


def plan_model(model: ModelSpec, demand: Demand | None, candidates: Sequence[Target],
               replicas: Sequence[Replica] | None = None, notes: Sequence[str] = ()) -> ModelPlan:
    """The model on every candidate target, and (when its engines are given) its pool's verdict."""
    mean = demand.mean_context if demand else None
    fits = tuple(fit(model, t, mean) for t in candidates)
    pool = advise_pool(model, demand, replicas, candidates) if replicas is not None else None
    return ModelPlan(model, demand, fits, pool, tuple(notes))


def assumptions() -> dict[str, Any]:
    """The estimate's constants, for the plan document (docs/placement.md explains them)."""
    return {
        "memory": "weights + reserve + KV pool; KV pool = mem_fraction_static x memory - weights (SGLang)",
        "reserve_gib": {"under 35 GiB": reserve_mib(0) / 1024, "under 90 GiB": reserve_mib(40 * 1024) / 1024,
                        "under 160 GiB": reserve_mib(100 * 1024) / 1024, "above": reserve_mib(200 * 1024) / 1024},
        "reserve_why": "SGLang's own reserve for activations and CUDA-graph buffers (ServerArgs, TP 1)",
        "high_water": HIGH_WATER,
        "mig_memory": "measured (nvidia-smi mig -lgip) for H100-80GB; other boards' profiles estimated as "
                      "0.975 x their nominal size; a live instance's NVML memory where sluice sees it",
    }


def document(models: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> dict[str, Any]:
    """The plan as `sluice plan --json` writes it and `GET /admin/v1/plan` answers: each model's
    entry (`ModelPlan.to_dict()`, or `{"model", "error"}` where it could not be sized)."""
    return {"advice_only": True, "assumptions": assumptions(), "models": list(models), "notes": list(notes)}
