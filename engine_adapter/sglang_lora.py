"""SGLang's LoRA endpoints, served over an `Engine` that holds adapters (the simulator's
`SimEngine.lora`, engine_adapter/lora.py): ``POST /load_lora_adapter`` ``{"lora_name",
"lora_path", "pinned"}`` and ``POST /unload_lora_adapter`` ``{"lora_name"}``, answered as SGLang's
``LoadLoRAAdapterReqOutput``: ``{"success", "error_message", "loaded_adapters": {name: path}}``,
200 on success and 400 otherwise. What the other endpoints show of the adapters (``/v1/models``
cards with a ``parent``, ``/server_info``'s ``enable_lora``, ``/v1/loads``' ``lora`` section) reads
`adapters_of` too.
"""
from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine_adapter.lora import AdapterError, AdapterSet
from engine_adapter.sglang_surface import SGLangSurface

NOT_ENABLED = "LoRA is not enabled on this server: start it with --enable-lora"


def adapters_of(surface: SGLangSurface) -> AdapterSet | None:
    """The engine's adapter table, None when LoRA is not enabled."""
    lora = getattr(surface.engine, "lora", None)
    return lora if isinstance(lora, AdapterSet) else None


def model_cards(surface: SGLangSurface, created: int) -> list[dict[str, Any]]:
    """`/v1/models`' cards of the loaded adapters, as SGLang lists them: id the adapter's name,
    root its path, parent the served model."""
    lora = adapters_of(surface)
    if lora is None:
        return []
    return [{"id": name, "object": "model", "created": created, "owned_by": "sglang", "root": path,
             "parent": surface.model_name, "max_model_len": None} for name, path in lora.paths().items()]


def load_section(surface: SGLangSurface) -> dict[str, Any] | None:
    """`/v1/loads?include=lora`'s section of a LoadSnapshot."""
    lora = adapters_of(surface)
    if lora is None:
        return None
    used, total = len(lora.names()), lora.slots
    return {"slots_used": used, "slots_total": total, "utilization": round(used / total, 4) if total else None}


class LoraEndpoints:
    def __init__(self, surface: SGLangSurface) -> None:
        self.surface = surface

    def routes(self) -> list[Route]:
        return [Route("/load_lora_adapter", self.load, methods=["POST"]),
                Route("/unload_lora_adapter", self.unload, methods=["POST"])]

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return self._answer(False, f"invalid JSON body: {e}")
        if not isinstance(body, dict) or not isinstance(body.get("lora_name"), str) or not body["lora_name"]:
            return self._answer(False, "lora_name is required")
        return body

    def _answer(self, ok: bool, message: str = "") -> Response:
        lora = adapters_of(self.surface)
        return JSONResponse({"success": ok, "error_message": message,
                             "loaded_adapters": lora.paths() if lora is not None else {}},
                            status_code=200 if ok else 400)

    async def load(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        path = body.get("lora_path")
        if not isinstance(path, str) or not path:
            return self._answer(False, "lora_path is required")
        loader = getattr(self.surface.engine, "load_adapter", None)
        if adapters_of(self.surface) is None or loader is None:
            return self._answer(False, NOT_ENABLED)
        try:
            await loader(body["lora_name"], path, bool(body.get("pinned", False)))
        except AdapterError as e:
            return self._answer(False, str(e))
        return self._answer(True)

    async def unload(self, request: Request) -> Response:
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        unloader = getattr(self.surface.engine, "unload_adapter", None)
        if adapters_of(self.surface) is None or unloader is None:
            return self._answer(False, NOT_ENABLED)
        try:
            unloader(body["lora_name"])
        except AdapterError as e:
            return self._answer(False, str(e))
        return self._answer(True)
