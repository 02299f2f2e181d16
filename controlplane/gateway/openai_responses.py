"""OpenAI chat and text completion responses: the SSE events of a streamed reply (a fast encoder),
the usage chunk, in-band errors, and the whole JSON reply of a non-streamed one.

`openai_api` re-exports these names, the gateway's one import for the OpenAI surface.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from controlplane.errors import ApiError
from engine_adapter.base import Chunk
from engine_adapter.openai_chunks import message_fields, stream_choice


def response_id(kind: str, rid: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + rid


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def finish_reason(reason: str | None) -> str | None:
    return {"abort": "stop"}.get(reason, reason) if reason else None  # OpenAI has no "abort"


_FINISH_TAILS: dict[str | None, bytes] = {}


def _finish_tail(reason: str | None) -> bytes:
    """`,"logprobs":null,"finish_reason":<reason>}]}` + the event's end, cached per reason."""
    tail = _FINISH_TAILS.get(reason)
    if tail is None:
        mapped = finish_reason(reason)
        tail = (b',"logprobs":null,"finish_reason":' + (json.dumps(mapped).encode() if mapped else b"null")
                + b"}]}\n\n")
        if len(_FINISH_TAILS) < 64:
            _FINISH_TAILS[reason] = tail
    return tail


class StreamEncoder:
    """The SSE events of one streamed response, byte for byte what a dict through json.dumps gives (tests/test_stream_encoder.py).

    The part that is the same in every chunk (id, object, created, model) is encoded once per
    request; a chunk only escapes its text delta (the C JSON string encoder) and appends a cached
    finish_reason tail.
    """

    __slots__ = ("_head", "_chat")

    def __init__(self, kind: str, rid: str, model: str, created: int) -> None:
        self._chat = kind == "chat"
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        head = (f'data: {{"id":{_json_str(response_id(kind, rid))},"object":"{obj}","created":{int(created)},'
                f'"model":{_json_str(model)},"choices":[{{"index":0,')
        self._head = head.encode()

    def chunk(self, text: str | None, reason: str | None, first: bool = False,
              extra: dict[str, Any] | None = None) -> bytes:
        if extra:
            return self._rich(text, reason, first, extra)
        if self._chat:
            if text:
                body = (b'"delta":{"role":"assistant","content":' if first else b'"delta":{"content":') \
                    + _json_str(text).encode() + b"}"
            else:
                body = b'"delta":{"role":"assistant"}' if first else b'"delta":{}'
        else:
            body = b'"text":' + _json_str(text).encode() if text else b'"text":""'
        return self._head + body + _finish_tail(reason)

    def _rich(self, text: str | None, reason: str | None, first: bool, extra: dict[str, Any]) -> bytes:
        """A delta with tool calls, reasoning or logprobs: the plain JSON encoder (off the fast path)."""
        choice = stream_choice(text, extra, self._chat, first)
        choice["finish_reason"] = finish_reason(reason)
        return self._head + json.dumps(choice, separators=(",", ":"))[1:].encode() + b"]}\n\n"


def usage_chunk(kind: str, rid: str, model: str, created: int, u: dict[str, Any]) -> bytes:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    payload = {"id": response_id(kind, rid), "object": obj, "created": created, "model": model, "choices": [],
               "usage": u}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_event(err: ApiError) -> bytes:
    return b"data: " + err.to_bytes() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def full_response(kind: str, rid: str, model: str, created: int, chunks: list[Chunk], reason: str | None,
                  u: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed reply from the engine's chunks: texts joined, tool-call deltas merged into
    calls, logprobs concatenated."""
    chat = kind == "chat"
    choice = {"index": 0, **message_fields("".join(c.text for c in chunks), [c.extra for c in chunks if c.extra], chat),
              "finish_reason": finish_reason(reason)}
    return {"id": response_id(kind, rid), "object": "chat.completion" if chat else "text_completion",
            "created": created, "model": model, "choices": [choice], "usage": u}
