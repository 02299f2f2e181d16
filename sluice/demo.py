"""`sluice demo`: sluice with the simulated engine, a built-in multi-tenant load, and the console.

With the console, the server and the load run in a child process (their own interpreter: under
load they would otherwise hold the console's GIL, and keys took seconds to show), logging to
<state-dir>/demo-server.log. The console comes up at once and says what the server is doing until
it answers (a second or two: torch, for the output-length predictor's MLP expert, is imported in
the background once it serves); the load starts as soon as the server does. Quitting the console
stops the load and the server together (the store is flushed), saying so. `--headless` runs the
server and the load on threads of this process.
"""
from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from replay.live import run_live
from replay.workload import WorkloadRequest
from sluice.devsetup import dev_config, dev_state
from sluice.server import create_app, uvicorn_config


@dataclass(frozen=True)
class DemoTenant:
    name: str
    rate: float  # mean requests/s
    burst: float  # on/off factor: rate * burst while "on", 0 while "off" (1 = steady Poisson)
    period_s: float  # length of one on/off cycle
    input_mean: int
    output_mean: int


# Enough together to overload one simulated H100 during the bursts, not all the time.
DEMO_TENANTS = (
    DemoTenant("acme", 6.0, 1.0, 60.0, 600, 180),  # steady, weight 2
    DemoTenant("globex", 5.0, 3.0, 40.0, 400, 220),  # bursty
    DemoTenant("initech", 1.5, 1.0, 60.0, 200, 80),  # light
    DemoTenant("batchco", 1.0, 2.0, 90.0, 3000, 400),  # batch class: long prompts, deferred under load
)


def demo_workload(duration_s: float, seed: int = 7, scale: float = 1.0) -> list[WorkloadRequest]:
    rng = random.Random(seed)
    out: list[WorkloadRequest] = []
    for t in DEMO_TENANTS:
        now = 0.0
        while True:
            on = (now % t.period_s) < t.period_s / t.burst if t.burst > 1 else True
            rate = t.rate * scale * (t.burst if t.burst > 1 else 1.0)
            now += rng.expovariate(rate) if on else t.period_s - (now % t.period_s)
            if now >= duration_s:
                break
            if on:
                out.append(WorkloadRequest(
                    now * 1e3, max(1, int(rng.lognormvariate(math.log(t.input_mean), 0.6))),
                    max(1, min(2048, int(rng.lognormvariate(math.log(t.output_mean), 0.7)))), tenant=t.name))
    out.sort(key=lambda r: r.timestamp_ms)
    return out


class _Background:
    """The server and the load, each on its own thread with its own event loop."""

    def __init__(self, port: int, state_dir: str, scale: float) -> None:
        config, self.keys = dev_config(state_dir, port=port)
        self.url = f"http://127.0.0.1:{port}"
        self.config = config
        app, _ = create_app(config)
        server_config = uvicorn_config(app, "127.0.0.1", port)
        server_config.timeout_graceful_shutdown = 1  # the demo's own load: no client to wait for
        self.server = uvicorn.Server(server_config)
        self.server_thread = threading.Thread(target=self.server.run, name="sluice-server", daemon=True)
        self.scale = scale
        self.sent = self.ok = self.rejected = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.load_thread = threading.Thread(target=self._run_load, name="sluice-demo-load", daemon=True)
        self.ready = threading.Event()
        self.failure: str | None = None
        self.started_at = time.monotonic()

    def start(self, wait: bool = True) -> None:
        """Start the server, then the load once it serves; `wait=False` returns at once."""
        self.started_at = time.monotonic()
        self.server_thread.start()
        threading.Thread(target=self._load_when_up, name="sluice-demo-start", daemon=True).start()
        if wait:
            self.ready.wait(timeout=60)
            if not self.server.started:
                raise RuntimeError(self.failure or "sluice did not start; see the messages above")

    def _load_when_up(self) -> None:
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.server_thread.is_alive() or time.monotonic() > deadline:
                self.failure = "sluice did not start; see the messages above (after quitting)"
                self.ready.set()
                return
            time.sleep(0.05)
        self.load_thread.start()
        self.ready.set()

    def status(self) -> str | None:
        """What the demo is doing while the console waits for its first state (None: failed)."""
        if self.failure:
            return None
        elapsed = time.monotonic() - self.started_at
        if not self.server.started:
            return f"sluice demo: starting the server with a simulated H100 ({elapsed:.0f} s)…"
        return f"sluice demo: server up, the load is starting ({elapsed:.0f} s)…"

    def _count(self, result: Any) -> None:
        self.sent += 1
        self.ok += result.status == "ok"
        self.rejected += result.status == "rejected"

    def _run_load(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            cycle = 0
            while not self._stop.is_set():  # the load repeats, a new random draw each cycle
                await run_live(self.url, demo_workload(300.0, seed=cycle, scale=self.scale), self.keys,
                               stop=self._stop, on_result=self._count, request_timeout_s=120)
                cycle += 1

        asyncio.run(main())

    def stop(self) -> None:
        # the load and the server stop together; the server gives the load's open streams 1 s
        # (not serve's 5 s) before cutting them, then flushes the store
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.server.should_exit = True
        self.load_thread.join(timeout=5)
        self.server_thread.join(timeout=30)


def _serve_child(port: int, state_dir: str, scale: float, ready: Any, failed: Any, stop: Any) -> None:
    """The child process of `sluice demo`: the server and the load until `stop` is set."""
    log = open(os.path.join(state_dir, "demo-server.log"), "a", buffering=1)  # noqa: SIM115 - the process's
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    bg = _Background(port, state_dir, scale)
    bg.start(wait=False)
    bg.ready.wait(timeout=60)
    if bg.failure or not bg.server.started:
        failed.set()
        bg.stop()
        return
    ready.set()
    stop.wait()
    bg.stop()
    print(f"sluice demo: {bg.sent} requests finished: {bg.ok} ok, {bg.rejected} refused (429)", flush=True)


class _Child:
    """The server and the load in a child process (see the module's docstring)."""

    def __init__(self, port: int, state_dir: str, scale: float) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or loops inherited
        self.ready, self.failed, self.stop_event = ctx.Event(), ctx.Event(), ctx.Event()
        self.log = os.path.join(state_dir, "demo-server.log")
        self.process = ctx.Process(target=_serve_child, name="sluice-demo-server", daemon=True,
                                   args=(port, state_dir, scale, self.ready, self.failed, self.stop_event))
        self.started_at = time.monotonic()

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.process.start()

    def status(self) -> str | None:
        """What the demo is doing while the console waits for its first state (None: failed)."""
        if self.failed.is_set() or (not self.process.is_alive() and self.process.exitcode is not None):
            return None
        elapsed = time.monotonic() - self.started_at
        if not self.ready.is_set():
            return f"sluice demo: starting the server with a simulated H100 ({elapsed:.0f} s)…"
        return f"sluice demo: server up, the load is starting ({elapsed:.0f} s)…"

    def stop(self) -> None:
        self.stop_event.set()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)


def run_demo(port: int = 8080, state_dir: str = ".sluice", headless_s: float | None = None,
             scale: float = 1.0) -> int:
    _, token, _ = dev_state(state_dir)  # before the child: both read the same keys and token
    print(f"sluice demo: serving on http://127.0.0.1:{port} with a simulated H100 and {len(DEMO_TENANTS)} tenants "
          f"(state in {state_dir}/)", file=sys.stderr)
    if headless_s is not None:
        bg = _Background(port, state_dir, scale)
        try:
            bg.start()
            time.sleep(headless_s)
            print(f"sluice demo: {bg.sent} requests finished: {bg.ok} ok, {bg.rejected} refused (429)")
            return 0 if bg.ok > 0 else 1
        finally:
            bg.stop()
    from tui.cli import run_console

    child = _Child(port, state_dir, scale)
    child.start()  # the console shows what the server is doing until it answers
    try:
        run_console(f"http://127.0.0.1:{port}", token, actor="demo@console", starting=child.status)
    finally:
        print("sluice demo: stopping the load and the server…", file=sys.stderr)
        started = time.monotonic()
        child.stop()
        print(f"sluice demo: stopped in {time.monotonic() - started:.1f} s", file=sys.stderr)
    if child.failed.is_set():
        print(f"sluice demo: the server did not start; see {child.log}", file=sys.stderr)
        return 1
    return 0
