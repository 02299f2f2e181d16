"""SGLang in-process: `sglang.Engine` inside the sluice process (the optional ``sglang`` extra).

For single-box users who do not want a separate ``sglang.launch_server``. It needs CUDA and the
multi-GB ``sglang`` wheel, so ``sglang`` is imported lazily, only when an engine is built here.
Chunks are the same dicts as the HTTP stream (cumulative text by default), decoded with the same
rules as `SGLangHTTPEngine` (delta text, cumulative counts, finish-reason dicts, in-band aborts).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from engine_adapter.base import (
    Chunk,
    EngineError,
    EngineInfo,
    EngineLoad,
    EngineOverloaded,
    GenerateRequest,
    StepProfile,
)
from engine_adapter.sglang_wire import (
    abort_error,
    chunk_error,
    final_chunk,
    prompt_input,
)
from engine_adapter.sglang_load import max_total_tokens, parse_v1_loads

__all__ = ["SGLangInProcessEngine", "SGLANG_MISSING"]

SGLANG_MISSING = (
    "SGLangInProcessEngine needs the optional 'sglang' extra (CUDA GPU required): "
    "pip install 'sluice[sglang]'. Without it, run SGLang as a server "
    "(python -m sglang.launch_server) and use SGLangHTTPEngine, or use the simulator."
)


class SGLangInProcessEngine:
    """An `Engine` wrapping `sglang.Engine` in this process.

    Args:
        name: the engine's name in sluice.
        engine: an already built `sglang.Engine` (or an object with the same methods); when None one
            is built from `server_args` (e.g. ``model_path="meta-llama/Llama-3.1-8B-Instruct"``).
        profile: optional step-time prior reported by `info()`.
        **server_args: keyword arguments for ``sglang.Engine(...)`` (SGLang's ServerArgs fields).

    Raises ImportError with `SGLANG_MISSING` when `engine` is None and sglang is not installed.
    """

    kind = "sglang-inprocess"

    def __init__(self, name: str, *, engine: Any = None, profile: StepProfile | None = None,
                 **server_args: Any) -> None:
        self.name = name
        self.profile = profile
        if engine is None:
            try:
                import sglang
            except ImportError as e:
                raise ImportError(SGLANG_MISSING) from e
            engine = sglang.Engine(**server_args)
        self._engine = engine
        self._closed = False

    @property
    def sglang_engine(self) -> Any:
        return self._engine

    def _generate_kwargs(self, request: GenerateRequest) -> dict[str, Any]:
        """`request` as keyword arguments of `sglang.Engine.async_generate`."""
        kw: dict[str, Any] = {}
        if request.openai is not None:
            text, ids, sp = self._from_openai(request.openai), None, native_sampling(request.openai)
        else:
            text, ids = prompt_input(request, self.name)
            sp = dict(request.sampling_params)
        if text is not None:
            kw["prompt"] = text
        else:
            kw["input_ids"] = ids
        if request.output_tokens is not None:
            sp["max_new_tokens"] = request.output_tokens
            sp.setdefault("ignore_eos", True)
        kw["sampling_params"] = sp
        kw["rid"] = request.rid
        if request.priority is not None:
            kw["priority"] = request.priority
        if request.traceparent:
            kw["external_trace_header"] = {"traceparent": request.traceparent}
        if request.lora_path is not None:  # Engine.async_generate's lora_path: the adapter's name
            kw["lora_path"] = request.lora_path
        return kw

    def _failure(self, e: Exception, yielded: bool) -> tuple[EngineError, bool]:
        """The `EngineError` for what `sglang.Engine` raised, and whether the engine is done with the
        request (it refused it: nothing left to abort)."""
        if isinstance(e, ValueError):  # SGLang's request validation errors (e.g. a duplicate rid)
            return EngineError(f"{self.name}: {e}", status_code=400, retryable=False,
                               client_message=str(e)[:500]), True
        status = getattr(e, "status_code", None)
        if status == 503:
            return EngineOverloaded(f"{self.name}: {getattr(e, 'detail', e)}"), True
        return EngineError(f"{self.name}: {type(e).__name__}: {e}",
                           status_code=int(status) if isinstance(status, int) else 500,
                           retryable=not yielded), False

    async def submit(self, request: GenerateRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        kw = self._generate_kwargs(request)
        rid = request.rid
        finished = False
        yielded = False
        try:
            if not request.stream:
                out = await self._engine.async_generate(stream=False, **kw)
                finished = True
                yield self._decode_final(out)
                return
            gen = await self._engine.async_generate(stream=True, **kw)
            sent = 0
            incremental: bool | None = None
            try:
                async for out in gen:
                    meta = out.get("meta_info")
                    if meta is None:
                        finished = True
                        raise chunk_error(self.name, out)
                    text = out.get("text") or ""
                    completion = meta.get("completion_tokens", 0)
                    if incremental is None:
                        ids = out.get("output_ids")
                        if ids is not None and len(ids) < completion:
                            incremental = True
                    if incremental:
                        delta = text
                    else:
                        delta = text[sent:]
                        sent = len(text)
                    fr = meta.get("finish_reason")
                    if fr is None:
                        if delta or completion:
                            yielded = True
                            yield Chunk(delta, completion, meta.get("prompt_tokens", 0),
                                        meta.get("cached_tokens", 0) or 0)
                        continue
                    finished = True
                    chunk = final_chunk(delta, completion, meta, fr)
                    if chunk.finish_reason == "abort" and chunk.status_code and not yielded:
                        raise abort_error(self.name, chunk)
                    yield chunk
                    return
            finally:
                await _close_stream(gen)
            finished = True
            raise EngineError(f"{self.name}: stream for {rid} ended before its final chunk",
                              retryable=not yielded)
        except EngineError:
            raise
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception as e:
            error, refused = self._failure(e, yielded)
            finished = finished or refused
            raise error from e
        finally:
            if not finished:
                await self.abort(rid)

    def _from_openai(self, body: dict[str, Any]) -> str:
        """The prompt of an OpenAI body: a chat rendered by the model's own template (its Hugging Face
        tokenizer's `apply_chat_template`, as SGLang's serving_chat does without a template override)."""
        refuse_unparsed(body)
        if "messages" not in body:
            return str(body.get("prompt") or "")
        tokenizer = getattr(getattr(self._engine, "tokenizer_manager", None), "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise EngineError(f"{self.name}: this engine has no tokenizer with a chat template", status_code=400,
                              retryable=False, client_message="this model has no chat template: use /v1/completions")
        return str(tokenizer.apply_chat_template(body["messages"], tools=body.get("tools"), tokenize=False,
                                                 add_generation_prompt=True))

    def _decode_final(self, out: Any) -> Chunk:
        if not isinstance(out, dict) or out.get("meta_info") is None:
            raise chunk_error(self.name, out if isinstance(out, dict) else {})
        meta = out["meta_info"]
        chunk = final_chunk(out.get("text") or "", meta.get("completion_tokens", 0), meta,
                             meta.get("finish_reason"))
        if chunk.finish_reason == "abort" and chunk.status_code and not chunk.completion_tokens:
            raise abort_error(self.name, chunk)
        return chunk

    async def abort(self, rid: str) -> None:
        """``tokenizer_manager.abort_request(rid=...)``: SGLang's Engine has no public abort."""
        try:
            self._engine.tokenizer_manager.abort_request(rid=rid)
        except Exception:  # the request may be gone already; abort is best-effort
            pass

    async def load(self) -> EngineLoad:
        tm = self._engine.tokenizer_manager
        get_loads = getattr(tm, "get_loads", None)
        try:
            if get_loads is not None:
                snaps = await get_loads(include=["core"], dp_rank=None)
                loads = [s.to_dict({"core"}) if hasattr(s, "to_dict") else dict(s) for s in snaps]
                return parse_v1_loads({"loads": loads, "timestamp": time.time()})
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"{self.name}: get_loads failed: {e}") from e
        raise EngineError(f"{self.name}: this sglang version has no tokenizer_manager.get_loads",
                          retryable=False)

    async def info(self) -> EngineInfo:
        e = self._engine
        sa = getattr(getattr(e, "tokenizer_manager", None), "server_args", None) or \
            getattr(e, "server_args", None)
        model = getattr(sa, "served_model_name", None) or getattr(sa, "model_path", None) or "unknown"
        sched = getattr(e, "scheduler_info", None)
        max_tokens = max_total_tokens({"scheduler_info": sched} if isinstance(sched, dict) else {})
        if not max_tokens and isinstance(sched, dict):
            max_tokens = int(sched.get("max_total_num_tokens") or 0)
        try:
            import sglang

            version = getattr(sglang, "__version__", None)
        except ImportError:
            version = None
        # the window the tokenizer manager checks requests against (what /v1/models reports over HTTP)
        context = getattr(getattr(getattr(e, "tokenizer_manager", None), "model_config", None), "context_len", None)
        return EngineInfo(name=self.name, kind=self.kind, model=str(model), url=None,
                          max_total_tokens=max_tokens, simulated=False, profile=self.profile,
                          version=version, context_length=context if isinstance(context, int) else None)

    async def health(self) -> bool:
        if self._closed:
            return False
        tm = getattr(self._engine, "tokenizer_manager", None)
        return tm is not None and not getattr(tm, "gracefully_exit", False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            await asyncio.to_thread(shutdown)


async def _close_stream(gen: Any) -> None:
    """Close `async_generate`'s stream where it can be closed (SGLang's is an async generator)."""
    aclose = getattr(gen, "aclose", None)
    if aclose is not None:
        await aclose()


# The parts of SGLang's OpenAI serving that live in its HTTP layer, not in `sglang.Engine`: the
# tool-call and reasoning parsers and the OpenAI logprob and echo shaping. In process they are
# refused (a 400 naming the parameter), never dropped.
_UNPARSED = {"logprobs": "logprobs", "echo": "echo", "reasoning_effort": "reasoning_effort"}
_NATIVE = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
           "repetition_penalty": "repetition_penalty", "stop": "stop", "seed": "sampling_seed",
           "logit_bias": "logit_bias", "regex": "regex", "ebnf": "ebnf", "max_tokens": "max_new_tokens",
           "ignore_eos": "ignore_eos"}


def refuse_unparsed(body: dict[str, Any]) -> None:
    if body.get("tools") and body.get("tool_choice", "auto") != "none":
        _refuse("tool calls need SGLang's tool-call parser, which the in-process engine does not run: "
                "use SGLang over HTTP (param: tools)")
    for key in _UNPARSED:
        if body.get(key):
            _refuse(f"'{key}' is not supported by the in-process SGLang engine: use SGLang over HTTP (param: {key})")


def _refuse(why: str) -> NoReturn:
    raise EngineError(why, status_code=400, retryable=False, client_message=why)


def native_sampling(body: dict[str, Any]) -> dict[str, Any]:
    """SGLang sampling_params for an OpenAI body (serving_chat's `to_sampling_params`, the subset sluice forwards)."""
    sp = {_NATIVE[k]: v for k, v in body.items() if k in _NATIVE and v is not None}
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        sp["json_schema"] = '{"type": "object"}'
    elif fmt.get("type") == "json_schema":
        sp["json_schema"] = json.dumps((fmt.get("json_schema") or {}).get("schema") or {})
    return sp
