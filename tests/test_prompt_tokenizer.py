"""Issue 9 item 6: prompt counts from the model's own tokenizer when one is configured
([server] tokenizer = a tokenizer.json), the 4-characters estimate otherwise."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from controlplane.gateway.openai_api import parse_completion
from engine_adapter.tokens import estimate_chat_tokens, tokenizer_counter


@pytest.fixture
def word_tokenizer(tmp_path):
    """A one-token-per-word tokenizer: counts that differ from 4 characters per token."""
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["a", "supercalifragilistic", "word", "x"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_the_tokenizer_counts_the_prompt(word_tokenizer):
    count = tokenizer_counter(word_tokenizer)
    text = "supercalifragilistic supercalifragilistic word"
    assert count(text) == 3  # the estimate says 12 (46 characters / 4)
    body = json.dumps({"model": "m", "prompt": text}).encode()
    assert parse_completion(body, "text", max_tokens_limit=1000, count=count).prompt_tokens == 3
    assert parse_completion(body, "text", max_tokens_limit=1000).prompt_tokens == 12
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode()
    assert parse_completion(chat, "chat", max_tokens_limit=1000, count=count).prompt_tokens == \
        estimate_chat_tokens([{"role": "user", "content": text}], count) == 3 + 5 + 5


def test_a_missing_tokenizer_fails_start_up_with_one_line(tmp_path):
    from controlplane.config import Config, ServerConfig
    from sluice.server import StartupError, serve

    config = Config(server=ServerConfig(port=1, db_path=str(tmp_path / "s.duckdb"),
                                        tokenizer=str(tmp_path / "nope.json")))
    import asyncio

    with pytest.raises(StartupError, match="nope.json: cannot load the tokenizer"):
        asyncio.run(serve(config))
