"""SGLang over HTTP: the real engine, spoken to through SGLang's native API.

`SGLangHTTPEngine` implements `engine_adapter.base.Engine`: generation through the lean streaming
client of engine_adapter/http_stream.py (pooled keep-alive connections, httptools), everything else
through one pooled aiohttp session:

* `submit` -> ``POST /generate`` (``text`` or ``input_ids``, ``sampling_params``, ``stream``, ``rid``,
  ``priority`` when set, W3C ``traceparent`` header) and turns SGLang's SSE stream (cumulative text by
  default, incremental with ``--incremental-streaming-output``) into `Chunk` objects carrying *delta*
  text and *cumulative* counts;
* `abort` -> ``POST /abort_request``; a consumer that stops iterating early triggers it too;
* `load`, `info`, `health`: engine_adapter/sglang_http_status.py (`SGLangStatusQueries`).

This is the gateway's hot path: per read from the socket one bytes-level split into lines, per
streamed event one ``orjson.loads`` and one `Chunk`; `submit_batches` hands over the events of one
read together, so the gateway writes them to its client at once. Field names, shapes and version renames follow
``shared/reference/sglang-surface.md``; see ``docs/engines.md``.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from yarl import URL

from engine_adapter.base import Chunk, EngineError, GenerateRequest, Push, StepProfile
from engine_adapter.http_stream import ConnectFailed, PushFailed, StreamClient, check_url
from engine_adapter.sglang_adapters import RemoteAdapters
from engine_adapter.sglang_http_status import SGLangStatusQueries
from engine_adapter.sglang_wire import (
    StreamDecoder,
    abort_error,
    chunk_error,
    describe,
    dumps,
    final_chunk,
    http_error,
    loads,
    prompt_input,
)


__all__ = ["SGLangHTTPEngine"]


class SGLangHTTPEngine(SGLangStatusQueries):
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
        check_url(self.url)  # a URL without http(s):// fails here, at startup, not on the first request
        self.api_key = api_key
        self.model = model
        self.profile = profile
        self._incremental = incremental
        self._ctl_timeout = aiohttp.ClientTimeout(total=control_timeout, sock_connect=connect_timeout)
        self._urls: dict[str, URL] = {}
        self._timeouts = (connect_timeout, timeout)
        self._abort_url = self._u("/abort_request")
        self._headers: dict[str, str] = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._streams: StreamClient | None = None  # /generate and the OpenAI endpoints (the hot path)
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

    def _stream_client(self) -> StreamClient:
        """The lean streaming client, created lazily in the running loop (recreated if it changed)."""
        c = self._streams
        if c is None or c.loop is not asyncio.get_running_loop():
            c = self._streams = StreamClient(self.url, self._headers, connect_timeout=self._timeouts[0],
                                             read_timeout=self._timeouts[1])
        return c

    async def close(self) -> None:
        if self._bg:
            await asyncio.gather(*list(self._bg), return_exceptions=True)
        streams, self._streams = self._streams, None
        if streams is not None:
            streams.close()
        s, self._session = self._session, None
        if s is not None and not s.closed and self._session_loop is asyncio.get_running_loop():
            await s.close()

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

    pushes = True  # submit_batches takes `push` (controlplane/engine_call.py)

    def submit_batches(self, request: GenerateRequest, push: Push | None = None) -> AsyncIterator[list[Chunk]]:
        """`submit`, one non-empty list of chunks per read from the socket: the events that arrived
        together come together (the gateway sends them to its client in one write). Same errors and
        the same abort-on-close as `submit`. A LoRA request's adapter is loaded first where the
        server lacks it (engine_adapter/sglang_adapters.py).

        `push`: a streamed response's batches go to it instead, called from the connection's read
        callback as they arrive (no task woken per read: http_stream.StreamResponse.relay); the
        generator then yields only what was not pushed (a reply read whole). An awaitable that
        `push` returns stops the reads until it is done; what `push` raises ends the stream (an
        abort at the engine) and comes out of the generator as it was raised."""
        if request.lora_path is not None and self.adapters is not None:
            return self.adapters.run(request, lambda req: self._submit_batches(req, push))
        return self._submit_batches(request, push)

    async def _submit_batches(self, request: GenerateRequest, push: Push | None) -> AsyncIterator[list[Chunk]]:
        rid = request.rid
        oai, path, data, headers = self._route(request)
        need_abort = False  # the engine may still be working on this rid
        consumer_left = False
        yielded = False  # a chunk has been produced (yielded, or in the batch being built)
        try:
            client = self._stream_client()
            need_abort = True
            try:
                resp = await client.post(path, data, headers)
                try:
                    if resp.status != 200:
                        body = await resp.read()
                        need_abort = False
                        raise http_error(self.name, resp.status, body)
                    if not request.stream and oai is None:
                        obj = loads(await resp.read())
                        need_abort, yielded = False, True
                        yield [self._final_from_json(obj, rid)]
                        return
                    # ---- the streaming hot loop: one read, one feed, one batch ----
                    decoder = StreamDecoder(self.name, oai, self._incremental)
                    if push is not None:
                        def consume(piece: bytes) -> Awaitable[None] | None:
                            batch = decoder.feed(piece)  # a malformed event: ValueError, the engine's (below)
                            if not batch:
                                return None
                            try:
                                return push(batch)
                            except Exception as e:  # the consumer's own: never an EngineError
                                raise PushFailed(e) from e
                        try:
                            await resp.relay(consume, lambda: decoder.over)
                        finally:
                            need_abort = need_abort and not decoder.settled
                            yielded = decoder.produced
                        if decoder.failure is not None:
                            raise decoder.failure
                    # pulled: every read wakes this task (and a pushed stream's end is drained here)
                    read_some = resp.read_some
                    while not decoder.over:
                        piece = await read_some()
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
                        await resp.read()  # "data: [DONE]" and the body's end: the connection is reused
                        return
                    need_abort = False
                    raise EngineError(
                        f"{self.name}: stream for {rid} ended before its final chunk", retryable=not yielded
                    )
                except (GeneratorExit, asyncio.CancelledError, PushFailed):
                    # abort before closing: a server that aborts on disconnect would forget the rid
                    consumer_left = True
                    if need_abort:
                        need_abort = False
                        await self._abort_now(rid)
                    raise
                finally:
                    resp.release()
            except (TimeoutError, OSError, ValueError) as e:  # an EngineError is none of these
                if isinstance(e, ConnectFailed):
                    need_abort = False  # the request never reached the engine
                raise self._transport_error(rid, e, retryable=not yielded) from e
        except (GeneratorExit, asyncio.CancelledError):
            consumer_left = True
            raise
        except PushFailed as e:  # the consumer's own error, not the engine's
            raise e.error from None
        finally:
            if need_abort:
                await self._abort_after(rid, consumer_left)

    def _route(self, req: GenerateRequest) -> tuple[bool | None, str, bytes, dict[str, str] | None]:
        """Where `req` goes (a path), its body and its headers: `oai` is None for the native
        /generate, True/False for OpenAI chat/text completions."""
        headers = {"traceparent": req.traceparent} if req.traceparent else None
        if req.openai is None:
            return None, "/generate", self._body(req), headers
        oai = "messages" in req.openai
        return oai, ("/v1/chat/completions" if oai else "/v1/completions"), self._openai_body(req), headers

    def _transport_error(self, rid: str, e: BaseException, *, retryable: bool) -> EngineError:
        return EngineError(
            f"{self.name}: /generate {rid} failed: {describe(e)}",
            status_code=504 if isinstance(e, TimeoutError) or isinstance(e.__cause__, TimeoutError) else 502,
            retryable=retryable,
        )

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
        task = self._abort_in_background(rid)
        try:
            await asyncio.shield(task)
        except Exception:
            pass

    async def _abort_after(self, rid: str, consumer_left: bool) -> None:
        """The abort a `/generate` call still owes once its response is closed."""
        if consumer_left:  # cancelled before the response headers arrived
            await self._abort_now(rid)
        else:  # transport failure: tell the engine without delaying the error
            self._abort_in_background(rid)

    def _abort_in_background(self, rid: str) -> asyncio.Task[None]:
        """Send the abort in a task the engine keeps until done (`close` waits for it)."""
        task = asyncio.get_running_loop().create_task(self._abort_quietly(rid))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    async def _abort_quietly(self, rid: str) -> None:
        try:
            await self.abort(rid)
        except Exception:  # fire-and-forget: the engine may be gone, which is fine
            pass

