"""Events that arrive together: SGLangHTTPEngine.submit_batches and the gateway's coalesced writes."""
from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator

import pytest

from engine_adapter.base import Chunk, EngineError, GenerateRequest
from engine_adapter.sglang_http import SGLangHTTPEngine
from tests.fake_engine import FakeEngine
from tests.gateway_fixtures import KEYS, running_gateway


def _event(text: str, n: int, finish=None, *, crlf: bool = False) -> bytes:
    obj = {"text": text, "output_ids": list(range(n)),
           "meta_info": {"id": "x", "finish_reason": finish, "prompt_tokens": 3, "completion_tokens": n,
                         "cached_tokens": 1}}
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return b"data: " + json.dumps(obj).encode() + end


async def _serve_writes(writes: list[bytes]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for w in writes:
            writer.write(w)
            await writer.drain()
            await asyncio.sleep(0.02)  # separate reads on the client side
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _req(rid: str) -> GenerateRequest:
    return GenerateRequest(rid=rid, prompt="p", sampling_params={"max_new_tokens": 4}, stream=True)


async def test_submit_batches_groups_one_read_and_keeps_every_event() -> None:
    # cumulative text; one write with three events (one CRLF-terminated), a comment, a line cut
    # across two writes, then the final event and [DONE]
    e3 = _event("a b c ", 3)
    writes = [b": keep-alive\n\n" + _event("a ", 1) + _event("a b ", 2, crlf=True) + e3[:20],
              e3[20:], _event("a b c d", 4, {"type": "length"}) + b"data: [DONE]\n\n"]
    server, port = await _serve_writes(writes)
    engine = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}")
    try:
        batches = [b async for b in engine.submit_batches(_req("b1"))]
    finally:
        await engine.close()
        server.close()
        await server.wait_closed()
    assert all(batches)
    assert [c.text for c in batches[0]][:2] == ["a ", "b "]  # one read, one batch (more if the client lagged)
    chunks = [c for b in batches for c in b]
    assert [c.text for c in chunks] == ["a ", "b ", "c ", "d"]
    assert [c.completion_tokens for c in chunks] == [1, 2, 3, 4]
    assert chunks[-1].finish_reason == "length" and all(c.finish_reason is None for c in chunks[:-1])
    assert all(c.prompt_tokens == 3 and c.cached_tokens == 1 for c in chunks)


async def test_an_error_event_after_tokens_in_the_same_read() -> None:
    bad = b'data: {"error": {"message": "boom", "code": 500}}\n\n'
    server, port = await _serve_writes([_event("a ", 1) + _event("a b ", 2) + bad])
    engine = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}")
    got: list[Chunk] = []
    try:
        with pytest.raises(EngineError, match="boom"):
            async for batch in engine.submit_batches(_req("b2")):
                got.extend(batch)
    finally:
        await engine.close()
        server.close()
        await server.wait_closed()
    assert [c.text for c in got] == ["a ", "b "]  # the tokens before the error still reach the caller


class BatchingEngine(FakeEngine):
    """FakeEngine whose chunks come in batches of `per` (as from one socket read)."""

    def __init__(self, per: int, **kw) -> None:
        super().__init__(**kw)
        self.per = per

    async def submit_batches(self, request: GenerateRequest) -> AsyncIterator[list[Chunk]]:
        batch: list[Chunk] = []
        gen = self.submit(request)
        try:
            async for chunk in gen:
                batch.append(chunk)
                if len(batch) == self.per or chunk.finish_reason:
                    yield batch
                    batch = []
        finally:
            await gen.aclose()


def _stream(server, kind: str, max_tokens: int) -> list[dict]:
    path, body = (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) if kind == "chat"
                  else ("/v1/completions", {"prompt": "hi"}))
    body.update(model="sluice-default", max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    assert resp.status == 200, raw
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


@pytest.mark.parametrize("kind", ["chat", "text"])
def test_gateway_sends_every_event_of_a_batch(tmp_path, kind):
    engine = BatchingEngine(3)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        events = _stream(server, kind, 7)
        assert sluice.pool.core.in_flight() == 0 and sluice.pool.core.queued() == 0 and not sluice.tickets
    chunks, usage = events[:-1], events[-1]
    assert len(chunks) == 7 and usage["usage"]["completion_tokens"] == 7
    if kind == "chat":
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    else:
        text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == "".join(f"w{i} " for i in range(1, 8))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 6 + ["length"]


def test_gateway_batches_die_mid_stream_mark_the_engine_and_close_once(tmp_path):
    engine = BatchingEngine(2, die_after=3)
    with running_gateway(tmp_path, {"fake": engine}) as (server, sluice):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": "sluice-default", "prompt": "x", "max_tokens": 8, "stream": True}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
        resp = conn.getresponse()
        raw = resp.read().decode()
        conn.close()
        assert resp.status == 200 and '"engine_error"' in raw and raw.endswith("data: [DONE]\n\n")
        assert raw.count('"text":"w') == 2  # the full batch before the failure was delivered
        assert not sluice.pool.core.engines["fake"].healthy
        assert sluice.pool.core.in_flight() == 0 and not sluice.tickets
