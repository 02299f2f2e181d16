"""SGLang's wire format without a transport: the streamed answer decoded from bytes (`StreamDecoder`),
its errors, and the prompt of a request known only by its length (the load and server-info shapes:
sglang_load.py).

Both adapters (HTTP and in process) read SGLang through these, so its field names, shapes and
version renames (``shared/reference/sglang-surface.md``) live in one place.
"""
from __future__ import annotations

import json
import zlib
from typing import Any

from engine_adapter.base import Chunk, EngineError, EngineOverloaded, GenerateRequest
from engine_adapter.openai_chunks import choice_delta

__all__ = ["StreamDecoder", "abort_error", "chunk_error", "describe", "dumps", "error_message", "final_chunk",
           "http_error", "loads", "prompt_input", "synthetic_input_ids"]

def _json_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


try:  # orjson is optional; it is only faster, never required.
    from orjson import dumps as _orjson_dumps  # type: ignore[import-not-found]
    from orjson import loads

    _loads_line = loads

    def dumps(obj: Any) -> bytes:
        try:
            return _orjson_dumps(obj)
        except TypeError:  # e.g. an integer beyond 64 bits (a seed): json takes any int
            return _json_dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads
    dumps = _json_dumps
    _decode = json.JSONDecoder().decode

    def _loads_line(b: bytes) -> Any:
        # str input skips json.loads' encoding detection: ~40% cheaper per SSE event
        return _decode(b.decode())


_DATA = b"data:"
_DONE = b"[DONE]"
_FINISH_TYPES = {"stop": "stop", "length": "length", "abort": "abort"}
_BLOCK = 512  # Mooncake hash_ids cover 512-token blocks


class StreamDecoder:
    """One streamed answer, decoded from the bytes as they arrive, however they are split (a line may
    straddle reads): SGLang's native ``/generate`` (cumulative text, or incremental with
    ``--incremental-streaming-output``) when `oai` is None, else the SSE of its OpenAI chat (True)
    or text (False) completions. `feed` returns the chunks (delta text, cumulative counts) that the
    bytes completed; after it, `failure` is an in-band error to raise once they are delivered,
    `settled` says the engine is done with the request (no abort needed), `over` that nothing more
    is expected. `end` at the end of the body gives a finish chunk still held for its usage."""

    __slots__ = ("engine", "oai", "incremental", "final", "failure", "settled", "produced", "done", "_buf",
                 "_sent", "_prev_text", "_held", "_counts")

    def __init__(self, engine: str, oai: bool | None, incremental: bool | None = None) -> None:
        self.engine = engine
        self.oai = oai
        self.incremental = incremental  # None: detected from the first events
        self.final: Chunk | None = None
        self.failure: EngineError | None = None
        self.settled = False
        self.produced = False  # a chunk has been returned
        self.done = False  # [DONE] seen
        self._buf = b""  # an incomplete last line
        self._sent = 0  # characters of cumulative text already delivered
        self._prev_text = ""  # only used to detect the mode when output_ids are absent
        self._held: Chunk | None = None  # OpenAI: the finish chunk, until its usage or [DONE]
        self._counts = [0, 0, 0]  # OpenAI: prompt, completion, cached tokens

    @property
    def over(self) -> bool:
        return self.final is not None or self.failure is not None or self.done

    def feed(self, piece: bytes) -> list[Chunk]:
        if self._buf:
            piece = self._buf + piece
        lines = piece.split(b"\n")
        self._buf = lines.pop()  # b"" after a complete line
        batch: list[Chunk] = []
        for line in lines:
            if line[:5] != _DATA:
                continue  # blank separators, comments, event:/id: fields
            payload = line[5:]
            if payload[-1:] != b"}":  # [DONE], a CR line end, or not an object
                payload = payload.strip()
                if payload == _DONE:
                    self.done = True
                    if self._held is not None:
                        self._release(batch)
                    break
            obj = _loads_line(payload)
            if self._openai(obj, batch) if self.oai is not None else self._native(obj, batch):
                break
        return batch

    def end(self) -> list[Chunk]:
        if self.final is None and self._held is not None:  # EOF right after the finish chunk
            self._release(batch := [])
            return batch
        return []

    def _release(self, batch: list[Chunk]) -> None:
        self.final = counted(self._held, self._counts)  # type: ignore[arg-type]
        batch.append(self.final)

    def _openai(self, obj: Any, batch: list[Chunk]) -> bool:
        """One OpenAI SSE event; True when the stream is over."""
        if "choices" not in obj:
            self.settled = True
            self.failure = chunk_error(self.engine, obj if "error" in obj else {"error": obj})
            return True
        usage = obj.get("usage")
        if usage:
            self._counts = [usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                            (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0]
        if not obj["choices"]:  # the closing usage chunk
            if self._held is not None:
                self._release(batch)
                return True
            return False
        choice = obj["choices"][0]
        delta, extra = choice_delta(choice, self.oai)
        if not usage and (delta or extra):
            self._counts[1] += 1  # a server without usage stats: one token per delta
        counts = self._counts
        chunk = Chunk(delta, counts[1], counts[0], counts[2], extra=extra, finish_reason=choice.get("finish_reason"))
        if chunk.finish_reason is not None:
            self.settled = True
            self._held = chunk
        elif delta or extra:
            self.produced = True
            batch.append(chunk)
        return False

    def _native(self, obj: Any, batch: list[Chunk]) -> bool:
        """One /generate event; True when the stream is over."""
        meta = obj.get("meta_info")
        if meta is None:
            self.settled = True
            self.failure = chunk_error(self.engine, obj)
            return True
        text = obj.get("text") or ""
        completion = meta.get("completion_tokens", 0)
        if self.incremental is None:
            ids = obj.get("output_ids")
            if ids is not None:
                if len(ids) < completion:
                    self.incremental = True
            elif text and self._prev_text and not text.startswith(self._prev_text):
                self.incremental = True
            self._prev_text = text
        if self.incremental:
            delta = text
        elif self._sent:
            delta = text[self._sent:]
            self._sent = len(text)
        else:
            delta = text
            self._sent = len(text)
        fr = meta.get("finish_reason")
        if fr is None:
            if delta or completion:
                self.produced = True
                batch.append(Chunk(delta, completion, meta.get("prompt_tokens", 0), meta.get("cached_tokens", 0) or 0))
            return False
        self.settled = True
        final = final_chunk(delta, completion, meta, fr)
        if final.finish_reason == "abort" and final.status_code and not self.produced:
            self.failure = abort_error(self.engine, final)
            return True
        self.produced = True
        self.final = final
        batch.append(final)
        return True



def counted(chunk: Chunk, counts: list[int]) -> Chunk:
    """The held OpenAI finish chunk with the last usage seen."""
    chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens = counts
    return chunk


def final_chunk(delta: str, completion: int, meta: dict[str, Any], fr: Any) -> Chunk:
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


def abort_error(name: str, chunk: Chunk) -> EngineError:
    msg = chunk.message or "aborted"
    if chunk.status_code == 503:
        return EngineOverloaded(f"{name}: {msg}")
    code = chunk.status_code or 502
    return EngineError(f"{name}: {msg}", status_code=code, retryable=code >= 500)


def chunk_error(name: str, obj: dict[str, Any]) -> EngineError:
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
    return EngineError(f"{name}: {msg}", status_code=status, retryable=retryable,
                       client_message=msg[:500] if 400 <= status < 500 else None)


def error_message(body: bytes) -> str:
    try:
        obj = loads(body)
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


def http_error(name: str, status: int, body: bytes) -> EngineError:
    msg = error_message(body)
    if status == 503:
        return EngineOverloaded(f"{name}: {msg}")
    return EngineError(f"{name}: HTTP {status}: {msg}", status_code=status, retryable=status >= 500,
                       client_message=msg[:500] if 400 <= status < 500 else None)


def describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


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
