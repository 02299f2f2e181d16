"""GET /admin/v1/requests/{rid}/why over real HTTP: a request's decisions in words and numbers,
from its recorded rows (controlplane/admin/why.py)."""
from __future__ import annotations

import json

import pytest

from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, running_gateway
from tests.test_gateway import raw

ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
BODY = {"model": "sluice-default", "prompt": "hello there", "max_tokens": 4}


@pytest.fixture
def gateway(tmp_path):
    engines = {"fake-a": FakeEngine(delay=0.002), "fake-b": FakeEngine(delay=0.002)}
    with running_gateway(tmp_path, engines) as (server, sluice):
        yield server, sluice


def complete(server, tenant: str) -> tuple[int, str]:
    status, headers, _ = raw(server, "POST", "/v1/completions", BODY, {"Authorization": f"Bearer {KEYS[tenant]}"})
    return status, headers["x-request-id"]


def why(server, rid: str, auth=ADMIN_AUTH) -> tuple[int, dict]:
    status, _, data = raw(server, "GET", f"/admin/v1/requests/{rid}/why", headers=auth)
    return status, json.loads(data)


def test_an_admitted_request_says_why_and_where(gateway):
    server, _ = gateway
    status, rid = complete(server, "acme")
    assert status == 200
    got, w = why(server, rid)
    assert got == 200 and w["rid"] == rid and w["tenant"] == "acme" and w["status"] == "ok"
    kinds = [d["kind"] for d in w["decisions"]]
    assert kinds[0] in ("admit", "defer") and "dispatch" in kinds
    assert w["policy_version"] == 1 and w["slo"]["class"] == "interactive" and w["slo"]["ttft_budget_ms"] > 0
    # the forecast the decision saw, in parts that add up to it, for every engine (the runner-up too)
    fc = w["forecast"]
    assert sum(fc["parts"].values()) == pytest.approx(fc["ttft_ms"], rel=1e-6)
    assert {e["engine"] for e in w["engines"]} == {"fake-a", "fake-b"}
    dispatch = w["dispatch"]
    assert [c["chosen"] for c in dispatch["candidates"]].count(True) == 1
    assert {c["engine"] for c in dispatch["candidates"]} == {"fake-a", "fake-b"}
    assert "runners-up" in w["decisions"][kinds.index("dispatch")]["text"]
    assert "holistic" in w["fairness"] and "fair share" in w["decisions"][kinds.index("dispatch")]["text"]
    assert "TTFT" in w["summary"] and "budget" in w["summary"]
    assert [p["name"] for p in w["phases"]] == ["admission", "queue", "prefill", "decode"]


def test_a_refusal_says_what_would_have_let_it_in(gateway):
    server, _ = gateway
    assert raw(server, "POST", "/admin/v1/tenants/globex/pause", {"reason": "drill"}, ADMIN_AUTH)[0] == 200
    status, rid = complete(server, "globex")
    assert status == 429
    got, w = why(server, rid)
    assert got == 200 and w["status"] == "rejected" and w["decisions"][0]["kind"] == "reject"
    assert w["would_admit"]["reason"] == "tenant_paused" and "resumed" in w["would_admit"]["text"]


def test_a_slo_refusal_names_the_numbers(gateway):
    server, _ = gateway
    change = {"reason": "tight", "changes": {"admission": True,
                                             "slo_classes": {"interactive": {"ttft_ms": 0.001}}}}
    assert raw(server, "PATCH", "/admin/v1/policy", change, ADMIN_AUTH)[0] == 200
    status, rid = complete(server, "acme")
    assert status == 429
    got, w = why(server, rid)
    would = w["would_admit"]
    assert would["reason"] == "ttft_unattainable" and w["policy_version"] == 2
    assert would["budget_needed_ms"] > would["limit_ms"] and "budget of at least" in would["text"]


def test_unknown_request_and_tenant_keys(gateway):
    server, _ = gateway
    assert why(server, "no-such-request")[0] == 404
    assert why(server, "x", {"Authorization": f"Bearer {KEYS['acme']}"})[0] == 403


def test_an_in_flight_request_is_explained_from_memory(tmp_path):
    import http.client

    with running_gateway(tmp_path, {"fake": FakeEngine(delay=0.05)}) as (server, _):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/v1/completions", body=json.dumps({**BODY, "max_tokens": 200, "stream": True}),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
        resp = conn.getresponse()
        resp.readline()
        rid = resp.getheader("x-request-id")
        got, w = why(server, rid)
        assert got == 200 and w["status"] == "running"
        assert [d["kind"] for d in w["decisions"]][-1] == "dispatch" and w["dispatch"]["engine"] == "fake"
        conn.close()
