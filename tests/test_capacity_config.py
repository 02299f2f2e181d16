"""The scaling rule's parameters from the TOML's `[capacity]` table (controlplane/core/capacity.py
`CapacityParams`, controlplane/config.py): every key parses into the core's dataclass, a wrong key,
kind or range is a named error, the documented defaults are the real ones, and serving runs the
rule with what the config says (the admin API's capacity read reports it)."""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from controlplane.config import Config, ConfigError, EngineConfig, ServerConfig, parse_config
from controlplane.core.capacity import CapacityParams
from sluice.server import create_app

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_key_parses_into_the_cores_params() -> None:
    table = {"target_utilisation": 0.6, "batch_utilisation": 0.9, "tolerance": 0.2, "min_replicas": 1,
             "max_replicas": 8, "idle_to_zero_s": 120, "lead_s": 30.5, "burst_reserve": 1.5}
    assert set(table) == {f.name for f in dataclasses.fields(CapacityParams)}
    assert parse_config({"capacity": table}).capacity == CapacityParams(**table)
    assert parse_config({}).capacity == CapacityParams()


@pytest.mark.parametrize(("table", "message"), [
    ({"target": 0.6}, "[capacity]: unknown keys ['target']; known: ['batch_utilisation'"),
    ({"max_replicas": "8"}, "[capacity]: max_replicas must be an integer >= 0, got '8'"),
    ({"min_replicas": 1.5}, "[capacity]: min_replicas must be an integer >= 0, got 1.5"),
    ({"lead_s": True}, "[capacity]: lead_s must be a number, got True"),
    ({"target_utilisation": 0}, "[capacity]: target_utilisation must be in (0, 1], got 0"),
    ({"tolerance": 1}, "[capacity]: tolerance must be in [0, 0.99], got 1"),
    ({"idle_to_zero_s": -1}, "[capacity]: idle_to_zero_s must be in [0, inf], got -1"),
    ({"min_replicas": 4, "max_replicas": 2}, "[capacity]: max_replicas (2) must be >= 1 and >= min_replicas (4)"),
    ({"target_utilisation": 0.99}, "[capacity]: batch_utilisation (0.95) must be >= target_utilisation (0.99)"),
])
def test_a_wrong_key_kind_or_range_is_a_named_error(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"capacity": table})
    assert str(err.value).startswith(message)


def test_capacity_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^\[capacity\] must be a table, got 3$"):
        parse_config({"capacity": 3})


def test_the_documented_table_lists_every_default() -> None:
    examples = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    documented = tomllib.loads(examples[0])["capacity"]
    defaults = dataclasses.asdict(CapacityParams())
    assert documented == defaults


def test_serving_runs_the_rule_with_the_configured_params(tmp_path) -> None:
    params = CapacityParams(target_utilisation=0.5, max_replicas=6, idle_to_zero_s=300.0)
    token = tmp_path / "admin.token"
    token.write_text("admin-token")
    config = Config(server=ServerConfig(db_path=str(tmp_path / "s.duckdb"), admin_token_file=str(token)),
                    engines=[EngineConfig(name="sim-0")], capacity=params)
    app, sluice = create_app(config, store=False)
    with TestClient(app) as client:
        pool = next(iter(sluice.pools.values()))
        assert pool.capacity is not None and pool.capacity.params == params
        rec = pool.capacity.step(pool.core, sluice.clock())  # an evaluation, as the cadence runs it
        assert rec.desired <= params.max_replicas
        body = client.get("/admin/v1/capacity", headers={"Authorization": "Bearer admin-token"}).json()
    assert body["params"] == dataclasses.asdict(params)
