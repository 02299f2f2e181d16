"""Multi-tenant scenarios built from the public traces: the rows of the scenario matrix.

Most public traces have no tenant column, and none says which requests are interactive. A scenario
turns one into a mix a platform team would recognise, deterministically for a seed:

- tenants with skewed demand (Zipf: tenant k sends a share proportional to 1/(k+1)), some of them
  batch (600 s deadline, deferred) and the rest interactive (TTFT 500 ms, TPOT 50 ms, refused when
  unattainable), weights 1 or 2;
- Mooncake's requests are assigned by their first prefix block, so a tenant's requests share
  prefixes with each other (as a conversation or an agent's system prompt does) and not with other
  tenants';
- ServeGen's clients are its tenants (their own rates and burstiness); every fourth is batch;
- the arxiv length table (long prompts, short outputs) becomes Poisson interactive tenants, a bursty
  light tenant (20 requests within a second, every 30 s: a burst within its fair share) and two
  batch summarisation tenants;
- VTC's suites stay as published (all interactive).

Requests carry no `max_tokens`: replay uses the default cap, never the true output length.
Rates are the trace's own; `bench/bench_matrix.py` scales them to multiples of the measured capacity.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from controlplane.core.policy import Policy, SLOClassPolicy, TenantPolicy
from replay.loaders import (LengthTable, load_azure, load_length_table, load_mooncake, poisson_workload,
                            shared_trace, vtc_overload, vtc_weighted)
from replay.workload import WorkloadRequest, merge, window

INTERACTIVE, BATCH = "interactive", "batch"
#: The classes every scenario is judged by, whatever its trace: interactive requests must see their
#: first token within 500 ms plus 50 ms per 1,000 prompt tokens (an H100 prefills 1,000 tokens of
#: an 8B model in ~21 ms, so a long prompt's own prefill fits) and 50 ms per output token; batch
#: requests must finish within their deadline (shorter than sluice's default 600 s so that a
#: matrix run of minutes sees deadlines pass).
MATRIX_CLASSES = {
    INTERACTIVE: SLOClassPolicy(ttft_s=0.5, tpot_s=0.05, on_miss="reject", ttft_s_per_ktok=0.05),
    BATCH: SLOClassPolicy(ttft_s=None, tpot_s=None, deadline_s=120.0, on_miss="defer"),
}


@dataclass(frozen=True, slots=True)
class TenantSpec:
    weight: float
    slo_class: str


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    requests: list[WorkloadRequest]  # at the trace's native rate, timed from 0
    tenants: dict[str, TenantSpec]

    @property
    def native_rate(self) -> float:
        """Requests per second over the scenario's span."""
        span = self.requests[-1].timestamp_ms / 1e3 if self.requests else 0.0
        return len(self.requests) / span if span > 0 else 0.0


def _zipf_tenants(n: int, batch_every: int) -> tuple[list[str], np.ndarray, dict[str, TenantSpec]]:
    names = [f"t{k}" for k in range(n)]
    p = 1.0 / np.arange(1, n + 1)
    specs = {name: TenantSpec(2.0 if k % 3 == 0 else 1.0, BATCH if k % batch_every == batch_every - 1 else INTERACTIVE)
             for k, name in enumerate(names)}
    return names, p / p.sum(), specs


def _assign(requests: list[WorkloadRequest], n: int, seed: int, key: Callable[[WorkloadRequest], int] | None = None,
            batch_every: int = 2) -> tuple[list[WorkloadRequest], dict[str, TenantSpec]]:
    """Give each request a Zipf-drawn tenant; with `key`, requests with equal keys share a tenant."""
    names, p, specs = _zipf_tenants(n, batch_every)
    rng = np.random.default_rng(seed)
    if key is None:
        idx = rng.choice(n, size=len(requests), p=p)
        return [replace(r, tenant=names[int(k)], extra=dict(r.extra)) for r, k in zip(requests, idx)], specs
    owner: dict[int, int] = {}
    out = []
    for r in requests:
        k = key(r)
        if k not in owner:
            owner[k] = int(rng.choice(n, p=p))
        out.append(replace(r, tenant=names[owner[k]], extra=dict(r.extra)))
    return out, specs


def _azure(kind: str, seed: int, span_s: float) -> Scenario:
    name = "conv" if kind == "conv" else "code"
    reqs = load_azure(shared_trace(f"AzureLLMInferenceTrace_{name}.csv"))
    reqs = window(reqs, 0, span_s * 1e3)
    reqs, tenants = _assign(reqs, 8, seed)
    return Scenario(f"azure-{name}", reqs, tenants)


def _mooncake(seed: int, span_s: float) -> Scenario:
    reqs = window(load_mooncake(shared_trace("synthetic_trace.jsonl")), 0, span_s * 1e3)
    reqs, tenants = _assign(reqs, 8, seed, key=lambda r: r.hash_ids[0] if r.hash_ids else -1)
    return Scenario("mooncake", reqs, tenants)


def _servegen(group: str, seed: int, span_s: float) -> Scenario:
    from replay.servegen import busiest_hour, load_servegen, sample_servegen

    profile = load_servegen(group=group)
    fallback: object = "pooled"
    if not any(c.has_lengths for c in profile.clients.values()):
        fallback = load_length_table(shared_trace("AzureLLMInferenceTrace_conv.csv"), "ContextTokens",
                                     "GeneratedTokens")
    reqs = sample_servegen(profile, start_s=busiest_hour(profile), duration_s=span_s, seed=seed,
                           fallback_lengths=fallback)  # type: ignore[arg-type]
    clients = sorted({r.tenant for r in reqs})
    tenants = {c: TenantSpec(1.0, BATCH if k % 4 == 3 else INTERACTIVE) for k, c in enumerate(clients)}
    return Scenario(f"servegen:{group}", reqs, tenants)


def _arxiv(seed: int, span_s: float) -> Scenario:
    lengths = load_length_table(shared_trace("arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"))
    rng = np.random.default_rng(seed)
    parts, tenants = [], {}
    for k, (rate, weight, cls) in enumerate([(2.0, 2.0, INTERACTIVE), (1.0, 1.0, INTERACTIVE),
                                             (0.5, 1.0, INTERACTIVE), (1.5, 1.0, BATCH), (0.75, 2.0, BATCH)]):
        name = f"t{k}"
        tenants[name] = TenantSpec(weight, cls)
        parts.append(poisson_workload(lengths, rate, duration_s=span_s, seed=int(rng.integers(2**31)), tenant=name))
    burst = []  # the light bursty tenant: 20 requests within a second every 30 s
    ins, outs = lengths.sample(int(span_s // 30 + 1) * 20, rng)
    for b in range(int(span_s // 30) + 1):
        for j in range(20):
            t = b * 30.0 + 5.0 + float(rng.random())
            if t < span_s:
                burst.append(WorkloadRequest(round(t * 1e3, 3), int(ins[b * 20 + j]), int(outs[b * 20 + j]), "burst"))
    tenants["burst"] = TenantSpec(1.0, INTERACTIVE)
    parts.append(burst)
    return Scenario("arxiv-mix", merge(*parts), tenants)


def _vtc(name: str, seed: int, span_s: float) -> Scenario:
    if name == "vtc-weighted":
        reqs, weights = vtc_weighted(span_s, seed=42 + seed)
    else:
        reqs, weights = vtc_overload(span_s, seed=42 + seed), {}
    tenants = {t: TenantSpec(weights.get(t, 1.0), INTERACTIVE) for t in sorted({r.tenant for r in reqs})}
    return Scenario(name, reqs, tenants)


SCENARIOS: dict[str, Callable[[int, float], Scenario]] = {
    "azure-conv": lambda seed, span: _azure("conv", seed, span),
    "azure-code": lambda seed, span: _azure("code", seed, span),
    "mooncake": _mooncake,
    "servegen:m-small": lambda seed, span: _servegen("m-small", seed, span),
    "servegen:m-mid": lambda seed, span: _servegen("m-mid", seed, span),
    "servegen:m-large": lambda seed, span: _servegen("m-large", seed, span),
    "arxiv-mix": _arxiv,
    "vtc-overload": lambda seed, span: _vtc("vtc-overload", seed, span),
    "vtc-weighted": lambda seed, span: _vtc("vtc-weighted", seed, span),
}


def build_scenario(name: str, *, seed: int = 0, span_s: float = 1800.0) -> Scenario:
    """The scenario `name` over the first `span_s` seconds of its trace (generated ones: `span_s` long)."""
    try:
        make = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}") from None
    return make(seed, span_s)


def scenario_policy(scenario: Scenario, scheduler: str, admission: bool) -> Policy:
    """The policy a scenario runs under: its tenants' weights and classes, MATRIX_CLASSES."""
    return Policy(scheduler=scheduler, admission=admission, slo_classes=dict(MATRIX_CLASSES),
                  tenants={t: TenantPolicy(s.weight, s.slo_class) for t, s in scenario.tenants.items()}).validate()


def lengths_of(scenario: Scenario) -> LengthTable:
    return LengthTable.from_workload(scenario.requests, scenario.name)
