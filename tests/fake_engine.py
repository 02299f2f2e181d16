"""A scriptable Engine for gateway tests of failure paths (dies mid-stream, refuses, is slow)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from engine_adapter.base import Chunk, EngineError, EngineInfo, EngineLoad, EngineOverloaded, GenerateRequest, StepProfile


class FakeEngine:
    def __init__(self, name: str = "fake", *, delay: float = 0.001, die_after: int | None = None,
                 overloaded: bool = False, healthy: bool = True) -> None:
        self.name = name
        self.delay = delay
        self.die_after = die_after
        self.overloaded = overloaded
        self.healthy = healthy
        self.submitted: list[GenerateRequest] = []
        self.aborted: list[str] = []
        self.running = 0

    async def submit(self, request: GenerateRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        if self.overloaded:
            raise EngineOverloaded()
        if not self.healthy:
            raise EngineError("connection refused")
        self.submitted.append(request)
        n = int(request.sampling_params.get("max_new_tokens", 16))
        prompt = request.prompt_tokens or 1
        self.running += 1
        done = False
        try:
            for i in range(1, n + 1):
                await asyncio.sleep(self.delay)
                if self.die_after is not None and i > self.die_after:
                    raise EngineError("connection reset by engine")
                last = i == n
                done = last
                yield Chunk(f"w{i} ", i, prompt, 0, "length" if last else None)
        finally:
            self.running -= 1
            if not done:
                self.aborted.append(request.rid)

    async def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    async def load(self) -> EngineLoad:
        if not self.healthy:
            raise EngineError("connection refused")
        return EngineLoad(self.running, 0, 0, 100_000)

    async def info(self) -> EngineInfo:
        return EngineInfo(self.name, "fake", "fake-model", None, 100_000, True,
                          StepProfile(0.001, 1e-6, 0.001, 1e-6, 0.0))

    async def health(self) -> bool:
        return self.healthy

    async def close(self) -> None:
        pass
