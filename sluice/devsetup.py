"""A ready-to-run local setup for `sluice serve` / `sluice demo` without a config file.

Keys are generated once into a state directory (default `.sluice/`, mode 0600 files), never
committed: the config sluice runs with holds only their SHA-256 hashes.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from controlplane.config import Config, EngineConfig, ServerConfig, TenantConfig, hash_key, new_key
from controlplane.core.policy import Policy, TenantPolicy

DEV_TENANTS = (  # name, weight, SLO class
    ("acme", 2.0, "interactive"),
    ("globex", 1.0, "interactive"),
    ("initech", 1.0, "interactive"),
    ("batchco", 1.0, "batch"),
)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def dev_state(state_dir: str | Path = ".sluice") -> tuple[dict[str, str], str, Path]:
    """(tenant -> key, admin token, directory), created on first use."""
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    keys_file, token_file = root / "keys.toml", root / "admin.token"
    if not keys_file.exists():
        _write_private(keys_file, "".join(f'{name} = "{new_key()}"\n' for name, _, _ in DEV_TENANTS))
    if not token_file.exists():
        _write_private(token_file, new_key("sluice-admin-") + "\n")
    keys = tomllib.loads(keys_file.read_text())
    return keys, token_file.read_text().strip(), root


def dev_config(state_dir: str | Path = ".sluice", *, port: int = 8080, policy: str = "equinox",
               admission: bool = True, engines: int = 1, speedup: float = 1.0) -> tuple[Config, dict[str, str]]:
    keys, _, root = dev_state(state_dir)
    present = [(name, weight, cls) for name, weight, cls in DEV_TENANTS if name in keys]
    tenants = [TenantConfig(name, api_key_sha256=hash_key(keys[name])) for name, _, _ in present]
    config = Config(
        server=ServerConfig(port=port, admin_token_file=str(root / "admin.token"),
                            db_path=str(root / "sluice.duckdb")),
        policy=Policy(scheduler=policy, admission=admission,
                      tenants={name: TenantPolicy(weight, cls) for name, weight, cls in present}),
        tenants=tenants,
        engines=[EngineConfig(name=f"sim-{i}", seed=i, speedup=speedup) for i in range(engines)],
    )
    return config, keys
