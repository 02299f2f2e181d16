"""`sluice demo`: sluice with the simulated engine, a built-in multi-tenant load, and the console.

Everything runs in this process: the server and the load on background threads, the console in
the foreground. Quitting the console stops the load, then the server (which flushes the store).
"""
from __future__ import annotations

import asyncio
import math
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
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port))
        self.server_thread = threading.Thread(target=self.server.run, name="sluice-server", daemon=True)
        self.scale = scale
        self.sent = self.ok = self.rejected = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.load_thread = threading.Thread(target=self._run_load, name="sluice-demo-load", daemon=True)

    def start(self) -> None:
        self.server_thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.server_thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sluice did not start; see the messages above")
            time.sleep(0.05)
        self.load_thread.start()

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
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.load_thread.join(timeout=15)
        self.server.should_exit = True
        self.server_thread.join(timeout=30)


def run_demo(port: int = 8080, state_dir: str = ".sluice", headless_s: float | None = None,
             scale: float = 1.0) -> int:
    bg = _Background(port, state_dir, scale)
    print(f"sluice demo: serving on {bg.url} with a simulated H100 and {len(DEMO_TENANTS)} tenants "
          f"(state in {state_dir}/)", file=sys.stderr)
    bg.start()
    try:
        if headless_s is not None:
            time.sleep(headless_s)
            print(f"sluice demo: {bg.sent} requests finished: {bg.ok} ok, {bg.rejected} refused (429)")
            return 0 if bg.ok > 0 else 1
        from tui.cli import run_console

        _, token, _ = dev_state(state_dir)
        run_console(bg.url, token, actor="demo@console")
        return 0
    finally:
        bg.stop()
