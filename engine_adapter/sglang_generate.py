"""SGLang's native `/generate` and `/abort_request`, served over any `Engine` (an `SGLangSurface`).

`/generate` answers like ``python -m sglang.launch_server``: cumulative or incremental SSE,
``meta_info``, ``finish_reason`` dicts, in-band abort chunks with ``status_code``, 503 "queue full"
for non-streaming requests, 400 on a duplicate in-flight rid. `/abort_request` always answers 200
and matches the rid by prefix, like SGLang's scheduler.
"""
from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine_adapter.base import Chunk, EngineError, EngineOverloaded, GenerateRequest
from engine_adapter.sglang_surface import (
    SSE_DONE,
    DuplicateRid,
    SGLangSurface,
    dumps,
    openai_error_response,
    queue_full_message,
    sse,
)


def _finish_dict(ch: Chunk, stop_matched: Any) -> dict[str, Any] | None:
    fr = ch.finish_reason
    if fr is None:
        return None
    if fr == "stop":
        return {"type": "stop", "matched": stop_matched}
    if fr == "length":
        return {"type": "length", "length": ch.completion_tokens}
    return {"type": "abort", "message": ch.message or "Aborted", "status_code": ch.status_code,
            "err_type": None}


def _hash_blocks(ids: list[int], block: int = 512) -> list[int]:
    """Chained 32-bit hashes of `ids` in 512-token blocks (a partial last block included), so the
    simulator's prefix cache sees the same sharing structure that SGLang's radix cache would."""
    out: list[int] = []
    h = 0
    for i in range(0, len(ids), block):
        h = zlib.crc32(repr((h, ids[i:i + block])).encode())
        out.append(h)
    return out


class GenerateEndpoints:
    """`/generate` and `/abort_request` over `surface`."""

    def __init__(self, surface: SGLangSurface) -> None:
        self.surface = surface

    def routes(self) -> list[Route]:
        return [Route("/generate", self.generate, methods=["POST", "PUT"]),
                Route("/abort_request", self.abort_request, methods=["POST"])]

    def make_request(self, *, rid: str | None, text: str | None, input_ids: list[int] | None,
                     sp: dict[str, Any], stream: bool, priority: Any, headers: Any,
                     lora_path: str | None = None) -> GenerateRequest:
        sp = dict(sp)
        sp.setdefault("max_new_tokens", 128)
        output_tokens = None
        if sp.get("ignore_eos") and isinstance(sp.get("max_new_tokens"), int):
            output_tokens = sp["max_new_tokens"]
        return GenerateRequest(
            rid=rid or uuid.uuid4().hex,
            prompt=text,
            input_ids=input_ids,
            sampling_params=sp,
            stream=stream,
            priority=int(priority) if priority is not None else None,
            traceparent=headers.get("traceparent"),
            prompt_tokens=len(input_ids) if input_ids else None,
            hash_ids=_hash_blocks(input_ids) if input_ids else None,
            output_tokens=output_tokens,
            lora_path=lora_path,
        )

    # ---------------------------------------------------------------- native /generate

    async def generate(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return JSONResponse({"error": {"message": f"invalid JSON body: {e}"}}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": {"message": "the body must be a JSON object"}}, status_code=400)
        text, ids, rid = body.get("text"), body.get("input_ids"), body.get("rid")
        sp = body.get("sampling_params") or {}
        if isinstance(text, list) or (isinstance(ids, list) and ids and isinstance(ids[0], list)) \
                or isinstance(rid, list) or isinstance(sp, list):
            return JSONResponse({"error": {"message": "batch requests are not supported by this server"}},
                                status_code=400)
        if text is None and ids is None:
            return JSONResponse(
                {"error": {"message": "Either text, input_ids or input_embeds should be provided."}},
                status_code=400)
        if not isinstance(sp, dict) or (text is not None and not isinstance(text, str)) or \
                (ids is not None and not all(isinstance(t, int) for t in ids)):
            return JSONResponse({"error": {"message": "malformed text, input_ids or sampling_params"}},
                                status_code=400)
        stream = bool(body.get("stream", False))
        lora = body.get("lora_path")  # the adapter's name (engine_adapter/lora.py)
        if lora is not None and not isinstance(lora, str):
            return JSONResponse({"error": {"message": "lora_path must be an adapter's name (one request: a string)"}},
                                status_code=400)
        try:
            req = self.make_request(rid=rid, text=text, input_ids=ids, sp=sp, stream=stream,
                                    priority=body.get("priority"), headers=request.headers, lora_path=lora)
        except (TypeError, ValueError) as e:
            return JSONResponse({"error": {"message": str(e)}}, status_code=400)
        stop = sp.get("stop")
        matched = stop[0] if isinstance(stop, list) and stop else (stop if isinstance(stop, str) else None)
        if stream:
            return StreamingResponse(self._generate_stream(req, matched), media_type="text/event-stream")
        return await self._generate_once(req, matched)

    def _out(self, rid: str, text: str, ids: list[int], ch: Chunk, matched: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": rid,
            "finish_reason": _finish_dict(ch, matched),
            "prompt_tokens": ch.prompt_tokens,
            "weight_version": "default",
            self.surface.release.retractions_key: ch.num_retractions,
            "completion_tokens": ch.completion_tokens,
            "cached_tokens": ch.cached_tokens,
            "reasoning_tokens": 0,
        }
        if ch.finish_reason is not None:
            meta["e2e_latency"] = ch.e2e_latency
        return {"text": text, "output_ids": ids, "meta_info": meta}

    def _abort_out(self, rid: str, status: int, message: str) -> dict[str, Any]:
        return self._out(rid, "", [], Chunk("", 0, 0, finish_reason="abort", status_code=status,
                                            message=message, e2e_latency=0.0), None)

    async def _generate_stream(self, req: GenerateRequest, matched: Any) -> AsyncIterator[bytes]:
        rid = req.rid
        incremental = self.surface.incremental
        text = ""
        ids: list[int] = []
        base = zlib.crc32(rid.encode())
        run = self.surface.drive(req, True)
        try:
            async for ch in run:
                n = ch.completion_tokens
                if incremental:
                    new_ids = [1000 + (base + i) % 29000 for i in range(len(ids), n)] if n > len(ids) else []
                    out = self._out(rid, ch.text, new_ids, ch, matched)
                    ids.extend(new_ids)  # only its length matters
                else:
                    text += ch.text
                    if n > len(ids):
                        ids.extend(1000 + (base + i) % 29000 for i in range(len(ids), n))
                    out = self._out(rid, text, ids, ch, matched)
                yield b"data: " + dumps(out) + b"\n\n"
                if ch.finish_reason is not None:
                    break
        except DuplicateRid as e:
            yield sse({"error": {"message": str(e), "type": "invalid_request_error", "code": 400,
                                 "retryable": False}})
        except EngineOverloaded as e:
            yield sse(self._abort_out(rid, 503, queue_full_message(e)))
        except EngineError as e:
            yield sse({"error": {"message": str(e), "type": "internal_error", "code": e.status_code,
                                 "retryable": e.retryable}})
        finally:
            await run.aclose()
        yield SSE_DONE

    async def _generate_once(self, req: GenerateRequest, matched: Any) -> Response:
        rid = req.rid
        done = await self.surface.run_to_end(
            req, lambda msg: JSONResponse({"error": {"message": msg}}, status_code=400), "500")
        if isinstance(done, Response):
            return done
        chunks, last = done
        text = "".join(c.text for c in chunks)
        if last.finish_reason == "abort" and last.status_code in (500, 503):
            return openai_error_response(last.message or "aborted", last.status_code, str(last.status_code))
        if last.finish_reason == "abort" and last.status_code == 400:
            return JSONResponse({"error": {"message": last.message or "bad request"}}, status_code=400)
        base = zlib.crc32(rid.encode())
        ids = [1000 + (base + i) % 29000 for i in range(last.completion_tokens)]
        return Response(dumps(self._out(rid, text, ids, last, matched)),
                        media_type="application/json")

    async def abort_request(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        rid = body.get("rid") if isinstance(body, dict) else None
        abort_all = bool(body.get("abort_all")) if isinstance(body, dict) else False
        if abort_all:
            targets = list(self.surface.inflight)
        elif isinstance(rid, str) and rid:
            targets = [r for r in self.surface.inflight if r.startswith(rid)]  # the scheduler's prefix match
        else:
            targets = []
        if targets:
            self.surface.metrics.aborted.inc()
        for r in targets:
            try:
                await self.surface.engine.abort(r)
            except Exception:  # SGLang always answers 200
                pass
        return Response(status_code=200)
