"""Dispatch as filters -> scorers -> picker (controlplane/core/dispatch.py): the scorers against
hand-computed values, the default scorer against the old lowest-forecast-TTFT rule, the policy's
weights and their errors, the prefix index, and the core's locality-aware dispatch."""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.config import ConfigError, parse_config
from controlplane.core.admission import EngineView, forecast
from controlplane.core.dispatch import Candidate, DispatchRequest, check_weights, choose, own_prefill
from controlplane.core.events import Decision, Dispatch, FinishReport, RequestSpec
from controlplane.core.policy import DispatchPolicy, Policy, PolicyError, apply_patch, policy_from_dict
from controlplane.core.prefix_index import PrefixIndex
from tests.core_helpers import make_core, make_policy

# a step model simple enough to forecast by hand: a decode step costs c = 10 ms whatever the batch,
# a prefill step a = 10 ms plus b = 0.1 ms per token, no attention term, no meter, nothing waiting
A, B, C = 0.01, 1e-4, 0.01


def view(name: str, in_flight: int = 0, window: int = 8) -> EngineView:
    return EngineView(name, window, in_flight, 0.0, 0.0, 1.0, 0.0, 0.0, (), A, B, C, 0.0, 0.0, 8192, 8192.0,
                      0.0, 0.0)


REQ = DispatchRequest(prompt_tokens=2000, output_tokens=100)
# idle, nothing cached: one step (c + a) and 2,000 tokens (b each) -> 0.22 s
IDLE = Candidate(view("idle"), 0.0)
# two in flight (half a step still running: 5 ms) and 1,024 of the prompt cached: 976 tokens computed
WARM = Candidate(view("warm", in_flight=2), 1024.0)


def test_the_ttft_scorer_is_minus_the_forecast_ttft_with_the_engines_cached_tokens() -> None:
    choice = choose([IDLE, WARM], REQ, {"ttft": 1.0})
    idle, warm = choice.scored
    assert idle is not None and warm is not None
    assert idle.scores["ttft"] == pytest.approx(-(C + A + B * 2000))  # -0.22
    assert warm.scores["ttft"] == pytest.approx(-(0.5 * C + C + A + B * 976))  # -0.1226
    assert choice.index == 1 and choice.chosen is warm


def test_the_prefix_scorer_is_the_prefill_time_its_cached_tokens_save() -> None:
    choice = choose([IDLE, WARM], REQ, {"prefix": 1.0})
    idle, warm = choice.scored
    assert idle is not None and warm is not None
    assert idle.scores["prefix"] == 0.0
    assert warm.scores["prefix"] == pytest.approx(B * 1024)  # 1,024 tokens at 0.1 ms
    assert choice.index == 1


def test_the_load_scorer_is_minus_the_window_share_in_flight_and_weights_sum_scores() -> None:
    choice = choose([IDLE, WARM], REQ, {"ttft": 1.0, "load": 1.0})
    idle, warm = choice.scored
    assert idle is not None and warm is not None
    assert (idle.scores["load"], warm.scores["load"]) == (0.0, -0.25)
    assert idle.total == pytest.approx(-0.22) and warm.total == pytest.approx(-0.1226 - 0.25)
    assert choice.index == 0  # a full window would cost a second: 2 of 8 cost more than the 97 ms it saves
    assert warm.record() == {"ttft": warm.scores["ttft"], "load": -0.25, "total": warm.total}


def test_ties_go_to_fewer_in_flight_then_to_the_first() -> None:
    busy, free, other = view("busy", in_flight=3), view("free", in_flight=1), view("other", in_flight=1)
    assert choose([Candidate(busy, 0), Candidate(free, 0), Candidate(other, 0)], REQ, {"prefix": 1.0}).index == 1
    assert choose([Candidate(other, 0), Candidate(free, 0)], REQ, {"prefix": 1.0}).index == 0


def test_filters_drop_unhealthy_and_full_engines() -> None:
    full = Candidate(view("full", in_flight=8), 2000.0)
    sick = Candidate(view("sick"), 2000.0, healthy=False)
    choice = choose([full, sick, IDLE], REQ, {"prefix": 1.0})
    assert choice.index == 2 and choice.scored[:2] == [None, None]
    with pytest.raises(ValueError, match="no engine passes the dispatch filters"):
        choose([full, sick], REQ)


def _old_choose_engine(views: list[EngineView], prompt: float, output: float, cached: float) -> int:
    """The rule dispatch had before scorers (admission.choose_engine until this change), as it was."""
    forecasts = [forecast(v, 0, 0, prompt, output, cached) for v in views]
    return min(range(len(views)), key=lambda k: (forecasts[k].ttft_s, views[k].in_flight))


_views = st.lists(st.builds(
    lambda i, window, in_flight, waiting, kv, a, b, c, d, e, f, rate, departures: EngineView(
        f"e{i}", window, min(in_flight, window - 1), waiting, kv, 1.0, rate * 1000, rate, departures, a, b, c, d, e,
        8192, 4096.0, 0.0, 0.0, f, 0.0),
    st.integers(0, 99), st.integers(1, 64), st.integers(0, 64), st.sampled_from([0.0, 512.0, 30_000.0]),
    st.floats(0, 4e5), st.floats(1e-4, 0.05), st.floats(1e-6, 1e-4), st.floats(1e-3, 0.02), st.floats(0, 1e-3),
    st.floats(0, 1e-7), st.sampled_from([0.0, 1e-9]), st.floats(0, 20),
    st.lists(st.floats(0, 5), max_size=3).map(lambda x: tuple(sorted(x)))), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(_views, st.integers(1, 30_000), st.floats(1, 4000), st.floats(0, 1))
def test_the_default_scorer_makes_the_old_choice(views: list[EngineView], prompt: int, output: float,
                                                 hit: float) -> None:
    # equal forecasts happen (identical views): the tie-break must match too
    views = views + [dataclasses.replace(views[0], name="twin")]
    cached = hit * prompt
    choice = choose([Candidate(v, cached) for v in views], DispatchRequest(prompt, output))
    assert choice.index == _old_choose_engine(views, prompt, output, cached)
    assert choice.chosen.forecast == forecast(views[choice.index], 0, 0, prompt, output, cached)


def test_own_prefill_is_the_forecasts_own_term() -> None:
    v = view("x", in_flight=2)
    assert own_prefill(v, 2000, 100, 1024) == pytest.approx(0.5 * C + C + A + B * 976)


# -- weights in the policy and the config --------------------------------------------------------------

def test_the_default_policy_weighs_the_forecast_ttft_alone() -> None:
    p = Policy().validate()
    assert p.dispatch == DispatchPolicy({"ttft": 1.0}, "tenant")
    assert p.to_dict()["dispatch"] == {"scorers": {"ttft": 1.0}, "cache_estimate": "tenant"}


@pytest.mark.parametrize(("scorers", "message"), [
    ({"locality": 1.0}, "unknown scorer 'locality'; known: ['adapter', 'load', 'prefix', 'ttft']"),
    ({"ttft": 0.0}, "at least one scorer needs a positive weight"),
    ({"ttft": -1.0}, "ttft: the weight must be a number in [0, 1e6], got -1.0"),
    ({"ttft": True}, "ttft: the weight must be a number"),
    ({}, "must be a table of scorer name -> weight"),
])
def test_bad_weights_are_named(scorers: object, message: str) -> None:
    assert message in (check_weights(scorers) or "")
    with pytest.raises(PolicyError, match="dispatch.scorers: "):
        policy_from_dict({**Policy().to_dict(), "dispatch": {"scorers": scorers}})


def test_a_patch_adds_removes_and_reweighs_scorers() -> None:
    p = apply_patch(Policy(), {"dispatch": {"scorers": {"prefix": 0.5}, "cache_estimate": "prefix"}})
    assert p.dispatch == DispatchPolicy({"ttft": 1.0, "prefix": 0.5}, "prefix") and p.version == 2
    p = apply_patch(p, {"dispatch": {"scorers": {"ttft": None, "load": 2}}})  # null removes a scorer
    assert p.dispatch.scorers == {"prefix": 0.5, "load": 2}
    with pytest.raises(PolicyError, match=r"dispatch.cache_estimate: must be one of \['tenant', 'prefix'\]"):
        apply_patch(p, {"dispatch": {"cache_estimate": "engine"}})
    with pytest.raises(PolicyError, match=r"dispatch: unknown keys \['picker'\]"):
        apply_patch(p, {"dispatch": {"picker": "random"}})


def test_the_config_dispatch_table_and_its_errors() -> None:
    config = parse_config({"dispatch": {"scorers": {"ttft": 1.0, "prefix": 2.0}, "cache_estimate": "prefix"}})
    assert config.policy.dispatch == DispatchPolicy({"ttft": 1.0, "prefix": 2.0}, "prefix")
    assert parse_config({}).policy.dispatch == DispatchPolicy()
    with pytest.raises(ConfigError, match=r"policy: dispatch.scorers: unknown scorer 'kv'; known: "):
        parse_config({"dispatch": {"scorers": {"kv": 1.0}}})
    with pytest.raises(ConfigError, match=r"policy: dispatch: unknown keys \['weights'\]"):
        parse_config({"dispatch": {"weights": {"ttft": 1.0}}})


# -- the prefix index ------------------------------------------------------------------------------------

def test_the_prefix_index_matches_leading_blocks_and_forgets_the_oldest() -> None:
    index = PrefixIndex()
    index.add("e0", (1, 2, 3), capacity_blocks=4)
    assert index.cached_tokens("e0", (1, 2, 9), 512, 2000) == 1024.0  # the leading run only
    assert index.cached_tokens("e0", (1, 2, 3), 512, 1200) == 1199.0  # at most prompt - 1
    assert index.cached_tokens("e1", (1, 2, 3), 512, 2000) == 0.0
    index.add("e0", (1, 7, 8), capacity_blocks=4)  # 1 is used again; 2 is now the oldest and goes
    assert index.blocks("e0") == 4 and index.cached_tokens("e0", (1, 2), 512, 2000) == 512.0
    index.drop("e0")
    assert index.blocks("e0") == 0


# -- the core -----------------------------------------------------------------------------------------------

def _dispatches(actions: list) -> list[tuple[str, str]]:
    return [(a.rid, a.engine) for a in actions if isinstance(a, Dispatch)]


def _run_three(estimate: str) -> tuple[list[tuple[str, str]], Decision]:
    """r1 and r2 (different prefixes) fill e0 then e1; r3 shares r2's first four blocks."""
    core = make_core(make_policy(dispatch=DispatchPolicy({"ttft": 1.0}, estimate)), engines=2)
    out = []
    out += core.arrive(0.0, RequestSpec("r1", "a", 2048, 64, prefix_hashes=(1, 2, 3, 4)))
    out += core.arrive(0.001, RequestSpec("r2", "a", 2048, 64, prefix_hashes=(9, 8, 7, 6)))
    out += core.arrive(0.002, RequestSpec("r3", "a", 2560, 64, prefix_hashes=(9, 8, 7, 6, 5)))
    row = next(a for a in out if isinstance(a, Decision) and a.kind == "dispatch" and a.rid == "r3")
    return _dispatches(out), row


def test_the_core_sends_a_repeated_prefix_where_it_sent_it_before() -> None:
    placed, row = _run_three("prefix")
    assert placed == [("r1", "e0"), ("r2", "e1"), ("r3", "e1")]
    assert row.inputs["engine_cached"] == [0.0, 2048.0]
    assert row.inputs["weights"] == {"ttft": 1.0}
    e0, e1 = row.inputs["scores"]
    assert e1["ttft"] > e0["ttft"] and e1["total"] == e1["ttft"]


def test_with_the_tenant_estimate_the_same_requests_go_by_forecast_alone() -> None:
    placed, row = _run_three("tenant")
    assert placed == [("r1", "e0"), ("r2", "e1"), ("r3", "e0")]  # equal forecasts: the first engine
    assert "engine_cached" not in row.inputs
    e0, e1 = row.inputs["scores"]
    assert e0 == e1


def test_a_locality_dispatch_counts_only_the_prompt_the_engine_lacks() -> None:
    core = make_core(make_policy(dispatch=DispatchPolicy({"ttft": 1.0}, "prefix")), engines=2)
    core.arrive(0.0, RequestSpec("r1", "a", 2048, 64, prefix_hashes=(9, 8, 7, 6)))
    core.finish(0.5, "r1", FinishReport("ok", 2048, 0, 64, 0.1))
    core.arrive(1.0, RequestSpec("r2", "a", 2560, 64, prefix_hashes=(9, 8, 7, 6, 5)))
    assert core.engines["e0"].waiting_tokens == pytest.approx(2560 - 2048)
