"""What the runtime serves: one completion request, parsed and validated.

The gateway builds it (`gateway/openai_api.py`), the runtime (`service.py`) admits and streams
it; it lives below both so that neither imports the other for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import ApiError


@dataclass(slots=True)
class CompletionRequest:
    kind: str  # "chat" | "text"
    model: str
    prompt: str  # a text completion's prompt ("" for chat: the engine renders the messages)
    prompt_tokens: int  # estimate until the engine counts (corrected per model, see prompt_tokens.py)
    max_tokens: int
    stream: bool
    include_usage: bool
    sampling: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
    # The OpenAI body for the engine's OpenAI-compatible endpoint (messages or prompt, tools,
    # response_format, logprobs, ...); None sends `prompt` and `sampling` to the native API.
    body: dict[str, Any] | None = None
    max_tokens_default: bool = False  # the client did not set max_tokens: it may shrink to fit the context
    estimate: int = 0  # the raw prompt-token estimate, before the per-model correction
    pool: str = ""  # the model pool `model` names (controlplane/model_pools.py), set by the runtime's `route`
    adapter: str | None = None  # the LoRA adapter it runs with (`model:adapter`, an alias, the tenant's own)

    def fit_context(self, context: int) -> None:
        """Fit the model's context window as SGLang counts it (prompt + max_tokens < context): a default
        max_tokens shrinks to the room left, anything else that cannot fit is OpenAI's 400
        `context_length_exceeded` (no retry can make it fit, so never a 429)."""
        room = context - 1 - self.prompt_tokens
        if self.max_tokens_default and 1 <= room < self.max_tokens:
            self.max_tokens = self.sampling["max_new_tokens"] = room
            if self.body is not None:
                self.body["max_tokens"] = room
        if self.prompt_tokens + self.max_tokens < context:
            return
        where = "messages" if self.kind == "chat" else "prompt"
        raise ApiError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{self.prompt_tokens + self.max_tokens} tokens ({self.prompt_tokens} in the {where}, "
                       f"{self.max_tokens} in the completion). Please reduce the length of the {where} or completion.",
                       code="context_length_exceeded", param=where)
