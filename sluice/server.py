"""Assemble and run `sluice serve`: engines, the runtime, telemetry, the gateway and the admin API."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import os
import time
from pathlib import Path
from collections.abc import AsyncIterator, Callable
from typing import Any

import duckdb
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controlplane.admin.api import AdminAPI
from controlplane.config import Config
from controlplane.engines import build_engines
from controlplane.errors import ApiError
from controlplane.gateway.app import Gateway, build_app
from controlplane.observe import Recorder
from controlplane.policy_store import PolicyStore
from controlplane.service import Sluice
from engine_adapter.base import Engine
from sluice.listener import listener_options
from telemetry import queries
from telemetry.metrics import Metrics
from telemetry.nvml import CombinedGpuSource, GpuSampler, SimulatedGpuSource, unknown_mig_bindings
from telemetry.otlp_receiver import OtlpReceiver, OtlpServer, otlp_routes
from telemetry.store import Store, StoreError
from telemetry.tracing import setup_tracing

log = logging.getLogger("sluice")


class Telemetry:
    """The store, metrics, tracing and GPU sampling of one serve process."""

    def __init__(self, config: Config, engines: dict[str, Engine], *, store: bool = True) -> None:
        t = config.telemetry
        self.store = Store(config.server.db_path, flush_interval_s=t.flush_interval_s, memory_mb=t.store_memory_mb) if store else None
        self.metrics = Metrics(t.metrics_max_tenants, hide_tenants=not t.metrics_tenant_labels)
        self.metrics_tokens = [tok for tok in (secret(t.metrics_token_file, t.metrics_token_env),) if tok]
        if self.metrics_tokens and config.admin_token():
            self.metrics_tokens.append(config.admin_token())  # type: ignore[arg-type]
        if self.store is not None:
            self.metrics.bind_store(self.store)
        provider = setup_tracing("sluice", t.trace_sample_ratio, self.store, t.otlp_endpoint)
        self.recorder = Recorder(self.store, self.metrics, provider)
        self.config = config
        self.receiver, self.receiver_warning = otlp_receiver(config, self.store)
        self.otlp_server: OtlpServer | None = None
        simulated = [e for e in engines.values() if hasattr(e, "gpu")]
        sources: list[Any] = [GpuSampler()]
        if simulated:
            sources.append(SimulatedGpuSource(lambda: [dict(e.gpu(), name=f"{e.name} (simulated)", gpu=i)  # type: ignore[attr-defined]
                                                       for i, e in enumerate(simulated)]))
        self.gpus = CombinedGpuSource(*sources)
        self.last_gpus: list[dict[str, Any]] = []

    def gpu_state(self) -> tuple[list[dict[str, Any]], str]:
        return self.last_gpus, self.gpus.status

    def trace_of(self, rid: str) -> dict[str, Any] | None:
        """Blocking (a flush, then a DuckDB query): the admin API runs it off the event loop."""
        if self.store is None:
            return None
        self.store.flush(timeout_s=5)
        return queries.trace_for_request(self.store, rid)

    async def sample_loop(self, sluice: Sluice, retention_days: float | None) -> None:
        """Once a second: GPU samples into the store, gauges for Prometheus; hourly: retention.
        Meanwhile a ticker measures the event loop's lag (`sluice_event_loop_lag_seconds`)."""
        ticker = asyncio.create_task(self.metrics.watch_loop_lag())
        try:
            await self._sample_forever(sluice, retention_days)
        finally:
            ticker.cancel()

    async def _sample_forever(self, sluice: Sluice, retention_days: float | None) -> None:
        last_prune = 0.0
        while True:
            try:
                now = time.monotonic()
                if self.store is not None and retention_days and now - last_prune > 3600:
                    last_prune = now
                    await asyncio.to_thread(self.store.prune, retention_days * 86400)
                self.last_gpus = await asyncio.to_thread(self.gpus.sample)
                self.metrics.set_gpu_samples(self.last_gpus)
                if self.store is not None and self.last_gpus:
                    self.store.record_gpu_samples(self.last_gpus, wait=False)
                for pool_name, snap in sluice.snapshots(with_tenants=False).items():  # each model pool
                    pool = sluice.pools[pool_name]
                    self.metrics.set_queue_depths(snap.queued_by_tenant, pool_name)
                    for name, eng in snap.engines.items():
                        self.metrics.set_in_flight(name, eng.in_flight, pool_name)
                        load = pool.loads.get(name)
                        if load is not None:
                            self.metrics.set_engine_load(name, load.running, load.waiting, load.kv_usage, pool_name)
                    rec = pool.capacity.last if pool.capacity is not None else None
                    if rec is not None:
                        self.metrics.set_replicas(rec.pool, rec.desired, rec.actual)
            except Exception:
                log.exception("telemetry sampling failed")
            await asyncio.sleep(1.0)

    def routes(self) -> list[Any]:
        async def metrics(request: Request) -> Response:
            if self.metrics_tokens and not _bearer_matches(request.headers.get("authorization"), self.metrics_tokens):
                err = ApiError(401, "/metrics needs 'Authorization: Bearer <metrics token>' (Prometheus: "
                               "authorization.credentials in the scrape config)", code="unauthorized")
                return Response(err.to_bytes(), 401, headers={k.decode(): v.decode() for k, v in err.headers()})
            body, ctype = await asyncio.to_thread(self.metrics.render)  # store stats and a few thousand lines
            return Response(body, media_type=ctype)

        routes = [Route("/metrics", metrics, methods=["GET"])]
        if self.config.telemetry.otlp_receiver_port is None:  # else on its own listener (start_otlp_server)
            routes.extend(otlp_routes(self.receiver))
        return routes

    def start_otlp_server(self) -> None:
        """Blocking: the receiver's own listener, when `[telemetry] otlp_receiver_port` is set."""
        t = self.config.telemetry
        if t.otlp_receiver_port is None:
            return
        host = t.otlp_receiver_host or self.config.server.host
        self.otlp_server = OtlpServer(self.receiver, host=host, port=t.otlp_receiver_port,
                                      uvicorn_options=listener_options(self.config)).start()

    def stop_otlp_server(self) -> None:
        if self.otlp_server is not None:
            self.otlp_server.stop()
            self.otlp_server = None


def _bearer_matches(header: str | None, tokens: list[str]) -> bool:
    if not header or header[:7].lower() != "bearer ":
        return False
    presented = header[7:].strip().encode()
    return any(hmac.compare_digest(presented, tok.encode()) for tok in tokens)


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: assume it resolves beyond loopback


def secret(path: str | None, env: str | None) -> str | None:
    """A token from a file (first) or an environment variable; None when neither holds one."""
    if path:
        return Path(path).read_text().strip() or None
    return (os.environ.get(env) or None) if env else None


def otlp_receiver(config: Config, store: Store | None) -> tuple[OtlpReceiver, str | None]:
    """The OTLP receiver as configured, and a warning when it refuses everything for want of a token.

    `otlp_receiver_auth`: "auto" requires a token when one is configured or when the receiver's
    listener is bound beyond loopback; "token" always requires one; "none" never does.
    """
    t = config.telemetry
    host = (t.otlp_receiver_host or config.server.host) if t.otlp_receiver_port is not None else config.server.host
    token = secret(t.otlp_receiver_token_file, t.otlp_receiver_token_env) if t.otlp_receiver_auth != "none" else None
    require = t.otlp_receiver_auth == "token" or (t.otlp_receiver_auth == "auto" and not is_loopback(host))
    reason = warning = None
    if token is None and require:
        where = f"${t.otlp_receiver_token_env}" + (f" or {t.otlp_receiver_token_file}" if t.otlp_receiver_token_file
                                                    else "")
        why = ("otlp_receiver_auth = 'token'" if t.otlp_receiver_auth == "token"
               else f"the OTLP receiver listens beyond loopback ({host})")
        reason = (f"{why} and no token is configured ({where} is empty): every span is refused; set the token, "
                  "or [telemetry] otlp_receiver_auth = 'none' to accept spans from anyone")
        warning = f"sluice: {reason}"
    receiver = OtlpReceiver(store, t.otlp_max_bytes, max_spans=t.otlp_max_spans,
                            max_concurrent=t.otlp_max_concurrent_decodes, token=token, require_token=require,
                            closed_reason=reason or "")
    return receiver, warning


def clock_control(config: Config, nvml: Any = None) -> dict[str, Any]:
    """Sluice's frequency-control arguments from [server] clock_control and each engine's `gpu`:
    a simulated engine sets its own clock, a real one's GPU is locked through `nvml` (an
    `NvmlClocks`, closed at shutdown; a dry run, with one log line, where not permitted or not
    configured)."""
    if not config.server.clock_control:
        return {}
    from controlplane.core.frequency import FrequencyParams
    from telemetry.nvml_clocks import NvmlClocks

    nvml, gpus = nvml or NvmlClocks(), {e.name: e.gpu for e in config.engines}

    def set_clock(engine: str, mhz: float) -> str:
        gpu = gpus.get(engine)
        return nvml.set_sm_clock(gpu, mhz) if gpu is not None else "dry run: the engine names no [[engines]] gpu"

    return {"clock_control": FrequencyParams(), "set_clock": set_clock}


def _nvml_clocks(config: Config) -> Any:
    """The NVML clock actuator when clock_control may lock a real GPU's clock (an engine names a
    `gpu`), else None."""
    if not config.server.clock_control or all(e.gpu is None for e in config.engines):
        return None
    from telemetry.nvml_clocks import NvmlClocks

    return NvmlClocks()


def check_mig_bindings(config: Config, sampler: GpuSampler | None = None) -> None:
    """StartupError unless every engine bound to a MIG instance (`mig = "MIG-..."`) names one that
    NVML lists now (one NVML enumeration, before anything else opens)."""
    bound = {e.name: e.mig for e in config.engines if e.mig}
    if not bound:
        return
    sampler = sampler or GpuSampler()
    try:
        problems = unknown_mig_bindings(bound, sampler.sample(), sampler.status)
    finally:
        sampler.close()
    if problems:
        raise StartupError("; ".join(problems))


def create_app(config: Config, engines: dict[str, Engine] | None = None, *,
               store: bool = True) -> tuple[Gateway, Sluice]:
    check_mig_bindings(config)
    engines = engines if engines is not None else build_engines(config)
    telemetry = Telemetry(config, engines, store=store)
    clocks = _nvml_clocks(config)
    sluice = Sluice(config, engines, recorder=telemetry.recorder, **clock_control(config, clocks))
    policies = PolicyStore(sluice, store=telemetry.store)
    admin = AdminAPI(sluice, sluice.stats, policies, token=config.admin_token(),
                     gpus=telemetry.gpu_state, trace=telemetry.trace_of,
                     snapshot=telemetry.store.snapshot if telemetry.store is not None else None)
    app = build_app(sluice, [*admin.routes(), *telemetry.routes()])

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        app.state.loop = asyncio.get_running_loop()  # for tests and benchmarks that watch it
        await sluice.start()
        sampler: asyncio.Task[None] | None = None
        try:
            await policies.restore()  # the audit log's policy, reconciled with the config file, before serving
            # What exists now (modules, the engines' sessions) lives as long as the server: out of the
            # cyclic GC's reach, a full collection no longer walks it (tens of ms, several times a minute
            # under load; torch, imported by the trainer once the server serves, is frozen there).
            gc.collect()
            gc.freeze()
            sampler = asyncio.create_task(telemetry.sample_loop(sluice, config.telemetry.retention_days))
            if telemetry.receiver_warning:
                log.warning("%s", telemetry.receiver_warning)
            await asyncio.to_thread(telemetry.start_otlp_server)
            yield
        finally:
            gc.unfreeze()
            if sampler is not None:
                sampler.cancel()
            await asyncio.to_thread(telemetry.stop_otlp_server)
            await sluice.stop()
            if clocks is not None:  # the engines are stopped: give back the clocks sluice locked
                await asyncio.to_thread(clocks.close)
            telemetry.recorder.close()  # flush spans and rows, checkpoint the DuckDB file

    app.router.lifespan_context = lifespan
    app.state.sluice, app.state.telemetry, app.state.policies = sluice, telemetry, policies
    return app, sluice


def uvicorn_config(app: Any, host: str, port: int, config: Config | None = None) -> uvicorn.Config:
    options = listener_options(config or Config())
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", loop="auto",
                          access_log=False, timeout_graceful_shutdown=5, **options)


class StartupError(Exception):
    """`sluice serve` cannot start; the message is one line for the operator."""


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, announcing itself only once its socket is bound and start-up is done."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self._announce is not None:
            self._announce()


def open_app(config: Config) -> tuple[Gateway, Sluice]:
    """`create_app`, with what can fail at start-up as a StartupError (one line): the store's file
    locked by another process or its directory not writable, a token file missing."""
    try:
        return create_app(config)
    except StoreError as exc:
        raise StartupError(str(exc)) from None
    except duckdb.Error as exc:
        raise StartupError(f"cannot open the store {config.server.db_path}: {exc}") from None
    except OSError as exc:  # a token file, the store's directory...
        raise StartupError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None


async def serve(config: Config, announce: Callable[[], None] | None = None) -> None:
    """Open everything that can fail (the store first), then serve; `announce()` once serving.

    Raises StartupError (one line) when `open_app` does, and when start-up did not complete (the
    reason is logged)."""
    app, _ = open_app(config)
    server = AnnouncingServer(uvicorn_config(app, config.server.host, config.server.port, config), announce)
    await server.serve()
    if not server.started:
        raise StartupError("start-up failed (the reason is logged above)")
