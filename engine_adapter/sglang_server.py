"""SGLang's own HTTP API, served over any `Engine`: the app that puts the endpoints together.

`make_sglang_app(engine, model_name=...)` answers the way ``python -m sglang.launch_server`` does
(shapes from ``shared/reference/sglang-surface.md``): native ``/generate`` (cumulative or
incremental SSE, ``meta_info``, ``finish_reason`` dicts, in-band abort chunks with ``status_code``,
503 "queue full" for non-streaming requests, 400 on a duplicate in-flight rid), ``/abort_request``
(always 200, rid matched by prefix like SGLang's scheduler), ``/v1/loads`` (LoadSnapshot),
``/metrics`` (SGLang's metric names), ``/health``, ``/health_generate``, ``/server_info``,
``/model_info`` (and their deprecated ``/get_*`` names), ``/get_load``, the OpenAI-compatible
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, and the LoRA adapters' ``lora_path``,
``/load_lora_adapter`` and ``/unload_lora_adapter`` over an engine that holds adapters.

`sluice sim-server` puts the simulated engine behind it so that `SGLangHTTPEngine` is exercised end
to end over real HTTP exactly as it talks to SGLang. ``version`` selects which release's surface is
emulated (renamed fields and endpoints; see ``docs/engines.md``).

The parts: `sglang_surface.py` (the engine as SGLang presents it: release, in-flight table,
metrics, driving a request), `sglang_generate.py` (native ``/generate``, ``/abort_request``),
`sglang_status.py` (loads, metrics, health, server and model info), `sglang_openai.py` (the
OpenAI-compatible endpoints) and `sglang_lora.py` (the LoRA endpoints).
"""
from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from engine_adapter.base import Engine
from engine_adapter.sglang_generate import GenerateEndpoints
from engine_adapter.sglang_lora import LoraEndpoints
from engine_adapter.sglang_openai import OpenAIEndpoints
from engine_adapter.sglang_status import StatusEndpoints
from engine_adapter.sglang_surface import DEFAULT_VERSION, SGLangSurface

__all__ = ["make_sglang_app", "serve_sglang", "run_sglang", "DEFAULT_VERSION"]

_UNAUTHENTICATED = {"/health", "/health_generate", "/metrics"}


class _ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on everything but /health* and /metrics, like SGLang."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in _UNAUTHENTICATED:
            await self.app(scope, receive, send)
            return
        for k, v in scope["headers"]:
            if k == b"authorization" and v == self.expected:
                await self.app(scope, receive, send)
                return
        await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)


def make_sglang_app(
    engine: Engine,
    *,
    model_name: str,
    api_key: str | None = None,
    version: str = DEFAULT_VERSION,
    incremental_streaming_output: bool = False,
    enable_cache_report: bool = False,
    max_running_requests: int | None = None,
    context_length: int | None = None,
) -> Starlette:
    """A Starlette app answering SGLang's HTTP API (release `version`) on top of `engine`."""
    surface = SGLangSurface(engine, model_name, version, incremental_streaming_output, enable_cache_report,
                            max_running_requests, context_length)
    routes = [*GenerateEndpoints(surface).routes(), *StatusEndpoints(surface).routes(),
              *OpenAIEndpoints(surface).routes(), *LoraEndpoints(surface).routes()]
    app = Starlette(routes=routes, middleware=[Middleware(_ApiKeyMiddleware, api_key=api_key)])
    app.state.sglang = surface
    return app


def _uvicorn_config(app: Starlette, host: str, port: int) -> Any:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # pragma: no cover
        loop = "asyncio"
    return uvicorn.Config(app, host=host, port=port, loop=loop, http="httptools", log_level="warning",
                          access_log=False, timeout_graceful_shutdown=5)


async def serve_sglang(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 30000,
    model_name: str | None = None,
    *,
    api_key: str | None = None,
    **app_options: Any,
) -> None:
    """Serve `engine` over SGLang's HTTP API under uvicorn in the running loop, until stopped.

    `model_name` defaults to the engine's `info().model`; `app_options` go to `make_sglang_app`.
    """
    import uvicorn

    if model_name is None:
        model_name = (await engine.info()).model
    app = make_sglang_app(engine, model_name=model_name, api_key=api_key, **app_options)
    await uvicorn.Server(_uvicorn_config(app, host, port)).serve()


def run_sglang(engine_factory: Any, host: str = "127.0.0.1", port: int = 30000,
               model_name: str | None = None, **kwargs: Any) -> None:
    """Blocking entry point: a fresh event loop (uvloop when installed) running `serve_sglang` on the
    engine that `engine_factory()` builds inside that loop."""
    async def main() -> None:
        engine = engine_factory()
        try:
            await serve_sglang(engine, host, port, model_name, **kwargs)
        finally:
            await engine.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())
