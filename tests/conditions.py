"""Waiting on a condition instead of sleeping and hoping: the wait ends as soon as it holds, and
the timeout only bounds a failure."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], object], timeout_s: float = 5.0, what: str = "condition",
                     poll_s: float = 0.001) -> None:
    """Yield to the loop until `condition()` is true; AssertionError after `timeout_s`. `poll_s=0`
    only yields, for a condition that other tasks make true without waiting on time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        await asyncio.sleep(poll_s)
