"""The admin API, `/admin/v1/...` (docs/admin-api.md): state, policy, tenants, requests, events.

Only the admin token opens it; a tenant key gets 403, anything else 401.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.requests import Request
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from controlplane.admin import plan, why
from controlplane.admin.openapi import openapi_document
from controlplane.admin.state import engine_clocks, state_document
from controlplane.config import hash_key
from controlplane.driver import CAPACITY_EVERY_S
from controlplane.errors import ApiError, parse_json
from controlplane.gateway.app import canonical_bearer
from controlplane.livestats import LiveStats
from controlplane.policy_store import PolicyStore
from controlplane.service import Sluice

Handler = Callable[[Request], Awaitable[Response]]
MAX_ADMIN_BODY = 256 * 1024


class AdminAPI:
    def __init__(self, sluice: Sluice, stats: LiveStats, policies: PolicyStore, *, token: str | None,
                 gpus: Callable[[], tuple[list[dict[str, Any]], str]] | None = None,
                 trace: Callable[[str], dict[str, Any] | None] | None = None,
                 snapshot: Callable[[str, list[str] | None], dict[str, int]] | None = None) -> None:
        self.sluice, self.stats, self.policies = sluice, stats, policies
        self.snapshot = snapshot  # (path, tables) -> rows copied: a consistent copy of the store
        self.token = token
        self.gpus = gpus or (lambda: ([], "no GPU: no sampler configured"))
        self.trace_lookup = trace
        # store reads (a flush, then DuckDB) never run on the event loop; two at a time at most, so
        # a burst of lookups cannot take every thread of the default executor
        self._io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sluice-admin-io")

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- plumbing ---------------------------------------------------------------------------
    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                self._authorize(canonical_bearer(request.headers.get("authorization")))
                return await handler(request)
            except ApiError as err:
                return JSONResponse(err.body(), err.status, headers=dict(
                    (k.decode(), v.decode()) for k, v in err.headers() if k != b"content-type"))
        guarded.__doc__ = handler.__doc__
        return guarded

    def _authorize(self, header: str | None) -> None:
        if not header or not header.startswith("Bearer "):
            raise ApiError(401, "admin token required: 'Authorization: Bearer <admin token>'", code="unauthorized")
        presented = header[7:].strip()
        if self.token and hmac.compare_digest(presented.encode(), self.token.encode()):
            return
        if hash_key(presented) in self.sluice.keys:
            raise ApiError(403, "a tenant key cannot use the admin API", code="forbidden")
        raise ApiError(401, "invalid admin token", code="unauthorized")

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_ADMIN_BODY:
            raise ApiError(413, f"body larger than {MAX_ADMIN_BODY} bytes", code="body_too_large")
        if not body:
            return {}
        data = parse_json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_json")
        return data

    @staticmethod
    def _actor(request: Request) -> str:
        return (request.headers.get("x-sluice-actor") or "admin")[:64]

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The `/state` body: the core's snapshot now, with the runtime's statistics (admin/state.py)."""
        sluice = self.sluice
        pools = sluice.pools.values()
        loads = {n: v for p in pools for n, v in p.loads.items()}
        infos = {n: v for p in pools for n, v in p.infos.items()}
        aliases = {name: p.aliases for name, p in sluice.catalog.pools.items()}
        gpus = self.gpus()
        bindings = {e.name: e.gpu for e in sluice.config.engines}
        clocks = {n: c for p in pools for n, c in engine_clocks(
            p.engines, p.steering.controllers if p.steering else {}, p.clock_status, bindings, gpus[0]).items()}
        return state_document(sluice.snapshots(also=self.stats.tenants), self.stats, loads, infos, gpus,
                              sluice.errors.state(), aliases, sluice.policy, clocks)

    async def get_state(self, request: Request) -> Response:
        """Tenants, engines, totals, GPUs and forecasts now."""
        return JSONResponse(self.state())

    async def get_capacity(self, request: Request) -> Response:
        """Desired and actual engine replicas per pool: the capacity rule's last evaluation."""
        caps = [p.capacity for p in self.sluice.pools.values() if p.capacity is not None]
        body: dict[str, Any] = {"every_s": CAPACITY_EVERY_S,
                                "pools": [c.last.to_dict() for c in caps if c.last is not None]}
        if body["pools"]:  # the rule's parameters (the same in every pool)
            body.update(params=dataclasses.asdict(caps[0].params), behaviour=dataclasses.asdict(caps[0].behaviour))
        return JSONResponse(body)

    async def get_gpus(self, request: Request) -> Response:
        """GPU readings (NVML or simulated)."""
        gpus, status = self.gpus()
        return JSONResponse({"gpus": gpus, "gpu_status": status})

    async def get_plan(self, request: Request) -> Response:
        """Placement advice: which models fit on which GPUs or MIG profiles, and each pool's verdict."""
        views = await plan.engine_views(self.sluice.config.engines, self.sluice.engines, self.state()["engines"])
        try:
            return JSONResponse(plan.plan_document(views, self.gpus()[0], self.stats.requests,
                                                   request.query_params.get("boards")))
        except plan.ModelConfigError as exc:  # an unknown board
            raise ApiError(400, str(exc), code="invalid_value", param="boards") from None

    # -- policy -----------------------------------------------------------------------------
    async def get_policy(self, request: Request) -> Response:
        """The whole policy document."""
        return JSONResponse(self.policies.current.to_dict())

    async def patch_policy(self, request: Request) -> Response:
        """Merge a change into the policy, validated whole, audited, applied atomically."""
        body = await self._json(request)
        unknown = set(body) - {"reason", "changes", "expected_version"}
        if unknown:
            raise ApiError(422, f"unknown keys {sorted(unknown)}", code="invalid_request")
        policy = await self.policies.change(body.get("changes"), reason=body.get("reason"),
                                            actor=self._actor(request), expected_version=body.get("expected_version"))
        return JSONResponse(policy.to_dict())

    async def policy_history(self, request: Request) -> Response:
        """The audit log of policy changes, newest first (across restarts)."""
        limit = _int_param(request, "limit", 50, 1000)
        # the store's audit log, across restarts; read off the event loop
        return JSONResponse({"changes": await self._off_loop(self.policies.changes, limit)})

    # -- tenants ----------------------------------------------------------------------------
    async def _tenant_change(self, request: Request, changes: dict[str, Any], reason: str) -> Response:
        name = request.path_params["name"]
        if name not in self.policies.current.tenants:
            raise ApiError(404, f"unknown tenant {name!r}", code="tenant_not_found")
        policy = await self.policies.change({"tenants": {name: changes}}, reason=reason, actor=self._actor(request))
        return JSONResponse(policy.to_dict())

    async def patch_tenant(self, request: Request) -> Response:
        """Change a tenant's weight (or other tenant policy fields) with a reason."""
        body = await self._json(request)
        reason = body.pop("reason", None)
        return await self._tenant_change(request, body, reason)

    async def pause_tenant(self, request: Request) -> Response:
        """Pause a tenant; its new requests get 429 tenant_paused."""
        body = await self._json(request)
        return await self._tenant_change(request, {"paused": True}, body.get("reason") or "paused by operator")

    async def resume_tenant(self, request: Request) -> Response:
        """Resume a paused tenant."""
        body = await self._json(request)
        return await self._tenant_change(request, {"paused": False}, body.get("reason") or "resumed by operator")

    # -- requests ---------------------------------------------------------------------------
    async def list_requests(self, request: Request) -> Response:
        """Recent and in-flight requests, newest first, filtered by tenant and status."""
        tenant = request.query_params.get("tenant")
        status = request.query_params.get("status")
        limit = _int_param(request, "limit", 100, 10_000)
        live = [t.live_row() for t in reversed(list(self.sluice.tickets.values()))]
        rows = []
        for row in [*live, *reversed(self.stats.requests)]:
            if (tenant and row["tenant"] != tenant) or (status and row["status"] != status):
                continue
            rows.append({k: row.get(k) for k in _REQUEST_FIELDS})
            if len(rows) >= limit:
                break
        return JSONResponse({"requests": rows})

    async def get_trace(self, request: Request) -> Response:
        """A request's trace, sluice's spans and the engine's."""
        rid = request.path_params["rid"]
        trace = await self._off_loop(self.trace_lookup, rid) if self.trace_lookup else None
        if trace is None:
            raise ApiError(404, f"no trace stored for request {rid!r}", code="trace_not_found")
        return JSONResponse(trace)

    async def get_why(self, request: Request) -> Response:
        """Why a request was admitted, deferred, refused or sent where it went (controlplane/admin/why.py)."""
        rid = request.path_params["rid"]
        record = why.live_record(self.sluice, rid)  # in flight: from memory, on the loop
        if record is None:
            store = getattr(self.sluice.recorder, "store", None)
            record = await self._off_loop(why.stored_record, store, rid) if store is not None else (None, [])
        explained = why.explain(rid, *record)
        if explained is None:
            raise ApiError(404, f"no request {rid!r} is in flight or stored", code="request_not_found")
        return JSONResponse(explained)

    async def store_snapshot(self, request: Request) -> Response:
        """A consistent copy of the telemetry store as a DuckDB file (?tables=a,b; default: the durable
        tables), for `sluice audit` and `sluice replay --db` while serving."""
        if self.snapshot is None:
            raise ApiError(404, "this sluice runs without a telemetry store", code="no_store")
        raw = request.query_params.get("tables")
        tables = [t.strip() for t in raw.split(",") if t.strip()] if raw else None
        folder = tempfile.mkdtemp(prefix="sluice-snapshot-")
        path = os.path.join(folder, "snapshot.duckdb")
        try:
            rows = await self._off_loop(self.snapshot, path, tables)
        except ValueError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ApiError(400, str(exc), code="invalid_value", param="tables") from None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return FileResponse(path, media_type="application/octet-stream", filename="sluice-snapshot.duckdb",
                            headers={"X-Sluice-Snapshot-Rows": json.dumps(rows)},
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    async def abort_request(self, request: Request) -> Response:
        """Abort a queued or running request."""
        rid = request.path_params["rid"]
        note = (await self._json(request)).get("reason")  # optional: the console always sends one
        reason = f"aborted by {self._actor(request)}" + (f": {str(note).strip()[:200]}" if note else "")
        if not self.sluice.abort(rid, reason=reason):
            raise ApiError(404, f"request {rid!r} is not queued or running", code="request_not_found")
        return JSONResponse({"rid": rid, "aborted": True})

    # -- events -----------------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        """Server-Sent Events (request, policy, state) for the console."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=2000)

        def listener(kind: str, payload: dict[str, Any]) -> None:
            if kind == "request":
                payload = {k: payload.get(k) for k in _REQUEST_FIELDS}
            try:
                queue.put_nowait((kind, payload))
            except asyncio.QueueFull:
                pass  # a slow console misses events; the next state snapshot catches it up

        async def stream():  # type: ignore[no-untyped-def]
            self.sluice.listeners.append(listener)
            try:
                last_state = last_beat = 0.0
                while True:
                    now = time.monotonic()
                    if now - last_state >= 1.0:
                        last_state = now
                        yield _sse("state", self.state())
                    if now - last_beat >= 15.0:
                        last_beat = now
                        yield b": keepalive\n\n"
                    try:
                        kind, payload = await asyncio.wait_for(queue.get(), timeout=0.25)
                        yield _sse(kind, payload)
                    except TimeoutError:
                        pass
            finally:
                self.sluice.listeners.remove(listener)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def openapi(self, request: Request) -> Response:
        """This API's OpenAPI schema."""
        return JSONResponse(openapi_document())

    def routes(self) -> list[Route]:
        g = self._guard
        p = "/admin/v1"
        return [
            Route(f"{p}/state", g(self.get_state), methods=["GET"]),
            Route(f"{p}/gpus", g(self.get_gpus), methods=["GET"]),
            Route(f"{p}/capacity", g(self.get_capacity), methods=["GET"]),
            Route(f"{p}/plan", g(self.get_plan), methods=["GET"]),
            Route(f"{p}/policy", g(self.get_policy), methods=["GET"]),
            Route(f"{p}/policy", g(self.patch_policy), methods=["PATCH"]),
            Route(f"{p}/policy/history", g(self.policy_history), methods=["GET"]),
            Route(f"{p}/tenants/{{name}}", g(self.patch_tenant), methods=["PATCH"]),
            Route(f"{p}/tenants/{{name}}/pause", g(self.pause_tenant), methods=["POST"]),
            Route(f"{p}/tenants/{{name}}/resume", g(self.resume_tenant), methods=["POST"]),
            Route(f"{p}/requests", g(self.list_requests), methods=["GET"]),
            Route(f"{p}/requests/{{rid}}/trace", g(self.get_trace), methods=["GET"]),
            Route(f"{p}/requests/{{rid}}/abort", g(self.abort_request), methods=["POST"]),
            Route(f"{p}/requests/{{rid}}/why", g(self.get_why), methods=["GET"]),
            Route(f"{p}/events", g(self.events), methods=["GET"]),
            Route(f"{p}/store/snapshot", g(self.store_snapshot), methods=["GET"]),
            Route(f"{p}/openapi.json", g(self.openapi), methods=["GET"]),
        ]


_REQUEST_FIELDS = ("rid", "trace_id", "tenant", "slo_class", "engine", "status", "arrival_ts", "ttft_ms", "tpot_ms",
                   "e2e_ms", "prompt_tokens", "completion_tokens", "decision", "reason", "model", "pool",
                   "adapter")


def _sse(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(payload, default=str)}\n\n".encode()


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"'{name}' must be an integer in [1, {maximum}]", code="invalid_value", param=name)
    return int(raw)
