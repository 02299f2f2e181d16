"""`sluice serve --workers N`: N gateway worker processes and one decision process.

The decision process (this one) binds the serve port once and passes the listening socket to each
worker, which accepts on it (sluice/worker.py): one bind, so a port in use fails once, here, with
one line; port 0 works (every worker shares the one port the kernel chose); and no other process
can join the port as SO_REUSEPORT would let any process of the same user do. The kernel hands
each new connection to one of the workers waiting on the socket.

Here run, as in single-process serving, the `Sluice` with every pool's decision core, the store's
one writer, the admin API, `/metrics`, `/health`, `/v1/models` and the OTLP receiver (the whole app
of `create_app`, on a private Unix socket the workers relay those routes to), plus the IPC server
the workers ask for admission (controlplane/worker_hub.py). An engine that lives in this process
(the embedded simulator, SGLang in-process) is served to the workers over SGLang's own HTTP API on
loopback. A worker that dies is replaced; its requests were already aborted when its connection
dropped.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn

from controlplane.config import Config
from controlplane.service import Sluice
from controlplane.worker_hub import WorkerHub
from engine_adapter.sglang_server import make_sglang_app
from sluice.listener import listener_options
from sluice.server import AnnouncingServer, StartupError, open_app
from sluice.worker import worker_main

log = logging.getLogger("sluice.workers")

__all__ = ["WorkerSupervisor", "bind_listener", "respawn_delay", "serve_workers", "with_workers"]

WORKER_START_S = 60.0  # spawn, imports, IPC hello
ENGINE_KEY_ENV = "SLUICE_WORKER_ENGINE_KEY"  # in a worker: the key of the engines served to it (its own env only)
RESPAWN_CHECK_S = 1.0
RESPAWN_MAX_S = 60.0  # a worker that keeps dying young is started again at most this often
WORKER_STABLE_S = 30.0  # a worker that lived this long died of something else: start another at once


def respawn_delay(previous_s: float, lived_s: float) -> float:
    """Seconds to wait before starting a dead worker's replacement: doubling (up to RESPAWN_MAX_S)
    while each dies within WORKER_STABLE_S of its start (a broken config or engine would otherwise
    spawn an interpreter a second, forever), back to RESPAWN_CHECK_S after one that lived."""
    if lived_s >= WORKER_STABLE_S or previous_s <= 0:
        return RESPAWN_CHECK_S
    return min(RESPAWN_MAX_S, previous_s * 2)


def bind_listener(host: str, port: int) -> socket.socket:
    """The serve port, bound once here and inherited by every worker. Raises OSError (in use...)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn for an engine's SGLang surface inside this process: the signals stay the main server's."""

    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


class WorkerSupervisor:
    """Starts the IPC server and the workers once the decision process is up, replaces a worker that
    dies, and stops them (SIGTERM: they finish their streams) before the decision process stops."""

    def __init__(self, config: Config, sluice: Sluice, sock: socket.socket, n: int, rundir: str) -> None:
        self.config, self.sluice, self.sock, self.n = config, sluice, sock, n
        self.ipc_path = os.path.join(rundir, "ipc.sock")
        self.http_path = os.path.join(rundir, "http.sock")
        self.hub = WorkerHub(sluice)
        self.procs: list[Any] = []
        self._started: list[float] = []  # loop time each slot's worker started
        self._delay: list[float] = []  # each slot's last respawn delay (respawn_delay)
        self._due: list[float | None] = []  # when a dead slot's next worker starts
        self._surfaces: list[tuple[_QuietServer, asyncio.Task[None]]] = []
        self._worker_config = config
        self._engine_key = secrets.token_urlsafe(32)  # any local user can reach a loopback port
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked threads or DuckDB

    async def start(self) -> None:
        await self.hub.start(self.ipc_path)
        self._worker_config = await self._engine_surfaces()
        self.procs = [self._spawn(i) for i in range(self.n)]
        now = asyncio.get_running_loop().time()
        self._started, self._delay, self._due = [now] * self.n, [0.0] * self.n, [None] * self.n
        try:
            await self.hub.wait_workers(self.n, WORKER_START_S)
        except TimeoutError:
            raise RuntimeError(f"{self.n - self.hub.ready()} of {self.n} workers did not start within "
                               f"{WORKER_START_S:g} s") from None
        self._watch = asyncio.create_task(self._replace_dead())

    def _spawn(self, index: int) -> Any:
        proc = self._ctx.Process(target=worker_main, name=f"sluice-worker-{index}", daemon=True,
                                 args=(self._worker_config, self.sock, self.ipc_path, self.http_path, index,
                                       logging.getLogger().level, {ENGINE_KEY_ENV: self._engine_key}))
        proc.start()
        return proc

    async def _replace_dead(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            await asyncio.sleep(RESPAWN_CHECK_S)
            now = loop.time()
            for i, proc in enumerate(self.procs):
                # exit code 0: it was told to stop (a terminal's Ctrl-C reaches every process): no replacement
                if proc.is_alive() or proc.exitcode == 0 or self._stopping:
                    continue
                if self._due[i] is None:
                    self._delay[i] = respawn_delay(self._delay[i], now - self._started[i])
                    self._due[i] = now + self._delay[i]
                    log.warning("worker %d (pid %s) exited with %s: starting another in %.0f s", i, proc.pid,
                                proc.exitcode, self._delay[i])
                if now >= self._due[i]:  # type: ignore[operator]
                    self.procs[i], self._started[i], self._due[i] = self._spawn(i), now, None

    async def stop(self) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn's graceful shutdown in the worker
        await asyncio.to_thread(_join, self.procs, 10.0)
        await self.hub.close()
        for server, task in self._surfaces:
            server.should_exit = True
            await task

    async def _engine_surfaces(self) -> Config:
        """The config the workers get: each engine this process holds (not reachable from another
        process) served over SGLang's HTTP API on loopback, and named there as an SGLang engine. The
        surface asks for a key (SGLang's `--api-key`) that only the workers are given: any local user
        could otherwise generate on it, past admission, fairness and the store."""
        engines = []
        for cfg in self.config.engines:
            if cfg.kind == "sglang":
                engines.append(cfg)
                continue
            engine = self.sluice.engines[cfg.name]
            model = self.sluice.pool_of(cfg.name).infos[cfg.name].model
            sock = bind_listener("127.0.0.1", 0)
            server = _QuietServer(uvicorn.Config(make_sglang_app(engine, model_name=model, api_key=self._engine_key),
                                                 log_level="warning",
                                                 lifespan="off", access_log=False, timeout_graceful_shutdown=2))
            task = asyncio.create_task(server.serve(sockets=[sock]))
            self._surfaces.append((server, task))
            engines.append(dataclasses.replace(cfg, kind="sglang", url=f"http://127.0.0.1:{sock.getsockname()[1]}",
                                               api_key_env=ENGINE_KEY_ENV))
        return dataclasses.replace(self.config, engines=engines)


def _join(procs: list[Any], timeout_s: float) -> None:
    for proc in procs:
        proc.join(timeout_s)
        if proc.is_alive():
            log.warning("worker pid %s did not stop within %g s: killing it", proc.pid, timeout_s)
            proc.kill()
            proc.join()


def with_workers(app: Any, supervisor: WorkerSupervisor) -> None:
    """Wraps the app's lifespan: the workers start once the decision process is up (engines known,
    cores built) and stop before it stops (their last rows reach the store)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[None]:
        async with inner(a):
            try:
                await supervisor.start()
                yield
            finally:
                await supervisor.stop()

    app.router.lifespan_context = lifespan


def decision_config(app: Any, path: str, config: Config) -> uvicorn.Config:
    """The decision process's own listener: the whole app, on a private Unix socket."""
    return uvicorn.Config(app, uds=path, log_level="warning", lifespan="on", access_log=False,
                          timeout_graceful_shutdown=5, **listener_options(config))


async def serve_workers(config: Config, n: int, announce: Callable[[], None] | None = None) -> None:
    """Bind, open the decision process (the store first), then serve until stopped. Raises
    StartupError (one line) when the port cannot be bound, when `open_app` does, and when start-up
    did not complete (a worker that did not start: the reason is logged)."""
    try:
        sock = bind_listener(config.server.host, config.server.port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.server.host}:{config.server.port}: "
                           f"{exc.strerror or exc}") from None
    config.server.port = sock.getsockname()[1]  # port 0: the one the kernel chose, shared by every worker
    rundir = tempfile.mkdtemp(prefix="sluice-")  # 0700: the IPC and relay sockets are this user's only
    try:
        app, sluice = open_app(config)
        supervisor = WorkerSupervisor(config, sluice, sock, n, rundir)
        with_workers(app, supervisor)
        server = AnnouncingServer(decision_config(app, supervisor.http_path, config), announce)
        await server.serve()
        if not server.started:
            raise StartupError("start-up failed (the reason is logged above)")
    finally:
        sock.close()
        shutil.rmtree(rundir, ignore_errors=True)
