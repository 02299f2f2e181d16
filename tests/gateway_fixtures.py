"""A sluice gateway on loopback over given engines, with two tenants and an admin token."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controlplane.config import Config, EngineConfig, SchedulerConfig, ServerConfig, TenantConfig, hash_key
from sluice.server import create_app
from tests.servers import ServerThread

KEYS = {"acme": "sk-test-acme", "globex": "sk-test-globex"}
ADMIN = "admin-secret-token"


def make_config(tmp: Path, engines: list[str], **scheduler: Any) -> Config:
    token = tmp / "admin.token"
    token.write_text(ADMIN)
    return Config(
        server=ServerConfig(db_path=str(tmp / "sluice.duckdb"), admin_token_file=str(token), max_body_bytes=64 * 1024),
        scheduler=SchedulerConfig(**scheduler),
        tenants=[TenantConfig("acme", 2.0, api_key_sha256=hash_key(KEYS["acme"])),
                 TenantConfig("globex", 1.0, api_key_sha256=hash_key(KEYS["globex"]))],
        engines=[EngineConfig(name=n) for n in engines],
    )


@contextlib.contextmanager
def running_gateway(tmp: Path, engines: dict[str, Any], **scheduler: Any) -> Iterator[tuple[ServerThread, Any]]:
    config = make_config(tmp, list(engines), **scheduler)
    app, sluice = create_app(config, engines)
    with ServerThread(app) as server:
        yield server, sluice
