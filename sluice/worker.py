"""One gateway worker of `sluice serve --workers N` (a process of its own, spawned by sluice/workers.py).

It serves the listening socket the decision process bound and passed it: the two completion
endpoints through the gateway's own `CompletionsEndpoint` over a `WorkerRuntime` (the engines
called from here, admission asked over IPC), every other route relayed to the decision process.
It stops on SIGTERM or SIGINT (uvicorn's graceful shutdown: streams finish; a stream still running
past it, or on a second Ctrl-C, is aborted with an in-band error and its row closed before the
worker exits 0), and by itself once its parent is gone (orphaned: it would otherwise hold the port).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from controlplane.config import Config
from controlplane.engines import build_engines
from controlplane.gateway.app import CompletionsEndpoint, Gateway
from controlplane.gateway.relay import Relay
from controlplane.worker_runtime import WorkerRuntime
from engine_adapter.base import Engine
from sluice.listener import listener_options

log = logging.getLogger("sluice.worker")

__all__ = ["build_worker_app", "worker_main"]

ORPHAN_CHECK_S = 0.5
SHUTDOWN_CLOSE_S = 2.0  # for the streams aborted at shutdown to close their rows over the IPC


class _WorkerServer(uvicorn.Server):
    """uvicorn, minus raising the signal it stopped on again once stopped (it does, for its caller's
    sake): that killed a worker on SIGTERM, or raised KeyboardInterrupt into its clean-up on SIGINT,
    before the `close` frames of its cut streams left (their rows said `worker_lost`), and its exit
    code made the supervisor start another during a Ctrl-C. The handlers stay: a late signal is moot."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def build_worker_app(runtime: WorkerRuntime, relay: Relay) -> Gateway:
    """The completion endpoints served here, everything else (lifespan aside) relayed."""
    chat, text = CompletionsEndpoint(runtime, "chat"), CompletionsEndpoint(runtime, "text")  # type: ignore[arg-type]
    return Gateway(relay, {"/v1/chat/completions": chat, "/v1/completions": text})  # type: ignore[arg-type]


def worker_main(config: Config, sock: socket.socket, ipc_path: str, http_path: str, index: int,
                log_level: int = logging.WARNING, env: dict[str, str] | None = None) -> None:
    """The worker process's entry point (multiprocessing, spawn). `env`: set in this process only (the
    key of the engines the decision process serves to it, which its config names by variable)."""
    os.environ.update(env or {})
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s worker {index}: %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(_serve(config, sock, ipc_path, http_path, index))
    else:
        uvloop.run(_serve(config, sock, ipc_path, http_path, index))


async def _serve(config: Config, sock: socket.socket, ipc_path: str, http_path: str, index: int) -> None:
    engines = build_engines(config)
    await _learn_adapters(engines)
    runtime = WorkerRuntime(config, engines)
    await runtime.connect(ipc_path, index)
    relay = Relay(http_path, max(config.server.max_body_bytes, config.telemetry.otlp_max_bytes))
    server = _WorkerServer(uvicorn.Config(build_worker_app(runtime, relay), log_level="warning", lifespan="off",
                                          access_log=False, timeout_graceful_shutdown=5,
                                          **listener_options(config)))
    orphan = asyncio.create_task(_stop_when_orphaned(server))
    try:
        await server.serve(sockets=[sock])
    finally:
        orphan.cancel()
        await _end_streams(runtime)
        await relay.close()
        for engine in engines.values():
            await engine.close()


async def _end_streams(runtime: WorkerRuntime) -> None:
    """Requests still running once uvicorn has stopped (past its graceful timeout, or forced): aborted
    (`server_shutdown`), awaited, and their frames flushed before the connection closes."""
    tasks = runtime.abort_all("server_shutdown")
    if tasks:
        await asyncio.wait(tasks, timeout=SHUTDOWN_CLOSE_S)
    runtime.disconnect()


async def _learn_adapters(engines: dict[str, Engine]) -> None:
    """An SGLang engine learns at `info()` whether it serves LoRA adapters (it loads missing ones
    before a request that needs them); best effort: the decision process already checked them."""
    for name, engine in engines.items():
        try:
            await asyncio.wait_for(engine.info(), 10)
        except Exception as exc:
            log.warning("engine %s: info() failed in this worker: %s", name, exc)


async def _stop_when_orphaned(server: Any) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK_S)
    log.error("the decision process (pid %d) is gone: stopping", parent)
    server.should_exit = True
