"""Model pools without HTTP: what a model name resolves to, the configuration's named errors, the
policy's per-pool weights, and replay with two pools (each its own core; the audit re-derives it)."""
from __future__ import annotations

import statistics

import pytest

from controlplane.config import ConfigError, parse_config
from controlplane.core.policy import PolicyError, apply_patch
from controlplane.model_pools import ModelCatalog, Route
from replay.audit import audit_decisions
from engine_adapter.sim.profile import load_profile
from replay.runner import VirtualRun, default_policy, run_virtual
from replay.workload import WorkloadFormatError, WorkloadRequest

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
ENGINES = [{"name": "a0", "model": LLAMA}, {"name": "a1", "model": LLAMA}, {"name": "b0", "model": "Qwen/Qwen3-8B"}]


def config(**raw):
    return parse_config({"engines": ENGINES, **raw})


def test_engines_of_one_model_form_a_pool_and_names_resolve() -> None:
    catalog = config(models={"Qwen/Qwen3-8B": {"aliases": ["qwen"], "adapters": {"sql": "/loras/sql"},
                                               "adapter_aliases": {"sql-bot": "sql"}}}).catalog()
    assert {n: p.engines for n, p in catalog.pools.items()} == {
        "meta-llama/Llama-3.1-8B-Instruct": ("a0", "a1"), "Qwen/Qwen3-8B": ("b0",)}
    assert catalog.engine_pool == {"a0": "meta-llama/Llama-3.1-8B-Instruct", "a1": "meta-llama/Llama-3.1-8B-Instruct",
                                   "b0": "Qwen/Qwen3-8B"}
    llama, qwen = Route("meta-llama/Llama-3.1-8B-Instruct"), Route("Qwen/Qwen3-8B")
    assert catalog.resolve("sluice-default") == llama  # [server] model_name: the first pool's alias
    assert catalog.resolve("qwen") == catalog.resolve("Qwen/Qwen3-8B") == qwen
    assert catalog.resolve("qwen:sql") == catalog.resolve("Qwen/Qwen3-8B:sql") == catalog.resolve("sql-bot") \
        == Route("Qwen/Qwen3-8B", "sql")
    assert catalog.resolve("qwen:nope") is None and catalog.resolve("meta-llama/Llama-3.1-8B-Instruct:sql") is None
    assert catalog.resolve("mistral") is None and catalog.resolve("sql-bot:sql") is None
    assert catalog.listed() == ["meta-llama/Llama-3.1-8B-Instruct", "sluice-default", "Qwen/Qwen3-8B", "qwen",
                                "Qwen/Qwen3-8B:sql", "sql-bot"]
    assert Route("Qwen/Qwen3-8B").allows(Route("Qwen/Qwen3-8B", "sql"))
    assert not Route("Qwen/Qwen3-8B", "sql").allows(qwen) and not llama.allows(qwen)


def test_a_pool_name_with_a_colon_still_resolves() -> None:
    catalog = ModelCatalog.build([("e", "llama3:8b")], {"llama3:8b": {"adapters": ["sql"]}})
    assert catalog.resolve("llama3:8b") == Route("llama3:8b")
    assert catalog.resolve("llama3:8b:sql") == Route("llama3:8b", "sql")


@pytest.mark.parametrize("raw, message", [
    ({"models": {"mistral": {}}}, "[models.'mistral'] names no engine's model"),
    ({"models": {"Qwen/Qwen3-8B": {"alias": ["q"]}}}, "unknown keys ['alias']"),
    ({"models": {"Qwen/Qwen3-8B": {"aliases": ["meta-llama/Llama-3.1-8B-Instruct"]}}}, "given twice"),
    ({"models": {"Qwen/Qwen3-8B": {"aliases": ["sluice-default"]}}}, "'sluice-default' is given twice"),
    ({"models": {"Qwen/Qwen3-8B": {"aliases": "qwen"}}}, "aliases: must be a list of names"),
    ({"models": {"Qwen/Qwen3-8B": {"adapters": {"a:b": "/x"}}}}, "cannot hold a colon"),
    ({"models": {"Qwen/Qwen3-8B": {"adapter_aliases": {"bot": "sql"}}}}, "is not a declared adapter"),
    ({"tenants": [{"name": "t", "models": ["mistral"]}]}, "tenant 't': models: 'mistral' names no model"),
    ({"tenants": [{"name": "t", "models": []}]}, "must be a non-empty list"),
    ({"tenants": [{"name": "t", "weights": {"mistral": 2}}]}, "tenants.t.weights: 'mistral' names no model pool"),
    ({"models": {"Qwen/Qwen3-8B": {"aliases": ["qwen"]}},
      "tenants": [{"name": "t", "weights": {"qwen": 2, "Qwen/Qwen3-8B": 3}}]}, "name the same pool"),
    ({"tenants": [{"name": "t", "weights": {"Qwen/Qwen3-8B": 0}}]}, "tenants.t.weights.Qwen/Qwen3-8B: must be in"),
    ({"engines": [{"name": "x"}, {"name": "x"}]}, "engine names must be unique"),
])
def test_bad_model_configuration_is_a_named_error(raw, message) -> None:
    with pytest.raises(ConfigError) as err:
        config(**raw)
    assert message in str(err.value)


def test_per_pool_weights_are_one_policy() -> None:
    cfg = config(models={"Qwen/Qwen3-8B": {"aliases": ["qwen"]}},
                 tenants=[{"name": "acme", "weight": 2.0, "weights": {"qwen": 5.0}}, {"name": "globex"}])
    catalog, policy = cfg.catalog(), cfg.policy
    qwen = policy.for_pool(catalog.pools["Qwen/Qwen3-8B"].names)
    llama = policy.for_pool(catalog.pools["meta-llama/Llama-3.1-8B-Instruct"].names)
    assert (qwen.tenant("acme").weight, llama.tenant("acme").weight) == (5.0, 2.0)
    assert qwen.version == llama.version == policy.version and qwen.tenant("globex") == policy.tenant("globex")
    assert policy.to_dict()["tenants"]["acme"]["weights"] == {"qwen": 5.0}
    assert "weights" not in policy.to_dict()["tenants"]["globex"]  # none set: the document as before pools
    removed = apply_patch(policy, {"tenants": {"acme": {"weights": {"qwen": None}}}})
    assert removed.tenant("acme").weights == {} and removed.version == policy.version + 1
    with pytest.raises(PolicyError, match="tenants.acme.weights.qwen: must be a number"):
        apply_patch(policy, {"tenants": {"acme": {"weights": {"qwen": "lots"}}}})
    assert policy.for_pool(["nothing"]) is not policy and default_policy().for_pool(["x"]) == default_policy()


def test_the_workload_model_field_round_trips() -> None:
    w = WorkloadRequest.from_json({"timestamp": 1, "input_length": 10, "output_length": 2, "model": "qwen"})
    assert w.model == "qwen" and w.extra == {} and w.to_json()["model"] == "qwen"
    with pytest.raises(WorkloadFormatError, match="'model' must be a non-empty string"):
        WorkloadRequest.from_json({"timestamp": 1, "input_length": 10, "output_length": 2, "model": 3})


def _flood_and_quiet() -> list[WorkloadRequest]:
    flood = [WorkloadRequest(i * 5.0, 2000, 200, "flood", model="a") for i in range(400)]
    quiet = [WorkloadRequest(100.0 + i * 200.0, 500, 50, "quiet", model="b") for i in range(15)]
    return flood + quiet


def test_replay_with_two_pools_keeps_a_flood_in_its_pool() -> None:
    policy = default_policy("vtc", weights={"flood": 1, "quiet": 1})
    two = run_virtual(_flood_and_quiet(), policy, engines={"a": 1, "b": 1}, torch_expert=False, record_decisions=True)
    engines = {t: {r.engine for r in two.records if r.tenant == t} for t in ("flood", "quiet")}
    assert engines == {"flood": {"sim-0"}, "quiet": {"sim-1"}}
    assert {d["pool"] for d in two.decisions} == {"a", "b"}
    assert all(d["pool"] == "b" for d in two.decisions if d["tenant"] == "quiet")
    report = audit_decisions(two.decisions)
    assert report.ok and report.dispatch_rederived == len(two.records), report.format()
    # the same workload through one pool of two engines: the quiet tenant shares the flood's queue
    one = run_virtual(_flood_and_quiet(), policy, engines=2, torch_expert=False)
    waited = {name: statistics.median(r.first_token_s - r.arrival_s for r in res.records if r.tenant == "quiet")
              for name, res in (("two", two), ("one", one))}
    assert waited["two"] < waited["one"]
    assert "pool" not in (run_virtual(_flood_and_quiet()[:20], policy, torch_expert=False,
                                      record_decisions=True).decisions[0])  # one pool: rows as before


def test_replay_pools_take_their_weights_and_refuse_unknown_models() -> None:
    policy = default_policy("vtc", weights={"flood": 1, "quiet": 1})
    policy = apply_patch(policy, {"tenants": {"quiet": {"weights": {"b": 4.0}}}})
    run = VirtualRun(_flood_and_quiet(), policy, {"a": 1, "b": 1}, load_profile("h100-llama3.1-8b"), 0, None, False,
                     False, 256)
    assert run.drivers["b"].core.policy.tenant("quiet").weight == 4.0
    assert run.drivers["a"].core.policy.tenant("quiet").weight == 1.0
    with pytest.raises(ValueError, match="model 'c' names no pool"):
        run_virtual([WorkloadRequest(0, 10, 2, "t", model="c")], policy, engines={"a": 1, "b": 1})
    with pytest.raises(ValueError, match="engines must be >= 1"):
        run_virtual([WorkloadRequest(0, 10, 2, "t")], policy, engines={"a": 1, "b": 0})
