"""`sluice serve --workers 2` over loopback: two real worker processes (spawned as `sluice serve` spawns
them) in front of one decision process, run here in a thread so that its core, tickets and
engines can be looked at. The engines are simulated ones living in the decision process, which
serves them to the workers over SGLang's HTTP API (sluice/workers.py)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import os
import signal
import threading
import time

import pytest
import uvicorn

from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from sluice.server import create_app
from sluice.workers import (RESPAWN_CHECK_S, RESPAWN_MAX_S, WORKER_STABLE_S, WorkerSupervisor, bind_listener,
                            decision_config, respawn_delay, with_workers)
from tests.gateway_fixtures import ADMIN, KEYS, make_config
from tests.test_gateway import wait_until


class RecordingSim(SimEngine):
    """The simulated engine, keeping the traceparent of every request it was sent."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.traceparents: dict[str, str | None] = {}

    def submit(self, request):  # type: ignore[override]
        self.traceparents[request.rid] = request.traceparent
        return super().submit(request)


class Stack:
    """The decision process (a thread here) with its two worker processes, on one shared port."""

    def __init__(self, tmp_path) -> None:
        self.sim = RecordingSim("sim0", load_profile("h100-llama3.1-8b"), seed=1, speedup=4.0)
        self.config = make_config(tmp_path, ["sim0"], window=1)  # one request on the engine at a time: a queue
        self.db = self.config.server.db_path
        self.sock = bind_listener("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.app, self.sluice = create_app(self.config, {"sim0": self.sim})
        rundir = tmp_path / "run"
        rundir.mkdir()
        self.supervisor = WorkerSupervisor(self.config, self.sluice, self.sock, 2, str(rundir))
        with_workers(self.app, self.supervisor)
        self.server = uvicorn.Server(decision_config(self.app, self.supervisor.http_path, self.config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Stack:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=60)
        assert self.server.started, "the decision process did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    @property
    def links(self):
        return sorted(self.supervisor.hub.links, key=lambda link: link.index)

    def request(self, path: str, body: object, key: str | None = KEYS["acme"], method: str = "POST",
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """One request on a connection of its own (the kernel hands each to either worker)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=body if isinstance(body, bytes) else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def complete(self, key: str = KEYS["acme"], max_tokens: int = 4, **extra: object):
        return self.request("/v1/completions", {"model": "sluice-default", "prompt": "hello workers",
                                                "max_tokens": max_tokens, **extra}, key)

    def admin(self, path: str, body: object = None, method: str = "POST"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request(method, "/admin/v1" + path, body=None if body is None else json.dumps(body),
                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data)


def on_loop(stack: Stack, fn):
    """`fn()` on the decision process's event loop (its core and tickets are not thread-safe)."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), stack.app.state.loop).result(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("workers")) as s:
        yield s


def until_both_workers(stack: Stack, send, limit: int = 200) -> list:
    """Sends `send()` until each worker has taken at least one since now; returns every answer."""
    before = {link.index: link.submitted for link in stack.links}
    answers = []
    while len(answers) < limit:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers += list(pool.map(lambda _: send(), range(4)))
        if all(link.submitted > before.get(link.index, 0) for link in stack.links):
            return answers
    raise AssertionError(f"one worker took none of {limit} connections")


def test_requests_through_both_workers_are_served_and_traced(stack):
    answers = until_both_workers(stack, stack.complete)
    assert len(stack.links) == 2 and {link.pid for link in stack.links}.isdisjoint({os.getpid()})
    assert all(status == 200 for status, _, _ in answers)
    rids = {headers["x-request-id"] for _, headers, _ in answers}
    assert len(rids) == len(answers)
    for _, _, body in answers:
        reply = json.loads(body)
        assert reply["object"] == "text_completion" and 1 <= reply["usage"]["completion_tokens"] <= 4
    wait_until(lambda: rids <= {r["rid"] for r in stack.sluice.stats.requests})
    rows = {r["rid"]: r for r in stack.sluice.stats.requests if r["rid"] in rids}
    for rid, row in rows.items():  # the decision process's span context reached the engine through the worker
        assert row["status"] == "ok" and row["engine"] == "sim0" and row["first_token_ts"] is not None
        assert stack.sim.traceparents[rid].split("-")[1] == row["trace_id"]


def test_bad_input_is_answered_by_the_worker_and_recorded_once(stack):
    status, headers, body = stack.request("/v1/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    status, _, body = stack.complete(key="sk-wrong")
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    status, headers, body = stack.request("/v1/completions", {"model": "nope", "prompt": "x"})
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    rid = headers["x-request-id"]
    wait_until(lambda: any(r["rid"] == rid for r in stack.sluice.stats.requests))
    row = next(r for r in stack.sluice.stats.requests if r["rid"] == rid)
    assert row["status"] == "rejected" and row["http_status"] == 404 and row["model"] == "nope"
    # the other routes are the decision process's, relayed by whichever worker took the connection
    status, _, body = stack.request("/health", None, key=None, method="GET")
    assert status == 200 and json.loads(body)["engines"] == ["sim0"]
    status, _, body = stack.request("/v1/models", None, method="GET")
    assert status == 200 and "sluice-default" in {m["id"] for m in json.loads(body)["data"]}


def test_a_paused_tenant_is_refused_on_both_workers(stack):
    assert stack.admin("/tenants/globex/pause", {"reason": "test"})[0] == 200
    try:
        answers = until_both_workers(stack, lambda: stack.complete(key=KEYS["globex"]))
        for status, headers, body in answers:
            assert status == 429 and json.loads(body)["error"]["code"] == "tenant_paused"
            assert headers["x-request-id"] and "retry-after" in headers
        assert stack.complete()[0] == 200  # the other tenant is served meanwhile
    finally:
        assert stack.admin("/tenants/globex/resume")[0] == 200


def _stream_open(stack: Stack, max_tokens: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=30)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"model": "sluice-default", "prompt": "a long one", "max_tokens": max_tokens, "stream": True,
         "ignore_eos": True}),  # no early stop: it holds the engine until aborted
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEYS['acme']}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    return conn, resp


def _queued(stack: Stack) -> int:
    return on_loop(stack, lambda: stack.sluice.snapshot(with_tenants=False).queued_by_tenant.get("acme", 0))


def _queued_per_link(stack: Stack) -> dict[int, int]:
    return on_loop(stack, lambda: {link.index: sum(1 for t in link.tickets.values() if not t.engine)
                                   for link in stack.supervisor.hub.links})


def _queue_until(stack: Stack, pool, send, enough, limit: int) -> list[concurrent.futures.Future]:
    """Sends requests one by one, each queued before the next (so their arrival order is known),
    until `enough()` or `limit` of them."""
    futures: list[concurrent.futures.Future] = []
    while len(futures) < limit and not enough():
        futures.append(pool.submit(send))
        n = len(futures)
        wait_until(lambda: _queued(stack) == n, timeout=15)  # noqa: B023 (called at once, in this iteration)
    return futures


def _complete_or_gone(stack: Stack):
    """A completion whose worker may be killed while it waits: (None, {}, b"") when the connection dies."""
    try:
        return stack.complete(max_tokens=2)
    except (ConnectionError, http.client.HTTPException):
        return None, {}, b""


def test_one_queue_across_workers_in_arrival_order(stack):
    """The engine's window is 1: a long stream holds it while requests arriving on both workers queue
    in the one core, and leave it in their arrival order once an operator aborts the stream."""
    conn, resp = _stream_open(stack, 30000)
    running = on_loop(stack, lambda: next(iter(stack.sluice.tickets)))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        waiting = _queue_until(stack, pool, lambda: stack.complete(max_tokens=2),
                               lambda: min(_queued_per_link(stack).values()) > 0, 16)
        per_link = _queued_per_link(stack)
        assert min(per_link.values()) >= 1 and sum(per_link.values()) == _queued(stack) == len(waiting)
        status, body = stack.admin(f"/requests/{running}/abort", {"reason": "make room"})
        assert status == 200 and body["aborted"] is True
        assert b'"code": "aborted"' in resp.read()  # the operator's abort reached the worker's stream
        answers = [f.result(timeout=30) for f in waiting]
    conn.close()
    assert all(status == 200 for status, _, _ in answers)
    rids = [h["x-request-id"] for _, h, _ in answers]
    wait_until(lambda: on_loop(stack, lambda: not stack.sluice.tickets))
    rows = on_loop(stack, lambda: {r["rid"]: r for r in stack.sluice.stats.requests})
    by_arrival = sorted(rids, key=lambda rid: rows[rid]["arrival_ts"])
    assert sorted(rids, key=lambda rid: rows[rid]["dispatch_ts"]) == by_arrival  # fcfs over both workers
    assert rows[running]["status"] == "aborted"


def test_a_killed_worker_leaks_no_slot(stack):
    conn, resp = _stream_open(stack, 30000)
    holder = on_loop(stack, lambda: next(link for link in stack.supervisor.hub.links if link.tickets))
    aborted_before = stack.sim.core.stats.aborted
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        queued = _queue_until(stack, pool, lambda: _complete_or_gone(stack),
                              lambda: _queued_per_link(stack).get(holder.index, 0) >= 2, 8)
        held = on_loop(stack, lambda: set(holder.tickets))  # its running request and those queued through it
        os.kill(holder.pid, signal.SIGKILL)
        # its running request is aborted at the engine, its queued ones leave the queue: nothing leaks
        wait_until(lambda: stack.sim.core.stats.aborted > aborted_before, timeout=10)
        wait_until(lambda: on_loop(stack, lambda: stack.sluice.pool.core.in_flight() == 0 and not stack.sluice.tickets),
                   timeout=30)
        answers = [f.result(timeout=30) for f in queued]
    conn.close()
    rows = on_loop(stack, lambda: {r["rid"]: r for r in stack.sluice.stats.requests})
    for rid in held:
        assert rows[rid]["status"] == "aborted" and rows[rid]["error"] == "worker_lost"
    served = [h["x-request-id"] for status, h, _ in answers if status is not None]
    assert len(served) == len(queued) - (len(held) - 1)  # the other worker's queued requests were served
    assert all(rows[rid]["status"] == "ok" for rid in served)
    wait_until(lambda: stack.supervisor.hub.ready() == 2, timeout=60)  # a new worker took its place
    assert stack.complete()[0] == 200


def test_a_worker_stopped_mid_stream_ends_it_and_its_row_then_exits_0(stack):
    """Ctrl-C twice (uvicorn's forced quit) on the worker holding a stream: the client gets an in-band
    abort, the row says why (not `worker_lost`: the close reached the decision process before the
    worker left), and the worker exits 0 with no traceback (its supervisor does not replace it)."""
    conn, resp = _stream_open(stack, 30000)
    holder = on_loop(stack, lambda: next(link for link in stack.supervisor.hub.links if link.tickets))
    rid = on_loop(stack, lambda: next(iter(holder.tickets)))
    index = next(i for i, p in enumerate(stack.supervisor.procs) if p.pid == holder.pid)
    proc = stack.supervisor.procs[index]
    try:
        os.kill(holder.pid, signal.SIGINT)
        time.sleep(0.5)  # two signals, not one: pending ones of a kind merge
        os.kill(holder.pid, signal.SIGINT)
        proc.join(30)
        body = resp.read()
        conn.close()
        assert proc.exitcode == 0
        assert b'"code": "aborted"' in body and b"request aborted: server_shutdown" in body
        wait_until(lambda: on_loop(stack, lambda: rid not in stack.sluice.tickets), timeout=10)
        row = on_loop(stack, lambda: next(r for r in stack.sluice.stats.requests if r["rid"] == rid))
        assert row["status"] == "aborted" and row["error"] == "server_shutdown"
    finally:
        if proc.exitcode == 0:  # told to stop: started again here, for the tests that follow
            stack.supervisor.procs[index] = stack.supervisor._spawn(index)
        wait_until(lambda: stack.supervisor.hub.ready() == 2, timeout=60)


def test_store_has_every_row_once(stack):
    """Every request the workers answered has exactly one row, written by the one writer."""
    store = stack.sluice.recorder.store
    wait_until(lambda: on_loop(stack, lambda: not stack.sluice.tickets))
    store.flush(timeout_s=10)  # a full write cycle after the last close (other rows may be pending again)
    seen = on_loop(stack, lambda: [r["rid"] for r in stack.sluice.stats.requests])
    cur = store.cursor()
    assert cur.execute("SELECT rid, count(*) FROM requests GROUP BY rid HAVING count(*) > 1").fetchall() == []
    assert set(seen) <= {rid for (rid,) in cur.execute("SELECT rid FROM requests").fetchall()}
    assert len(seen) == len(set(seen))


def test_a_failure_at_dispatch_answers_500_and_leaves_no_ticket(stack):
    """A bug between the core's dispatch and the worker's engine call (here the engine call's set-up
    raises) answers the worker's client in OpenAI's shape, as single-process serving does, instead
    of leaving it waiting for a dispatch that never comes."""
    def broken(ticket):
        raise RuntimeError("boom")

    on_loop(stack, lambda: setattr(stack.sluice, "engine_call", broken))
    try:
        status, headers, body = stack.request("/v1/completions", {"model": "sluice-default", "prompt": "x",
                                                                   "max_tokens": 2}, timeout=10)
    finally:
        on_loop(stack, lambda: delattr(stack.sluice, "engine_call"))
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    rid = headers["x-request-id"]
    wait_until(lambda: on_loop(stack, lambda: not stack.sluice.tickets and stack.sluice.pool.core.in_flight() == 0))
    row = on_loop(stack, lambda: next(r for r in stack.sluice.stats.requests if r["rid"] == rid))
    assert row["status"] == "error" and row["http_status"] == 500
    assert stack.complete()[0] == 200


def test_the_engines_served_to_the_workers_need_their_key(stack):
    """An engine of the decision process is served to the workers on a loopback port, which any local
    user can reach: without the key the workers were given, it generates nothing."""
    url = stack.supervisor._worker_config.engines[0].url
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/generate", body=json.dumps({"text": "x", "sampling_params": {"max_new_tokens": 1}}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 401, resp.read()
    conn.close()
    assert stack.complete()[0] == 200  # the workers hold the key


def test_a_lost_decision_process_gets_503_and_bad_input_still_answered(stack):
    """Last: it cuts the workers off. Their IPC connections drop, as when the decision process dies."""
    for link in on_loop(stack, lambda: list(stack.supervisor.hub.links)):
        on_loop(stack, link.transport.close)
    wait_until(lambda: not stack.supervisor.hub.links)  # any request from now on meets a closed channel
    status, headers, body = stack.complete()
    assert status == 503 and headers.get("retry-after") == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "service_unavailable" and error["type"] == "server_error"
    assert stack.request("/v1/completions", b"{not json")[0] == 400  # no round trip needed


def test_a_worker_dying_young_again_and_again_is_restarted_less_and_less_often():
    """A broken worker (a config or an engine it cannot reach) would otherwise cost an interpreter
    start every second, forever: each death within WORKER_STABLE_S of its start doubles the wait,
    up to RESPAWN_MAX_S; one that lived is replaced at once."""
    delays, d = [], 0.0
    for _ in range(10):
        d = respawn_delay(d, lived_s=2.0)
        delays.append(d)
    assert delays[:4] == [RESPAWN_CHECK_S, 2 * RESPAWN_CHECK_S, 4 * RESPAWN_CHECK_S, 8 * RESPAWN_CHECK_S]
    assert delays[-1] == RESPAWN_MAX_S and all(b >= a for a, b in zip(delays, delays[1:]))
    assert respawn_delay(RESPAWN_MAX_S, lived_s=WORKER_STABLE_S) == RESPAWN_CHECK_S
