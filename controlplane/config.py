"""sluice's TOML configuration: tenants, SLO classes, engines, listen addresses.

Every field has a documented default (docs/configuration.md). Tenant API keys are never stored in
plain text: the config holds `api_key_sha256`, or names an environment variable (`api_key_env`).

The policy part ([scheduler], [slo_classes.*], [dispatch], each tenant's weight, class and rate limits) parses
straight into the core's `Policy` (`Config.policy`, version 1), through the same validation as a
live change: its fields, defaults and units are defined once, in controlplane/core/policy.py.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from controlplane.core.capacity import CapacityParams
from controlplane.core.policy import DEFAULT_SLO_CLASSES, Policy, PolicyError, TenantPolicy, policy_from_dict, \
    slo_class_to_json
from controlplane.model_pools import ModelCatalog


class ConfigError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "sk-sluice-") -> str:
    return prefix + secrets.token_urlsafe(24)


@dataclass(slots=True)
class TenantConfig:
    """Who may call as the tenant. What it gets (weight, SLO class, rate limits) is its entry in
    `Config.policy.tenants`: a [[tenants]] table's policy keys go there."""

    name: str
    _: KW_ONLY  # (a positional weight, as this class once took, must not become a key hash)
    api_key_sha256: str | None = None
    api_key_env: str | None = None
    models: list[str] | None = None  # the model names it may use (None: every model; docs/configuration.md)
    # its own LoRA adapter(s), "model:adapter" (a string or a list, one per model): its requests to
    # that model that name no adapter run with it
    adapter: str | list[str] | None = None

    def adapters(self) -> list[str]:
        return [self.adapter] if isinstance(self.adapter, str) else list(self.adapter or [])

    def key_hashes(self) -> list[str]:
        hashes = [self.api_key_sha256] if self.api_key_sha256 else []
        if self.api_key_env and os.environ.get(self.api_key_env):
            hashes.append(hash_key(os.environ[self.api_key_env]))
        return hashes


@dataclass(slots=True)
class EngineConfig:
    name: str
    kind: str = "sim"  # "sim" (embedded simulator) | "sglang" (HTTP) | "sglang-inprocess"
    url: str | None = None  # for kind = "sglang"
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    profile: str = "h100-llama3.1-8b"  # simulator profile / step-time prior
    seed: int = 0
    speedup: float = 1.0  # sim only: run the simulated GPU this many times faster than real time
    api_key_env: str | None = None  # SGLang --api-key, read from this environment variable
    gpu: int | None = None  # the GPU index (NVML) whose SM clock [server] clock_control sets for this engine
    mig: str | None = None  # or the MIG instance it runs on: its NVML UUID ("MIG-..."), checked at start-up
    max_loaded_loras: int | None = None  # sim only: LoRA adapters it holds at once (SGLang's --max-loaded-loras)


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: int = 8080
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 32768  # larger max_tokens is refused as absurd
    admin_token_env: str = "SLUICE_ADMIN_TOKEN"
    admin_token_file: str | None = None
    db_path: str = "sluice.duckdb"
    model_name: str = "sluice-default"  # the model name clients use; engines' models are aliases too
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (408 and close)
    body_timeout_s: float = 30.0  # its body within this of the headers (408 and close)
    send_timeout_s: float = 60.0  # a client that reads nothing of its response this long: aborted, no more written
    keep_alive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 1024  # open connections; past it a new one gets 503 and is closed
    clock_control: bool = False  # SLO-aware SM clocks per engine (docs/frequency.md)
    tokenizer: str | None = None  # the model's tokenizer.json: exact prompt counts before dispatch


@dataclass(slots=True)
class TelemetryConfig:
    trace_sample_ratio: float = 1.0  # spans only; request rows are never sampled
    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318/v1/traces
    otlp_receiver_port: int | None = None  # its own OTLP/HTTP listener (then not on the serve port)
    otlp_receiver_host: str | None = None  # that listener's address; None = [server] host
    otlp_receiver_auth: str = "auto"  # auto (token required beyond loopback) | token | none
    otlp_receiver_token_env: str = "SLUICE_OTLP_TOKEN"  # the receiver's token comes from this variable...
    otlp_receiver_token_file: str | None = None  # ...or from this file
    otlp_max_bytes: int = 16 << 20  # per request, after decompression (413 beyond)
    otlp_max_spans: int = 10_000  # per request; the rest are rejected (partial success)
    otlp_max_concurrent_decodes: int = 2  # more at once get 503 + Retry-After
    metrics_token_env: str = "SLUICE_METRICS_TOKEN"  # when set, GET /metrics needs this bearer token...
    metrics_token_file: str | None = None  # ...or the one in this file (the admin token works too)
    metrics_tenant_labels: bool = True  # false: no tenant names in /metrics (tenant="all" on every series)
    metrics_max_tenants: int = 50  # tenants with a label of their own; later ones are "other"
    retention_days: float | None = 7.0
    flush_interval_s: float = 1.0
    store_memory_mb: int = 64  # DuckDB's buffer pool; unbounded, it caches the growing file in RAM (bench_soak)


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    tenants: list[TenantConfig] = field(default_factory=list)
    engines: list[EngineConfig] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)  # the starting policy (version 1)
    capacity: CapacityParams = field(default_factory=CapacityParams)  # [capacity]: the scaling rule (docs/capacity.md)
    # [models."<model>"] tables: aliases and LoRA adapters of the engines' model pools (model_pools.py)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unlisted = {t.name: TenantPolicy() for t in self.tenants if t.name not in self.policy.tenants}
        if unlisted:  # a tenant the policy does not name gets the defaults, as a [[tenants]] table would
            self.policy = replace(self.policy, tenants={**self.policy.tenants, **unlisted})
        if not self.engines:
            self.engines = [EngineConfig(name="sim-0")]
        self.validate()

    def validate(self) -> None:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ConfigError("tenant names must be unique")
        try:
            self.policy.validate()
        except PolicyError as exc:
            raise ConfigError(f"policy: {exc}") from None
        for key in ("header_timeout_s", "body_timeout_s", "send_timeout_s", "keep_alive_timeout_s"):
            value = getattr(self.server, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"[server] {key} must be a number of seconds > 0")
        if not isinstance(self.server.max_connections, int) or self.server.max_connections < 1:
            raise ConfigError("[server] max_connections must be a positive integer")
        t = self.telemetry
        if t.otlp_receiver_auth not in ("auto", "token", "none"):
            raise ConfigError("[telemetry] otlp_receiver_auth must be 'auto', 'token' or 'none'")
        if not isinstance(t.metrics_tenant_labels, bool):
            raise ConfigError("[telemetry] metrics_tenant_labels must be true or false")
        if isinstance(t.metrics_max_tenants, bool) or not isinstance(t.metrics_max_tenants, int) \
                or t.metrics_max_tenants < 0:
            raise ConfigError("[telemetry] metrics_max_tenants must be an integer >= 0")
        for key in ("otlp_max_bytes", "otlp_max_spans", "otlp_max_concurrent_decodes"):
            if not isinstance(getattr(t, key), int) or getattr(t, key) < 1:
                raise ConfigError(f"[telemetry] {key} must be a positive integer")
        for e in self.engines:
            if e.kind not in ("sim", "sglang", "sglang-inprocess"):
                raise ConfigError(f"engine {e.name!r}: unknown kind {e.kind!r}")
            if e.kind == "sglang" and not e.url:
                raise ConfigError(f"engine {e.name!r}: kind 'sglang' needs a url")
            if e.max_loaded_loras is not None and (isinstance(e.max_loaded_loras, bool)
                                                   or not isinstance(e.max_loaded_loras, int) or e.max_loaded_loras < 1):
                raise ConfigError(f"engine {e.name!r}: max_loaded_loras must be an integer >= 1")
            _check_binding(e)
        self._check_models()

    def catalog(self) -> ModelCatalog:
        """The engines' model pools and every model name clients may send (model_pools.py)."""
        try:
            return ModelCatalog.build([(e.name, e.model) for e in self.engines], self.models, self.server.model_name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _check_models(self) -> None:
        """Engine names unique, the [models.*] tables, the tenants' allow-lists and per-pool weights."""
        names = [e.name for e in self.engines]
        if len(set(names)) != len(names):
            raise ConfigError("engine names must be unique")
        if not isinstance(self.models, dict):
            raise ConfigError("[models]: must be a table of model -> its table")
        for model, table in self.models.items():
            unknown = set(table) - _MODEL_KEYS if isinstance(table, dict) else None
            if unknown is None or unknown:
                raise ConfigError(f"[models.{model!r}]: unknown keys {sorted(unknown or ())}; known: {sorted(_MODEL_KEYS)}"
                                  if unknown else f"[models.{model!r}]: must be a table")
        catalog = self.catalog()
        for t in self.tenants:
            if t.models is None:
                continue
            if not isinstance(t.models, list) or not t.models:
                raise ConfigError(f"tenant {t.name!r}: models must be a non-empty list of model names")
            for name in t.models:
                if not isinstance(name, str) or catalog.resolve(name) is None:
                    raise ConfigError(f"tenant {t.name!r}: models: {name!r} names no model; known: {catalog.listed()}")
        for t in self.tenants:
            _check_tenant_adapters(t, catalog)
        problem = catalog.weights_problem(self.policy.tenants)
        if problem:
            raise ConfigError(f"policy: {problem}")

    def admin_token(self) -> str | None:
        if self.server.admin_token_file:
            return Path(self.server.admin_token_file).read_text().strip() or None
        return os.environ.get(self.server.admin_token_env) or None

    def tenant_by_key_hash(self) -> dict[str, TenantConfig]:
        return {h: t for t in self.tenants for h in t.key_hashes()}


_MODEL_KEYS = {"aliases", "adapters", "adapter_aliases"}


def _check_tenant_adapters(t: TenantConfig, catalog: ModelCatalog) -> None:
    """A tenant's `adapter`: "model:adapter" names, each a declared adapter, one per model."""
    if t.adapter is not None and not isinstance(t.adapter, (str, list)):
        raise ConfigError(f"tenant {t.name!r}: adapter must be \"model:adapter\" or a list of them")
    pools: set[str] = set()
    for name in t.adapters():
        route = catalog.resolve(name) if isinstance(name, str) else None
        if route is None or route.adapter is None:
            raise ConfigError(f"tenant {t.name!r}: adapter {name!r} is not \"model:adapter\" for a declared "
                              f"adapter; known: {[n for n in catalog.listed() if (r := catalog.resolve(n)) and r.adapter]}")
        if route.pool in pools:
            raise ConfigError(f"tenant {t.name!r}: two adapters for model {route.pool!r}")
        pools.add(route.pool)


def _check_binding(e: EngineConfig) -> None:
    """`gpu` (an NVML index) or `mig` (a MIG instance's UUID), not both: the instances of a MIG GPU
    share its clock, so clock_control cannot set one engine's (docs/configuration.md)."""
    if e.gpu is not None and (isinstance(e.gpu, bool) or not isinstance(e.gpu, int) or e.gpu < 0):
        raise ConfigError(f"engine {e.name!r}: gpu must be an NVML index (an integer >= 0), got {e.gpu!r}")
    if e.mig is None:
        return
    if not isinstance(e.mig, str) or not e.mig.startswith("MIG-"):
        raise ConfigError(f"engine {e.name!r}: mig must be a MIG instance's UUID as `nvidia-smi -L` prints it "
                          f"(\"MIG-...\"), got {e.mig!r}")
    if e.gpu is not None:
        raise ConfigError(f"engine {e.name!r}: give gpu or mig, not both (a MIG instance shares its GPU's clock "
                          "with the other instances: clock_control cannot set it for one engine)")


def _build(cls: type, raw: dict[str, Any], where: str, also: tuple[str, ...] = ()) -> Any:
    """`cls` from a table; `also`: the table's other known keys (read elsewhere)."""
    known = {f.name for f in fields(cls)} | set(also)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:  # a missing or unknown field; a value its class refuses
        raise ConfigError(f"{where}: {exc}") from None


# [scheduler] key -> the Policy field it sets (the table calls the scheduler `policy`)
_SCHEDULER_KEYS = {"policy": "scheduler", "window": "window", "holistic_alpha": "holistic_alpha",
                   "admission": "admission", "admission_margin": "admission_margin",
                   "pass_priority": "pass_priority"}
# the [[tenants]] keys that are the tenant's policy (pausing is an operator's live action only)
_TENANT_POLICY_KEYS = tuple(f.name for f in fields(TenantPolicy) if f.name != "paused")


def _policy(raw: dict[str, Any]) -> Policy:
    """The starting policy from the TOML's [scheduler], [slo_classes.*] and [[tenants]] tables. A
    table for a built-in class changes only the keys it names; a new class starts from
    SLOClassPolicy's defaults. Times in ms, as in the policy's JSON."""
    scheduler = raw.get("scheduler", {})
    unknown = set(scheduler) - set(_SCHEDULER_KEYS)
    if unknown:
        raise ConfigError(f"[scheduler]: unknown keys {sorted(unknown)}; known: {sorted(_SCHEDULER_KEYS)}")
    classes = {name: slo_class_to_json(c) for name, c in DEFAULT_SLO_CLASSES.items()}
    for name, table in raw.get("slo_classes", {}).items():
        classes[name] = {**classes.get(name, {}), **table}
    tenants = {t["name"]: {k: t[k] for k in _TENANT_POLICY_KEYS if k in t} for t in raw.get("tenants", [])}
    doc = {**{_SCHEDULER_KEYS[k]: v for k, v in scheduler.items()}, "slo_classes": classes, "tenants": tenants}
    if "dispatch" in raw:  # [dispatch]: scorers and their weights, the cached-token estimate (docs/dispatch.md)
        doc["dispatch"] = raw["dispatch"]
    try:
        return policy_from_dict(doc)
    except PolicyError as exc:
        raise ConfigError(f"policy: {exc}") from None


def parse_config(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - {"server", "scheduler", "telemetry", "tenants", "slo_classes", "engines", "dispatch", "models",
                        "capacity"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    identities = []
    for i, t in enumerate(raw.get("tenants", [])):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ConfigError(f"[[tenants]] #{i}: a table with a name")
        identity = {k: v for k, v in t.items() if k not in _TENANT_POLICY_KEYS}
        identities.append(_build(TenantConfig, identity, f"[[tenants]] #{i}", also=_TENANT_POLICY_KEYS))
    return Config(
        server=_build(ServerConfig, raw.get("server", {}), "[server]"),
        telemetry=_build(TelemetryConfig, raw.get("telemetry", {}), "[telemetry]"),
        tenants=identities,
        engines=[_build(EngineConfig, e, f"[[engines]] #{i}") for i, e in enumerate(raw.get("engines", []))],
        policy=_policy(raw),
        models=raw.get("models", {}),
        capacity=_build(CapacityParams, _table(raw, "capacity"), "[capacity]"),
    )


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table, got {table!r}")
    return table


def load_config(path: str | Path) -> Config:
    try:
        with open(path, "rb") as f:
            return parse_config(tomllib.load(f))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
