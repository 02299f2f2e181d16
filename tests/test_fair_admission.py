"""Fair admission as a property (issue 8): when capacity is short, refusals fall first on the tenants
furthest above their fair share.

Stated exactly, on the core's own state: take any instant of a random overloaded multi-tenant run and
two tenants A and B of the latency tier where A is no further above its fair share than B on every
count admission's forecast uses: A's weight is at least B's, and A has no more requests and no more prompt
tokens queued, and has asked no more often lately, than B. Offer the same request (same prompt, cap and class) once from A and once
from B, each on its own copy of the core. If B's is admitted, A's must be (tolerance: none beyond the
dominance itself). The output-length predictor is a constant here, so that the property is about
admission and fair queueing, not about what the predictor learnt of each tenant.
"""
from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane.core.core import DecisionCore
from controlplane.core.events import Decision, Dispatch, FinishReport, RequestSpec
from controlplane.core.policy import TenantPolicy
from controlplane.core.tiers import LATENCY
from tests.core_helpers import make_core, make_policy

OUTPUT = 64  # every request's output; the predictor says exactly this
PROMPTS = (128, 512, 2048, 6000)


@dataclass(frozen=True)
class _Constant:
    tokens: float


class ConstantPredictor:
    def predict(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None) -> _Constant:
        return _Constant(float(OUTPUT))

    def observe(self, tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None, actual: int) -> None:
        pass


def _core(scheduler: str, weights: list[float]) -> DecisionCore:
    tenants = {f"t{i}": TenantPolicy(w) for i, w in enumerate(weights)}
    tenants["bulk"] = TenantPolicy(1.0, "batch")
    return make_core(make_policy(scheduler=scheduler, admission=True, tenants=tenants), predictor=ConstantPredictor())


def _admitted(core: DecisionCore, now: float, spec: RequestSpec) -> bool:
    kinds = [a.kind for a in core.arrive(now, spec) if isinstance(a, Decision) and a.rid == spec.rid]
    return kinds[0] in ("admit", "defer")


def _dominates(core: DecisionCore, a: str, b: str) -> bool:
    """Whether tenant `a` is no further above its fair share than `b` on every count admission's
    forecast uses (not the fair queue's service counters, which it does not read)."""
    q = core.scheduler.tiers[LATENCY]
    return (core.policy.tenant(a).weight >= core.policy.tenant(b).weight
            and q.scheduler.queued(a) <= q.scheduler.queued(b)
            and q.tenant_tokens.get(a, 0.0) <= q.tenant_tokens.get(b, 0.0)
            and core.demand.arrivals_of(a, LATENCY) <= core.demand.arrivals_of(b, LATENCY))


arrivals = st.lists(st.tuples(st.floats(0.0, 0.08), st.integers(0, 4), st.sampled_from(PROMPTS)),
                    min_size=20, max_size=60)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheduler=st.sampled_from(["vtc", "equinox", "wrr"]),
       weights=st.lists(st.sampled_from([1.0, 2.0, 3.0]), min_size=2, max_size=5),
       load=arrivals, probe_prompt=st.sampled_from(PROMPTS))
def test_a_tenant_no_further_above_its_fair_share_is_admitted_whenever_another_is(
        scheduler: str, weights: list[float], load: list[tuple[float, int, int]], probe_prompt: int) -> None:
    core = _core(scheduler, weights)
    tenants = [f"t{i}" for i in range(len(weights))]
    events: list[tuple[float, int, str, str]] = []  # (time, order, kind, rid): first tokens and finishes
    now, seq, probes = 0.0, 0, 0

    def apply(actions: list[object], at: float) -> None:
        nonlocal seq
        for a in actions:
            if isinstance(a, Dispatch):  # a fixed engine: first token after 0.1 s, 20 ms per token
                seq += 1
                heapq.heappush(events, (at + 0.1, seq, "first", a.rid))
                heapq.heappush(events, (at + 0.1 + OUTPUT * 0.02, seq, "finish", a.rid))

    for k, (gap, who, prompt) in enumerate(load):
        now += gap
        while events and events[0][0] <= now:
            at, _, kind, rid = heapq.heappop(events)
            apply(core.first_token(at, rid) if kind == "first" else
                  core.finish(at, rid, FinishReport("ok", 512, 0, OUTPUT, None)), at)
        apply(core.tick(now), now)
        tenant = "bulk" if who == 4 else tenants[who % len(tenants)]
        apply(core.arrive(now, RequestSpec(f"r{k}", tenant, prompt, 256)), now)
        if k % 3:
            continue
        for a in tenants:
            for b in tenants:
                if a == b or not _dominates(core, a, b):
                    continue
                probes += 1
                admit_b = _admitted(copy.deepcopy(core), now, RequestSpec("probe", b, probe_prompt, 256))
                admit_a = _admitted(copy.deepcopy(core), now, RequestSpec("probe", a, probe_prompt, 256))
                assert admit_a or not admit_b, (
                    f"{b} admitted and {a} refused at t={now:.3f} though {a} is no further above its fair "
                    f"share (weights {core.policy.tenant(a).weight} vs {core.policy.tenant(b).weight})")
    event(f"pairs probed: {'none' if not probes else 'some'}")
