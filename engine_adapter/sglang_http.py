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
import zlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from engine_adapter.base import (
    Chunk,
    EngineError,
    EngineInfo,
    EngineLoad,
    EngineOverloaded,
    GenerateRequest,
    StepProfile,
)
from engine_adapter.openai_chunks import choice_delta


def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


try:  # orjson is optional; it is only faster, never required.
    from orjson import dumps as _orjson_dumps  # type: ignore[import-not-found]
    from orjson import loads as _loads

    _loads_line = _loads

    def _dumps(obj: Any) -> bytes:
        try:
            return _orjson_dumps(obj)
        except TypeError:  # e.g. an integer beyond 64 bits (a seed): json takes any int
            return _json_dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads
    _dumps = _json_dumps
    _decode = json.JSONDecoder().decode

    def _loads_line(b: bytes) -> Any:
        # str input skips json.loads' encoding detection: ~40% cheaper per SSE event
        return _decode(b.decode())

__all__ = ["SGLangHTTPEngine", "parse_prometheus_load", "synthetic_input_ids"]

_DATA = b"data:"
_DONE = b"[DONE]"
_FINISH_TYPES = {"stop": "stop", "length": "length", "abort": "abort"}
_NOT_THERE = (404, 405)  # an endpoint this SGLang version does not have
_BLOCK = 512  # Mooncake hash_ids cover 512-token blocks


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
            raise EngineError(f"{self.name}: GET {path} failed: {_describe(e)}") from e

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        status, body = await self._get(path, params)
        if status in _NOT_THERE:
            raise _Unavailable(path)
        if status != 200:
            raise EngineError(
                f"{self.name}: GET {path} returned {status}: {_error_message(body)}",
                status_code=status if status >= 400 else 502,
            )
        try:
            return _loads(body)
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
        return _dumps(body)

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
        return _dumps(body)

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

    async def submit_batches(self, request: GenerateRequest) -> AsyncIterator[list[Chunk]]:
        """`submit`, one non-empty list of chunks per read from the socket: the events that arrived
        together come together (the gateway sends them to its client in one write). Same errors and
        the same abort-on-close as `submit`."""
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
                            raise _http_error(self.name, resp.status, body)
                        if not request.stream and oai is None:
                            obj = _loads(await resp.read())
                            need_abort = False
                            yielded = True
                            yield [self._final_from_json(obj, rid)]
                            return
                        # ---- the streaming hot loop ----
                        content = resp.content
                        incremental = self._incremental
                        sent = 0  # characters of cumulative text already delivered
                        prev_text = ""  # only used to detect the mode when output_ids are absent
                        buf = b""
                        final: Chunk | None = None
                        failure: EngineError | None = None
                        held: Chunk | None = None  # OpenAI: the finish chunk, until its usage or [DONE]
                        counts = [0, 0, 0]  # OpenAI: prompt, completion, cached tokens
                        while final is None:
                            piece = await content.readany()
                            if not piece:
                                break
                            if buf:
                                piece = buf + piece
                            lines = piece.split(b"\n")
                            buf = lines.pop()  # an incomplete last line (b"" after a full one)
                            batch: list[Chunk] = []
                            done = False
                            for line in lines:
                                if line[:5] != _DATA:
                                    continue  # blank separators, comments, event:/id: fields
                                payload = line[5:]
                                if payload[-1:] != b"}":  # [DONE], a CR line end, or not an object
                                    payload = payload.strip()
                                    if payload == _DONE:
                                        done = True
                                        if held is not None:
                                            final = _counted(held, counts)
                                            batch.append(final)
                                        break
                                obj = _loads_line(payload)
                                if oai is not None:
                                    if "choices" not in obj:
                                        need_abort = False
                                        failure = _chunk_error(self.name, obj if "error" in obj else {"error": obj})
                                        break
                                    usage = obj.get("usage")
                                    if usage:
                                        counts = [usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                                                  (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0]
                                    if not obj["choices"]:  # the closing usage chunk
                                        if held is not None:
                                            final = _counted(held, counts)
                                            batch.append(final)
                                            break
                                        continue
                                    choice = obj["choices"][0]
                                    delta, extra = choice_delta(choice, oai)
                                    if not usage and (delta or extra):
                                        counts[1] += 1  # a server without usage stats: one token per delta
                                    chunk = Chunk(delta, counts[1], counts[0], counts[2], extra=extra,
                                                  finish_reason=choice.get("finish_reason"))
                                    if chunk.finish_reason is not None:
                                        need_abort = False
                                        held = chunk
                                    elif delta or extra:
                                        yielded = True
                                        batch.append(chunk)
                                    continue
                                meta = obj.get("meta_info")
                                if meta is None:
                                    need_abort = False
                                    failure = _chunk_error(self.name, obj)
                                    break
                                text = obj.get("text") or ""
                                completion = meta.get("completion_tokens", 0)
                                if incremental is None:
                                    ids = obj.get("output_ids")
                                    if ids is not None:
                                        if len(ids) < completion:
                                            incremental = True
                                    elif text and prev_text and not text.startswith(prev_text):
                                        incremental = True
                                    prev_text = text
                                if incremental:
                                    delta = text
                                elif sent:
                                    delta = text[sent:]
                                    sent = len(text)
                                else:
                                    delta = text
                                    sent = len(text)
                                fr = meta.get("finish_reason")
                                if fr is None:
                                    if not delta and not completion:
                                        continue  # nothing to report yet
                                    yielded = True
                                    batch.append(Chunk(delta, completion, meta.get("prompt_tokens", 0),
                                                       meta.get("cached_tokens", 0) or 0))
                                    continue
                                # ---- the final chunk ----
                                need_abort = False
                                final = _final_chunk(delta, completion, meta, fr)
                                if final.finish_reason == "abort" and final.status_code and not yielded:
                                    failure = _abort_error(self.name, final)
                                    break
                                yielded = True
                                batch.append(final)
                                break
                            if batch:
                                yield batch
                            if failure is not None:
                                raise failure
                            if done:
                                break
                        if final is None and held is not None:  # EOF right after the finish chunk
                            final = _counted(held, counts)
                            yield [final]
                        if final is not None:
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
                    f"{self.name}: /generate {rid} failed: {_describe(e)}",
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
            raise _chunk_error(self.name, obj if isinstance(obj, dict) else {})
        fr = meta.get("finish_reason")
        chunk = _final_chunk(obj.get("text") or "", meta.get("completion_tokens", 0), meta, fr)
        if chunk.finish_reason is None:
            raise EngineError(f"{self.name}: reply for {rid} has no finish_reason")
        if chunk.finish_reason == "abort" and chunk.status_code and not chunk.completion_tokens:
            raise _abort_error(self.name, chunk)
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
            raise EngineError(f"{self.name}: /abort_request {rid} failed: {_describe(e)}") from e

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
                    el = _parse_v1_loads(await self._get_json("/v1/loads", {"include": "core"}))
                elif src == "metrics":
                    el = await self._load_from_metrics()
                else:
                    el = await self._load_from_get_load()
            except _Unavailable:
                continue
            self._load_source = src
            if el.total_tokens:
                self._max_total_tokens = el.total_tokens
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
        max_tokens = _max_total_tokens(si)
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


# ---------------------------------------------------------------------- helpers (module level)


def _counted(chunk: Chunk, counts: list[int]) -> Chunk:
    """The held OpenAI finish chunk with the last usage seen."""
    chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens = counts
    return chunk


def _final_chunk(delta: str, completion: int, meta: dict[str, Any], fr: Any) -> Chunk:
    status = None
    message = None
    if isinstance(fr, dict):
        typ = fr.get("type")
        status = fr.get("status_code")
        message = fr.get("message")
    else:
        typ = fr
    reason = _FINISH_TYPES.get(typ, typ) if typ is not None else None
    retr = meta.get("num_retractions")
    if retr is None:
        retr = meta.get("total_retractions", 0)
    return Chunk(
        text=delta,
        completion_tokens=completion,
        prompt_tokens=meta.get("prompt_tokens", 0),
        cached_tokens=meta.get("cached_tokens", 0) or 0,
        finish_reason=reason,
        status_code=int(status) if status is not None else None,
        message=message,
        e2e_latency=meta.get("e2e_latency"),
        num_retractions=retr or 0,
    )


def _abort_error(name: str, chunk: Chunk) -> EngineError:
    msg = chunk.message or "aborted"
    if chunk.status_code == 503:
        return EngineOverloaded(f"{name}: {msg}")
    code = chunk.status_code or 502
    return EngineError(f"{name}: {msg}", status_code=code, retryable=code >= 500)


def _chunk_error(name: str, obj: dict[str, Any]) -> EngineError:
    err = obj.get("error")
    if isinstance(err, dict):
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code < 600 else 400
        msg = err.get("message") or json.dumps(err)
        retryable = bool(err.get("retryable", False))
    else:
        status, msg, retryable = 502, f"unexpected chunk: {str(obj)[:200]}", False
    if status == 503:
        return EngineOverloaded(f"{name}: {msg}")
    return EngineError(f"{name}: {msg}", status_code=status, retryable=retryable)


def _error_message(body: bytes) -> str:
    try:
        obj = _loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):
            if obj.get(key):
                return str(obj[key])
    return str(obj)[:300]


def _http_error(name: str, status: int, body: bytes) -> EngineError:
    msg = _error_message(body)
    if status == 503:
        return EngineOverloaded(f"{name}: {msg}")
    return EngineError(f"{name}: HTTP {status}: {msg}", status_code=status, retryable=status >= 500,
                       client_message=msg[:500] if 400 <= status < 500 else None)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _parse_ts(v: Any) -> float:
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _parse_v1_loads(data: Any) -> EngineLoad:
    """``/v1/loads``: current ``loads`` list of LoadSnapshot dicts (summed over DP ranks); v0.5.8's
    ``aggregate`` block is used only when ``loads`` is empty or absent."""
    if not isinstance(data, dict):
        raise EngineError("/v1/loads: not an object")
    loads = [x for x in data.get("loads") or [] if isinstance(x, dict)]
    ts = _parse_ts(data.get("timestamp"))
    if loads:
        running = waiting = used = total = uncached = 0
        thr = hit = 0.0
        for ld in loads:
            running += int(_num(ld.get("num_running_reqs")))
            waiting += int(_num(ld.get("num_waiting_reqs")))
            uncached += int(_num(ld.get("num_waiting_uncached_tokens")))
            cap = int(_num(ld.get("max_total_num_tokens")))
            u = ld.get("num_used_tokens")
            used += int(_num(u)) if u is not None else int(_num(ld.get("token_usage")) * cap)
            total += cap
            thr += _num(ld.get("gen_throughput"))
            hit += _num(ld.get("cache_hit_rate"))
        if isinstance(loads[0].get("timestamp"), (int, float)):
            ts = float(loads[0]["timestamp"])
        return EngineLoad(
            running, waiting, used, total,
            waiting_uncached_tokens=uncached,
            gen_throughput=thr,
            cache_hit_rate=hit / len(loads),
            timestamp=ts,
        )
    agg = data.get("aggregate")
    if isinstance(agg, dict):
        return EngineLoad(
            int(_num(agg.get("total_running_reqs"))),
            int(_num(agg.get("total_waiting_reqs"))),
            int(_num(agg.get("total_used_tokens"))),
            0,  # v0.5.8's total_tokens is not the KV capacity
            gen_throughput=_num(agg.get("avg_throughput")),
            timestamp=ts,
        )
    raise EngineError("/v1/loads: neither loads nor aggregate")


_GAUGES = (
    "sglang:num_running_reqs",
    "sglang:num_queue_reqs",
    "sglang:num_used_tokens",
    "sglang:token_usage",
    "sglang:max_total_num_tokens",
    "sglang:gen_throughput",
    "sglang:cache_hit_rate",
)


def parse_prometheus_load(text: str) -> EngineLoad | None:
    """An `EngineLoad` from SGLang's ``/metrics`` text, or None if it has none of SGLang's gauges.

    Only attention-TP rank 0 / PP rank 0 samples are counted (``--enable-metrics-for-all-schedulers``
    repeats them on every rank), only the ``priority=""`` totals where per-priority breakdowns exist,
    and the remaining series (one per DP rank) are summed; ``token_usage`` and ``cache_hit_rate`` are
    averaged.
    """
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in _GAUGES:
            continue
        for s in fam.samples:
            if s.name != fam.name:
                continue
            lab = s.labels
            if lab.get("tp_rank", "0") != "0" or lab.get("pp_rank", "0") != "0":
                continue
            if lab.get("priority", "") != "":
                continue
            sums[fam.name] = sums.get(fam.name, 0.0) + s.value
            counts[fam.name] = counts.get(fam.name, 0) + 1
    if not sums:
        return None
    total = int(sums.get("sglang:max_total_num_tokens", 0))
    if "sglang:num_used_tokens" in sums:
        used = int(sums["sglang:num_used_tokens"])
    else:
        usage = sums.get("sglang:token_usage", 0.0) / max(counts.get("sglang:token_usage", 1), 1)
        used = int(round(usage * total))
    hit = sums.get("sglang:cache_hit_rate", 0.0) / max(counts.get("sglang:cache_hit_rate", 1), 1)
    return EngineLoad(
        running=int(sums.get("sglang:num_running_reqs", 0)),
        waiting=int(sums.get("sglang:num_queue_reqs", 0)),
        used_tokens=used,
        total_tokens=total,
        gen_throughput=sums.get("sglang:gen_throughput", 0.0),
        cache_hit_rate=hit,
        timestamp=time.time(),
    )


def _max_total_tokens(si: dict[str, Any]) -> int:
    """KV capacity from server_info: ``scheduler_info`` (current), the flat field (older
    ``/get_server_info``), or ``internal_states`` (summed over DP ranks)."""
    sch = si.get("scheduler_info")
    if isinstance(sch, dict) and sch.get("max_total_num_tokens"):
        return int(sch["max_total_num_tokens"])
    if si.get("max_total_num_tokens"):
        return int(si["max_total_num_tokens"])
    total = 0
    for st in si.get("internal_states") or []:
        if not isinstance(st, dict):
            continue
        v = st.get("max_total_num_tokens")
        if not v and isinstance(st.get("memory_usage"), dict):
            v = st["memory_usage"].get("token_capacity")
        total += int(_num(v))
    return total


_block_cache: dict[int, list[int]] = {}


def _block_ids(h: int) -> list[int]:
    ids = _block_cache.get(h)
    if ids is None:
        if len(_block_cache) > 4096:
            _block_cache.clear()
        base = (h * 2654435761) & 0xFFFFFFFF
        ids = _block_cache[h] = [1000 + (base + i * 40503) % 29000 for i in range(_BLOCK)]
    return ids


def prompt_input(req: GenerateRequest, engine: str) -> tuple[str | None, list[int] | None]:
    """What SGLang is given as the prompt: (text, None) or (None, input_ids). A replayed request
    known only by its length gets synthetic ids (SGLang's "random-ids" approach), with identical
    512-token blocks for identical hash_ids so the engine's prefix cache sees the recorded sharing."""
    if req.prompt is not None:
        return req.prompt, None
    if req.input_ids is not None:
        return None, req.input_ids
    if req.prompt_tokens:
        return None, synthetic_input_ids(req.prompt_tokens, req.hash_ids, req.rid)
    raise EngineError(f"{engine}: request {req.rid} has neither prompt nor input_ids",
                      status_code=400, retryable=False)


def synthetic_input_ids(n: int, hash_ids: list[int] | None, salt: str) -> list[int]:
    """`n` token ids for a request known only by its length (replay): block ``i`` is a deterministic
    function of ``hash_ids[i]``, so requests that share hash_ids share a token prefix; the rest is
    unique to `salt`. Ids stay in [1000, 30000), valid for any common vocabulary."""
    out: list[int] = []
    for h in hash_ids or ():
        if len(out) >= n:
            break
        out.extend(_block_ids(int(h)))
    if len(out) < n:
        base = zlib.crc32(salt.encode())
        out.extend(1000 + (base + i * 7919) % 29000 for i in range(n - len(out)))
    del out[n:]
    return out
