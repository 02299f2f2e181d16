"""What both halves of SGLang's HTTP API share when it is served over any `Engine`.

`SGLangSurface` holds the engine, the emulated release (`Release`: which fields and endpoints it
has), the in-flight table (duplicate rids, `/abort_request`'s prefix match) and the tokenizer-side
Prometheus metrics, and drives a request on the engine (`drive`, `run_to_end`). The native
endpoints (`sglang_native.py`) and the OpenAI-compatible ones (`sglang_openai.py`) are built on
it; `sglang_server.py` assembles them into the app. The wire helpers here (`sse`,
`openai_error_response`, ...) are what both answer with.
"""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.responses import JSONResponse, Response

from engine_adapter.base import Chunk, Engine, EngineError, EngineInfo, EngineLoad, EngineOverloaded, GenerateRequest

DEFAULT_VERSION = "0.5.18"
QUEUE_FULL = "The request queue is full."
SSE_DONE = b"data: [DONE]\n\n"
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_E2E_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
                200.0, 400.0, 600.0, 1200.0)
_ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08,
                0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def openai_error(message: str, code: int, err_type: str = "BadRequestError") -> dict[str, Any]:
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}


def openai_error_response(message: str, code: int, err_type: str = "BadRequestError") -> JSONResponse:
    return JSONResponse(openai_error(message, code, err_type), status_code=code)


def queue_full_message(e: Exception) -> str:
    """An overloaded engine's message, or SGLang's own words for a full queue."""
    text = str(e)
    return text if text and text != "engine queue is full" else QUEUE_FULL


class DuplicateRid(Exception):
    """A request id already in flight (SGLang checks from v0.5.9)."""


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


class Release:
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


class SGLangMetrics:
    """SGLang's Prometheus metrics, by its names and labels."""

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


class SGLangSurface:
    """An `Engine` as SGLang's server presents it: its release, in-flight table and metrics."""

    def __init__(self, engine: Engine, model_name: str, version: str, incremental: bool,
                 enable_cache_report: bool, max_running_requests: int | None,
                 context_length: int | None) -> None:
        self.engine = engine
        self.model_name = model_name
        self.version = version
        self.release = Release(version)
        self.incremental = incremental
        self.enable_cache_report = enable_cache_report
        self.max_running_requests = max_running_requests
        self.context_length = context_length
        self.inflight: dict[str, bool] = {}  # rid -> streaming
        self.metrics = SGLangMetrics(model_name)
        self.startup = time.time()
        self._info: EngineInfo | None = None

    async def info(self) -> EngineInfo:
        if self._info is None:
            self._info = await self.engine.info()
        return self._info

    def max_running(self) -> int:
        if self.max_running_requests:
            return self.max_running_requests
        prof = getattr(self.engine, "profile", None)
        return int(getattr(prof, "max_running_requests", 0) or 0)

    async def drive(self, req: GenerateRequest, streaming: bool) -> AsyncIterator[Chunk]:
        """Run `req` on the engine, keeping the in-flight table and the tokenizer-side metrics."""
        rid = req.rid
        if self.release.duplicate_rid_check and rid in self.inflight:
            raise DuplicateRid(f"Duplicate request ID detected: {rid}")
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

    async def run_to_end(self, req: GenerateRequest, duplicate: Callable[[str], Response],
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
        except DuplicateRid as e:
            return duplicate(str(e))
        except EngineOverloaded as e:
            return openai_error_response(queue_full_message(e), 503, "503")
        except EngineError as e:
            return openai_error_response(str(e), e.status_code, str(e.status_code))
        finally:
            await run.aclose()
        if last is None:
            return openai_error_response("the engine returned no output", 500, no_output_type)
        return parts, last
