"""A dispatched request as its engine receives it, and the engine's chunks in batches.

Shared by the serving runtime (`Sluice.open_stream`) and a gateway worker of
`sluice serve --workers N` (controlplane/worker_runtime.py), which calls the engine itself with what
the decision process sent it at dispatch (engine, priority, traceparent, the engine's model name).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from controlplane.requests import CompletionRequest
from engine_adapter.base import Chunk, Engine, GenerateRequest, Push

__all__ = ["engine_batches", "generate_request"]


def generate_request(rid: str, req: CompletionRequest, priority: int | None, traceparent: str | None,
                     engine_model: str | None, adapters: Mapping[str, str | None] | None) -> GenerateRequest:
    """`engine_model`: the model name the engine serves (an OpenAI body names it); `adapters`: the
    pool's LoRA adapters (name -> where to load it from), for a request that runs with one."""
    body = None if req.body is None else {**req.body, "model": engine_model}
    greq = GenerateRequest(rid=rid, prompt=req.prompt, sampling_params=dict(req.sampling), stream=True,
                           priority=priority, traceparent=traceparent, prompt_tokens=req.prompt_tokens, openai=body)
    if req.adapter is not None:  # SGLang's lora_path, and the configured path to load it from
        greq.lora_path = req.adapter
        greq.lora_source = (adapters or {}).get(req.adapter)
    return greq


def engine_batches(engine: Engine, greq: GenerateRequest, push: Push | None = None) -> AsyncIterator[Sequence[Chunk]]:
    """The engine's own generator of batches (chunks that arrived together); one chunk per batch for
    an engine without `submit_batches`. The caller `aclose()`s it on an early exit (an abort).
    `push`: where an engine can (`pushes`), its streamed batches go there as they are read, and the
    generator yields the rest (SGLangHTTPEngine.submit_batches); the caller hands what is yielded
    to `push` too."""
    if push is not None and getattr(engine, "pushes", False):
        return engine.submit_batches(greq, push)  # type: ignore[attr-defined,no-any-return]
    batches = getattr(engine, "submit_batches", None)
    if batches is not None:
        return batches(greq)  # type: ignore[no-any-return]
    return _singles(engine.submit(greq))


async def _singles(gen: AsyncIterator[Chunk]) -> AsyncIterator[Sequence[Chunk]]:
    try:
        async for chunk in gen:
            yield (chunk,)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]
