import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.predict import StepTimeModel
from engine_adapter.base import StepProfile

TRUE = StepProfile(prefill_a=0.010, prefill_b=3.0e-5, decode_c=0.008, decode_d=1.0e-4, decode_e=3.0e-8)
# a badly wrong prior: intercepts 3x, slopes a third or three times
WRONG = StepProfile(prefill_a=0.030, prefill_b=1.0e-5, decode_c=0.024, decode_d=3.0e-4, decode_e=1.0e-8)


def feed(model: StepTimeModel, truth: StepProfile, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        tokens = float(rng.integers(16, 8192))
        model.observe_prefill(tokens, truth.prefill_time(tokens) * (1 + 0.05 * rng.standard_normal()))
        batch = float(rng.integers(1, 256))
        kv = batch * float(rng.uniform(100, 4000))
        model.observe_decode(batch, kv, truth.decode_time(batch, kv) * (1 + 0.03 * rng.standard_normal()))


def test_recovers_known_coefficients_from_a_wrong_prior():
    m = StepTimeModel(WRONG, forgetting=0.999)
    feed(m, TRUE, 3000, seed=1)
    p = m.profile()
    for name in ("prefill_a", "prefill_b", "decode_c", "decode_d", "decode_e"):
        assert getattr(p, name) == pytest.approx(getattr(TRUE, name), rel=0.12), name
    for tokens in (64, 1024, 6000):
        assert m.prefill_time(tokens) == pytest.approx(TRUE.prefill_time(tokens), rel=0.05)
    for batch, kv in ((1, 500), (32, 64_000), (200, 600_000)):
        assert m.decode_time(batch, kv) == pytest.approx(TRUE.decode_time(batch, kv), rel=0.05)
    st_ = m.state()
    assert st_["prefill"]["observations"] == 3000 and st_["decode"]["observations"] == 3000


# prompts long enough that attention is a large share: a 12k prompt alone pays ~2x its linear time
LONG = StepProfile(prefill_a=0.004, prefill_b=2.0e-5, decode_c=0.0065, decode_d=9.0e-6, decode_e=5.0e-8,
                   prefill_f=2.0e-9)


def feed_prefill_with_context(model: StepTimeModel, truth: StepProfile, n: int, seed: int) -> None:
    """Chunks of 64..8192 tokens after 0..64k tokens already in the KV (cache hits, earlier chunks)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        tokens = float(rng.integers(64, 8192))
        context = float(rng.integers(0, 65536)) if rng.random() < 0.7 else 0.0
        seconds = truth.prefill_time(tokens, context) * (1 + 0.05 * rng.standard_normal())
        assert model.observe_prefill(tokens, seconds, context=context)


def test_step_profile_attention_term():
    # f * tokens * (context + tokens / 2): 1000 new tokens after 3000 cached ones -> 1000 * 3500 pairs
    assert LONG.prefill_time(1000, 3000) == pytest.approx(0.004 + 0.02 + 2e-9 * 1000 * 3500)
    assert LONG.prefill_time(1000) == pytest.approx(0.004 + 0.02 + 2e-9 * 1000 * 500)
    # chunking a prompt costs the same attention as prefilling it whole (only intercepts differ)
    whole = LONG.prefill_time(8192) - LONG.prefill_a
    chunks = sum(LONG.prefill_time(2048, 2048 * k) - LONG.prefill_a for k in range(4))
    assert chunks == pytest.approx(whole)
    assert TRUE.prefill_f == 0.0  # the default keeps five-coefficient profiles linear


def test_learns_the_attention_term_from_a_linear_prior():
    linear = StepProfile(LONG.prefill_a, LONG.prefill_b, LONG.decode_c, LONG.decode_d, LONG.decode_e)
    m = StepTimeModel(linear, forgetting=0.999)
    before = abs(m.prefill_time(4096, 32768) - LONG.prefill_time(4096, 32768)) / LONG.prefill_time(4096, 32768)
    assert before > 0.5  # the linear prior misses most of a long-context chunk
    feed_prefill_with_context(m, LONG, 3000, seed=11)
    p = m.profile()
    assert p.prefill_f == pytest.approx(LONG.prefill_f, rel=0.1)
    assert p.prefill_b == pytest.approx(LONG.prefill_b, rel=0.15)
    for tokens, context in ((512, 0), (4096, 32768), (8192, 60000)):
        assert m.prefill_time(tokens, context) == pytest.approx(LONG.prefill_time(tokens, context), rel=0.05)
    assert m.state()["profile"]["prefill_f"] == p.prefill_f
    assert m.state()["prior"]["prefill_f"] == 0.0


def test_prior_attention_term_is_used_without_data():
    m = StepTimeModel(LONG)
    assert m.profile() == LONG
    for tokens, context in ((100, 0), (2048, 8192), (8192, 120_000)):
        assert m.prefill_time(tokens, context) == pytest.approx(LONG.prefill_time(tokens, context))
    assert m.prefill_std(8192, 120_000) > m.prefill_std(8192)  # less sure far from any data


def test_context_is_validated():
    m = StepTimeModel(LONG)
    assert not m.observe_prefill(100, 0.01, context=-1)
    assert not m.observe_prefill(100, 0.01, math.nan)
    assert m.observe_prefill(100, 0.01, 500.0, weight=0.5)  # context third, as the core's StepModel has it
    assert m.state()["prefill"]["rejected"] == 2 and m.state()["prefill"]["observations"] == 1


def test_stays_at_the_prior_without_data():
    m = StepTimeModel(WRONG)
    assert m.profile() == WRONG
    assert m.prefill_time(1000) == pytest.approx(WRONG.prefill_time(1000))
    assert m.decode_time(8, 10_000) == pytest.approx(WRONG.decode_time(8, 10_000))
    # uncertainty is the prior's and shrinks with data
    before = m.prefill_std(1000)
    feed(m, TRUE, 200, seed=2)
    assert m.prefill_std(1000) < before / 3


def test_tracks_a_regime_change_with_forgetting():
    m = StepTimeModel(TRUE, forgetting=0.99)
    feed(m, TRUE, 500, seed=3)
    slower = StepProfile(*(2 * v for v in (TRUE.prefill_a, TRUE.prefill_b, TRUE.decode_c, TRUE.decode_d,
                                           TRUE.decode_e)))  # prefill_f stays 0
    feed(m, slower, 1000, seed=4)
    assert m.prefill_time(2000) == pytest.approx(slower.prefill_time(2000), rel=0.05)
    assert m.decode_time(64, 100_000) == pytest.approx(slower.decode_time(64, 100_000), rel=0.05)


def test_single_operating_point_fits_that_point_and_keeps_the_rest_near_the_prior():
    m = StepTimeModel(TRUE)
    rng = np.random.default_rng(5)
    for _ in range(2000):  # always 512 tokens: the slope/intercept split is not identifiable
        m.observe_prefill(512, 0.05 * (1 + 0.02 * rng.standard_normal()))
        m.observe_decode(16, 16 * 1000, 0.02 * (1 + 0.02 * rng.standard_normal()))
    assert m.prefill_time(512) == pytest.approx(0.05, rel=0.02)
    assert m.decode_time(16, 16_000) == pytest.approx(0.02, rel=0.02)
    p = m.profile()
    assert all(math.isfinite(v) and v >= 0 for v in (p.prefill_a, p.prefill_b, p.decode_c, p.decode_d,
                                                      p.decode_e))
    # no covariance wind-up: the unexcited direction stays within a few prior std of the prior
    assert p.prefill_b < 10 * TRUE.prefill_b


def test_bad_observations_are_ignored():
    m = StepTimeModel(TRUE)
    assert not m.observe_prefill(100, -0.1)
    assert not m.observe_prefill(-5, 0.1)
    assert not m.observe_prefill(100, math.nan)
    assert not m.observe_prefill(math.inf, 0.1)
    assert not m.observe_decode(0, 100, 0.01)  # a decode step has at least one sequence
    assert not m.observe_decode(4, 100, math.inf)
    assert not m.observe_prefill(100, 0.1, weight=0)
    assert m.profile() == TRUE
    assert m.state()["prefill"]["rejected"] == 5 and m.state()["decode"]["rejected"] == 2
    assert m.observe_prefill(0, 0.0)  # zero is physical (an empty prefill costs only overhead)


def test_non_physical_fit_is_clamped_to_the_prior_sign():
    # Data that a free least-squares fit explains with a negative intercept.
    m = StepTimeModel(TRUE, prior_rel_std=100.0)
    for tokens in range(1000, 9000, 10):
        m.observe_prefill(tokens, -0.02 + 6e-5 * tokens)
    p = m.profile()
    assert p.prefill_a == 0.0
    assert p.prefill_b > 0
    # the constrained optimum re-fits the slope through the data instead of just zeroing a
    assert m.prefill_time(5000) == pytest.approx(-0.02 + 6e-5 * 5000, rel=0.1)
    assert m.prefill_time(0) >= 0.0


def test_invalid_construction():
    with pytest.raises(ValueError):
        StepTimeModel(TRUE, forgetting=0.0)
    with pytest.raises(ValueError):
        StepTimeModel(TRUE, forgetting=1.5)
    with pytest.raises(ValueError):
        StepTimeModel(StepProfile(math.nan, 0, 0, 0, 0))


finite = st.floats(min_value=-1e7, max_value=1e7) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(finite, finite, finite), max_size=30))
def test_estimates_stay_physical_whatever_is_observed(obs):
    m = StepTimeModel(LONG, forgetting=0.95)
    for a, b, c in obs:
        m.observe_prefill(a, b)
        m.observe_prefill(a, b, context=c)
        m.observe_decode(a, b, c)
    p = m.profile()
    for v in (p.prefill_a, p.prefill_b, p.prefill_f, p.decode_c, p.decode_d, p.decode_e):
        assert math.isfinite(v) and v >= 0.0
    assert m.prefill_time(1000) >= 0.0 and m.prefill_time(1000, 50_000) >= 0.0 and m.decode_time(8, 1000) >= 0.0
