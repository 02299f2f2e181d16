"""Token-count estimates used before an engine reports the real count.

The gateway needs a prompt length at admission time (to forecast prefill and to charge a tenant
ahead of time) but must not depend on a tokenizer. The heuristic is the usual one for English text
under BPE tokenizers of the Llama-3 / GPT-4 family: about **4 characters per token**, rounded up,
never less than 1. It is an estimate only: every count is reconciled with the engine's real
`prompt_tokens` when the first chunk arrives.

Chat messages add a small fixed overhead for the chat template: Llama-3's template wraps every
message in ``<|start_header_id|>role<|end_header_id|>\\n\\n ... <|eot_id|>`` (about 5 tokens with the
role name) and the prompt starts with ``<|begin_of_text|>`` and ends with the assistant header
(about 5 more tokens).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

Counter = Callable[[str], int]  # text -> its token count

CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 5  # role header + end-of-turn marker
PER_CONVERSATION_TOKENS = 5  # begin-of-text + the assistant header that primes the reply


def estimate_tokens(text: str) -> int:
    """ceil(len(text) / 4), at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def tokenizer_counter(path: str) -> Counter:
    """The count of the model's own tokenizer (a Hugging Face ``tokenizer.json``, read with the
    `tokenizers` library), special tokens included as the engine adds them. Raises OSError for a
    missing or unreadable file, so a bad config fails at start-up with one line."""
    from tokenizers import Tokenizer  # imported only when configured

    try:
        tokenizer = Tokenizer.from_file(path)
    except Exception as exc:  # the library raises a bare Exception for a malformed file
        raise OSError(0, f"cannot load the tokenizer ({exc})", path) from exc
    return lambda text: max(1, len(tokenizer.encode(text).ids))


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):  # a single content part
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, Iterable):  # OpenAI content parts: [{"type": "text", "text": ...}, ...]
        return "".join(_content_text(part) for part in content)
    return str(content)


def estimate_chat_tokens(messages: Iterable[Mapping[str, Any]], count: Counter = estimate_tokens) -> int:
    """Estimated prompt tokens of an OpenAI-style chat: content (4 chars/token, or `count`, the
    model's tokenizer) + template overhead (the template is the engine's; the per-model correction
    learns what these constants miss).

    Each message costs ``PER_MESSAGE_TOKENS`` plus its content (and its ``name``, if any); the whole
    conversation costs ``PER_CONVERSATION_TOKENS`` more. Non-text content parts count as nothing.
    """
    total = PER_CONVERSATION_TOKENS
    for message in messages:
        text = _content_text(message.get("content"))
        name = message.get("name")
        if isinstance(name, str) and name:
            text += name
        total += PER_MESSAGE_TOKENS + (count(text) if text else 0)
    return total
