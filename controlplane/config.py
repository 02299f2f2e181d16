"""sluice's TOML configuration: tenants, SLO classes, engines, listen addresses.

Every field has a documented default (docs/configuration.md). Tenant API keys are never stored in
plain text: the config holds `api_key_sha256`, or names an environment variable (`api_key_env`).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(prefix: str = "sk-sluice-") -> str:
    return prefix + secrets.token_urlsafe(24)


@dataclass(slots=True)
class SLOClass:
    name: str
    ttft_ms: float | None = 500.0  # time to first token target
    tpot_ms: float | None = 50.0  # time per output token target
    deadline_s: float | None = None  # end-to-end deadline (batch classes)
    on_miss: str = "reject"  # "reject" (429 now) or "defer" (queue until the deadline)
    priority: int | None = None  # SGLang priority passed through when engines enable it
    ttft_ms_per_ktok: float = 0.0  # TTFT allowance per 1,000 prompt tokens (long-context classes)


@dataclass(slots=True)
class TenantConfig:
    name: str
    weight: float = 1.0
    slo_class: str = "interactive"
    api_key_sha256: str | None = None
    api_key_env: str | None = None
    rate_limit_rps: float | None = None  # requests/s (token bucket, burst = 1 s)
    rate_limit_tpm: float | None = None  # tokens/min (prompt + max_tokens, reconciled at finish)

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
    keep_alive_timeout_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 1024  # open connections; past it a new one gets 503 and is closed


@dataclass(slots=True)
class SchedulerConfig:
    policy: str = "fcfs"  # fcfs | vtc | equinox | wrr
    window: int = 0  # per-engine in-flight window; 0 sizes it from KV capacity and the SLO
    holistic_alpha: float = 0.5  # equinox: weight of the user counter against the resource counter
    admission: bool = False  # SLO-aware admission on/off
    admission_margin: float = 0.8  # admit only if forecast <= margin * SLO
    pass_priority: bool = False  # forward the SLO class's priority to SGLang


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


@dataclass(slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    tenants: list[TenantConfig] = field(default_factory=list)
    slo_classes: dict[str, SLOClass] = field(default_factory=dict)
    engines: list[EngineConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slo_classes = {**default_slo_classes(), **self.slo_classes}
        if not self.engines:
            self.engines = [EngineConfig(name="sim-0")]
        self.validate()

    def validate(self) -> None:
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ConfigError("tenant names must be unique")
        for t in self.tenants:
            if not t.weight > 0:
                raise ConfigError(f"tenant {t.name!r}: weight must be > 0")
            if t.slo_class not in self.slo_classes:
                raise ConfigError(f"tenant {t.name!r}: unknown slo_class {t.slo_class!r}")
        for c in self.slo_classes.values():
            if c.on_miss not in ("reject", "defer"):
                raise ConfigError(f"slo class {c.name!r}: on_miss must be 'reject' or 'defer'")
        for key in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s"):
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

    def admin_token(self) -> str | None:
        if self.server.admin_token_file:
            return Path(self.server.admin_token_file).read_text().strip() or None
        return os.environ.get(self.server.admin_token_env) or None

    def tenant_by_key_hash(self) -> dict[str, TenantConfig]:
        return {h: t for t in self.tenants for h in t.key_hashes()}


def default_slo_classes() -> dict[str, SLOClass]:
    return {
        "interactive": SLOClass("interactive", ttft_ms=500.0, tpot_ms=50.0, on_miss="reject"),
        "batch": SLOClass("batch", ttft_ms=None, tpot_ms=None, deadline_s=600.0, on_miss="defer"),
    }


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(raw: dict[str, Any]) -> Config:
    unknown = set(raw) - {"server", "scheduler", "telemetry", "tenants", "slo_classes", "engines"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    return Config(
        server=_build(ServerConfig, raw.get("server", {}), "[server]"),
        scheduler=_build(SchedulerConfig, raw.get("scheduler", {}), "[scheduler]"),
        telemetry=_build(TelemetryConfig, raw.get("telemetry", {}), "[telemetry]"),
        tenants=[_build(TenantConfig, t, f"[[tenants]] #{i}") for i, t in enumerate(raw.get("tenants", []))],
        slo_classes={
            name: _build(SLOClass, {"name": name, **c}, f"[slo_classes.{name}]")
            for name, c in raw.get("slo_classes", {}).items()
        },
        engines=[_build(EngineConfig, e, f"[[engines]] #{i}") for i, e in enumerate(raw.get("engines", []))],
    )


def load_config(path: str | Path) -> Config:
    try:
        with open(path, "rb") as f:
            return parse_config(tomllib.load(f))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
