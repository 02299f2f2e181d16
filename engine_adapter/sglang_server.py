"""SGLang's own HTTP surface, served over any `Engine`.

`make_sglang_app(engine, model_name=...)` answers the way ``python -m sglang.launch_server`` does
(shapes from ``shared/reference/sglang-surface.md``): native ``/generate`` (cumulative or
incremental SSE, ``meta_info``, ``finish_reason`` dicts, in-band abort chunks with ``status_code``,
503 "queue full" for non-streaming requests, 400 on a duplicate in-flight rid), ``/abort_request``
(always 200, rid matched by prefix like SGLang's scheduler), ``/v1/loads`` (LoadSnapshot),
``/metrics`` (SGLang's metric names), ``/health``, ``/health_generate``, ``/server_info``,
``/model_info`` (and their deprecated ``/get_*`` names), ``/get_load``, and the OpenAI-compatible
``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``.

`sluice sim-server` puts the simulated engine behind it so that `SGLangHTTPEngine` is exercised end
to end over real HTTP exactly as it talks to SGLang. ``version`` selects which release's surface is
emulated (renamed fields and endpoints; see ``docs/engines.md``).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import datetime, UTC
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from engine_adapter.base import (
    Chunk,
    Engine,
    EngineError,
    EngineInfo,
    EngineLoad,
    EngineOverloaded,
    GenerateRequest,
)
from engine_adapter.openai_chunks import message_fields, stream_choice

__all__ = ["make_sglang_app", "serve_sglang", "run_sglang", "DEFAULT_VERSION"]

DEFAULT_VERSION = "0.5.18"
_QUEUE_FULL = "The request queue is full."
_SSE_DONE = b"data: [DONE]\n\n"
_UNAUTHENTICATED = {"/health", "/health_generate", "/metrics"}
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
                200.0, 400.0, 600.0, 1200.0)
_ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08,
                0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.lstrip("v").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


class _Features:
    """What the emulated SGLang release has (release boundaries from the reference timeline; the
    ``total_retractions`` rename and the end of ``aggregate`` landed between v0.5.8.post1 and the
    v0.5.13 series, so v0.5.13 is used as an approximate cut)."""

    def __init__(self, version: str) -> None:
        v = _vtuple(version)
        self.server_info = v >= (0, 5, 6)
        self.v1_loads = v >= (0, 5, 8)
        self.loads_aggregate = (0, 5, 8) <= v < (0, 5, 13)
        self.retractions_key = "num_retractions" if v >= (0, 5, 13) else "total_retractions"
        self.duplicate_rid_check = v >= (0, 5, 9)


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


def _sse(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


def _oai_error(message: str, code: int, err_type: str = "BadRequestError") -> dict[str, Any]:
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}


def _oai_error_response(message: str, code: int, err_type: str = "BadRequestError") -> JSONResponse:
    return JSONResponse(_oai_error(message, code, err_type), status_code=code)


class _Duplicate(Exception):
    pass


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


class _Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        sl = ["model_name", "engine_type", "tp_rank", "pp_rank", "moe_ep_rank"]
        sv = [model_name, "unified", "0", "0", "0"]
        tl = ["model_name", "engine_type", "is_streaming"]

        def g(name: str, doc: str) -> Any:
            return Gauge(name, doc, sl, registry=reg, multiprocess_mode="mostrecent").labels(*sv)

        self.running = g("sglang:num_running_reqs", "The number of running requests.")
        self.queue = g("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
        self.token_usage = g("sglang:token_usage", "The token usage.")
        self.used_tokens = g("sglang:num_used_tokens", "The number of used tokens.")
        self.max_total = g("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV pool.")
        self.gen_throughput = g("sglang:gen_throughput", "The generation throughput (token/s).")
        self.cache_hit_rate = g("sglang:cache_hit_rate", "The prefix cache hit rate.")
        prompt = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", tl, registry=reg)
        gen = Counter("sglang:generation_tokens", "Number of generation tokens processed.", tl, registry=reg)
        reqs = Counter("sglang:num_requests", "Number of requests processed.", tl, registry=reg)
        ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                         tl, buckets=_TTFT_BUCKETS, registry=reg)
        e2e = Histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
                        tl, buckets=_E2E_BUCKETS, registry=reg)
        cached = Counter("sglang:cached_tokens", "Number of cached prompt tokens.",
                         ["model_name", "engine_type", "cache_source"], registry=reg)
        itl = Histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                        ["model_name", "engine_type"], buckets=_ITL_BUCKETS, registry=reg)
        self.aborted = Counter("sglang:num_aborted_requests", "Number of requests aborted.",
                               ["model_name", "engine_type"], registry=reg).labels(model_name, "unified")
        # children bound once per is_streaming value: no label lookups on the request path
        self.by_stream = {
            s: (prompt.labels(model_name, "unified", s), gen.labels(model_name, "unified", s),
                reqs.labels(model_name, "unified", s), ttft.labels(model_name, "unified", s),
                e2e.labels(model_name, "unified", s))
            for s in ("true", "false")
        }
        self.cached_device = cached.labels(model_name, "unified", "device")
        self.cached_total = cached.labels(model_name, "unified", "total")
        self.itl = itl.labels(model_name, "unified")

    def set_load(self, ld: EngineLoad) -> None:
        self.running.set(ld.running)
        self.queue.set(ld.waiting)
        self.token_usage.set(round(ld.kv_usage, 4))
        self.used_tokens.set(ld.used_tokens)
        self.max_total.set(ld.total_tokens)
        self.gen_throughput.set(ld.gen_throughput)
        self.cache_hit_rate.set(ld.cache_hit_rate)


class _SGLangFacade:
    def __init__(self, engine: Engine, model_name: str, version: str, incremental: bool,
                 enable_cache_report: bool, max_running_requests: int | None,
                 context_length: int | None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.version = version
        self.features = _Features(version)
        self.incremental = incremental
        self.enable_cache_report = enable_cache_report
        self.max_running_requests = max_running_requests
        self.context_length = context_length
        self.inflight: dict[str, bool] = {}  # rid -> streaming
        self.metrics = _Metrics(model_name)
        self.startup = time.time()
        self._info: EngineInfo | None = None

    async def info(self) -> EngineInfo:
        if self._info is None:
            self._info = await self.engine.info()
        return self._info

    def _max_running(self) -> int:
        if self.max_running_requests:
            return self.max_running_requests
        prof = getattr(self.engine, "profile", None)
        return int(getattr(prof, "max_running_requests", 0) or 0)

    # ---------------------------------------------------------------- the request driver

    async def drive(self, req: GenerateRequest, streaming: bool) -> AsyncIterator[Chunk]:
        """Run `req` on the engine, keeping the in-flight table and the tokenizer-side metrics."""
        rid = req.rid
        if self.features.duplicate_rid_check and rid in self.inflight:
            raise _Duplicate(f"Duplicate request ID detected: {rid}")
        self.inflight[rid] = streaming
        prompt_c, gen_c, reqs_c, ttft_h, e2e_h = self.metrics.by_stream["true" if streaming else "false"]
        t0 = time.perf_counter()
        last = 0.0
        prev = 0
        agen = self.engine.submit(req)
        try:
            async for ch in agen:  # type: ignore[attr-defined]
                n = ch.completion_tokens
                if n > prev:
                    now = time.perf_counter()
                    if prev == 0:
                        ttft_h.observe(now - t0)
                    else:
                        self.metrics.itl.observe((now - last) / (n - prev))
                    last = now
                    prev = n
                if ch.finish_reason is not None:
                    prompt_c.inc(ch.prompt_tokens)
                    gen_c.inc(n)
                    reqs_c.inc()
                    if ch.cached_tokens:
                        self.metrics.cached_device.inc(ch.cached_tokens)
                        self.metrics.cached_total.inc(ch.cached_tokens)
                    e2e_h.observe(time.perf_counter() - t0)
                    if ch.e2e_latency is None:
                        ch.e2e_latency = time.perf_counter() - t0
                yield ch
        finally:
            self.inflight.pop(rid, None)
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

    def make_request(self, *, rid: str | None, text: str | None, input_ids: list[int] | None,
                     sp: dict[str, Any], stream: bool, priority: Any, headers: Any) -> GenerateRequest:
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
        try:
            req = self.make_request(rid=rid, text=text, input_ids=ids, sp=sp, stream=stream,
                                    priority=body.get("priority"), headers=request.headers)
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
            self.features.retractions_key: ch.num_retractions,
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
        incremental = self.incremental
        text = ""
        ids: list[int] = []
        base = zlib.crc32(rid.encode())
        run = self.drive(req, True)
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
                yield b"data: " + _dumps(out) + b"\n\n"
                if ch.finish_reason is not None:
                    break
        except _Duplicate as e:
            yield _sse({"error": {"message": str(e), "type": "invalid_request_error", "code": 400,
                                  "retryable": False}})
        except EngineOverloaded as e:
            yield _sse(self._abort_out(rid, 503, _message(e, _QUEUE_FULL)))
        except EngineError as e:
            yield _sse({"error": {"message": str(e), "type": "internal_error", "code": e.status_code,
                                  "retryable": e.retryable}})
        finally:
            await run.aclose()
        yield _SSE_DONE

    async def _run_to_end(self, req: GenerateRequest, duplicate: Any,
                          no_output_type: str) -> tuple[list[Chunk], Chunk] | Response:
        """Drive a non-streaming request to its last chunk: (the chunks, the last one), or the error
        response to send (`duplicate(message)` builds the one for a duplicate rid)."""
        parts: list[Chunk] = []
        last: Chunk | None = None
        run = self.drive(req, False)
        try:
            async for ch in run:
                parts.append(ch)
                last = ch
                if ch.finish_reason is not None:
                    break
        except _Duplicate as e:
            return duplicate(str(e))
        except EngineOverloaded as e:
            return _oai_error_response(_message(e, _QUEUE_FULL), 503, "503")
        except EngineError as e:
            return _oai_error_response(str(e), e.status_code, str(e.status_code))
        finally:
            await run.aclose()
        if last is None:
            return _oai_error_response("the engine returned no output", 500, no_output_type)
        return parts, last

    async def _generate_once(self, req: GenerateRequest, matched: Any) -> Response:
        rid = req.rid
        done = await self._run_to_end(
            req, lambda msg: JSONResponse({"error": {"message": msg}}, status_code=400), "500")
        if isinstance(done, Response):
            return done
        chunks, last = done
        text = "".join(c.text for c in chunks)
        if last.finish_reason == "abort" and last.status_code in (500, 503):
            return _oai_error_response(last.message or "aborted", last.status_code, str(last.status_code))
        if last.finish_reason == "abort" and last.status_code == 400:
            return JSONResponse({"error": {"message": last.message or "bad request"}}, status_code=400)
        base = zlib.crc32(rid.encode())
        ids = [1000 + (base + i) % 29000 for i in range(last.completion_tokens)]
        return Response(_dumps(self._out(rid, text, ids, last, matched)),
                        media_type="application/json")

    # ---------------------------------------------------------------- control endpoints

    async def abort_request(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = {}
        rid = body.get("rid") if isinstance(body, dict) else None
        abort_all = bool(body.get("abort_all")) if isinstance(body, dict) else False
        if abort_all:
            targets = list(self.inflight)
        elif isinstance(rid, str) and rid:
            targets = [r for r in self.inflight if r.startswith(rid)]  # the scheduler's prefix match
        else:
            targets = []
        if targets:
            self.metrics.aborted.inc()
        for r in targets:
            try:
                await self.engine.abort(r)
            except Exception:  # SGLang always answers 200
                pass
        return Response(status_code=200)

    def _snapshot(self, ld: EngineLoad) -> dict[str, Any]:
        mr = self._max_running()
        return {
            "dp_rank": 0,
            "num_running_reqs": ld.running,
            "num_waiting_reqs": ld.waiting,
            "num_waiting_uncached_tokens": ld.waiting_uncached_tokens,
            "num_used_tokens": ld.used_tokens,
            "num_total_tokens": ld.used_tokens + ld.waiting_uncached_tokens,
            "max_total_num_tokens": ld.total_tokens,
            "max_running_requests": mr,
            "token_usage": round(ld.kv_usage, 4),
            "gen_throughput": round(ld.gen_throughput, 2),
            "cache_hit_rate": round(ld.cache_hit_rate, 4),
            "utilization": round(min(ld.running / mr, 1.0), 4) if mr else 0.0,
        }

    async def v1_loads(self, request: Request) -> Response:
        if not self.features.v1_loads:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        dp = request.query_params.get("dp_rank")
        try:
            ld = await self.engine.load()
        except EngineError as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        loads = [] if dp not in (None, "", "0") else [self._snapshot(ld)]
        if request.query_params.get("format") == "prometheus":
            lines = []
            for k, v in (loads[0].items() if loads else ()):
                if k != "dp_rank":
                    lines.append(f"# TYPE sglang_{k} gauge\nsglang_{k}{{dp_rank=\"0\"}} {v}")
            return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
        info = await self.info()
        out: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(),
            "version": self.version,
            "accelerator": "simulated" if info.simulated else None,
            "num_accelerators": 1,
            "loads": loads,
        }
        if self.features.loads_aggregate:
            n = max(len(loads), 1)
            out["aggregate"] = {
                "total_running_reqs": sum(x["num_running_reqs"] for x in loads),
                "total_waiting_reqs": sum(x["num_waiting_reqs"] for x in loads),
                "total_reqs": sum(x["num_running_reqs"] + x["num_waiting_reqs"] for x in loads),
                "total_used_tokens": sum(x["num_used_tokens"] for x in loads),
                "total_tokens": sum(x["num_total_tokens"] for x in loads),
                "avg_token_usage": sum(x["token_usage"] for x in loads) / n,
                "avg_throughput": sum(x["gen_throughput"] for x in loads) / n,
                "avg_utilization": sum(x["utilization"] for x in loads) / n,
            }
        return JSONResponse(out)

    async def get_load(self, request: Request) -> Response:
        try:
            ld = await self.engine.load()
        except EngineError as e:
            return JSONResponse({"detail": str(e)}, status_code=503)
        return JSONResponse([{
            "dp_rank": 0,
            "num_reqs": ld.running + ld.waiting,
            "num_waiting_reqs": ld.waiting,
            "num_tokens": ld.used_tokens,
            "num_pending_tokens": ld.waiting_uncached_tokens,
            "ts_tic": time.time(),
        }])

    async def metrics_endpoint(self, request: Request) -> Response:
        try:
            self.metrics.set_load(await self.engine.load())
            self.metrics.max_total.set((await self.info()).max_total_tokens)
        except EngineError:
            pass  # keep the last values, as SGLang's gauges do between updates
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        try:
            ok = await self.engine.health()
        except Exception:
            ok = False
        return Response(status_code=200 if ok else 503)

    async def health_generate(self, request: Request) -> Response:
        """Like SGLang: a 1-token generation; healthy if any output arrives within 20 s."""
        req = GenerateRequest(rid=f"HEALTH_CHECK_{uuid.uuid4().hex}", prompt="The capital city of France is",
                              sampling_params={"max_new_tokens": 1, "temperature": 0}, stream=True,
                              prompt_tokens=7, output_tokens=1)

        async def first() -> bool:
            agen = self.engine.submit(req)
            try:
                async for _ in agen:  # type: ignore[attr-defined]
                    return True
                return False
            finally:
                await agen.aclose()  # type: ignore[attr-defined]

        try:
            ok = await asyncio.wait_for(first(), 20.0)
        except (TimeoutError, EngineError):
            ok = False
        return Response(status_code=200 if ok else 503)

    async def _server_info_body(self, flat: bool) -> dict[str, Any]:
        info = await self.info()
        try:
            thr = (await self.engine.load()).gen_throughput
        except EngineError:
            thr = 0.0
        mr = self._max_running()
        args: dict[str, Any] = {
            "model_path": self.model_name,
            "tokenizer_path": self.model_name,
            "served_model_name": self.model_name,
            "tp_size": 1,
            "dp_size": 1,
            "pp_size": 1,
            "schedule_policy": "fcfs",
            "max_running_requests": mr or None,
            "max_queued_requests": None,
            "enable_metrics": True,
            "enable_priority_scheduling": False,
            "incremental_streaming_output": self.incremental,
            "enable_cache_report": self.enable_cache_report,
            "context_length": self.context_length or info.context_length,
        }
        internal = [{
            **args,
            "last_gen_throughput": thr,
            "memory_usage": {"weight": 0.0, "kvcache": 0.0, "token_capacity": info.max_total_tokens,
                             "graph": 0.0},
            "effective_max_running_requests_per_dp": mr or None,
        }]
        sched = {"status": "ready", "max_total_num_tokens": info.max_total_tokens,
                 "max_req_input_len": (self.context_length or info.context_length or info.max_total_tokens) - 1}
        body: dict[str, Any] = dict(args)
        if flat:  # the pre-v0.5.6 /get_server_info merged scheduler_info into the top level
            body.update(sched)
        else:
            body["scheduler_info"] = sched
            body["startup_time"] = self.startup
            body["kv_events"] = None
        body["internal_states"] = internal
        body["version"] = self.version
        body["sluice_simulated"] = info.simulated
        return body

    async def server_info(self, request: Request) -> Response:
        if not self.features.server_info:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(await self._server_info_body(flat=False))

    async def get_server_info(self, request: Request) -> Response:
        return JSONResponse(await self._server_info_body(flat=not self.features.server_info))

    async def _model_info_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_path": self.model_name,
            "tokenizer_path": self.model_name,
            "is_generation": True,
            "preferred_sampling_params": None,
            "weight_version": "default",
            "has_image_understanding": False,
            "has_audio_understanding": False,
            "model_type": None,
            "architectures": None,
        }
        if self.features.server_info:
            body["served_model_name"] = self.model_name
        return body

    async def model_info(self, request: Request) -> Response:
        if not self.features.server_info:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse(await self._model_info_body())

    async def get_model_info(self, request: Request) -> Response:
        return JSONResponse(await self._model_info_body())

    # ---------------------------------------------------------------- OpenAI-compatible

    async def models(self, request: Request) -> Response:
        info = await self.info()
        return JSONResponse({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": int(self.startup), "owned_by": "sglang",
            "root": self.model_name, "parent": None,
            "max_model_len": self.context_length or info.context_length or info.max_total_tokens,
        }]})

    async def chat_completions(self, request: Request) -> Response:
        return await self._openai(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._openai(request, chat=False)

    async def _openai(self, request: Request, *, chat: bool) -> Response:
        ctype = request.headers.get("content-type", "")
        if "application/json" not in ctype:
            return _oai_error_response("Content-Type must be application/json", 400)
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return _oai_error_response(f"invalid JSON body: {e}", 400)
        if not isinstance(body, dict):
            return _oai_error_response("the body must be a JSON object", 400)
        try:
            engine_body = _openai_body(body, chat)
            priority = int(body["priority"]) if body.get("priority") is not None else None
        except (TypeError, ValueError) as e:
            return _oai_error_response(str(e), 400)
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        continuous = bool(isinstance(opts, dict) and opts.get("continuous_usage_stats"))
        # the engine applies the chat template and the parsers, as SGLang's serving_chat does
        req = GenerateRequest(rid=body.get("rid") or uuid.uuid4().hex, stream=stream, priority=priority,
                              traceparent=request.headers.get("traceparent"), openai=engine_body)
        model = body.get("model") or self.model_name
        if stream:
            return StreamingResponse(self._openai_stream(req, chat, model, include_usage, continuous),
                                     media_type="text/event-stream")
        done = await self._run_to_end(req, lambda msg: _oai_error_response(msg, 400), "InternalServerError")
        if isinstance(done, Response):
            return done
        chunks, last = done
        if last.finish_reason == "abort" and last.status_code:
            return _oai_error_response(last.message or "aborted", last.status_code, str(last.status_code))
        choice = {"index": 0, **message_fields("".join(c.text for c in chunks), [c.extra for c in chunks if c.extra],
                                               chat), "finish_reason": last.finish_reason, "matched_stop": None}
        return Response(_dumps({
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
        if self.enable_cache_report and ch.cached_tokens > 0:
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
            return _sse(out)

        run = self.drive(req, True)
        try:
            first = True
            async for ch in run:
                if ch.finish_reason == "abort" and ch.status_code:
                    yield _sse({"error": _oai_error(ch.message or "aborted", ch.status_code,
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
                        yield _sse({"id": rid, "object": obj, "created": created, "model": model,
                                    "choices": [], "usage": self._usage(ch)})
                    break
        except _Duplicate as e:
            yield _sse({"error": _oai_error(str(e), 400)})
        except EngineOverloaded as e:
            yield _sse({"error": _oai_error(_message(e, _QUEUE_FULL), 503, "503")})
        except EngineError as e:
            yield _sse({"error": _oai_error(str(e), e.status_code, str(e.status_code))})
        finally:
            await run.aclose()
        yield _SSE_DONE


def _message(e: Exception, default: str) -> str:
    text = str(e)
    return text if text and text != "engine queue is full" else default


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


_TRANSPORT = ("rid", "priority", "stream", "stream_options", "model")


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
    f = _SGLangFacade(engine, model_name, version, incremental_streaming_output, enable_cache_report,
                      max_running_requests, context_length)
    routes = [
        Route("/generate", f.generate, methods=["POST", "PUT"]),
        Route("/abort_request", f.abort_request, methods=["POST"]),
        Route("/v1/loads", f.v1_loads, methods=["GET"]),
        Route("/get_load", f.get_load, methods=["GET"]),
        Route("/metrics", f.metrics_endpoint, methods=["GET"]),
        Route("/health", f.health, methods=["GET"]),
        Route("/health_generate", f.health_generate, methods=["GET"]),
        Route("/server_info", f.server_info, methods=["GET"]),
        Route("/get_server_info", f.get_server_info, methods=["GET"]),
        Route("/model_info", f.model_info, methods=["GET"]),
        Route("/get_model_info", f.get_model_info, methods=["GET"]),
        Route("/v1/models", f.models, methods=["GET"]),
        Route("/v1/chat/completions", f.chat_completions, methods=["POST"]),
        Route("/v1/completions", f.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_ApiKeyMiddleware, api_key=api_key)])
    app.state.sglang = f
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
