"""SGLang over HTTP: the real engine, spoken to through SGLang's native API.

`SGLangHTTPEngine` implements `engine_adapter.base.Engine` on top of one pooled aiohttp session:

* `submit` -> ``POST /generate`` (``text`` or ``input_ids``, ``sampling_params``, ``stream``, ``rid``,
  ``priority`` when set, W3C ``traceparent`` header) and turns SGLang's SSE stream (cumulative text by
  default, incremental with ``--incremental-streaming-output``) into `Chunk` objects carrying *delta*
  text and *cumulative* counts;
* `abort` -> ``POST /abort_request``; a consumer that stops iterating early triggers it too;
* `load` -> ``GET /v1/loads``, falling back to ``GET /metrics`` and then the deprecated ``/get_load``;
* `info` -> ``/server_info`` (falling back to ``/get_server_info``) and ``/model_info``
  (``/get_model_info``);
* `health` -> ``GET /health``.

This is the gateway's hot path: per read from the socket one bytes-level split into lines, per
streamed event one ``orjson.loads`` and one `Chunk`; `submit_batches` hands over the events of one
read together, so the gateway writes them to its client at once. Field names, shapes and version renames follow
``shared/reference/sglang-surface.md``; see ``docs/engines.md``.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from engine_adapter.base import (
    Chunk,
    EngineError,
    EngineInfo,
    EngineLoad,
    GenerateRequest,
    StepProfile,
)
from engine_adapter.sglang_adapters import RemoteAdapters
from engine_adapter.sglang_wire import (
    StreamDecoder,
    abort_error,
    chunk_error,
    describe,
    dumps,
    error_message,
    final_chunk,
    http_error,
    loads,
    max_total_tokens,
    parse_prometheus_load,
    parse_v1_loads,
    prompt_input,
)


__all__ = ["SGLangHTTPEngine"]

_NOT_THERE = (404, 405)  # an endpoint this SGLang version does not have


class _Unavailable(Exception):
    """An optional endpoint is absent on this engine (404/405): try the next source."""


class SGLangHTTPEngine:
    """An `Engine` speaking SGLang's native HTTP API.

    Args:
        name: the engine's name in sluice.
        url: SGLang's base URL, e.g. ``http://10.0.0.5:30000`` (a path prefix is kept).
        api_key: sent as ``Authorization: Bearer <key>`` (SGLang's ``--api-key``).
        model: the served model name; if None it is read from ``/model_info``.
        timeout: read timeout in seconds for ``/generate``: the longest silence tolerated between two
            bytes of a response (queueing inside SGLang counts, so keep the in-flight window small).
        connect_timeout: TCP connect timeout in seconds.
        control_timeout: total timeout for ``/abort_request``, ``/v1/loads``, ``/metrics``, ``/health``
            and the info endpoints.
        incremental: force the stream mode (True: SGLang runs with ``--incremental-streaming-output``;
            False: cumulative); None detects it from the stream itself.
        profile: optional step-time prior reported by `info()` for the predictor.
    """

    kind = "sglang"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        control_timeout: float = 5.0,
        incremental: bool | None = None,
        profile: StepProfile | None = None,
    ) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.profile = profile
        self._incremental = incremental
        self._gen_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=timeout
        )
        self._ctl_timeout = aiohttp.ClientTimeout(total=control_timeout, sock_connect=connect_timeout)
        self._urls: dict[str, URL] = {}
        self._generate_url = self._u("/generate")
        self._chat_url = self._u("/v1/chat/completions")
        self._completions_url = self._u("/v1/completions")
        self._abort_url = self._u("/abort_request")
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._load_source: str | None = None  # "loads" | "metrics" | "get_load", learned on first success
        self._max_total_tokens: int = 0
        self._bg: set[asyncio.Task[None]] = set()
        self.adapters: RemoteAdapters | None = None  # the server's LoRA adapters, when it runs --enable-lora

    # ------------------------------------------------------------------ plumbing

    def _u(self, path: str) -> URL:
        u = self._urls.get(path)
        if u is None:
            u = self._urls[path] = URL(self.url + path)
        return u

    def _sess(self) -> aiohttp.ClientSession:
        """The pooled session, created lazily in the running loop (recreated if the loop changed)."""
        loop = asyncio.get_running_loop()
        s = self._session
        if s is None or s.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0, ttl_dns_cache=300)
            s = self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers
            )
            self._session_loop = loop
        return s

    async def close(self) -> None:
        if self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        s, self._session = self._session, None
        if s is not None and not s.closed and self._session_loop is asyncio.get_running_loop():
            await s.close()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            async with self._sess().get(self._u(path), params=params, timeout=self._ctl_timeout) as r:
                return r.status, await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise EngineError(f"{self.name}: GET {path} failed: {describe(e)}") from e

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        status, body = await self._get(path, params)
        if status in _NOT_THERE:
            raise _Unavailable(path)
        if status != 200:
            raise EngineError(
                f"{self.name}: GET {path} returned {status}: {error_message(body)}",
                status_code=status if status >= 400 else 502,
            )
        try:
            return loads(body)
        except ValueError as e:
            raise EngineError(f"{self.name}: GET {path} returned invalid JSON") from e

    # ------------------------------------------------------------------ generate

    def _openai_body(self, req: GenerateRequest) -> bytes:
        """The client's OpenAI body with sluice's rid and priority, always streamed with usage in
        every chunk (`continuous_usage_stats`: the cumulative counts a `Chunk` carries)."""
        body = dict(req.openai or {})
        body.update(rid=req.rid, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
        if req.priority is not None:
            body["priority"] = req.priority
        if req.lora_path is not None:  # explicit: SGLang takes it before a `model: base:adapter`
            body["lora_path"] = req.lora_path
        return dumps(body)

    def _body(self, req: GenerateRequest) -> bytes:
        body: dict[str, Any] = {}
        text, ids = prompt_input(req, self.name)
        if text is not None:
            body["text"] = text
        else:
            body["input_ids"] = ids
        sp = req.sampling_params
        if req.output_tokens is not None:
            sp = dict(sp)
            sp["max_new_tokens"] = req.output_tokens
            sp.setdefault("ignore_eos", True)
        body["sampling_params"] = sp
        body["stream"] = req.stream
        body["rid"] = req.rid
        if req.priority is not None:
            body["priority"] = req.priority
        if req.lora_path is not None:
            body["lora_path"] = req.lora_path
        return dumps(body)

    async def submit(self, request: GenerateRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        """Stream chunks (delta text, cumulative counts); the last has `finish_reason` set.

        Raises `EngineOverloaded` on SGLang's 503 / in-band 503 before the first token, `EngineError`
        on anything else that prevents a complete answer. Closing the iterator early aborts the
        request at the engine.
        """
        batches = self.submit_batches(request)
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()

    def submit_batches(self, request: GenerateRequest) -> AsyncIterator[list[Chunk]]:
        """`submit`, one non-empty list of chunks per read from the socket: the events that arrived
        together come together (the gateway sends them to its client in one write). Same errors and
        the same abort-on-close as `submit`. A LoRA request's adapter is loaded first where the
        server lacks it (engine_adapter/sglang_adapters.py)."""
        if request.lora_path is not None and self.adapters is not None:
            return self.adapters.run(request, self._submit_batches)
        return self._submit_batches(request)

    async def _submit_batches(self, request: GenerateRequest) -> AsyncIterator[list[Chunk]]:
        rid = request.rid
        oai: bool | None = None  # None: the native /generate; True/False: OpenAI chat/text completions
        if request.openai is not None:
            oai = "messages" in request.openai
            url, data = (self._chat_url if oai else self._completions_url), self._openai_body(request)
        else:
            url, data = self._generate_url, self._body(request)
        headers = {"traceparent": request.traceparent} if request.traceparent else None
        need_abort = False  # the engine may still be working on this rid
        consumer_left = False
        yielded = False  # a chunk has been produced (yielded, or in the batch being built)
        try:
            sess = self._sess()
            need_abort = True
            try:
                async with sess.post(
                    url, data=data, headers=headers, timeout=self._gen_timeout
                ) as resp:
                    try:
                        if resp.status != 200:
                            body = await resp.read()
                            need_abort = False
                            raise http_error(self.name, resp.status, body)
                        if not request.stream and oai is None:
                            obj = loads(await resp.read())
                            need_abort = False
                            yielded = True
                            yield [self._final_from_json(obj, rid)]
                            return
                        # ---- the streaming hot loop: one read, one feed, one batch ----
                        content = resp.content
                        decoder = StreamDecoder(self.name, oai, self._incremental)
                        while not decoder.over:
                            piece = await content.readany()
                            if not piece:
                                break
                            batch = decoder.feed(piece)
                            if decoder.settled:
                                need_abort = False
                            yielded = decoder.produced
                            if batch:
                                yield batch
                            if decoder.failure is not None:
                                raise decoder.failure
                        tail = decoder.end()
                        if tail:
                            yield tail
                        if decoder.final is not None:
                            # read the rest ("data: [DONE]" and the end of the body) so that the
                            # connection goes back to the pool
                            while await content.readany():
                                pass
                            return
                        need_abort = False
                        raise EngineError(
                            f"{self.name}: stream for {rid} ended before its final chunk",
                            retryable=not yielded,
                        )
                    except (GeneratorExit, asyncio.CancelledError):
                        # Abort while the response is still open: the engine must still know the
                        # rid when /abort_request arrives (closing the connection first would let
                        # a server that aborts on disconnect forget it).
                        consumer_left = True
                        if need_abort:
                            need_abort = False
                            await self._abort_now(rid)
                        raise
            except EngineError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
                if isinstance(e, aiohttp.ClientConnectorError):
                    need_abort = False  # the request never reached the engine
                raise EngineError(
                    f"{self.name}: /generate {rid} failed: {describe(e)}",
                    status_code=504 if isinstance(e, asyncio.TimeoutError) else 502,
                    retryable=not yielded,
                ) from e
        except (GeneratorExit, asyncio.CancelledError):
            consumer_left = True
            raise
        finally:
            if need_abort:
                if consumer_left:  # cancelled before the response headers arrived
                    await self._abort_now(rid)
                else:  # transport failure: tell the engine without delaying the error
                    task = asyncio.get_running_loop().create_task(self._abort_quietly(rid))
                    self._bg.add(task)
                    task.add_done_callback(self._bg.discard)

    def _final_from_json(self, obj: Any, rid: str) -> Chunk:
        if isinstance(obj, list):
            raise EngineError(f"{self.name}: batch reply to a single request {rid}", retryable=False)
        meta = obj.get("meta_info") if isinstance(obj, dict) else None
        if meta is None:
            raise chunk_error(self.name, obj if isinstance(obj, dict) else {})
        fr = meta.get("finish_reason")
        chunk = final_chunk(obj.get("text") or "", meta.get("completion_tokens", 0), meta, fr)
        if chunk.finish_reason is None:
            raise EngineError(f"{self.name}: reply for {rid} has no finish_reason")
        if chunk.finish_reason == "abort" and chunk.status_code and not chunk.completion_tokens:
            raise abort_error(self.name, chunk)
        return chunk

    # ------------------------------------------------------------------ abort

    async def abort(self, rid: str) -> None:
        """Ask SGLang to abort `rid` (matched by prefix in the scheduler). Raises EngineError."""
        try:
            async with self._sess().post(
                self._abort_url,
                data=json.dumps({"rid": rid}).encode(),
                timeout=self._ctl_timeout,
            ) as r:
                await r.read()
                if r.status >= 400:
                    raise EngineError(f"{self.name}: /abort_request {rid} returned {r.status}")
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise EngineError(f"{self.name}: /abort_request {rid} failed: {describe(e)}") from e

    async def _abort_now(self, rid: str) -> None:
        """Send the abort in a task and wait for it, shielded; never raises (cancellation aside)."""
        task = asyncio.get_running_loop().create_task(self._abort_quietly(rid))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        try:
            await asyncio.shield(task)
        except Exception:
            pass

    async def _abort_quietly(self, rid: str) -> None:
        try:
            await self.abort(rid)
        except Exception:  # fire-and-forget: the engine may be gone, which is fine
            pass

    # ------------------------------------------------------------------ load

    async def load(self) -> EngineLoad:
        """Current load: ``/v1/loads``, else ``/metrics``, else ``/get_load``. Raises EngineError."""
        order = ("loads", "metrics", "get_load")
        if self._load_source is not None:
            order = (self._load_source,) + tuple(s for s in order if s != self._load_source)
        for src in order:
            try:
                if src == "loads":
                    el = parse_v1_loads(await self._get_json("/v1/loads", {"include": "core"}))
                elif src == "metrics":
                    el = await self._load_from_metrics()
                else:
                    el = await self._load_from_get_load()
            except _Unavailable:
                continue
            self._load_source = src
            if el.total_tokens:
                self._max_total_tokens = el.total_tokens
            if self.adapters is not None:
                try:
                    el.adapters = await self.adapters.refresh()
                except (_Unavailable, EngineError):
                    pass  # the load report stands without them
            return el
        raise EngineError(f"{self.name}: no load source (/v1/loads, /metrics, /get_load)", retryable=False)

    async def _load_from_metrics(self) -> EngineLoad:
        status, body = await self._get("/metrics")
        if status in _NOT_THERE:
            raise _Unavailable("/metrics")
        if status != 200:
            raise EngineError(f"{self.name}: GET /metrics returned {status}")
        el = parse_prometheus_load(body.decode("utf-8", "replace"))
        if el is None:  # /metrics exists but carries no sglang gauges (e.g. a proxy's)
            raise _Unavailable("/metrics")
        if not el.total_tokens and self._max_total_tokens:
            el.total_tokens = self._max_total_tokens
        return el

    async def _load_from_get_load(self) -> EngineLoad:
        data = await self._get_json("/get_load")
        rows = data if isinstance(data, list) else [data]
        running = waiting = used = 0
        for row in rows:
            if not isinstance(row, dict):
                continue
            w = int(row.get("num_waiting_reqs", 0) or 0)
            # [INFERRED] num_reqs counts running and waiting requests together.
            running += max(int(row.get("num_reqs", 0) or 0) - w, 0)
            waiting += w
            used += int(row.get("num_tokens", 0) or 0)
        if not self._max_total_tokens:
            try:
                self._max_total_tokens = (await self.info()).max_total_tokens
            except EngineError:
                pass
        return EngineLoad(running, waiting, used, self._max_total_tokens, timestamp=time.time())

    # ------------------------------------------------------------------ info / health

    async def info(self) -> EngineInfo:
        """Static facts: KV capacity, version, model. Raises EngineError when unreachable."""
        try:
            si = await self._get_json("/server_info")
        except _Unavailable:
            si = await self._get_json("/get_server_info")
        if not isinstance(si, dict):
            raise EngineError(f"{self.name}: server_info is not an object")
        max_tokens = max_total_tokens(si)
        if max_tokens:
            self._max_total_tokens = max_tokens
        model = self.model
        if model is None:
            try:
                mi = await self._get_json("/model_info")
            except _Unavailable:
                try:
                    mi = await self._get_json("/get_model_info")
                except _Unavailable:
                    mi = {}
            if isinstance(mi, dict):
                model = mi.get("served_model_name") or mi.get("model_path")
            model = model or si.get("served_model_name") or si.get("model_path") or "unknown"
            self.model = model
        version = si.get("version")
        context = await self._context_length(model, si)
        if si.get("enable_lora") and self.adapters is None:  # SGLang's --enable-lora (or --lora-paths)
            slots = si.get("max_loaded_loras")
            self.adapters = RemoteAdapters(self, slots if isinstance(slots, int) and slots > 0 else None)
        return EngineInfo(
            name=self.name,
            kind=self.kind,
            model=model,
            url=self.url,
            max_total_tokens=max_tokens or self._max_total_tokens,
            simulated=False,
            profile=self.profile,
            version=str(version) if version is not None else None,
            context_length=context,
        )

    async def _context_length(self, model: str, si: dict[str, Any]) -> int | None:
        """The model's context window: `/v1/models`' `max_model_len` (SGLang's
        `model_config.context_len`, what its tokenizer manager checks requests against), else the
        `context_length` server argument (None unless the operator set it)."""
        try:
            models = await self._get_json("/v1/models")
        except (_Unavailable, EngineError):  # optional: the window then comes from the server args
            models = None
        cards = models.get("data") if isinstance(models, dict) else None
        if isinstance(cards, list):
            card = next((c for c in cards if isinstance(c, dict) and c.get("id") == model), None)
            card = card or (cards[0] if cards and isinstance(cards[0], dict) else {})
            if isinstance(card.get("max_model_len"), int):
                return card["max_model_len"]
        value = si.get("context_length")
        return value if isinstance(value, int) and value > 0 else None

    async def health(self) -> bool:
        """True when ``GET /health`` answers 2xx; never raises."""
        try:
            async with self._sess().get(self._u("/health"), timeout=self._ctl_timeout) as r:
                await r.read()
                return 200 <= r.status < 300
        except Exception:
            return False
