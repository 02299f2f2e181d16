"""OpenAI request parsing and validation (chat and text completions); the responses are shaped in
`openai_responses` (re-exported here).

Validation is strict where a mistake would be silent (types, ranges, unknown roles, unknown keys:
OpenAI's own API answers "Unrecognized request argument supplied" too). Every OpenAI
parameter is either forwarded to the engine's OpenAI-compatible endpoint (`CompletionRequest.body`:
the engine applies the model's chat template, tool-call and reasoning parsers, grammars, logprobs)
or refused with a 400 naming it; none is accepted and dropped.
"""
from __future__ import annotations

import math
from typing import Any

from controlplane.errors import ApiError, parse_json
from controlplane.gateway.openai_responses import (
    DONE,
    StreamEncoder,
    error_event,
    finish_reason,
    full_response,
    response_id,
    usage,
    usage_chunk,
)
from controlplane.requests import CompletionRequest
from engine_adapter.tokens import Counter, estimate_chat_tokens, estimate_tokens

__all__ = ["DONE", "StreamEncoder", "error_event", "finish_reason", "full_response", "parse_completion",
           "response_id", "usage", "usage_chunk"]

_ROLES = {"system", "developer", "user", "assistant", "tool"}
# OpenAI sampling fields -> SGLang sampling_params names
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "frequency_penalty": "frequency_penalty",
             "presence_penalty": "presence_penalty", "seed": "sampling_seed"}
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


def _content(content: Any, i: int, role: str, m: dict[str, Any]) -> None:
    """Content is a string, a list of typed parts (text, image_url, input_audio, ...: the engine
    decides what its model understands), or null on an assistant message that calls tools."""
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return
    if content is None:
        if role == "assistant" and (m.get("tool_calls") or m.get("refusal") is not None):
            return
        raise _bad(f"{where} is required (null only on an assistant message with tool_calls)", where,
                   "missing_required_parameter")
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or an array of content parts", where, "invalid_type")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}[{j}] must be an object with a string 'type'", where, "invalid_type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"{where}[{j}].text must be a string", where, "invalid_type")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' is required and must be a non-empty array", "messages", "missing_required_parameter")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in _ROLES:
            raise _bad(f"messages[{i}].role must be one of {sorted(_ROLES)}", f"messages[{i}].role", "invalid_value")
        _content(m.get("content"), i, role, m)
        calls = m.get("tool_calls")
        if calls is not None and (role != "assistant" or not isinstance(calls, list)
                                  or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                             for c in calls)):
            raise _bad(f"messages[{i}].tool_calls must be an array of function calls on an assistant message",
                       f"messages[{i}].tool_calls", "invalid_type")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise _bad(f"messages[{i}].tool_call_id is required on a tool message", f"messages[{i}].tool_call_id",
                       "missing_required_parameter")
    return messages


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) and isinstance(t["function"].get("parameters", {}), dict)
                for t in tools):
            raise _bad("'tools' must be an array of {\"type\": \"function\", \"function\": {\"name\", "
                       "\"parameters\"}}", "tools", "invalid_type")
        names = [t["function"]["name"] for t in tools]
        out["tools"] = tools
    if choice is not None:
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
            if choice.get("type") != "function" or name not in names:
                raise _bad("'tool_choice' must name one of the 'tools' as {\"type\": \"function\", "
                           "\"function\": {\"name\"}}", "tool_choice", "invalid_value")
        elif choice not in ("none", "auto", "required"):
            raise _bad("'tool_choice' must be 'none', 'auto', 'required' or a named function", "tool_choice",
                       "invalid_value")
        elif choice == "required" and not names:
            raise _bad("'tool_choice' is 'required' but no 'tools' are given", "tool_choice", "invalid_value")
        out["tool_choice"] = choice
    if body.get("parallel_tool_calls") is not None:
        out["parallel_tool_calls"] = _bool(body, "parallel_tool_calls")


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        raise _bad(f"'{key}' must be a boolean", key, "invalid_type")
    return value


def _response_format(body: dict[str, Any], out: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise _bad("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format",
                   "invalid_value")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) \
                or not isinstance(spec.get("schema", {}), dict):
            raise _bad("'response_format.json_schema' must be an object with a 'name' and an object 'schema'",
                       "response_format", "invalid_type")
    out["response_format"] = fmt


def _logit_bias(body: dict[str, Any], out: dict[str, Any]) -> None:
    bias = body.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict) or not all(
            isinstance(k, str) and k.isdigit() and not isinstance(v, bool) and isinstance(v, (int, float))
            and -100 <= v <= 100 for k, v in bias.items()):
        raise _bad("'logit_bias' must map token ids to numbers between -100 and 100", "logit_bias", "invalid_value")
    out["logit_bias"] = bias


def _logprobs(body: dict[str, Any], out: dict[str, Any], chat: bool) -> None:
    if chat:
        if body.get("logprobs") is not None and _bool(body, "logprobs"):
            out["logprobs"] = True
        top = _int(body, "top_logprobs")
        if top is not None:
            if not 0 <= top <= 20:
                raise _bad("'top_logprobs' must be between 0 and 20", "top_logprobs", "invalid_value")
            if not out.get("logprobs"):
                raise _bad("'top_logprobs' requires 'logprobs' to be true", "top_logprobs", "invalid_value")
            out["top_logprobs"] = top
        return
    k = _int(body, "logprobs")
    if k is not None:
        if not 0 <= k <= 5:
            raise _bad("'logprobs' must be between 0 and 5", "logprobs", "invalid_value")
        out["logprobs"] = k
    if body.get("echo") is not None and _bool(body, "echo"):
        out["echo"] = True


def _refuse_unsupported(body: dict[str, Any], chat: bool) -> None:
    """OpenAI parameters the engine would not honour: a 400 naming them, never a silent default."""
    for key, why in _UNSUPPORTED.items():
        if body.get(key) is not None and not (key == "store" and body[key] is False):
            raise _bad(f"'{key}' is not supported: {why}", key, "unsupported_parameter")
    if body.get("n") is not None and _int(body, "n") != 1:
        raise _bad("only n = 1 is supported (sluice admits, schedules and accounts one completion per request)",
                   "n", "unsupported_value")
    best_of = _int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise _bad("'best_of' is not supported (SGLang does not implement it)", "best_of", "unsupported_value")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise _bad("only text output is supported ('modalities': ['text'])", "modalities", "unsupported_value")
    if not chat and body.get("suffix") is not None:
        raise _bad("'suffix' is not supported (SGLang's /v1/completions does not implement it)", "suffix",
                   "unsupported_parameter")


_UNSUPPORTED = {
    "functions": "use 'tools'", "function_call": "use 'tool_choice'", "audio": "no audio output",
    "prediction": "no predicted outputs", "web_search_options": "no web search", "store": "completions are not stored",
}
_EXTRA_NUMBERS = ("top_k", "min_p", "repetition_penalty")  # SGLang's sampling extensions, forwarded
# every top-level key some part of parse_completion reads (the rest is refused by name)
_KNOWN = frozenset({
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream", "stream_options", "stop",
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "user", "n", "best_of", "suffix",
    "modalities", "logprobs", "top_logprobs", "echo", "logit_bias", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "reasoning_effort", "regex", "ebnf", "ignore_eos", *_EXTRA_NUMBERS, *_UNSUPPORTED})


def _refuse_unknown(body: dict[str, Any]) -> None:
    for key in body:
        if key not in _KNOWN:
            raise _bad(f"Unrecognized request argument supplied: {key}", key, "unknown_parameter")


def parse_completion(raw: bytes, kind: str, *, max_tokens_limit: int, default_max_tokens: int = 256,
                     count: Counter = estimate_tokens) -> CompletionRequest:
    """`count`: the prompt's token count before the engine's (the model's tokenizer when configured).

    The checks run in a fixed order (the first mistake found is the one reported), and `out` (the
    body forwarded to the engine) keeps the order its keys are added in."""
    body, model = _body_and_model(raw)
    chat = kind == "chat"
    _refuse_unknown(body)
    _refuse_unsupported(body, chat)
    out: dict[str, Any] = {}
    prompt, prompt_tokens, limit_key = _chat_input(body, out, count) if chat else _text_input(body, out, count)
    _logprobs(body, out, chat)
    _response_format(body, out)
    _logit_bias(body, out)
    max_tokens, default = _max_tokens(body, out, limit_key, default_max_tokens, max_tokens_limit)
    stream, include_usage = _stream(body)
    sampling = _sampling(body, out, max_tokens)
    _engine_extensions(body, out)
    _stop(body, sampling, out)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("'user' must be a string", "user", "invalid_type")
    return CompletionRequest(kind, model, prompt, prompt_tokens, max_tokens, stream, include_usage, sampling, user,
                             out, default, prompt_tokens)


def _body_and_model(raw: bytes) -> tuple[dict[str, Any], str]:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a string", "model", "missing_required_parameter")
    return body, model


def _chat_input(body: dict[str, Any], out: dict[str, Any], count: Counter) -> tuple[str, int, str]:
    """A chat request's messages, tools and reasoning effort: (prompt, its tokens, the token limit's key)."""
    messages = _messages(body)
    prompt_tokens = estimate_chat_tokens(messages, count)
    out["messages"] = messages
    limit_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    _tools(body, out)
    if body.get("reasoning_effort") is not None:
        if not isinstance(body["reasoning_effort"], str):
            raise _bad("'reasoning_effort' must be a string", "reasoning_effort", "invalid_type")
        out["reasoning_effort"] = body["reasoning_effort"]
    return "", prompt_tokens, limit_key


def _text_input(body: dict[str, Any], out: dict[str, Any], count: Counter) -> tuple[str, int, str]:
    """A text completion's prompt (one string, or an array of exactly one): as `_chat_input`."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise _bad("'prompt' is required and must be a string (batched prompts are not supported)", "prompt",
                   "missing_required_parameter" if p is None else "invalid_type")
    prompt_tokens = count(p)
    out["prompt"] = p
    return p, prompt_tokens, "max_tokens"


def _max_tokens(body: dict[str, Any], out: dict[str, Any], limit_key: str, default_max_tokens: int,
                max_tokens_limit: int) -> tuple[int, bool]:
    """The completion's token limit and whether it is the default (the client gave none)."""
    max_tokens = _int(body, limit_key)
    default = max_tokens is None
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        raise _bad(f"'{limit_key}' must be at least 1, got {max_tokens}", limit_key, "invalid_value")
    if max_tokens > max_tokens_limit:
        raise _bad(f"'{limit_key}' must be at most {max_tokens_limit}, got {max_tokens}", limit_key, "invalid_value")
    out["max_tokens"] = max_tokens
    return max_tokens, default


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream` and `stream_options.include_usage`."""
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
    return stream, include_usage


def _sampling(body: dict[str, Any], out: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """SGLang's sampling_params from the OpenAI sampling fields (each also forwarded in `out`)."""
    sampling: dict[str, Any] = {"max_new_tokens": max_tokens}
    for key, target in _SAMPLING.items():
        value = _int(body, key) if key == "seed" else _number(body, key)
        if value is not None:
            sampling[target] = value
            out[key] = value
    return sampling


def _engine_extensions(body: dict[str, Any], out: dict[str, Any]) -> None:
    """SGLang's own request fields beyond OpenAI's: extra sampling numbers, ignore_eos, grammars."""
    for key in _EXTRA_NUMBERS:
        value = _number(body, key)
        if value is not None:
            out[key] = int(value) if key == "top_k" else value
    if body.get("ignore_eos") is not None:  # SGLang's: no stop at end-of-sequence (benchmarks)
        out["ignore_eos"] = _bool(body, "ignore_eos")
    for key in ("regex", "ebnf"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise _bad(f"'{key}' must be a string", key, "invalid_type")
            out[key] = body[key]


def _stop(body: dict[str, Any], sampling: dict[str, Any], out: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise _bad("'stop' must be a string or an array of at most 4 strings", "stop", "invalid_type")
        sampling["stop"] = stop
        out["stop"] = stop
