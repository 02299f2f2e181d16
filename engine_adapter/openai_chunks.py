"""OpenAI completion chunks <-> `Chunk`: the one place that knows which choice fields are text and
which travel in `Chunk.extra` (tool-call deltas, reasoning, logprobs).

Used three ways: the HTTP adapter reads SGLang's `/v1/chat/completions` and `/v1/completions`
streams into chunks, the SGLang-compatible server writes chunks out as those streams, and the
gateway writes them to its clients (and merges them for a non-streamed reply).
"""
from __future__ import annotations

from typing import Any

DELTA_FIELDS = ("tool_calls", "reasoning_content")  # chat delta fields beside `content`


def choice_delta(choice: dict[str, Any], chat: bool) -> tuple[str, dict[str, Any] | None]:
    """A streamed choice's text and its other OpenAI fields (None when there are none)."""
    extra: dict[str, Any] = {}
    if chat:
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        for key in DELTA_FIELDS:
            if delta.get(key):
                extra[key] = delta[key]
    else:
        text = choice.get("text") or ""
    if choice.get("logprobs"):
        extra["logprobs"] = choice["logprobs"]
    return text, extra or None


def stream_choice(text: str | None, extra: dict[str, Any] | None, chat: bool, first: bool) -> dict[str, Any]:
    """A streamed choice (without index and finish_reason) for `text` and `extra`."""
    extra = extra or {}
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        delta.update((k, v) for k, v in extra.items() if k in DELTA_FIELDS)
        return {"delta": delta, "logprobs": extra.get("logprobs")}
    return {"text": text or "", "logprobs": extra.get("logprobs")}


def message_fields(text: str, extras: list[dict[str, Any]], chat: bool) -> dict[str, Any]:
    """A non-streamed choice's fields (without index and finish_reason) from the deltas' texts and extras."""
    merged = merge_extras(extras)
    if not chat:
        return {"text": text, "logprobs": merged.get("logprobs")}
    message: dict[str, Any] = {"role": "assistant", "content": text if text or "tool_calls" not in merged else None}
    message.update((k, v) for k, v in merged.items() if k in DELTA_FIELDS)
    return {"message": message, "logprobs": merged.get("logprobs")}


def merge_extras(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """The deltas' fields as one message's: tool calls by index (name and arguments concatenated),
    reasoning concatenated, logprobs lists concatenated."""
    out: dict[str, Any] = {}
    calls: dict[int, dict[str, Any]] = {}
    for extra in extras:
        for call in extra.get("tool_calls") or ():
            merged = calls.setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                             "function": {"name": "", "arguments": ""}})
            merged["id"] = call.get("id") or merged["id"]
            fn = call.get("function") or {}
            merged["function"]["name"] += fn.get("name") or ""
            merged["function"]["arguments"] += fn.get("arguments") or ""
        if extra.get("reasoning_content"):
            out["reasoning_content"] = out.get("reasoning_content", "") + extra["reasoning_content"]
        for key, value in (extra.get("logprobs") or {}).items():
            into = out.setdefault("logprobs", {})
            if isinstance(value, list):
                into.setdefault(key, []).extend(value)
            else:
                into.setdefault(key, value)
    if calls:
        out["tool_calls"] = [calls[i] for i in sorted(calls)]
    return out
