import math

import pytest

from controlplane.predict import ErrorStats, ForecastErrors


def test_known_example():
    fe = ForecastErrors(window=10)
    for p, a in [(1.1, 1.0), (0.8, 1.0), (3.0, 2.0)]:
        fe.record("ttft", p, a)
    s = fe.stats("ttft")
    assert s.count == 3
    assert s.median_ape == pytest.approx(0.2)  # APEs 0.1, 0.2, 0.5
    assert s.bias == pytest.approx((0.1 - 0.2 + 1.0) / 3)
    assert s.mae == pytest.approx((0.1 + 0.2 + 1.0) / 3)
    # other kinds are independent and empty
    assert fe.stats("tpot") == ErrorStats(0, None, None, None)
    assert fe.summary()["output_tokens"].count == 0


def test_window_keeps_only_the_latest_records():
    fe = ForecastErrors(window=2)
    fe.record("output_tokens", 1000, 10)  # APE 99, pushed out of the window below
    fe.record("output_tokens", 110, 100)
    fe.record("output_tokens", 90, 100)
    s = fe.stats("output_tokens")
    assert s.count == 2
    assert s.median_ape == pytest.approx(0.1)
    assert s.bias == pytest.approx(0.0)
    assert fe.state()["output_tokens"]["total"] == 3


def test_zero_actual_counts_in_bias_not_in_ape_and_bad_values_are_dropped():
    fe = ForecastErrors()
    fe.record("tpot", 0.5, 0.0)
    assert fe.stats("tpot").median_ape is None
    assert fe.stats("tpot").bias == pytest.approx(0.5)
    fe.record("tpot", math.nan, 1.0)
    fe.record("tpot", 1.0, math.inf)
    assert fe.stats("tpot").count == 1
    assert fe.dropped == 2


def test_unknown_kind_and_bad_window_raise():
    fe = ForecastErrors()
    with pytest.raises(ValueError):
        fe.record("latency", 1.0, 1.0)
    with pytest.raises(ValueError):
        fe.stats("latency")
    with pytest.raises(ValueError):
        ForecastErrors(window=0)
