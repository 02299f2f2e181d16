"""The floor of proxying an SSE stream in Python on this machine: CPU per event of a relay that
does nothing but forward bytes (issue 11 item 1: sluice's target is 20 us per proxied event).

Three processes on loopback TCP: an engine stand-in that sends one SSE event per stream every
`--interval-ms` (as SGLang sends one per token per stream, each its own `send`), `--streams`
streams at once; a relay (an `asyncio.Protocol` per side on uvloop: each read from the engine
written at once to its client, no parsing, no HTTP, no task per event); and a client that only
reads. The relay's CPU (`time.process_time`, once every stream is linked) divided by the events it forwarded is
the least a Python proxy on this event loop pays per event: one `recv`, one `send` (loopback TCP:
the sender's `send` carries the TCP path of both ends), an epoll wake-up and two protocol
callbacks. What sluice spends per event above it is parsing, encoding and its own bookkeeping.

    .venv/bin/python bench/bench_relay_floor.py [--streams 32] [--interval-ms 10] [--seconds 10]
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from multiprocessing import Process, Queue

EVENT = b'data: {"text":" token","meta_info":{"id":"0123456789abcdef","completion_tokens":17}}\n\n'


def engine(port: int, streams: int, interval_s: float, seconds: float) -> None:
    """Accepts `streams` connections, then sends one event on each every `interval_s`, staggered."""
    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []
        ready = asyncio.Event()

        async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.transport.set_write_buffer_limits(0)
            writers.append(w)
            if len(writers) == streams:
                ready.set()
        server = await asyncio.start_server(accept, "127.0.0.1", port)
        await ready.wait()
        start = time.monotonic()
        due = [start + k * interval_s / streams for k in range(streams)]  # staggered
        while time.monotonic() < start + seconds:
            now = time.monotonic()
            for k, w in enumerate(writers):  # at most one event per stream per pass: its own send
                if due[k] <= now:
                    w.write(EVENT)
                    due[k] += interval_s
            await asyncio.sleep(0.001)
        for w in writers:
            w.close()
        server.close()
    import uvloop
    uvloop.run(main())


class _Side(asyncio.Protocol):
    hop = False  # --hop: each read wakes the stream's task, which writes (sluice's shape before the push path)

    def __init__(self) -> None:
        self.peer: asyncio.Transport | None = None
        self.events = 0
        self.reads = 0
        self.pieces: list[bytes] = []
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.events += data.count(b"\n\n")
        self.reads += 1
        if self.hop:
            self.pieces.append(data)
            w = self.waiter
            if w is not None and not w.done():
                w.set_result(None)
        elif self.peer is not None:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pieces.append(b"")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if self.peer is not None and not self.hop:
            self.peer.close()

    async def read_some(self) -> bytes:
        while not self.pieces:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        data = b"".join(self.pieces)
        self.pieces = []
        return data

    async def batches(self):  # the adapter's async generator
        while piece := await self.read_some():
            yield piece

    async def pump(self) -> None:
        """The stream's task: one wake-up, one generator step and one awaited write per read."""
        async def send(message: dict) -> None:  # an ASGI send that never waits
            self.peer.write(message["body"])  # type: ignore[union-attr]
        async for piece in self.batches():
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        self.peer.close()  # type: ignore[union-attr]


def relay(engine_port: int, listen: socket.socket, streams: int, out: Queue, hop: bool) -> None:
    """Per client connection, one connection to the engine; bytes from the engine go straight to the client
    (or, with `hop`, through a task per stream)."""
    _Side.hop = hop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sides: list[_Side] = []
        start = [0.0, 0, 0]
        done = asyncio.Event()

        class Client(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                async def link() -> None:
                    _, up = await loop.create_connection(_Side, "127.0.0.1", engine_port)
                    up.peer = transport  # type: ignore[assignment]
                    if up.hop:
                        loop.create_task(up.pump())
                    sides.append(up)
                    if len(sides) == streams:  # measured from here: no start-up, no connection set-up
                        start[:] = [time.process_time(), sum(s.events for s in sides), sum(s.reads for s in sides)]
                loop.create_task(link())

            def connection_lost(self, exc: Exception | None) -> None:
                if len(sides) == streams and all(s.transport.is_closing() for s in sides):
                    done.set()

        server = await loop.create_server(Client, sock=listen)
        await done.wait()
        server.close()
        out.put((sum(s.events for s in sides) - start[1], sum(s.reads for s in sides) - start[2],
                 time.process_time() - start[0]))
    import uvloop
    uvloop.run(main())


def client(port: int, streams: int) -> None:
    async def main() -> None:
        async def one() -> None:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            while await r.read(65536):
                pass
            w.close()
        await asyncio.gather(*(one() for _ in range(streams)))
    import uvloop
    uvloop.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--interval-ms", type=float, default=10.0, help="per stream, between its events")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hop", action="store_true",
                    help="each read wakes a task per stream that writes it (a future, a task step, an async "
                         "generator step and an awaited send per read): what a push path saves")
    args = ap.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        engine_port = probe.getsockname()[1]
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    listen.listen(1024)
    out: Queue = Queue()
    eng = Process(target=engine, args=(engine_port, args.streams, args.interval_ms / 1e3, args.seconds))
    eng.start()
    time.sleep(0.5)
    rel = Process(target=relay, args=(engine_port, listen, args.streams, out, args.hop))
    rel.start()
    cli = Process(target=client, args=(listen.getsockname()[1], args.streams))
    cli.start()
    events, reads, cpu = out.get(timeout=args.seconds + 60)
    for p in (rel, cli, eng):
        p.join(timeout=10)
    print(f"{'hop through a task: ' if args.hop else ''}{args.streams} streams, one event each every {args.interval_ms:g} ms ({args.streams / args.interval_ms * 1e3:.0f} "
          f"events/s offered): relay forwarded {events} events in {reads} reads at {cpu / max(1, events) * 1e6:.1f} us "
          f"CPU per event "
          f"(the floor of a Python proxy on uvloop here; sluice's target is 20 us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
