"""LoRA adapters on a SGLang server, as `SGLangHTTPEngine` manages them (docs/engines.md "LoRA").

SGLang serves an adapter only once it is loaded (`--lora-paths`, or `POST /load_lora_adapter`),
at most `--max-loaded-loras` at a time. `RemoteAdapters` keeps a mirror of the server's table
(engine_adapter/lora.py's `AdapterSet`: names least recently used first, and how many of sluice's
requests use each), refreshed from `GET /v1/models` (an adapter's card has a `parent`) at every load
poll, which is also what the engine reports (`EngineLoad.adapters`). A request whose adapter the
server does not hold and whose path sluice knows (`GenerateRequest.lora_source`, the configured
path) loads it first, making room by unloading the least recently used adapter no request of
sluice's is using; one load at a time. Without a known path the request goes as it is and SGLang
answers it (400: "... not loaded").
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from engine_adapter.base import Chunk, EngineError, GenerateRequest
from engine_adapter.lora import AdapterError, AdapterSet, AdapterState

# what loading an adapter is expected to take on a real server: SGLang reports no figure (reading
# the adapter's safetensors and copying them to the GPU; an assumption, docs/engines.md)
ADAPTER_LOAD_S = 0.5
_LOAD_TIMEOUT = aiohttp.ClientTimeout(total=300.0)  # a large adapter from a slow disk


class RemoteAdapters:
    def __init__(self, engine: Any, slots: int | None) -> None:
        self.engine = engine  # the SGLangHTTPEngine: its session, URLs, headers and name
        self.table = AdapterSet(slots, ADAPTER_LOAD_S)
        self._lock = asyncio.Lock()

    async def refresh(self) -> AdapterState:
        """The server's adapters now (`/v1/models`), into the mirror; EngineError when unreachable."""
        models = await self.engine._get_json("/v1/models")
        cards = models.get("data") if isinstance(models, dict) else None
        remote = {c["id"]: c.get("root") for c in cards or [] if isinstance(c, dict) and c.get("parent")
                  and isinstance(c.get("id"), str)}
        for name in self.table.names():
            if name not in remote:
                try:
                    self.table.unload(name)
                except AdapterError:  # one of sluice's requests still runs with it: the server says otherwise
                    pass
        for name, path in remote.items():
            if name not in self.table:
                self.table.load(name, path)
        return self.table.state()

    def run(self, request: GenerateRequest,
            submit: Callable[[GenerateRequest], AsyncIterator[list[Chunk]]]) -> AsyncIterator[list[Chunk]]:
        return self._run(request, submit)

    async def _run(self, request: GenerateRequest,
                   submit: Callable[[GenerateRequest], AsyncIterator[list[Chunk]]]) -> AsyncIterator[list[Chunk]]:
        """The request's batches with its adapter loaded first (when missing and its path known)
        and marked in use until it ends."""
        name = request.lora_path
        assert name is not None
        if name not in self.table and request.lora_source is not None:
            await self._load(name, request.lora_source)
        held = name in self.table
        if held:
            self.table.acquire(name)
        batches = submit(request)
        try:
            async for batch in batches:
                yield batch
        finally:
            await batches.aclose()  # type: ignore[attr-defined]
            if held:
                self.table.release(name)

    async def _load(self, name: str, path: str) -> None:
        async with self._lock:
            if name in self.table:
                return
            try:
                victim = self.table.victim()
            except AdapterError as e:
                raise EngineError(f"{self.engine.name}: {e}", status_code=503) from None
            if victim is not None:
                await self._post("/unload_lora_adapter", {"lora_name": victim})
                self.table.unload(victim)
            await self._post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
            self.table.load(name, path)

    async def _post(self, path: str, body: dict[str, Any]) -> None:
        """One of SGLang's LoRA calls; EngineError (naming the adapter and SGLang's message) unless it
        answers `success`."""
        eng = self.engine
        try:
            async with eng._sess().post(eng._u(path), data=json.dumps(body).encode(), headers=eng._headers,
                                        timeout=_LOAD_TIMEOUT) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise EngineError(f"{eng.name}: {path} {body['lora_name']} failed: {e!r}") from e
        try:
            reply = json.loads(text)
        except ValueError:
            reply = {}
        if status != 200 or not (isinstance(reply, dict) and reply.get("success")):
            message = reply.get("error_message") if isinstance(reply, dict) else None
            raise EngineError(f"{eng.name}: {path} {body['lora_name']}: {message or text[:200]}",
                              status_code=502 if status < 400 or status >= 500 else status,
                              client_message=f"the engine could not load LoRA adapter {body['lora_name']!r}")
