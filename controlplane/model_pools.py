"""Model pools: which engines serve which model, and what the `model` a client sends names.

The engines that declare the same `model` (`[[engines]] model`) form a pool, named by that model,
in the order the engines first name it. Each pool has its own decision core: its own fair queues,
admission and dispatch (controlplane/engine_pool.py); a request goes to the pool its model names.
`[models."<model>"]` tables give a pool more names (`aliases`) and the LoRA adapters its engines
may serve (`adapters`, docs/configuration.md); `[server] model_name` is an alias of the first pool.

A name resolves to a `Route`, the pool and the adapter (None: the base model): an exact name (a
pool's, an alias, an adapter alias) first, else `base:adapter` split at the last colon (SGLang's
OpenAI syntax, `meta-llama/Llama-3.1-8B-Instruct:sql`), where `base` names a pool and `adapter` is
one it declares. Anything else names no model (the gateway's 404).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelCatalog", "ModelPool", "Route"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model name goes: a pool, and the LoRA adapter its engines apply (None: none)."""

    pool: str
    adapter: str | None = None

    def allows(self, other: Route) -> bool:
        """Whether an allow-list entry `self` covers a request routed to `other`: a pool's name
        covers the pool and its adapters, `base:adapter` that adapter only."""
        return self.pool == other.pool and (self.adapter is None or self.adapter == other.adapter)


@dataclass(frozen=True, slots=True)
class ModelPool:
    name: str  # the model its engines declare
    engines: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    # LoRA adapter name -> the path an engine loads it from (None: the engines have it already,
    # e.g. from SGLang's --lora-paths)
    adapters: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class ModelCatalog:
    """Every pool and every name a client may send. Raises ValueError (naming the clash) when two
    things would share a name."""

    def __init__(self, pools: Sequence[ModelPool], adapter_aliases: Mapping[str, Route] | None = None) -> None:
        self.pools = {p.name: p for p in pools}
        self.engine_pool = {e: p.name for p in pools for e in p.engines}
        self._names: dict[str, Route] = {}
        for p in pools:
            for name in p.names:
                self._claim(name, Route(p.name), f"model {p.name!r}")
        for name, route in (adapter_aliases or {}).items():
            pool = self.pools.get(route.pool)
            if pool is None or route.adapter not in pool.adapters:
                raise ValueError(f"adapter alias {name!r}: {route.pool}:{route.adapter} is not a declared adapter")
            self._claim(name, route, f"adapter {route.pool}:{route.adapter}")

    def _claim(self, name: str, route: Route, what: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: a model name must be a non-empty string, got {name!r}")
        held = self._names.get(name)
        if held is not None:
            raise ValueError(f"the model name {name!r} is given twice (to {held.pool} and to {what})")
        self._names[name] = route

    @classmethod
    def build(cls, engines: Iterable[tuple[str, str]], tables: Mapping[str, Mapping[str, Any]],
              default_alias: str | None = None) -> ModelCatalog:
        """The pools of `engines` ((name, model) pairs) with their `[models.*]` tables (already
        checked for unknown keys); `default_alias` joins the first pool's names unless it is a
        pool's own name. ValueError names what is wrong."""
        members: dict[str, list[str]] = {}
        for engine, model in engines:
            members.setdefault(model, []).append(engine)
        unknown = sorted(set(tables) - set(members))
        if unknown:
            raise ValueError(f"[models.{unknown[0]!r}] names no engine's model; the engines serve {sorted(members)}")
        pools, adapter_aliases = [], {}
        for i, (model, names) in enumerate(members.items()):
            table = tables.get(model, {})
            aliases = _strings(table.get("aliases", []), f"[models.{model!r}] aliases")
            if i == 0 and default_alias and default_alias not in members and default_alias not in aliases:
                aliases = [*aliases, default_alias]
            adapters = _adapters(table.get("adapters", {}), model)
            for alias, adapter in _mapping(table.get("adapter_aliases", {}), model).items():
                adapter_aliases[alias] = Route(model, adapter)
            pools.append(ModelPool(model, tuple(names), tuple(aliases), adapters))
        return cls(pools, adapter_aliases)

    def resolve(self, name: str) -> Route | None:
        route = self._names.get(name)
        if route is not None:
            return route
        base, sep, adapter = name.rpartition(":")
        route = self._names.get(base) if sep else None
        if route is None or route.adapter is not None or adapter not in self.pools[route.pool].adapters:
            return None
        return Route(route.pool, adapter)

    def base_pool(self, name: str) -> str | None:
        """The pool `name` names without an adapter (a pool's name or alias), else None."""
        route = self._names.get(name)
        return route.pool if route is not None and route.adapter is None else None

    def weights_problem(self, tenants: Mapping[str, Any]) -> str | None:
        """What is wrong with the tenants' per-pool `weights` (controlplane/core/policy.py
        TenantPolicy): a key that names no pool, or two keys for one pool; None if nothing."""
        for tenant, t in tenants.items():
            seen: dict[str, str] = {}
            for key in t.weights:
                pool = self.base_pool(key)
                if pool is None:
                    return (f"tenants.{tenant}.weights: {key!r} names no model pool; the pools are "
                            f"{sorted(self.pools)} (or their aliases)")
                if pool in seen:
                    return f"tenants.{tenant}.weights: {seen[pool]!r} and {key!r} name the same pool {pool!r}"
                seen[pool] = key
        return None

    def listed(self) -> list[str]:
        """Every name `/v1/models` lists: each pool's names, its adapters as `model:adapter`, and the
        adapter aliases, pool by pool."""
        out = []
        for p in self.pools.values():
            out += [*p.names, *(f"{p.name}:{a}" for a in p.adapters)]
            out += [n for n, r in self._names.items() if r.pool == p.name and r.adapter is not None]
        return out


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: must be a list of names")
    return value


def _mapping(value: Any, model: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"[models.{model!r}] adapter_aliases: must be a table of alias -> adapter name")
    return value


def _adapters(value: Any, model: str) -> dict[str, str | None]:
    """`adapters = ["sql", ...]` (the engines have them) or `{ sql = "/loras/sql" }` (name -> path)."""
    where = f"[models.{model!r}] adapters"
    if isinstance(value, list):
        out: dict[str, str | None] = {name: None for name in _strings(value, where)}
    elif isinstance(value, dict) and all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
        out = {k: v or None for k, v in value.items()}
    else:
        raise ValueError(f"{where}: must be a list of adapter names or a table of name -> path")
    bad = [name for name in out if ":" in name]
    if bad:  # `model:adapter` splits at the last colon
        raise ValueError(f"{where}: an adapter name cannot hold a colon, got {bad[0]!r}")
    return out
