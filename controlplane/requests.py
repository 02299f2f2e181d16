"""What the runtime serves: one completion request, parsed and validated.

The gateway builds it (`gateway/openai_api.py`), the runtime (`service.py`) admits and streams
it; it lives below both so that neither imports the other for it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CompletionRequest:
    kind: str  # "chat" | "text"
    model: str
    prompt: str  # the text sent to the engine (chat messages rendered with the template)
    prompt_tokens: int  # estimate until the engine counts
    max_tokens: int
    stream: bool
    include_usage: bool
    sampling: dict[str, Any] = field(default_factory=dict)
    user: str | None = None
