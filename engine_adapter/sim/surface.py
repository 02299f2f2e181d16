"""What the simulated engine writes for an OpenAI request: the surface tests rely on, not a model.

A real engine decodes under a grammar, calls tools through its parser and samples logprobs; the
simulator only has to be *shaped* right, deterministically:

* `response_format` json_object / json_schema: the reply is the minimal valid instance of the
  schema (`minimal_instance`), as JSON text;
* `tools` with `tool_choice` "required" or a named function: one call of that function (the first
  tool for "required") whose arguments are the minimal instance of its `parameters`, and
  finish_reason "tool_calls"; with "auto" (or none) the simulated model answers in text;
* `stop`: the synthetic text ends before the first stop string (finish_reason "stop");
* `logprobs`/`top_logprobs` (chat) or `logprobs: k` (text): one entry per token, OpenAI's shape;
* `echo` (text): the prompt comes first, outside the completion's token count.

A reply is a list of token pieces; `Script.extra` turns the pieces of one delta into the OpenAI
fields that go with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PIECE_CHARS = 4  # structured output is cut into tokens of this many characters


def minimal_instance(schema: Any) -> Any:
    """The smallest value that the JSON schema accepts (the subset tests use: types, required,
    enum/const, min lengths and counts, anyOf/oneOf/allOf)."""
    if not isinstance(schema, dict):
        return {}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0])
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return minimal_instance(merged)
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: minimal_instance(props.get(name, {})) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal_instance(schema.get("items", {})) for _ in range(int(schema.get("minItems", 0)))]
    if kind == "string":
        return "a" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = 0 if low is None else (low + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else low)
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return {}


def _cut(text: str) -> list[str]:
    return [text[i:i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


@dataclass(slots=True)
class Script:
    """A reply fixed in advance (`pieces`, one per token) or free synthetic text (`pieces` None)."""

    chat: bool
    pieces: list[str] | None = None
    tool: str | None = None  # the called function's name: the pieces are its arguments
    call_id: str = ""
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs
    echo: str | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool else "stop"

    def extra(self, pieces: list[str], first: bool) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if self.tool is not None:
            call: dict[str, Any] = {"index": 0, "function": {"arguments": "".join(pieces)}}
            if first:
                call.update(id=self.call_id, type="function")
                call["function"]["name"] = self.tool
            out["tool_calls"] = [call]
        if self.top_logprobs is not None and pieces:
            out["logprobs"] = self._logprobs(pieces)
        return out or None

    def _logprobs(self, pieces: list[str]) -> dict[str, Any]:
        k = self.top_logprobs or 0
        lp = [-0.25 * (1 + i % 4) for i in range(len(pieces))]
        alts = [[(p, v)] + [(f"alt{j}", v - 1.0 - j) for j in range(k - 1)] for p, v in zip(pieces, lp)]
        if self.chat:
            return {"content": [{"token": p, "logprob": v, "bytes": list(p.encode()),
                                 "top_logprobs": [{"token": t, "logprob": tv, "bytes": list(t.encode())}
                                                  for t, tv in a[:k]]}
                                for p, v, a in zip(pieces, lp, alts)]}
        offsets, pos = [], 0
        for p in pieces:
            offsets.append(pos)
            pos += len(p)
        return {"tokens": list(pieces), "token_logprobs": lp, "text_offset": offsets,
                "top_logprobs": [dict(a[:k]) for a in alts] if k else None}


def script_for(body: dict[str, Any], rid: str) -> Script:
    """The simulated reply to an OpenAI request body (already validated by the caller). Raises
    ValueError for a grammar it cannot write to (`regex`, `ebnf`): refused, never ignored."""
    for key in ("regex", "ebnf", "structural_tag"):
        if body.get(key) is not None:
            raise ValueError(f"the simulated engine cannot generate under a '{key}' grammar")
    chat = "messages" in body
    script = Script(chat, call_id=f"call_{rid[:24]}")
    stop = body.get("stop")
    script.stop = [stop] if isinstance(stop, str) else list(stop or [])
    if chat:
        if body.get("logprobs"):
            script.top_logprobs = int(body.get("top_logprobs") or 0)
    elif body.get("logprobs") is not None:
        script.top_logprobs = int(body["logprobs"])
    if not chat and body.get("echo"):
        prompt = body.get("prompt")
        script.echo = prompt if isinstance(prompt, str) else None
    tool = _called_tool(body)
    if tool is not None:
        script.tool = tool.get("name", "")
        script.pieces = _cut(json.dumps(minimal_instance(tool.get("parameters") or {"type": "object"})))
        return script
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        script.pieces = _cut("{}")
    elif fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        script.pieces = _cut(json.dumps(minimal_instance(schema)))
    return script


def native_body(sampling: dict[str, Any]) -> dict[str, Any] | None:
    """The OpenAI fields that native `/generate` sampling params ask the simulator for (a
    `json_schema` string, `stop`, a grammar), or None when the free synthetic text will do."""
    body: dict[str, Any] = {k: sampling[k] for k in ("stop", "regex", "ebnf", "structural_tag") if sampling.get(k)}
    if sampling.get("json_schema"):
        schema = sampling["json_schema"]
        schema = json.loads(schema) if isinstance(schema, str) else schema
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    return body or None


def _called_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t.get("function", {}) for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return tools[0]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t.get("name") == name), None)
    return None


def stop_cut(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """The tokens up to the one that completes the first stop string, their text ending before the
    stop string (OpenAI leaves it out); True when a stop string matched."""
    text = "".join(pieces)
    best: tuple[int, int] | None = None
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0 and (best is None or i < best[0]):
            best = (i, i + len(s))
    if best is None:
        return pieces, False
    end, stop_end = best
    out, pos = [], 0
    for p in pieces:
        if pos >= stop_end:
            break
        out.append(p[:max(0, end - pos)])
        pos += len(p)
    return out, True
