"""Push mode of the streaming client (`SGLangHTTPEngine.submit_batches(request, push)`,
`StreamResponse.relay`) and the gateway's write without a task (`asgi_io.send_now`): every event
arrives in order from the connection's read callback, a backed-up consumer stops the reads until it
drained, and a consumer's error comes out as itself with the request aborted at the engine."""
from __future__ import annotations

import asyncio
import json

import pytest

from controlplane.gateway import openai_api as oa
from controlplane.gateway.asgi_io import Reply, send_now
from engine_adapter.base import Chunk, EngineError, GenerateRequest
from engine_adapter.sglang_http import SGLangHTTPEngine
from tests.test_http_stream import Server, _chunked, _ok
from tests.test_http_stream import _req as _req2

N = 12  # token events per stream, each its own write with a pause between


def _event(i: int, final: bool = False) -> bytes:
    meta = {"id": "r", "prompt_tokens": 2, "completion_tokens": i + 1,
            "finish_reason": {"type": "length"} if final else None}
    return b"data: " + json.dumps({"text": "".join(f" t{k}" for k in range(i + 1)), "meta_info": meta}).encode() + b"\n\n"


class StreamingServer:
    """Streams `N` events to each /generate, one write per event, `gap` apart (as SGLang sends one
    per decode step); records the paths it was asked for and when each event left."""

    def __init__(self, gap: float = 0.01) -> None:
        self.gap = gap
        self.paths: list[bytes] = []
        self.sent_at: list[float] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                path = head.split(b" ", 2)[1]
                self.paths.append(path)
                if path.endswith(b"/abort_request"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(N):
                    await asyncio.sleep(self.gap)
                    e = _event(i, final=i == N - 1)
                    writer.write(b"%x\r\n%s\r\n" % (len(e), e))
                    self.sent_at.append(asyncio.get_running_loop().time())
                writer.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()


def _req() -> GenerateRequest:
    return GenerateRequest(rid="r", prompt="p", sampling_params={"max_new_tokens": N})


async def _push_all(engine: SGLangHTTPEngine, backed_up_at: int, for_s: float) -> list[tuple[int, float]]:
    """Streams one request in push mode, the client backed up for `for_s` at the `backed_up_at`-th
    push; (completion tokens of the batch's last chunk, when) per push."""
    loop = asyncio.get_running_loop()
    pushed: list[tuple[int, float]] = []

    def push(batch):
        pushed.append((batch[-1].completion_tokens, loop.time()))
        if len(pushed) == backed_up_at:
            drained = loop.create_future()
            loop.call_later(for_s, drained.set_result, None)
            return drained
        return None

    try:
        assert [b async for b in engine.submit_batches(_req(), push)] == []  # all of it was pushed
    finally:
        await engine.close()
    return pushed


async def test_every_event_is_pushed_in_order_from_the_read_callback() -> None:
    async with StreamingServer() as url:
        engine = SGLangHTTPEngine("sg", url)
        pushed: list[tuple[list, object]] = []

        def push(batch):
            pushed.append((list(batch), asyncio.current_task()))

        try:
            yielded = [b async for b in engine.submit_batches(_req(), push)]
        finally:
            await engine.close()
    assert yielded == []  # all of it was pushed
    chunks = [c for batch, _ in pushed for c in batch]
    assert [c.completion_tokens for c in chunks] == list(range(1, N + 1))
    assert "".join(c.text for c in chunks) == "".join(f" t{k}" for k in range(N))
    assert chunks[-1].finish_reason == "length"
    # each read reached `push` straight from the protocol's callback: no task ran for it (the first
    # may come with the response's head, which the request's task reads)
    assert all(task is None for _, task in pushed[1:]) and len(pushed) >= N - 1


async def test_a_backed_up_consumer_stops_the_reads_until_it_drained() -> None:
    async with StreamingServer(gap=0.005) as url:
        pushed = await _push_all(SGLangHTTPEngine("sg", url), backed_up_at=2, for_s=0.2)
    released = pushed[1][1] + 0.2
    later = [(n, t) for n, t in pushed[2:]]
    assert later and all(t >= released - 0.01 for _, t in later)  # nothing was pushed while it was backed up
    assert later[-1][0] == N  # and nothing was lost: the events read meanwhile come after, in one piece or more
    assert [n for n, _ in pushed] == sorted(n for n, _ in pushed)


async def test_a_consumer_error_comes_out_as_itself_and_aborts_at_the_engine() -> None:
    server = StreamingServer(gap=0.02)
    async with server as url:
        engine = SGLangHTTPEngine("sg", url)

        def push(batch):
            if batch[-1].completion_tokens >= 3:
                raise ValueError("the gateway's own bug")

        try:
            with pytest.raises(ValueError, match="own bug"):  # not an EngineError: the engine did nothing wrong
                async for _ in engine.submit_batches(_req(), push):
                    pass
            for _ in range(100):
                if any(p.endswith(b"/abort_request") for p in server.paths):
                    break
                await asyncio.sleep(0.01)
        finally:
            await engine.close()
    assert any(p.endswith(b"/abort_request") for p in server.paths)


async def test_send_now_writes_at_once_or_hands_back_the_rest() -> None:
    sent: list[dict] = []
    gate = asyncio.Event()

    async def prompt_send(message: dict) -> None:
        sent.append(message)

    async def backed_up_send(message: dict) -> None:
        await gate.wait()  # as uvicorn's send waits for its transport to drain
        sent.append(message)

    assert send_now(prompt_send, {"n": 1}) is None and sent == [{"n": 1}]
    rest = send_now(backed_up_send, {"n": 2})
    assert rest is not None and sent == [{"n": 1}]
    asyncio.get_running_loop().call_later(0.05, gate.set)
    await rest
    assert sent == [{"n": 1}, {"n": 2}]

    gate.clear()
    rest = send_now(backed_up_send, {"n": 3})
    task = asyncio.ensure_future(rest)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()  # a client gone while backed up: the cancellation reaches the send where it waits
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize("backed_up", [False, True])
async def test_reply_writes_each_batch_and_holds_the_final_one(backed_up: bool) -> None:
    sent: list[dict] = []
    gate = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, gate.set)

    async def send(message: dict) -> None:
        if backed_up and len(sent) == 3:  # the client stops reading after two events, for 0.1 s
            await gate.wait()
        sent.append(message)

    engine_chunks = []
    async with StreamingServer(gap=0.001) as url:
        engine = SGLangHTTPEngine("sg", url)
        reply = Reply("rid-1")
        enc = oa.StreamEncoder("text", "rid-1", "m", 0)
        try:
            async for _ in engine.submit_batches(_req(), lambda b: engine_chunks.extend(b) or reply.stream_batch(b, enc, send)):
                pass
        finally:
            await engine.close()
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert all(m["more_body"] for m in sent[1:])
    # what was written, then what the response's end writes: the final batch, held back
    body = b"".join(m["body"] for m in sent[1:]) + reply.held
    events = [json.loads(e[6:]) for e in body.decode().split("\n\n") if e]
    assert "".join(e["choices"][0]["text"] for e in events) == "".join(f" t{k}" for k in range(N))
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert b'"finish_reason":"length"' in reply.held and len(engine_chunks) == N
    if backed_up:  # the events read while the client was backed up came after it drained, in order
        assert len(sent) >= 4


async def test_a_client_backed_up_longer_than_the_read_timeout_is_not_an_engine_stall() -> None:
    # reading stops while the client is backed up; that silence is sluice's, not the engine's
    async with StreamingServer(gap=0.005) as url:
        pushed = await _push_all(SGLangHTTPEngine("sg", url, timeout=0.3), backed_up_at=1, for_s=0.8)
    assert pushed[-1][0] == N


class _HeadThenBody(Server):
    """`Server`, the head and the body of each answer in two reads, 50 ms apart."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(next(int(ln.split(b":", 1)[1]) for ln in head.split(b"\r\n")
                                              if ln.lower().startswith(b"content-length")))
                self.heads.append(head)
                out = self.reply(len(self.heads))
                cut = out.index(b"\r\n\r\n") + 4
                writer.write(out[:cut])
                await asyncio.sleep(0.05)
                writer.write(out[cut:])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def test_a_connection_paused_by_a_push_goes_back_to_the_pool_reading() -> None:
    # the whole body comes in one read, its push is backed up, the client leaves: the connection is
    # complete and pooled, and the next request on it must be read (not time out as an engine stall)
    async with _HeadThenBody(_ok) as port:
        engine = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}", timeout=0.5)
        loop = asyncio.get_running_loop()
        try:
            async def first() -> None:
                async for _ in engine.submit_batches(_req2("r1"), lambda batch: loop.create_future()):
                    pass
            task = asyncio.create_task(first())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            chunks = [c async for b in engine.submit_batches(_req2("r2")) for c in b]
        finally:
            await engine.close()
    assert chunks[-1].finish_reason == "length"


def _malformed(n: int) -> bytes:
    good = {"text": "a", "meta_info": {"id": "x", "finish_reason": None, "prompt_tokens": 2, "completion_tokens": 1}}
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunked(b"data: " + json.dumps(good).encode() + b"\n\n", b"data: {not json}\n\n"))


@pytest.mark.parametrize("push", [None, lambda batch: None])
async def test_a_malformed_event_is_the_engines_error_pushed_or_pulled(push) -> None:
    async with Server(_malformed) as port:
        engine = SGLangHTTPEngine("sg", f"http://127.0.0.1:{port}", timeout=2)
        try:
            with pytest.raises(EngineError):
                async for _ in engine.submit_batches(_req2("r"), push):
                    pass
        finally:
            await engine.close()


async def test_send_now_lets_an_error_of_the_send_through() -> None:
    async def broken_send(message: dict) -> None:
        raise AttributeError("a bug in the server's send")

    with pytest.raises(AttributeError, match="server's send"):
        send_now(broken_send, {})


async def test_a_start_that_never_left_is_not_counted_as_sent() -> None:
    # the client is backed up at the response's start and the request is aborted meanwhile: the error
    # path must still send a start of its own
    gate = asyncio.Event()

    async def send(message: dict) -> None:
        await gate.wait()

    reply = Reply("rid")
    pending = reply.stream_batch([Chunk("hi", 1, 1, 0)], oa.StreamEncoder("text", "rid", "m", 0), send)
    task = asyncio.ensure_future(pending)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not reply.started
