"""Every TOML example in docs/configuration.md parses, and to what its text says: each key it sets
has that value in the parsed config, the tables that list defaults list the real defaults, and a
table for a built-in SLO class changes only the keys it names."""
from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from controlplane.config import Config, EngineConfig, ServerConfig, TelemetryConfig, parse_config
from controlplane.core.policy import DEFAULT_SLO_CLASSES, Policy, SLOClassPolicy, slo_class_to_json

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
EXAMPLES = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
SCHEDULER = {"policy": "scheduler"}  # [scheduler] keys named otherwise in the Policy


def _unset(value: Any) -> Any:
    return None if value == "" else value  # the examples write "" for a path or address left unset


def test_the_doc_has_examples() -> None:
    assert EXAMPLES and any("[slo_classes." in text for text in EXAMPLES)


@pytest.mark.parametrize("text", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_an_example_parses_to_what_it_says(text: str) -> None:
    raw = tomllib.loads(text)
    config = parse_config(raw)
    for table, obj in (("server", config.server), ("telemetry", config.telemetry)):
        for key, value in raw.get(table, {}).items():
            assert _unset(getattr(obj, key)) == _unset(value), f"[{table}] {key}"
    for key, value in raw.get("scheduler", {}).items():
        assert getattr(config.policy, SCHEDULER.get(key, key)) == value, f"[scheduler] {key}"
    for name, table in raw.get("slo_classes", {}).items():
        base = DEFAULT_SLO_CLASSES.get(name, SLOClassPolicy())
        assert slo_class_to_json(config.policy.slo(name)) == {**slo_class_to_json(base), **table}, name
    for t in raw.get("tenants", []):
        identity = next(c for c in config.tenants if c.name == t["name"])
        policy = config.policy.tenants[t["name"]]
        for key, value in t.items():
            assert getattr(identity if hasattr(identity, key) else policy, key) == value, f"tenant {t['name']}: {key}"
    for e in raw.get("engines", []):
        engine = next(c for c in config.engines if c.name == e["name"])
        assert all(getattr(engine, key) == value for key, value in e.items()), e["name"]


@pytest.mark.parametrize("text", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_the_classes_an_example_calls_built_in_are(text: str) -> None:
    for name in re.findall(r"^\[slo_classes\.(\w+)\]\s*#\s*built in", text, re.M):
        assert name in DEFAULT_SLO_CLASSES


def test_the_server_scheduler_and_telemetry_tables_show_the_defaults() -> None:
    raw = tomllib.loads(EXAMPLES[0])
    defaults = Config()
    for table, obj in (("server", defaults.server), ("telemetry", defaults.telemetry)):
        for key, value in raw[table].items():
            assert _unset(getattr(obj, key)) == _unset(value), f"[{table}] {key}"
    for key, value in raw["scheduler"].items():
        assert getattr(Policy(), SCHEDULER.get(key, key)) == value, f"[scheduler] {key}"
    # and they show every key there is
    assert set(raw["server"]) == {f.name for f in fields(ServerConfig)}
    assert set(raw["telemetry"]) | {"otlp_receiver_port"} == {f.name for f in fields(TelemetryConfig)}
    assert {f.name for f in fields(EngineConfig)} == {k for e in raw["engines"] for k in e}


def test_the_batch_example_is_the_built_in_batch_class() -> None:
    """The doc's [slo_classes.batch] gives a deadline and on_miss only: no TTFT or TPOT target."""
    config = parse_config(tomllib.loads(EXAMPLES[0]))
    batch = config.policy.slo("batch")
    assert (batch.ttft_s, batch.tpot_s, batch.deadline_s, batch.on_miss) == (None, None, 600, "defer")


def test_a_new_class_starts_from_the_defaults_and_times_are_milliseconds() -> None:
    config = parse_config({"slo_classes": {"gold": {"ttft_ms": 200, "ttft_ms_per_ktok": 20}},
                           "tenants": [{"name": "acme", "slo_class": "gold"}]})
    gold = config.policy.slo("gold")
    assert (gold.ttft_s, gold.tpot_s, gold.ttft_s_per_ktok, gold.on_miss) == (0.2, 0.05, 0.02, "reject")
    assert config.policy.slo("interactive") == DEFAULT_SLO_CLASSES["interactive"]  # built-ins stay
    assert slo_class_to_json(gold)["ttft_ms"] == 200  # and read back in ms, exactly
