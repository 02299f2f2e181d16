"""The prefix hashes of a request's prompt: what dispatch's locality knows about it while serving.

The prompt's text is cut into blocks of `BLOCK_TOKENS` tokens' worth of characters (4 a token, as
the prompt estimate counts: engine_adapter/tokens.py) and each block's hash is chained to the one
before it, as vLLM's and SGLang's prefix caches and Mooncake's `hash_ids` are: block k's hash
stands for the whole prefix up to block k, so two prompts share their first k hashes exactly when
they share their first k blocks. The last block may be partial (an identical prompt matches whole).
Only the first `MAX_BLOCKS` are hashed (llm-d's maxPrefixBlocksToMatch): a longer shared prefix
gains little more. A chat's prompt is its messages in order, each as canonical JSON (roles, names,
tool calls and non-text parts included, as they change what the engine computes).

The hashes reach the core in `RequestSpec.prefix_hashes` (with `block_tokens`); replay passes the
workload's Mooncake `hash_ids` there instead (512-token blocks).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from controlplane.requests import CompletionRequest
from engine_adapter.tokens import CHARS_PER_TOKEN

BLOCK_TOKENS = 64  # tokens a block stands for (llm-d's default is 16; coarser keeps the index small)
MAX_BLOCKS = 256  # 16k tokens of prefix


def text_hashes(text: str, block_tokens: int = BLOCK_TOKENS, max_blocks: int = MAX_BLOCKS) -> tuple[int, ...]:
    """Chained 64-bit hashes of `text`'s leading blocks of `block_tokens * 4` characters."""
    size = block_tokens * CHARS_PER_TOKEN
    out: list[int] = []
    parent = b""
    for start in range(0, min(len(text), size * max_blocks), size):
        parent = hashlib.blake2b(parent + text[start:start + size].encode(), digest_size=8).digest()
        out.append(int.from_bytes(parent, "big"))
    return tuple(out)


def prompt_text(req: CompletionRequest) -> str:
    """The prompt as the prefix hashes see it: a completion's text, or a chat's messages."""
    if req.kind != "chat":
        return req.prompt
    messages: Any = (req.body or {}).get("messages") or []
    return "\n".join(json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for m in messages)


def request_prefix(req: CompletionRequest) -> tuple[tuple[int, ...], int]:
    """(prefix hashes, tokens per block) of a request, for its RequestSpec."""
    return text_hashes(prompt_text(req)), BLOCK_TOKENS
