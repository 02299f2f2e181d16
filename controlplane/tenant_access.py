"""Who a request is and which model it may use: tenant keys and the model catalog, from the config.

Static for the life of the process, so both the serving runtime (`Sluice`) and a gateway worker
of `sluice serve --workers N` (controlplane/worker_runtime.py) answer 401, 404 and 403 from their
own copy, without asking the decision process.
"""
from __future__ import annotations

from controlplane.config import Config, TenantConfig, hash_key
from controlplane.errors import ApiError
from controlplane.model_pools import Route
from controlplane.requests import CompletionRequest

__all__ = ["TenantAccess"]


class TenantAccess:
    def __init__(self, config: Config) -> None:
        self.keys = config.tenant_by_key_hash()
        self.tenants = {t.name: t for t in config.tenants}
        self.catalog = config.catalog()  # the model pools and every name clients may send (model_pools.py)
        self._allowed = {t.name: [self.catalog.resolve(m) for m in t.models] for t in config.tenants
                         if t.models is not None}
        self._own_adapter = {t.name: {r.pool: r.adapter for r in map(self.catalog.resolve, t.adapters()) if r}
                             for t in config.tenants if t.adapter is not None}  # pool -> the tenant's adapter

    def authenticate(self, authorization: str | None) -> TenantConfig:
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        tenant = self.keys.get(hash_key(authorization[7:].strip()))
        if tenant is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return tenant

    def resolve_model(self, tenant: TenantConfig, name: str) -> Route:
        """Where `name` goes for this tenant (its own adapter on a base model that names none): OpenAI's
        404 `model_not_found` for a name that names no model, 403 `model_not_allowed` for one
        outside the tenant's `models` (docs/configuration.md)."""
        route = self.catalog.resolve(name)
        if route is None:
            raise ApiError(404, f"The model '{name}' does not exist", code="model_not_found", param="model")
        if route.adapter is None:
            own = self._own_adapter.get(tenant.name, {}).get(route.pool)
            route = Route(route.pool, own) if own else route
        if not self._may_use(tenant.name, route):
            raise ApiError(403, f"The model '{name}' is not available to this API key", code="model_not_allowed",
                           param="model")
        return route

    def _may_use(self, tenant: str, route: Route) -> bool:
        allowed = self._allowed.get(tenant)
        return allowed is None or any(a is not None and a.allows(route) for a in allowed)

    def model_list(self, tenant: TenantConfig) -> list[str]:
        """The model names this tenant may send (`GET /v1/models`)."""
        return [n for n in self.catalog.listed() if self._may_use(tenant.name, self.catalog.resolve(n))]  # type: ignore[arg-type]

    def route(self, tenant: TenantConfig, req: CompletionRequest) -> None:
        """Sets `req.pool` and `req.adapter`, where its model goes (`resolve_model`'s errors otherwise)."""
        route = self.resolve_model(tenant, req.model)
        req.pool, req.adapter = route.pool, route.adapter
