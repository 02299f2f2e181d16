"""OpenAI request parsing and validation, and response shaping (chat and text completions).

Validation is strict where a mistake would be silent (types, ranges, unknown roles) and lenient
where OpenAI is (unknown top-level keys are ignored, as OpenAI-compatible servers do).
"""
from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from controlplane.errors import ApiError, parse_json
from controlplane.requests import CompletionRequest
from engine_adapter.tokens import estimate_chat_tokens, estimate_tokens

_ROLES = {"system", "developer", "user", "assistant", "tool"}
# OpenAI sampling fields -> SGLang sampling_params names
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty", "seed": "sampling_seed", "n": "n"}
_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "frequency_penalty": (-2.0, 2.0),
           "presence_penalty": (-2.0, 2.0)}


def _bad(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{key}' must be a number", key, "invalid_type")
    lo, hi = _RANGES.get(key, (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise _bad(f"'{key}' must be between {lo} and {hi}, got {value}", key, "invalid_value")
    return float(value)


def _int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{key}' must be an integer", key, "invalid_type")
    return value


def render_chat(messages: list[dict[str, Any]]) -> str:
    """Llama 3 chat template as text; SGLang's tokenizer maps the header strings to special tokens."""
    parts = ["<|begin_of_text|>"]
    for m in messages:
        parts.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text is supported by this gateway
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}]: only text parts are supported", f"messages[{i}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
               "invalid_type")


def parse_completion(raw: bytes, kind: str, *, max_tokens_limit: int, default_max_tokens: int = 256) -> CompletionRequest:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model", "missing_required_parameter")

    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("'messages' is required and must be a non-empty array", "messages",
                       "missing_required_parameter")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
            role = m.get("role")
            if role not in _ROLES:
                raise _bad(f"messages[{i}].role must be one of {sorted(_ROLES)}", f"messages[{i}].role",
                           "invalid_value")
            clean.append({"role": role, "content": _content_text(m.get("content"), i)})
        prompt, prompt_tokens = render_chat(clean), estimate_chat_tokens(clean)
        limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            raise _bad("'prompt' is required and must be a string (batched prompts are not supported)", "prompt",
                       "missing_required_parameter" if p is None else "invalid_type")
        prompt, prompt_tokens = p, estimate_tokens(p)
        limit_key = "max_tokens"

    max_tokens = _int(body, limit_key)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        raise _bad(f"'{limit_key}' must be at least 1, got {max_tokens}", limit_key, "invalid_value")
    if max_tokens > max_tokens_limit:
        raise _bad(f"'{limit_key}' must be at most {max_tokens_limit}, got {max_tokens}", limit_key, "invalid_value")

    stream = body.get("stream")
    if stream is None:  # null means the default, as OpenAI's own API reads it
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise _bad("'stream_options' must be an object with a boolean 'include_usage'", "stream_options",
                       "invalid_type")
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
        include_usage = opts.get("include_usage", False)

    sampling: dict[str, Any] = {"max_new_tokens": max_tokens}
    for key, target in _SAMPLING.items():
        value = _int(body, key) if key in ("seed", "n") else _number(body, key)
        if value is not None:
            sampling[target] = value
    if sampling.get("n", 1) != 1:
        raise _bad("only n = 1 is supported", "n", "invalid_value")
    sampling.pop("n", None)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise _bad("'stop' must be a string or an array of at most 4 strings", "stop", "invalid_type")
        sampling["stop"] = stop
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user", "invalid_type")
    return CompletionRequest(kind, model, prompt, prompt_tokens, max_tokens, stream, include_usage, sampling, user)


# -- responses ---------------------------------------------------------------------------------


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

    def chunk(self, text: str | None, reason: str | None, first: bool = False) -> bytes:
        if self._chat:
            if text:
                body = (b'"delta":{"role":"assistant","content":' if first else b'"delta":{"content":') \
                    + _json_str(text).encode() + b"}"
            else:
                body = b'"delta":{"role":"assistant"}' if first else b'"delta":{}'
        else:
            body = b'"text":' + _json_str(text).encode() if text else b'"text":""'
        return self._head + body + _finish_tail(reason)


def usage_chunk(kind: str, rid: str, model: str, created: int, u: dict[str, Any]) -> bytes:
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    payload = {"id": response_id(kind, rid), "object": obj, "created": created, "model": model, "choices": [],
               "usage": u}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_event(err: ApiError) -> bytes:
    return b"data: " + err.to_bytes() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def full_response(kind: str, rid: str, model: str, created: int, text: str, reason: str | None,
                  u: dict[str, Any]) -> dict[str, Any]:
    if kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                  "logprobs": None, "finish_reason": finish_reason(reason)}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason(reason)}
        obj = "text_completion"
    return {"id": response_id(kind, rid), "object": obj, "created": created, "model": model, "choices": [choice],
            "usage": u}
