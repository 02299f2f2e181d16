"""Issue 9 item 13: the admin API's OpenAPI document is complete and honest.

Complete: every route has its operation, every path parameter is declared. Honest: schemathesis
generates requests from the document (valid and invalid ones, a few per operation) against a real
`sluice serve` on loopback, and checks that no answer is a 5xx, that every status code returned is
declared, and that every body and content type matches what is declared.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from controlplane.admin.api import AdminAPI
from controlplane.admin.openapi import openapi_document
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = 6  # per operation and mode: a bounded run (seconds), not a fuzzing campaign


def test_every_route_is_an_operation_with_its_path_parameters():
    doc = openapi_document()
    admin = AdminAPI.__new__(AdminAPI)  # routes() only binds methods
    routes = {(r.path, m.lower()) for r in admin.routes() for m in r.methods if m != "HEAD"}
    operations = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert routes == operations
    for path, ops in doc["paths"].items():
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), path
            assert {"401", "403"} <= set(op["responses"])


@pytest.fixture(scope="module")
def sluice_serve(tmp_path_factory):
    """`sluice serve` with its local dev setup (the simulated engine) on a free loopback port."""
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--port", str(port), "--state-dir",
                             str(state)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sluice serve did not start: {proc.communicate()[1]}") from None
            time.sleep(0.2)
    try:
        yield url, (state / "admin.token").read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def exercise(operation, mode, url: str, auth: dict[str, str], answered: dict[str, set[int]]) -> None:
    """A few generated requests to one operation, each answer checked against the document."""
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
              schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance]

    @given(case=operation.as_strategy(generation_mode=mode, headers=auth))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call_and_validate(base_url=url, headers=auth, checks=checks, timeout=10)
        answered.setdefault(operation.label, set()).add(response.status_code)

    try:
        run()
    except Unsatisfiable:  # nothing in this operation can be made invalid (no parameter, no body)
        assert mode is GenerationMode.NEGATIVE


def test_the_document_holds_against_a_real_server(sluice_serve):
    url, token = sluice_serve
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{url}/admin/v1/openapi.json", headers=auth)
    # the event stream never ends: its operation is declared, not called
    schema = schema.exclude(path="/admin/v1/events")
    answered: dict[str, set[int]] = {}  # operation -> the statuses it answered
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            exercise(result.ok(), mode, url, auth, answered)
    # every operation answered, but the event stream and the document itself (schemathesis skips
    # the URL it loaded the schema from)
    assert set(answered) == {f"{method.upper()} {path}" for path, ops in openapi_document()["paths"].items()
                             for method in ops} - {"GET /admin/v1/events", "GET /admin/v1/openapi.json"}
    assert not [op for op, statuses in answered.items() if statuses <= {401, 403}]  # the token was taken
