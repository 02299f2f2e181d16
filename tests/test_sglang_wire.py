"""The transport-free stream decoder: however the bytes of an answer are split across reads, the
chunks it gives are the same, and they add up to the answer (text, counts, finish)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_adapter.base import EngineError
from engine_adapter.sglang_wire import StreamDecoder

WORDS = st.lists(st.text(alphabet="abc é\n\"\\{}", min_size=1, max_size=6), min_size=1, max_size=12)


def native_stream(words: list[str], incremental: bool, crlf: bool) -> bytes:
    """SGLang's /generate SSE: cumulative text by default, deltas with --incremental-streaming-output."""
    events, text = [], ""
    for i, w in enumerate(words, 1):
        text += w
        last = i == len(words)
        meta = {"prompt_tokens": 7, "completion_tokens": i, "cached_tokens": 2,
                "finish_reason": {"type": "length", "length": i} if last else None}
        events.append({"text": w if incremental else text, "output_ids": list(range(1 if incremental else i)),
                       "meta_info": meta})
    end = b"\r\n" if crlf else b"\n"
    return b"".join(b"data: " + json.dumps(e).encode() + end + end for e in events) + b"data: [DONE]" + end + end


def openai_stream(words: list[str]) -> bytes:
    """SGLang's OpenAI chat SSE with continuous usage: the finish chunk, then the closing usage chunk."""
    def ev(obj):
        return b"data: " + json.dumps(obj).encode() + b"\n\n"
    out = [ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": None}],
               "usage": {"prompt_tokens": 5, "completion_tokens": i, "prompt_tokens_details": {"cached_tokens": 1}}})
           for i, w in enumerate(words, 1)]
    out.append(ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 5, "completion_tokens": len(words)}}))
    out.append(ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words),
                                            "prompt_tokens_details": {"cached_tokens": 1}}}))
    return b"".join(out) + b"data: [DONE]\n\n"


def decode(data: bytes, cuts: list[int], oai: bool | None) -> tuple[list[tuple], StreamDecoder]:
    dec = StreamDecoder("e", oai)
    chunks = []
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in zip(bounds, bounds[1:]):
        if dec.over:
            break
        chunks += dec.feed(data[a:b])
    chunks += dec.end()
    return [(c.text, c.completion_tokens, c.prompt_tokens, c.cached_tokens, c.finish_reason) for c in chunks], dec


@settings(max_examples=150, deadline=None)
@given(WORDS, st.booleans(), st.booleans(), st.lists(st.integers(0, 4000), max_size=30))
def test_native_stream_decodes_the_same_however_it_is_split(words, incremental, crlf, cuts):
    data = native_stream(words, incremental, crlf)
    whole, _ = decode(data, [], None)
    split, dec = decode(data, cuts, None)
    assert split == whole
    assert "".join(t for t, *_ in split) == "".join(words)
    assert split[-1][1:] == (len(words), 7, 2, "length") and dec.settled and dec.final is not None


@settings(max_examples=150, deadline=None)
@given(WORDS, st.lists(st.integers(0, 4000), max_size=30))
def test_openai_stream_decodes_the_same_however_it_is_split(words, cuts):
    data = openai_stream(words)
    whole, _ = decode(data, [], True)
    split, dec = decode(data, cuts, True)
    assert split == whole
    assert "".join(t for t, *_ in split) == "".join(words)
    # the finish chunk was held for the closing usage chunk: it carries the cached tokens
    assert split[-1][1:] == (len(words), 5, 1, "stop") and dec.settled


def test_an_in_band_error_is_raised_after_the_chunks_before_it_and_says_why_to_the_tenant():
    data = (b'data: {"text":"a","meta_info":{"completion_tokens":1}}\n\n'
            b'data: {"error":{"message":"prompt too long","code":400}}\n\n')
    dec = StreamDecoder("e", None)
    chunks = dec.feed(data)
    assert [c.text for c in chunks] == ["a"] and dec.over and dec.settled
    assert isinstance(dec.failure, EngineError) and dec.failure.status_code == 400
    assert dec.failure.client_message == "prompt too long"


@pytest.mark.parametrize("oai", [None, True])
def test_a_body_that_ends_before_the_finish_is_not_over(oai):
    data = native_stream(["a", "b"], False, False) if oai is None else openai_stream(["a", "b"])
    cut = data.index(b"finish_reason") - 40  # inside the stream, before its finish
    dec = StreamDecoder("e", oai)
    dec.feed(data[:cut])
    assert dec.end() == [] and dec.final is None and not dec.over
