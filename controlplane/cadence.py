"""Serving's cadence: the core's tick, the engines' load reports and the capacity and frequency
rules, at the driver's instants of the wall clock (controlplane/driver.py: `next_tick`,
`next_load`, ...), in the driver's order, as replay's loop runs them in virtual time.

Nothing here may stop serving: a failing tick, rule or engine is logged and the cadence goes on
(every deadline depends on the tick).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from controlplane.driver import LOAD_EVERY_S, next_capacity, next_frequency, next_load, next_tick
from controlplane.engine_pool import EnginePool
from engine_adapter.base import EngineError

log = logging.getLogger("sluice")

__all__ = ["Cadence"]


class Cadence:
    """Runs on the event loop from `start()` to `stop()`."""

    def __init__(self, pool: EnginePool, clock: Callable[[], float]) -> None:
        self.pool = pool
        self.clock = clock
        self._frequency_at = next_frequency(clock())  # the first instant after the start, as replay
        self._task: asyncio.Task[None] | None = None
        self._poll: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._poll) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        """The first poll at once, then the tick and the polls on their grids."""
        driver, capacity, clock = self.pool.driver, self.pool.capacity, self.clock
        now = clock()
        tick_at, load_at, capacity_at = next_tick(now), now, next_capacity(now)
        while True:
            due = min(tick_at, load_at)
            now = clock()
            if now < due:
                if due - now > LOAD_EVERY_S:  # the clock was set back: start the grid again from now
                    tick_at, load_at, capacity_at = next_tick(now), next_load(now), next_capacity(now)
                    continue
                await asyncio.sleep(due - now)
                continue  # a timer may fire a hair early: sleep again until the clock is there
            # At one instant the tick comes after the arrivals (the driver's order): yield once, so that
            # request handlers whose timers fell due together with ours run first.
            await asyncio.sleep(0)
            now = clock()
            if tick_at <= now:
                tick_at = next_tick(now)
                try:
                    driver.tick(now)
                except Exception:  # a bug must not stop the cadence (and with it every deadline)
                    log.exception("tick failed")
            if load_at <= now:
                load_at = next_load(now)
                if capacity_at <= now and capacity is not None:  # before the reports, as replay
                    capacity_at = next_capacity(now)
                    try:
                        capacity.step(driver.core, now)
                    except Exception:
                        log.exception("capacity evaluation failed")
                # A task of its own: a slow engine delays its own report, never the tick. Started after
                # the tick, it runs after the handlers of the tick's dispatches have submitted to their
                # engines, so the reports include them (as replay's do).
                if self._poll is None or self._poll.done():
                    self._poll = asyncio.create_task(self._poll_engines())

    async def _poll_engines(self) -> None:
        pool, clock = self.pool, self.clock
        for name, engine in pool.engines.items():
            try:
                load = await engine.load()
                pool.loads[name] = load
                pool.driver.engine_load(clock(), name, load)
            except EngineError:
                pool.loads.pop(name, None)
                pool.driver.engine_health(clock(), name, await engine.health())
            except Exception:
                log.exception("polling engine %s failed", name)
        now = clock()
        if pool.steering is not None and now >= self._frequency_at:  # after the reports it reads, as replay
            self._frequency_at = next_frequency(now)
            try:  # nothing here may fail serving: an engine that cannot take a clock keeps running
                pool.driver.apply(now, pool.steering.evaluate(now))
            except Exception:
                log.exception("frequency rule failed")
