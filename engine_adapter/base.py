"""The Engine contract: what the decision core and the gateway need from an inference engine.

Every engine (SGLang over HTTP, SGLang in-process, the simulator) implements `Engine`.
Chunks carry *deltas* of text and *cumulative* token counts, whatever the engine streams,
so callers never need to know whether the engine streams incrementally.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from engine_adapter.lora import AdapterState


@dataclass(slots=True)
class GenerateRequest:
    rid: str  # unique and prefix-free: SGLang aborts by prefix
    prompt: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] = field(default_factory=dict)  # SGLang names: max_new_tokens, ...
    stream: bool = True
    priority: int | None = None
    traceparent: str | None = None
    # Hints only the simulator uses (a real engine tokenizes and hashes for itself).
    prompt_tokens: int | None = None
    hash_ids: list[int] | None = None
    output_tokens: int | None = None  # replay: force the recorded output length
    # An OpenAI request body (chat: `messages`, text: `prompt`, plus tools, response_format,
    # logprobs, ...) for the engine's OpenAI-compatible endpoint: the engine applies the model's
    # own chat template and tool-call/reasoning parsers. When set, `prompt`/`input_ids` and
    # `sampling_params` are not used; `rid`, `priority` and `traceparent` still are.
    openai: dict[str, Any] | None = None
    # A LoRA adapter (SGLang's `lora_path`: the adapter's name, engine_adapter/lora.py), and where
    # the engine loads it from when it does not hold it (None: it must hold it already).
    lora_path: str | None = None
    lora_source: str | None = None


@dataclass(slots=True)
class Chunk:
    text: str  # new text since the previous chunk
    completion_tokens: int  # cumulative
    prompt_tokens: int
    cached_tokens: int = 0
    finish_reason: str | None = None  # None until the last chunk: "stop" | "length" | "abort" | "tool_calls"
    status_code: int | None = None  # set on in-band aborts (e.g. 503 queue full)
    message: str | None = None  # abort or error message
    e2e_latency: float | None = None  # seconds, engine-measured, last chunk only
    num_retractions: int = 0
    # OpenAI fields of this delta beyond its text (OpenAI requests only): `tool_calls` (delta
    # list), `reasoning_content`, `logprobs` (the choice's logprobs for this delta).
    extra: dict[str, Any] | None = None
    energy_j: float | None = None  # GPU joules attributed to the request (last chunk; None: not known)


# A consumer of streamed batches called as they are read (SGLangHTTPEngine.submit_batches' `push`):
# an awaitable in return means its far side is backed up, and reading waits for it.
Push = Callable[[Sequence[Chunk]], Awaitable[None] | None]


def has_first_token(batch: Sequence[Chunk]) -> bool:
    """Whether a request's first token (or its end) is in `batch`: its TTFT stops there."""
    return any(chunk.completion_tokens or chunk.finish_reason for chunk in batch)


@dataclass(slots=True)
class EngineLoad:
    running: int
    waiting: int
    used_tokens: int  # KV tokens in use
    total_tokens: int  # KV capacity in tokens
    waiting_uncached_tokens: int = 0
    gen_throughput: float = 0.0  # output tokens/s
    cache_hit_rate: float = 0.0
    timestamp: float = 0.0
    adapters: AdapterState | None = None  # its LoRA adapters (None: LoRA not enabled, or not known)

    @property
    def kv_usage(self) -> float:
        return self.used_tokens / self.total_tokens if self.total_tokens else 0.0


@dataclass(slots=True)
class StepProfile:
    """Step-time model (seconds): prefill a + b*tokens + f*tokens*(context + tokens/2);
    decode c + d*batch + e*kv_tokens.

    The prefill's f term is attention: each of the `tokens` new tokens attends to the `context`
    tokens already in the KV (prefix-cache hit plus earlier chunks of the same prompt) and, causally,
    to half of the chunk on average. Decode's attention is e*kv_tokens. `prefill_f` is last and
    defaults to 0 so positional constructions and older profile JSON keep their meaning.
    """

    prefill_a: float
    prefill_b: float
    decode_c: float
    decode_d: float
    decode_e: float
    prefill_f: float = 0.0  # seconds per new token x context token

    def prefill_time(self, tokens: float, context: float = 0.0) -> float:
        return self.prefill_a + self.prefill_b * tokens + self.prefill_f * tokens * (context + tokens / 2)

    def decode_time(self, batch: float, kv_tokens: float) -> float:
        return self.decode_c + self.decode_d * batch + self.decode_e * kv_tokens


@dataclass(slots=True)
class EngineInfo:
    name: str
    kind: str  # "sglang" | "sglang-inprocess" | "sim"
    model: str
    url: str | None
    max_total_tokens: int  # KV capacity in tokens
    simulated: bool
    profile: StepProfile | None = None  # prior for the step-time predictor
    version: str | None = None
    context_length: int | None = None  # the model's context window in tokens (prompt + output)


class EngineError(Exception):
    """The engine could not serve the request (connection refused, died mid-stream, bad reply).

    `message` is for operators (it may name the engine, its address, an exception); `client_message`,
    set only when the engine refused the request itself (a 4xx), says what is wrong with the request
    in words safe to show its tenant."""

    def __init__(self, message: str, *, status_code: int = 502, retryable: bool = True,
                 client_message: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable
        self.client_message = client_message


class EngineOverloaded(EngineError):
    """The engine refused the request because its queue is full (SGLang's 503)."""

    def __init__(self, message: str = "engine queue is full") -> None:
        super().__init__(message, status_code=503, retryable=True)


@runtime_checkable
class Engine(Protocol):
    name: str

    def submit(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        """Stream chunks; the last one has `finish_reason` set. Raises EngineError."""
        ...

    async def abort(self, rid: str) -> None: ...

    async def load(self) -> EngineLoad: ...

    async def info(self) -> EngineInfo: ...

    async def health(self) -> bool: ...

    async def close(self) -> None: ...
