"""A sluice gateway on loopback over given engines, with two tenants and an admin token."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controlplane.config import Config, EngineConfig, ServerConfig, TenantConfig, hash_key
from controlplane.core.policy import Policy, TenantPolicy
from sluice.server import create_app
from tests.servers import ServerThread

KEYS = {"acme": "sk-test-acme", "globex": "sk-test-globex"}
ADMIN = "admin-secret-token"


def make_config(tmp: Path, engines: list[str], **policy: Any) -> Config:
    token = tmp / "admin.token"
    token.write_text(ADMIN)
    return Config(
        server=ServerConfig(db_path=str(tmp / "sluice.duckdb"), admin_token_file=str(token), max_body_bytes=64 * 1024),
        policy=Policy(**policy, tenants={"acme": TenantPolicy(2.0), "globex": TenantPolicy(1.0)}),
        tenants=[TenantConfig(name, api_key_sha256=hash_key(key)) for name, key in KEYS.items()],
        engines=[EngineConfig(name=n) for n in engines],
    )


@contextlib.contextmanager
def running_gateway(tmp: Path, engines: dict[str, Any], **policy: Any) -> Iterator[tuple[ServerThread, Any]]:
    config = make_config(tmp, list(engines), **policy)
    app, sluice = create_app(config, engines)
    with ServerThread(app) as server:
        yield server, sluice
