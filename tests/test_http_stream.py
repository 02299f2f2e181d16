"""The lean streaming client (engine_adapter/http_stream.py) against raw asyncio servers: what
aiohttp did for `SGLangHTTPEngine` and the client must still do (keep-alive reuse, a stalled engine,
an idle connection the engine closed, chunked and connection-delimited bodies, a refused port)."""
from __future__ import annotations

import asyncio
import json

import pytest

from engine_adapter.base import EngineError, GenerateRequest
from engine_adapter.http_stream import ConnectFailed, StreamClient
from engine_adapter.sglang_http import SGLangHTTPEngine
from tests.test_sglang_http import free_port

_FINAL = {"text": "a b", "meta_info": {"id": "x", "finish_reason": {"type": "length"}, "prompt_tokens": 2,
                                       "completion_tokens": 2}}


def _chunked(*events: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


class Server:
    """Answers each request on a connection with `reply(n)` (n: requests seen so far), recording the
    request heads and how many connections were opened."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.heads: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(v for k, v in (ln.split(b": ", 1) for ln in head.split(b"\r\n")[1:] if b": " in ln)
                                  if k.lower() == b"content-length"))
                await reader.readexactly(length)
                self.heads.append(head)
                out = self.reply(len(self.heads))
                if out is None:  # stall: keep the connection open, send nothing more
                    await asyncio.sleep(30)
                    return
                writer.write(out)
                await writer.drain()
                if b"connection: close" in out.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def _ok(n: int) -> bytes:
    body = _chunked(b"data: " + json.dumps(_FINAL).encode() + b"\n\n", b"data: [DONE]\n\n")
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + body


def _req(rid: str) -> GenerateRequest:
    return GenerateRequest(rid=rid, prompt="p", sampling_params={"max_new_tokens": 2},
                           traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")


async def test_keep_alive_reuses_one_connection_and_sends_the_headers() -> None:
    srv = Server(_ok)
    async with srv as port:
        e = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}/prefix", api_key="k")
        try:
            for i in range(3):
                chunks = [c async for b in e.submit_batches(_req(f"r{i}")) for c in b]
                assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 2
        finally:
            await e.close()
    assert srv.connections == 1
    head = srv.heads[0].lower()
    assert head.startswith(b"post /prefix/generate http/1.1\r\n")
    assert b"authorization: bearer k\r\n" in head and b"traceparent: 00-" + b"ab" * 16 in head


async def test_a_stalled_engine_times_out_with_504() -> None:
    srv = Server(lambda n: None)  # the request is read, no byte of an answer follows
    async with srv as port:
        e = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}", timeout=0.3)
        try:
            with pytest.raises(EngineError) as info:
                async for _ in e.submit_batches(_req("st")):
                    pass
            assert info.value.status_code == 504 and info.value.retryable
        finally:
            await e.close()


async def test_headers_then_silence_times_out_too() -> None:
    def headers_only(n: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n" if n == 1 else _ok(n)

    srv = Server(headers_only)
    async with srv as port:
        client = StreamClient(f"http://127.0.0.1:{port}", {}, connect_timeout=2, read_timeout=0.3)
        resp = await client.post("/generate", b"{}")
        assert resp.status == 200 and await resp.read_some() == b"data:"
        with pytest.raises(TimeoutError):
            await resp.read_some()
        resp.release()
        client.close()


async def test_an_idle_connection_the_engine_closed_is_replaced() -> None:
    srv = Server(lambda n: _ok(n).replace(b"200 OK\r\n", b"200 OK\r\nConnection: close\r\n"))
    async with srv as port:
        client = StreamClient(f"http://127.0.0.1:{port}", {}, connect_timeout=2, read_timeout=5)
        for _ in range(2):
            resp = await client.post("/generate", b"{}")
            assert b"[DONE]" in await resp.read()
            resp.release()
        client.close()
    assert srv.connections == 2


async def test_a_body_delimited_by_the_connection_end() -> None:
    srv = Server(lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello")
    async with srv as port:
        client = StreamClient(f"http://127.0.0.1:{port}", {}, connect_timeout=2, read_timeout=5)
        resp = await client.post("/x", b"{}")
        assert await resp.read() == b"hello"
        resp.release()
        client.close()


async def test_a_refused_port_is_connect_failed() -> None:
    client = StreamClient(f"http://127.0.0.1:{free_port()}", {}, connect_timeout=2, read_timeout=5)
    with pytest.raises(ConnectFailed):
        await client.post("/generate", b"{}")


def test_a_bad_url_is_refused_when_the_engine_is_built() -> None:
    for url in ("ftp://h/x", "10.0.0.5:30000"):
        with pytest.raises(ValueError, match="http"):
            SGLangHTTPEngine("sg", url)
