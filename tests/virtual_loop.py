"""An asyncio loop on a virtual clock, for tests of code that sleeps on the loop's time: a run takes
no wall time and is the same every time."""
from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _VirtualSelector(selectors.DefaultSelector):
    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: no timer and nothing ready (the run is stuck)")
        # nothing can happen before the next timer: jump to it, exactly (asyncio keeps its timers
        # in `_scheduled`; `now + timeout` could land a rounding error short of it)
        self.loop.now = max(self.loop.now, self.loop._scheduled[0].when())
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a virtual clock from 0: whenever no callback is ready, time jumps to the
    next timer instead of waiting for it, so a run takes no wall time and is the same every time."""

    def __init__(self) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self.now = 0.0

    def time(self) -> float:
        return self.now
