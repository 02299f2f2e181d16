"""What a simulated request asks for and the text it gets back (`SimEngine`,
engine_adapter/sim/engine.py): the output length and grammar script a request resolves to, checked
as SGLang checks them, and the synthetic words of its reply.
"""
from __future__ import annotations

from typing import Any

from engine_adapter.base import EngineError, GenerateRequest
from engine_adapter.sim.surface import Script, native_body, script_for, stop_cut

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default
VOCAB = ("synthetic", "simulated", "tokens", "from", "the", "sluice", "sim", "engine", "lorem", "ipsum",
         "dolor", "sit", "amet")


def synthetic_text(offset: int, start: int, end: int) -> str:
    """Words for tokens [start, end) of a request: one word and a space per token."""
    n = len(VOCAB)
    return "".join(VOCAB[(offset + i) % n] + " " for i in range(start, end))


def synthetic_pieces(offset: int, n: int) -> list[str]:
    return [VOCAB[(offset + i) % len(VOCAB)] + " " for i in range(n)]


def reply_delta(script: Script | None, offset: int, start: int, end: int) -> tuple[str, dict[str, Any] | None]:
    """The text of tokens [start, end) and, for an OpenAI request, the fields that go with it."""
    if script is None:
        return synthetic_text(offset, start, end), None
    pieces = script.pieces[start:end] if script.pieces is not None else synthetic_pieces(offset + start, end - start)
    extra = script.extra(pieces, start == 0)
    text = "" if script.tool is not None else "".join(pieces)
    if start == 0 and script.echo is not None:
        text = script.echo + text
    return text, extra


def check_context(prompt_tokens: int, max_new: int, context: int) -> None:
    """SGLang's TokenizerManager._validate_one_request, its messages verbatim."""
    if prompt_tokens >= context:
        raise EngineError(f"The input ({prompt_tokens} tokens) is longer than the model's context length "
                          f"({context} tokens).", status_code=400, retryable=False)
    if prompt_tokens + max_new >= context:
        raise EngineError(
            f"Requested token count exceeds the model's maximum context length of {context} tokens. You requested "
            f"a total of {prompt_tokens + max_new} tokens: {prompt_tokens} tokens from the input messages and "
            f"{max_new} tokens for the completion. Please reduce the number of tokens in the input messages or "
            f"the completion to fit within the limit.", status_code=400, retryable=False)


def plan_reply(request: GenerateRequest, prompt_tokens: int,
               context_length: int) -> tuple[int, int | None, Script | None]:
    """`request`'s max_new_tokens, the output length it is forced to (None: not forced) and its
    grammar script; raises EngineError (400) on what SGLang refuses."""
    sampling = request.sampling_params
    if request.openai is not None:
        body = request.openai
        sampling = {"max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens"),
                    "ignore_eos": body.get("ignore_eos")}  # SGLang's OpenAI endpoints take it too
    max_new = sampling.get("max_new_tokens")
    max_new = DEFAULT_MAX_NEW_TOKENS if max_new is None else int(max_new)
    if max_new < 0:
        raise EngineError("max_new_tokens must be >= 0", status_code=400, retryable=False)
    check_context(prompt_tokens, max_new, context_length)
    # SGLang's ignore_eos: no end-of-sequence stop, the output runs to max_new_tokens
    output_tokens = max_new if sampling.get("ignore_eos") else request.output_tokens
    wanted = request.openai if request.openai is not None else native_body(sampling)
    try:
        script = script_for(wanted, request.rid) if wanted is not None else None
    except ValueError as e:  # a grammar the simulator cannot honour: refused, not ignored
        raise EngineError(str(e), status_code=400, retryable=False) from None
    if script is not None and script.pieces is None and script.stop:
        script.pieces, matched = stop_cut(synthetic_pieces(0, max_new), script.stop)
        if not matched:
            script.pieces = None
    if script is not None and script.pieces is not None:
        output_tokens = len(script.pieces)
    return max_new, output_tokens, script
