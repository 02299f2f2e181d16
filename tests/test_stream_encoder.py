"""StreamEncoder's bytes against an independently built OpenAI chunk (a dict through json)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from controlplane.gateway import openai_api as oa

RID, MODEL, CREATED = "0123456789abcdef0123456789abcdef", "llama-3.1-8b", 1_700_000_000

TEXTS = ["hello", " world", "", None, "héllo — ünïcödé 日本語 🎉", 'quo"tes\\back', "new\nline\r\ttab",
         "\x00\x01\x1f control", "</script>", "\u2028\u2029", "a" * 5000]
REASONS = [None, "stop", "length", "abort", "tool_calls"]


def expected(kind: str, text: str | None, reason: str | None, first: bool) -> dict:
    """The OpenAI chunk as the API reference describes it, built without any sluice helper."""
    finish = {"abort": "stop"}.get(reason, reason)  # OpenAI has no "abort"
    if kind == "chat":
        delta = {}
        if first:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        return {"id": "chatcmpl-" + RID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return {"id": "cmpl-" + RID, "object": "text_completion", "created": CREATED, "model": MODEL,
            "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}


def reference_chunk(kind: str, rid: str, model: str, created: int, text: str | None, reason: str | None,
                 first: bool = False) -> bytes:
    """The reference encoding of one SSE event: the chunk as a dict through json.dumps."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": oa.finish_reason(reason)}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": oa.finish_reason(reason)}
        obj = "text_completion"
    payload = {"id": oa.response_id(kind, rid), "object": obj, "created": created, "model": model, "choices": [choice]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def parse_event(raw: bytes) -> dict:
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    body = raw[6:-2]
    assert b"\n" not in body  # one SSE event: a raw newline would split it
    return json.loads(body)


@pytest.mark.parametrize("kind", ["chat", "text"])
@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("reason", REASONS)
@pytest.mark.parametrize("first", [True, False])
def test_chunk_matches_reference(kind, text, reason, first):
    enc = oa.StreamEncoder(kind, RID, MODEL, CREATED)
    raw = enc.chunk(text, reason, first)
    assert parse_event(raw) == expected(kind, text, reason, first)
    assert raw == reference_chunk(kind, RID, MODEL, CREATED, text, reason, first)  # byte for byte


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_first_chunk_role_and_model_escaping(kind):
    model = 'weird "model"\n/ü'
    enc = oa.StreamEncoder(kind, RID, model, CREATED)
    first, later = parse_event(enc.chunk("a", None, True)), parse_event(enc.chunk("b", None, False))
    assert first["model"] == later["model"] == model
    if kind == "chat":
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
        assert later["choices"][0]["delta"] == {"content": "b"}
        assert parse_event(enc.chunk("", None, True))["choices"][0]["delta"] == {"role": "assistant"}
        assert parse_event(enc.chunk("", "stop", False))["choices"][0]["delta"] == {}
    else:
        assert first["choices"][0]["text"] == "a" and "delta" not in first["choices"][0]


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_a_stream_reassembles_the_text(kind):
    pieces = ["Hel", "lo", ", ", "wörld", "\n", '"', "🎉", ""]
    enc = oa.StreamEncoder(kind, RID, MODEL, CREATED)
    events = [parse_event(enc.chunk(p, "length" if i == len(pieces) - 1 else None, i == 0))
              for i, p in enumerate(pieces)]
    key = (lambda c: c["delta"].get("content", "")) if kind == "chat" else (lambda c: c["text"])
    assert "".join(key(e["choices"][0]) for e in events) == "".join(pieces)
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (len(pieces) - 1) + ["length"]


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_usage_chunk(kind):
    u = oa.usage(12, 34, 5)
    ev = parse_event(oa.usage_chunk(kind, RID, MODEL, CREATED, u))
    assert ev == {"id": ("chatcmpl-" if kind == "chat" else "cmpl-") + RID,
                  "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                  "created": CREATED, "model": MODEL, "choices": [],
                  "usage": {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46,
                            "prompt_tokens_details": {"cached_tokens": 5}}}


def test_done_and_error_events():
    assert oa.DONE == b"data: [DONE]\n\n"
    from controlplane.errors import ApiError
    ev = parse_event(oa.error_event(ApiError(503, 'engine "x" died\n', code="engine_error")))
    assert ev["error"]["code"] == "engine_error" and ev["error"]["message"] == 'engine "x" died\n'
