"""The runtime's one mapping from a refusal reason (the core's `Reject.code`) to an HTTP status."""
from __future__ import annotations

import pytest

from controlplane.errors import REFUSAL_STATUS, refusal

POLICY_REFUSALS = ("tenant_paused", "rate_limited_requests", "rate_limited_tokens", "over_share",
                   "ttft_unattainable", "tpot_unattainable", "protects_running", "deadline_unattainable",
                   "deadline_expired")


@pytest.mark.parametrize("code", POLICY_REFUSALS)
def test_a_policy_refusal_is_a_429_with_retry_after(code):
    err = refusal(code, "refused", 2.4)
    assert (err.status, err.code, err.message) == (429, code, "refused")
    assert (b"retry-after", b"2") in err.headers()
    assert err.body()["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("code", ["no_healthy_engine", "aborted"])
def test_nothing_to_serve_it_is_a_503(code):
    err = refusal(code, "unavailable", None)
    assert err.status == 503 and err.body()["error"]["type"] == "server_error"
    assert not any(name == b"retry-after" for name, _ in err.headers())


def test_the_table_names_every_reason_and_an_unnamed_one_is_a_policy_refusal():
    assert set(REFUSAL_STATUS) == {*POLICY_REFUSALS, "no_healthy_engine", "aborted"}
    assert refusal("some_new_reason", "refused", None).status == 429
