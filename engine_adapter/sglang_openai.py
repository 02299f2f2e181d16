"""SGLang's OpenAI-compatible endpoints, served over any `Engine` (an `SGLangSurface`):
``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (streamed or not, usage and
cached-token reports as SGLang's ``serving_chat`` gives them). The engine applies the chat
template and the parsers.
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine_adapter.base import Chunk, EngineError, EngineOverloaded, GenerateRequest
from engine_adapter.openai_chunks import message_fields, stream_choice
from engine_adapter.sglang_lora import model_cards
from engine_adapter.sglang_surface import (
    SSE_DONE,
    DuplicateRid,
    SGLangSurface,
    dumps,
    openai_error,
    openai_error_response,
    queue_full_message,
    sse,
)


class OpenAIEndpoints:
    """`/v1/models`, `/v1/completions` and `/v1/chat/completions` over `surface`."""

    def __init__(self, surface: SGLangSurface) -> None:
        self.surface = surface

    def routes(self) -> list[Route]:
        return [Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"])]

    async def models(self, request: Request) -> Response:
        info = await self.surface.info()
        created = int(self.surface.startup)
        return JSONResponse({"object": "list", "data": [{
            "id": self.surface.model_name, "object": "model", "created": created, "owned_by": "sglang",
            "root": self.surface.model_name, "parent": None,
            "max_model_len": self.surface.context_length or info.context_length or info.max_total_tokens,
        }, *model_cards(self.surface, created)]})

    async def chat_completions(self, request: Request) -> Response:
        return await self._openai(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._openai(request, chat=False)

    async def _openai(self, request: Request, *, chat: bool) -> Response:
        ctype = request.headers.get("content-type", "")
        if "application/json" not in ctype:
            return openai_error_response("Content-Type must be application/json", 400)
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return openai_error_response(f"invalid JSON body: {e}", 400)
        if not isinstance(body, dict):
            return openai_error_response("the body must be a JSON object", 400)
        try:
            engine_body = _openai_body(body, chat)
            priority = int(body["priority"]) if body.get("priority") is not None else None
            lora = _lora_path(body)
        except (TypeError, ValueError) as e:
            return openai_error_response(str(e), 400)
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        continuous = bool(isinstance(opts, dict) and opts.get("continuous_usage_stats"))
        # the engine applies the chat template and the parsers, as SGLang's serving_chat does
        req = GenerateRequest(rid=body.get("rid") or uuid.uuid4().hex, stream=stream, priority=priority,
                              traceparent=request.headers.get("traceparent"), openai=engine_body, lora_path=lora)
        model = body.get("model") or self.surface.model_name
        if stream:
            return StreamingResponse(self._openai_stream(req, chat, model, include_usage, continuous),
                                     media_type="text/event-stream")
        done = await self.surface.run_to_end(req, lambda msg: openai_error_response(msg, 400), "InternalServerError")
        if isinstance(done, Response):
            return done
        chunks, last = done
        if last.finish_reason == "abort" and last.status_code:
            return openai_error_response(last.message or "aborted", last.status_code, str(last.status_code))
        choice = {"index": 0, **message_fields("".join(c.text for c in chunks), [c.extra for c in chunks if c.extra],
                                               chat), "finish_reason": last.finish_reason, "matched_stop": None}
        return Response(dumps({
            "id": req.rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice],
            "usage": self._usage(last),
        }), media_type="application/json")

    def _usage(self, ch: Chunk) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": ch.prompt_tokens,
            "completion_tokens": ch.completion_tokens,
            "total_tokens": ch.prompt_tokens + ch.completion_tokens,
            "prompt_tokens_details": None,
            "reasoning_tokens": 0,
        }
        if self.surface.enable_cache_report and ch.cached_tokens > 0:
            usage["prompt_tokens_details"] = {"cached_tokens": ch.cached_tokens}
        return usage

    async def _openai_stream(self, req: GenerateRequest, chat: bool, model: str, include_usage: bool,
                             continuous: bool) -> AsyncIterator[bytes]:
        rid = req.rid
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def frame(ch: Chunk | None, fr: str | None, *, role: bool = False,
                  usage: dict[str, Any] | None = None) -> bytes:
            if role:
                choice: dict[str, Any] = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
            else:
                choice = stream_choice(ch.text if ch else None, ch.extra if ch else None, chat, False)
            choice = {"index": 0, **choice, "finish_reason": fr}
            if fr is not None:
                choice["matched_stop"] = None
            out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                   "choices": [choice]}
            if usage is not None:
                out["usage"] = usage
            return sse(out)

        run = self.surface.drive(req, True)
        try:
            first = True
            async for ch in run:
                if ch.finish_reason == "abort" and ch.status_code:
                    yield sse({"error": openai_error(ch.message or "aborted", ch.status_code,
                                                   str(ch.status_code))})
                    break
                if chat and first:
                    yield frame(None, None, role=True)
                first = False
                u = self._usage(ch) if continuous else None
                if ch.text or ch.extra or ch.finish_reason is None:
                    yield frame(ch, None, usage=u)
                if ch.finish_reason is not None:
                    yield frame(None, ch.finish_reason, usage=u)
                    if include_usage:
                        yield sse({"id": rid, "object": obj, "created": created, "model": model,
                                   "choices": [], "usage": self._usage(ch)})
                    break
        except DuplicateRid as e:
            yield sse({"error": openai_error(str(e), 400)})
        except EngineOverloaded as e:
            yield sse({"error": openai_error(queue_full_message(e), 503, "503")})
        except EngineError as e:
            yield sse({"error": openai_error(str(e), e.status_code, str(e.status_code))})
        finally:
            await run.aclose()
        yield SSE_DONE


def _openai_body(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    """What the engine gets of an OpenAI request: everything but the transport fields."""
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise ValueError("messages must be a non-empty list of messages with a role")
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            raise ValueError("prompt must be a string or a one-element list of strings (token ids and batches "
                             "are not supported by this server)")
    if body.get("n", 1) not in (None, 1):
        raise ValueError("n > 1 is not supported by this server")
    mt = body.get("max_completion_tokens") if chat else None
    mt = body.get("max_tokens") if mt is None else mt
    if mt is not None and (not isinstance(mt, int) or mt < 0):
        raise ValueError("max_tokens must be a non-negative integer")
    out = {k: v for k, v in body.items() if k not in _TRANSPORT}
    if not chat:
        out["prompt"] = p
    return out


_TRANSPORT = ("rid", "priority", "stream", "stream_options", "model", "lora_path")


def _lora_path(body: dict[str, Any]) -> str | None:
    """The request's LoRA adapter as SGLang's OpenAI serving resolves it: an explicit `lora_path`
    first, else the part of `model` after its first colon (`base-model:adapter-name`)."""
    explicit = body.get("lora_path")
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise ValueError("lora_path must be an adapter's name")
        return explicit
    model = body.get("model")
    if isinstance(model, str) and ":" in model:
        return model.split(":", 1)[1].strip() or None
    return None
