"""The core's snapshot is what its readers see, and the admin state is that snapshot: the real
server's `/state` and the console's fake admin answer what the OpenAPI document declares, so the
console's tests cannot drift from the server."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema_rs
import pytest
from starlette.testclient import TestClient

from controlplane.admin.openapi import openapi_document
from controlplane.core.events import Dispatch, RequestSpec
from tests.core_helpers import make_core, make_policy
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, running_gateway
from tests.test_gateway import raw
from tests.tui_fake_admin import TOKEN, FakeAdmin, initial_requests, state_at


def json_schema(schema: Any, components: dict[str, Any]) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: `$ref`s inlined, `nullable` as a null alternative."""
    if isinstance(schema, list):
        return [json_schema(s, components) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return json_schema(components[schema["$ref"].rsplit("/", 1)[1]], components)
    out = {k: json_schema(v, components) for k, v in schema.items() if k != "nullable"}
    return {"anyOf": [out, {"type": "null"}]} if schema.get("nullable") else out


def response_schema(path: str) -> Any:
    doc = openapi_document()
    declared = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    return json_schema(declared, doc["components"]["schemas"])


def problems(path: str, body: Any) -> list[str]:
    validator = jsonschema_rs.Draft7Validator(response_schema(path))
    return [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(body)]


def test_the_fake_admin_answers_what_the_document_declares() -> None:
    rid = initial_requests()[2]["rid"]
    reads = ["/admin/v1/state", "/admin/v1/gpus", "/admin/v1/policy", "/admin/v1/policy/history",
             "/admin/v1/requests", f"/admin/v1/requests/{rid}/trace", f"/admin/v1/requests/{rid}/why"]
    with TestClient(FakeAdmin().build_app()) as client:
        for url in reads:
            response = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200, url
            path = url.replace(rid, "{rid}")
            assert problems(path, response.json()) == [], url
    for i in range(0, 40, 7):  # the series the console's charts are tested with
        assert problems("/admin/v1/state", state_at(i)) == []


def test_the_state_schema_catches_a_renamed_field() -> None:
    state = state_at(0)
    state["tenants"][0]["queue"] = state["tenants"][0].pop("queued")
    assert problems("/admin/v1/state", state)


def test_the_real_state_answers_what_the_document_declares(tmp_path) -> None:
    with running_gateway(tmp_path, {"fake": FakeEngine(delay=0.002)}) as (server, sluice):
        status, _, data = raw(server, "GET", "/admin/v1/state", headers={"Authorization": f"Bearer {ADMIN}"})
        state = json.loads(data)
    assert status == 200 and problems("/admin/v1/state", state) == []
    assert [e["name"] for e in state["engines"]] == ["fake"]


def test_the_snapshot_is_what_the_core_knows() -> None:
    core = make_core(make_policy(window=1))
    actions = []
    for i, tenant in enumerate(["a", "a", "b", "bulk"]):
        actions += core.arrive(0.01 * i, RequestSpec(f"r{i}", tenant, 200, 50))
    running = [a.rid for a in actions if isinstance(a, Dispatch)]
    snap = core.snapshot(0.1)
    assert len(running) == 1 and snap.in_flight == 1 and snap.queued == 3
    assert snap.queued == sum(t.queued for t in snap.tenants.values())
    assert snap.in_flight == sum(t.in_flight for t in snap.tenants.values())
    assert snap.in_flight == sum(e.in_flight for e in snap.engines.values())
    assert snap.queued == sum(q.queued for q in snap.tiers.values())
    backlogged = [t for t in snap.tenants.values() if t.queued]
    assert sum(t.fair_share for t in backlogged) == pytest.approx(1.0)
    assert snap.deferred_slack_s and all(s > 0 for s in snap.deferred_slack_s)  # bulk's deadline
    assert snap.tiers["latency"].arrivals_per_s > 0 and snap.tiers["deferrable"].arrivals_per_s > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.queued = 0  # type: ignore[misc]
    light = core.snapshot(0.1, with_tenants=False)  # what /health, the sampler and the capacity rule take
    assert light.tenants == {} and light.queued_by_tenant == {n: t.queued for n, t in snap.tenants.items()}
    assert core.snapshot(0.1, also=["newcomer"]).tenants["newcomer"].queued == 0
