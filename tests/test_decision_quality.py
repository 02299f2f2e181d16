"""Issue 8: replay knows only what serving knows, unknown SLO classes are errors, the two tiers of
SLO classes, the forecast's own-prefill and cache terms, and the per-class metrics."""
from __future__ import annotations

from dataclasses import replace

import pytest

from controlplane.core.admission import EngineView, forecast
from controlplane.core.core import DecisionCore
from controlplane.core.events import Dispatch, FinishReport, RequestSpec
from controlplane.core.policy import PolicyError, SLOClassPolicy, TenantPolicy
from controlplane.core.tiers import DEFERRABLE, LATENCY
from replay.loaders import LengthTable, poisson_workload
from replay.outcomes import VirtualResult
from replay.runner import default_policy, run_virtual
from replay.workload import DEFAULT_MAX_TOKENS, WorkloadRequest, merge, read_workload
from tests.core_helpers import make_core, make_policy


def _workload(outputs: list[int]) -> list[WorkloadRequest]:
    return [WorkloadRequest(200.0 * i, 300 + 10 * i, out, "a" if i % 2 else "b") for i, out in enumerate(outputs)]


def test_the_core_sees_the_same_inputs_whatever_the_true_output_length(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[tuple[str, str, int, int]]] = []
    predicted: list[list[tuple[str, int, int]]] = []
    real_arrive = DecisionCore.arrive

    def spy(self: DecisionCore, now: float, spec: RequestSpec) -> list:
        seen[-1].append((spec.rid, spec.tenant, spec.prompt_tokens, spec.max_tokens))
        return real_arrive(self, now, spec)

    monkeypatch.setattr(DecisionCore, "arrive", spy)
    for outputs in ([5] * 8, [900] * 8):
        seen.append([])
        predicted.append([])
        r = run_virtual(_workload(outputs), "vtc", torch_expert=False)
        predicted[-1] = [(rec.rid, rec.max_tokens, rec.output_tokens) for rec in r.records]
    assert seen[0] == seen[1]  # identical arrivals: prompt and the client's cap, never the truth
    assert {m for _, _, _, m in seen[0]} == {DEFAULT_MAX_TOKENS}
    # only the engine knew: it stopped where the workload said
    assert [o for *_, o in predicted[0]] == [5] * 8 and [o for *_, o in predicted[1]] == [900] * 8


def test_a_workload_max_tokens_is_the_cap_the_core_sees_and_the_engine_stops_at() -> None:
    (w,) = read_workload(['{"timestamp": 0, "input_length": 100, "output_length": 500, "max_tokens": 64}'])
    assert w.max_tokens == 64 and w.to_json()["max_tokens"] == 64
    r = run_virtual([w], "fcfs", torch_expert=False)
    assert r.records[0].max_tokens == 64 and r.records[0].output_tokens == 64


def test_an_unknown_slo_class_is_an_error_that_names_it() -> None:
    with pytest.raises(PolicyError, match="'gold'"):
        make_policy().slo("gold")
    w = [WorkloadRequest(0.0, 100, 10, "a", slo_class="gold")]
    with pytest.raises(ValueError, match="unknown slo_class 'gold'"):
        run_virtual(w, "fcfs", torch_expert=False)


def test_a_policy_cannot_drop_a_class_that_requests_are_in() -> None:
    core = make_core(make_policy(window=1))
    core.arrive(0.0, RequestSpec("r1", "bulk", 100, 10))
    classes = {"interactive": SLOClassPolicy(0.5, 0.05)}
    with pytest.raises(PolicyError, match="batch"):
        core.set_policy(1.0, replace(core.policy, version=2, slo_classes=classes,
                                     tenants={"a": TenantPolicy(1.0)}))


def test_ttft_budget_grows_with_the_prompt() -> None:
    cls = SLOClassPolicy(0.5, 0.05, ttft_s_per_ktok=0.05)
    assert cls.ttft_budget_s(0) == 0.5 and cls.ttft_budget_s(10_000) == 1.0
    assert SLOClassPolicy(None, None, 60.0, "defer").ttft_budget_s(10_000) is None


def _view(**kw: float) -> EngineView:
    base = dict(name="e", window=8, in_flight=0, waiting_tokens=0.0, kv_tokens=0.0, mean_service_s=1.0,
                prefill_rate=0.0, dispatch_rate=0.0, departures=(), prefill_a=0.01, prefill_b=1e-4, decode_c=0.01,
                decode_d=0.0, decode_e=0.0, chunk=8192, prefill_budget=512.0, meter_level=0.0, meter_rate=0.0)
    base.update(kw)
    return EngineView(**base)  # type: ignore[arg-type]


def test_own_prefill_is_chunked_by_the_engine_not_the_meter_budget() -> None:
    # 8,000 tokens on an idle engine: one step of a + b*T (not 16 meter-budget steps of 512)
    f = forecast(_view(), 0, 0, 8000, 10)
    assert f.ttft_s == pytest.approx(0.01 + 0.01 + 1e-4 * 8000)


def test_expected_cache_hits_and_attention_enter_the_forecast() -> None:
    plain = forecast(_view(), 0, 0, 4000, 10).ttft_s
    cached = forecast(_view(), 0, 0, 4000, 10, cached_tokens=3000).ttft_s
    assert cached == pytest.approx(plain - 1e-4 * 3000)
    quadratic = forecast(_view(prefill_f=1e-8), 0, 0, 4000, 10).ttft_s
    assert quadratic == pytest.approx(plain + 1e-8 * 4000 * 2000)


def test_the_core_learns_each_tenants_prefix_hit_share() -> None:
    core = make_core(make_policy(window=4))
    for i in range(30):
        acts = core.arrive(float(i), RequestSpec(f"r{i}", "a", 1000, 10))
        assert any(isinstance(a, Dispatch) for a in acts)
        core.finish(float(i) + 0.5, f"r{i}", FinishReport("ok", 1000, 800, 10, float(i) + 0.1))
    core.arrive(100.0, RequestSpec("next", "a", 1000, 10))
    # an EWMA with weight 0.1 from 0, after 30 reports of an 80 % hit
    assert core.requests["next"].prompt_cost == pytest.approx(1000 * (1 - 0.8 * (1 - 0.9 ** 30)))


def _tiered_core() -> DecisionCore:
    return make_core(make_policy(window=2, scheduler="vtc", admission=False))


def test_interactive_goes_before_batch_that_is_ahead_of_its_share() -> None:
    core = _tiered_core()
    dispatched: list[str] = []

    def run(acts: list) -> None:
        dispatched.extend(a.rid for a in acts if isinstance(a, Dispatch))

    for i in range(6):  # batch fills the window and queues
        run(core.arrive(0.0, RequestSpec(f"b{i}", "bulk", 500, 50)))
    for i in range(3):
        run(core.arrive(0.1, RequestSpec(f"i{i}", "a", 500, 50)))
    assert core.scheduler.tiers[DEFERRABLE].queued and core.scheduler.tiers[LATENCY].queued
    # a finish frees a slot: batch has had all the service, so an interactive request is next
    first_done = dispatched[0]
    run(core.finish(1.0, first_done, FinishReport("ok", 500, 0, 50, 0.5)))
    assert dispatched[-1].startswith("i")


def test_batch_gets_its_weighted_share_when_both_tiers_stay_backlogged() -> None:
    core = _tiered_core()
    running: list[str] = []
    served = {"a": 0, "bulk": 0}
    n = 0

    def run(acts: list) -> None:
        running.extend(a.rid for a in acts if isinstance(a, Dispatch))

    t = 0.0
    for _ in range(400):
        t += 0.1
        for tenant in ("a", "bulk"):  # both always backlogged
            if core.scheduler.queued(tenant) < 3:
                n += 1
                run(core.arrive(t, RequestSpec(f"{tenant}-{n}", tenant, 500, 50)))
        if running:
            rid = running.pop(0)
            served[core.requests[rid].spec.tenant] += 1
            run(core.finish(t, rid, FinishReport("ok", 500, 0, 50, t - 0.05)))
    share = served["bulk"] / sum(served.values())
    assert share == pytest.approx(0.5, abs=0.1)  # weights 1 and 1


def _interactive_and_batch(seconds: float) -> tuple[list[WorkloadRequest], VirtualResult]:
    """Tenant a (interactive, 2 req/s) and bulk (batch, 1 req/s) under vtc with admission."""
    lengths = LengthTable.constant(300, 60)
    w = merge(poisson_workload(lengths, 2.0, duration_s=seconds, seed=1, tenant="a"),
              poisson_workload(lengths, 1.0, duration_s=seconds, seed=2, tenant="bulk"))
    policy = replace(default_policy("vtc", admission=True),
                     tenants={"a": TenantPolicy(1.0), "bulk": TenantPolicy(1.0, "batch")}).validate()
    return w, run_virtual(w, policy, torch_expert=False)


def test_per_class_outcomes_and_tokens_goodput() -> None:
    w, r = _interactive_and_batch(20)
    assert set(r.per_class) == {"interactive", "batch"}
    assert r.per_class["batch"].requests == sum(1 for x in w if x.tenant == "bulk")
    good = [x for x in r.records if x.slo_met]
    assert r.overall.goodput_tps == pytest.approx(sum(x.input_tokens + x.output_tokens for x in good) / r.duration_s)
    assert 0.0 <= r.fairness["jain_demand"] <= 1.0
    assert r.per_tenant["a"].fair_ratio is not None


def test_scenarios_are_deterministic_and_carry_their_tenants_classes() -> None:
    from replay.scenarios import MATRIX_CLASSES, build_scenario, scenario_policy

    a, b = build_scenario("vtc-weighted", span_s=20), build_scenario("vtc-weighted", span_s=20)
    assert [r.to_json() for r in a.requests] == [r.to_json() for r in b.requests]
    policy = scenario_policy(a, "wrr", True)
    assert {t: p.weight for t, p in policy.tenants.items()} == {"client0": 1.0, "client1": 2.0, "client2": 3.0,
                                                                 "client3": 4.0}
    assert policy.slo_classes == MATRIX_CLASSES and policy.admission
    with pytest.raises(ValueError, match="unknown scenario"):
        build_scenario("nope")


def test_mooncake_scenario_keeps_a_prefix_within_one_tenant() -> None:
    from replay.loaders import shared_trace
    from replay.scenarios import build_scenario

    if not shared_trace("synthetic_trace.jsonl").exists():
        pytest.skip("shared traces absent")
    sc = build_scenario("mooncake", span_s=300)
    owner: dict[int, str] = {}
    for r in sc.requests:
        if r.hash_ids:
            assert owner.setdefault(r.hash_ids[0], r.tenant) == r.tenant
    assert {s.slo_class for s in sc.tenants.values()} == {"interactive", "batch"}


def test_simulate_table_has_class_rows_and_the_demand_fairness() -> None:
    from replay.simulate import format_side_by_side

    _, r = _interactive_and_batch(10)
    lines = format_side_by_side({"vtc+admission": r}).splitlines()
    rows = {ln.split()[0]: ln for ln in lines if ln and ln.split()[0] in ("a", "bulk", "[interactive]", "[batch]", "all")}
    assert set(rows) == {"a", "bulk", "[interactive]", "[batch]", "all"}
    assert rows["[batch]"].split()[1] == str(r.per_class["batch"].requests)
    assert f"Jain over fair shares of demand {r.fairness['jain_demand']:.3f}" in lines[-1]


def test_the_ttft_error_quantile_widens_the_admission_margin() -> None:
    from controlplane.core.admission import AdmissionInputs, decide

    base = AdmissionInputs(prompt_tokens=1000, output_tokens=10, ttft_slo_s=0.5, tpot_slo_s=None,
                           deadline_s=None, on_miss="reject", margin=0.8, admission=True, ahead_requests=0,
                           ahead_tokens=0, inflight_tpot_slo_s=None, engines=(_view(prefill_b=2.5e-4),))
    ttft = forecast(base.engines[0], 0, 0, 1000, 10).ttft_s
    assert ttft < 0.4 < 2 * ttft  # inside the margin alone, outside it at twice
    assert decide(base).decision == "admit"
    assert decide(replace(base, ttft_error=2.0)).reason == "ttft_unattainable"


def test_the_core_learns_the_90th_percentile_of_ttft_error() -> None:
    core = make_core(make_policy(window=4))
    for i in range(400):  # every first token comes at twice the forecast
        core.arrive(float(i), RequestSpec(f"r{i}", "a", 1000, 10))
        forecast_s = core.requests[f"r{i}"].forecast_ttft_s
        core.finish(float(i) + 0.5, f"r{i}", FinishReport("ok", 1000, 0, 10, float(i) + 2 * forecast_s))
    assert core.costs.ttft_error == pytest.approx(2.0, rel=0.05)


def test_simulate_takes_a_matrix_scenario_with_its_classes_and_weights() -> None:
    from replay.simulate import load_named_workload

    reqs, weights = load_named_workload("scenario:vtc-weighted", duration_s=10.0)
    assert weights == {"client0": 1.0, "client1": 2.0, "client2": 3.0, "client3": 4.0}
    assert reqs and {r.slo_class for r in reqs} == {"interactive"}
    assert max(r.timestamp_ms for r in reqs) < 10_000
    with pytest.raises(ValueError, match="unknown scenario"):
        load_named_workload("scenario:nope")
