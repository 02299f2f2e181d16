"""Issue 9 item 12: `/metrics` can require a token, and tenant names can be kept out of it."""
from __future__ import annotations

import contextlib
import json

from prometheus_client.parser import text_string_to_metric_families

from controlplane.config import TelemetryConfig
from sluice.server import create_app
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.servers import ServerThread
from tests.test_gateway import raw, wait_until


@contextlib.contextmanager
def serving(tmp_path, **telemetry):
    config = make_config(tmp_path, ["fake"])
    config.telemetry = TelemetryConfig(**telemetry)
    app, sluice = create_app(config, {"fake": FakeEngine()})
    with ServerThread(app) as server:
        yield server, sluice


def one_request(server, sluice):
    status, _, _ = raw(server, "POST", "/v1/completions", {"model": "sluice-default", "prompt": "x", "max_tokens": 2},
                       {"Authorization": f"Bearer {KEYS['acme']}"})
    assert status == 200
    wait_until(lambda: sluice.stats.requests)


def tenants_in(text: str) -> set[str]:
    return {s.labels["tenant"] for f in text_string_to_metric_families(text) for s in f.samples
            if "tenant" in s.labels}


def test_metrics_token(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_METRICS_TOKEN", "scrape-secret")
    with serving(tmp_path) as (server, sluice):
        one_request(server, sluice)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEYS['acme']}"}):
            status, hdrs, data = raw(server, "GET", "/metrics", headers=headers)
            assert status == 401 and json.loads(data)["error"]["code"] == "unauthorized"
            assert hdrs["www-authenticate"].startswith("Bearer")
        for token in ("scrape-secret", ADMIN):
            status, _, data = raw(server, "GET", "/metrics", headers={"Authorization": f"bearer {token}"})
            assert status == 200 and "acme" in tenants_in(data.decode())


def test_metrics_stay_open_without_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("SLUICE_METRICS_TOKEN", raising=False)
    with serving(tmp_path) as (server, sluice):
        assert raw(server, "GET", "/metrics")[0] == 200


def test_tenant_names_can_be_hidden(tmp_path, monkeypatch):
    monkeypatch.delenv("SLUICE_METRICS_TOKEN", raising=False)
    with serving(tmp_path, metrics_tenant_labels=False) as (server, sluice):
        one_request(server, sluice)
        raw(server, "POST", "/v1/completions", {"model": "sluice-default", "prompt": "x", "max_tokens": 2},
            {"Authorization": f"Bearer {KEYS['globex']}"})
        wait_until(lambda: len(sluice.stats.requests) == 2)
        status, _, data = raw(server, "GET", "/metrics")
        text = data.decode()
        assert status == 200 and tenants_in(text) == {"all"}
        assert "acme" not in text and "globex" not in text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ok = [s.value for s in families["sluice_requests"].samples
              if s.name == "sluice_requests_total" and s.labels["outcome"] == "ok"]
        assert sum(ok) == 2  # the totals are all there, summed over tenants


def test_each_request_counts_once_in_the_forecast_error(tmp_path, monkeypatch):
    """Each finished request's forecasts are observed once per kind (they were observed twice: once
    where the predictors learn, again from its request row)."""
    monkeypatch.delenv("SLUICE_METRICS_TOKEN", raising=False)
    with serving(tmp_path) as (server, sluice):
        for _ in range(3):
            one_request(server, sluice)
        wait_until(lambda: len(sluice.stats.requests) >= 3)
        families = text_string_to_metric_families(raw(server, "GET", "/metrics")[2].decode())
        counts = {s.labels["kind"]: s.value for f in families for s in f.samples
                  if s.name == "sluice_forecast_error_count"}
    assert counts == {"output_tokens": 3, "ttft": 3, "tpot": 3, "prompt_tokens": 3}
