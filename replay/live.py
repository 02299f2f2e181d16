"""Live replay: send a workload to any OpenAI-compatible endpoint and measure what a client sees.

Each request is a streaming ``POST /v1/completions`` (or ``/v1/chat/completions``) with
``max_tokens = output_length``, sent at ``timestamp / speedup`` after the start, with the tenant's API
key as ``Authorization: Bearer <key>``. The OpenAI API cannot force a length (there is no
``ignore_eos``), so ``output_length`` is an upper bound; pass ``extra_body={"ignore_eos": True}``
to servers that accept it (SGLang, vLLM). Prompts are synthetic text of about ``input_length`` words
(one word ~ one token); requests that share Mooncake ``hash_ids`` share their prefix text, so a
server's prefix cache sees the same reuse as in the trace. Input tokens are taken from the server's
``usage`` when it sends one, else the workload's ``input_length``.

Measured per request (client side, ``time.perf_counter``): TTFT (send -> first non-empty chunk),
ITLs (gaps between consecutive non-empty chunks), e2e (send -> end of stream), output tokens (the
server's ``usage.completion_tokens`` when present, else the number of non-empty chunks),
TPOT = (e2e - TTFT) / (output tokens - 1), HTTP status, error text and ``Retry-After``. A 429 is a
rejection; other HTTP errors, connection errors and broken streams are failures; nothing raises.
Aggregation is :func:`replay.report.summarize`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np

from replay.live_request import endpoint_url, measure_request
from replay.report import (
    CANCELLED,
    ERROR,
    RequestResult,
    SLOSpec,
    Summary,
    clean_json,
    summarize,
)
from replay.tables import format_benchmark_block, format_table
from replay.workload import HASH_BLOCK_TOKENS, WorkloadRequest

__all__ = ["LiveReport", "run_live", "synth_prompt"]

log = logging.getLogger(__name__)

OnResult = Callable[[RequestResult], Awaitable[None] | None]


@dataclass(slots=True)
class LiveReport:
    """Outcome of one live run: every request's result and the per-tenant summary."""

    base_url: str
    model: str
    speedup: float
    duration_s: float
    results: list[RequestResult]
    summary: Summary
    stopped: bool = False  # stopped early through the ``stop`` event
    not_sent: int = 0  # requests of the workload that were never sent (stopped early)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, per_request: bool = False) -> dict[str, Any]:
        """SGLang ``bench_serving``'s result layout: the run's settings and the overall row's
        fields at the top level, then ``per_tenant`` and ``per_class`` rows of the same fields."""
        overall = self.summary.overall.to_dict()
        del overall["name"]
        out: dict[str, Any] = {
            "base_url": self.base_url,
            "model": self.model,
            "request_rate": "trace",
            "speedup": self.speedup,
            "stopped": self.stopped,
            "not_sent": self.not_sent,
            **self.meta,
            **overall,
            "slo": self.summary.slo,
            "per_tenant": {t: r.to_dict() for t, r in self.summary.per_tenant.items()},
            "per_class": {c: r.to_dict() for c, r in self.summary.per_class.items()},
        }
        if per_request:
            out["requests"] = [r.to_dict() for r in self.results]
        return out

    def to_json(self, *, per_request: bool = False, **kw: Any) -> str:
        return json.dumps(clean_json(self.to_dict(per_request=per_request)), **kw)

    def format_text(self) -> str:
        return format_benchmark_block(self.summary.overall) + "\n\n" + format_table(self.summary)


def synth_prompt(req: WorkloadRequest, index: int) -> str:
    """Synthetic prompt of about ``req.input_length`` words.

    With ``hash_ids``, block ``h`` is the same text in every request that has it (so prefix caching
    behaves as in the trace); otherwise the prompt opens with a per-request marker so that unrelated
    requests do not share a prefix.
    """
    n = max(1, req.input_length)
    if req.hash_ids:
        parts: list[str] = []
        left = n
        for h in req.hash_ids:
            if left <= 0:
                break
            take = min(HASH_BLOCK_TOKENS, left)
            parts.append(f"b{h}" + " hi" * (take - 1))
            left -= take
        if left > 0:
            parts.append(f"r{index}" + " hi" * (left - 1))
        return " ".join(parts)
    return f"r{index}" + " hi" * (n - 1)


@dataclass(slots=True)
class _Sender:
    """A run's fixed request settings and its results: sends one request, records its result (also
    when it is cancelled or measurement breaks) and hands it to ``on_result``."""

    session: aiohttp.ClientSession
    url: str
    keys: Mapping[str, str]
    model: str
    endpoint: str
    extra_body: Mapping[str, Any] | None
    prompt_fn: Callable[[WorkloadRequest, int], str]
    sem: asyncio.Semaphore | None
    on_result: OnResult | None
    run_start: float
    results: list[RequestResult] = field(default_factory=list)

    async def send(self, idx: int, req: WorkloadRequest, scheduled_s: float) -> RequestResult:
        partial: list[RequestResult] = []
        try:
            r = await measure_request(self.session, self.url, idx, req, model=self.model,
                                      key=self.keys.get(req.tenant, self.keys.get("*")), endpoint=self.endpoint,
                                      extra_body=self.extra_body, run_start=self.run_start,
                                      scheduled_s=scheduled_s, prompt_fn=self.prompt_fn, sem=self.sem,
                                      partial=partial)
        except asyncio.CancelledError:
            if partial:
                partial[0].status, partial[0].error = CANCELLED, "cancelled"
            self.results.append(partial[0] if partial else _unfinished(idx, req, scheduled_s, CANCELLED, "cancelled"))
            raise
        except Exception as exc:  # defensive: a bug in measurement never kills the run
            log.exception("request %d failed unexpectedly", idx)
            r = _unfinished(idx, req, scheduled_s, ERROR, f"{type(exc).__name__}: {exc}")
        await self._deliver(r)
        return r

    async def _deliver(self, r: RequestResult) -> None:
        self.results.append(r)
        if self.on_result is not None:
            try:
                out = self.on_result(r)
                if inspect.isawaitable(out):
                    await out
            except Exception:  # a broken callback must not stop the run
                log.exception("on_result callback failed")


async def _wait_until_due(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleep ``delay`` seconds, or until ``stop`` is set; True if it is."""
    if stop is not None:
        if delay > 0 and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        # checked after the wait too: its timeout and the stop can come in the same loop turn
        return stop.is_set()
    if delay > 0:
        await asyncio.sleep(delay)
    return False


async def _send_on_schedule(workload: Sequence[WorkloadRequest], speedup: float, stop: asyncio.Event | None,
                            sender: _Sender, tasks: set[asyncio.Task[RequestResult]],
                            sent: dict[int, float]) -> bool:
    """Start each request's task at its due time, in timestamp order, noting it in ``tasks`` and
    ``sent`` (index -> due time, s); True if ``stop`` ended the sending early."""
    for idx in sorted(range(len(workload)), key=lambda i: workload[i].timestamp_ms):
        req = workload[idx]
        # timestamps count from the workload start (0): leading idle time is kept
        due_s = req.timestamp_ms / 1e3 / speedup if math.isfinite(speedup) else 0.0
        if await _wait_until_due(sender.run_start + due_s - time.perf_counter(), stop):
            return True
        task = asyncio.create_task(sender.send(idx, req, due_s))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent[idx] = due_s
    return False


async def _await_tasks(tasks: set[asyncio.Task[RequestResult]], stop: asyncio.Event | None) -> bool:
    """Wait for the requests in flight to finish; True if ``stop`` came first."""
    pending = set(tasks)
    if stop is None:
        await asyncio.gather(*pending, return_exceptions=True)
        return False
    waiter = asyncio.create_task(stop.wait())
    try:
        while pending:
            done, _ = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending = {t for t in pending if not t.done()}
            if waiter in done:
                return True
    finally:
        waiter.cancel()
    return False


async def run_live(base_url: str, workload: Sequence[WorkloadRequest], keys: Mapping[str, str] | None, *,
                   speedup: float = 1.0, model: str = "sluice-default", slo: SLOSpec = None,
                   max_concurrency: int | None = None, on_result: OnResult | None = None,
                   endpoint: Literal["completions", "chat"] = "completions",
                   extra_body: Mapping[str, Any] | None = None, request_timeout_s: float | None = None,
                   connect_timeout_s: float = 10.0, stop: asyncio.Event | None = None,
                   prompt_fn: Callable[[WorkloadRequest, int], str] = synth_prompt) -> LiveReport:
    """Replay ``workload`` against ``base_url`` (e.g. ``http://127.0.0.1:8000``) and measure it.

    ``keys`` maps tenant -> API key (``"*"`` is the key for tenants not listed; no key, no
    ``Authorization`` header). ``speedup`` divides the workload's timestamps (``math.inf``: send all
    at once). ``max_concurrency`` caps requests in flight (later ones wait client-side; their
    latency is measured from when they are actually sent, as vLLM does). ``on_result`` (sync or
    async) is called with each finished request. Setting ``stop`` ends the run early and returns
    a partial report (in-flight requests recorded as ``cancelled``); cancelling the task that runs
    this coroutine cancels in-flight requests, closes the connections and re-raises.
    """
    if not speedup > 0:
        raise ValueError(f"speedup must be > 0, got {speedup!r}")
    if endpoint not in ("completions", "chat"):
        raise ValueError("endpoint must be 'completions' or 'chat'")
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks: set[asyncio.Task[RequestResult]] = set()
    stopped = False
    sent: dict[int, float] = {}  # index -> due time (s) of every request handed to a task
    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, force_close=False)
    session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False)
    run_start, started_unix = time.perf_counter(), time.time()  # sent_s counts from run_start
    sender = _Sender(session, endpoint_url(base_url, endpoint), keys or {}, model, endpoint, extra_body,
                     prompt_fn, sem, on_result, run_start)
    results = sender.results
    try:
        stopped = await _send_on_schedule(workload, speedup, stop, sender, tasks, sent)
        if tasks and not stopped:
            stopped = await _await_tasks(tasks, stop)
        if stopped:
            await _cancel_all(tasks)
            # a task cancelled before its first step never ran send(): it still gets its result
            recorded = {r.index for r in results}
            results += [_unfinished(i, workload[i], due, CANCELLED, "cancelled")
                        for i, due in sent.items() if i not in recorded]
    except asyncio.CancelledError:
        await _cancel_all(tasks)
        raise
    finally:
        await session.close()
    duration = time.perf_counter() - run_start
    results.sort(key=lambda r: r.index)
    summary = summarize(results, duration, slo)
    return LiveReport(base_url=base_url, model=model, speedup=speedup, duration_s=duration, results=results,
                      summary=summary, stopped=stopped, not_sent=len(workload) - len(sent),
                      meta={"endpoint": endpoint, "max_concurrency": max_concurrency,
                            "send_lag_ms": _send_lag(results), "started_unix": started_unix})


def _send_lag(results: Sequence[RequestResult]) -> dict[str, float] | None:
    """How far behind its schedule the client sent (sent - due, ms): latencies count from the send,
    so a client that falls behind offers less load than the workload says."""
    lag = [(r.sent_s - r.scheduled_s) * 1e3 for r in results if r.sent_s is not None and r.scheduled_s is not None]
    if not lag:
        return None
    a = np.asarray(lag)
    return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _unfinished(idx: int, req: WorkloadRequest, scheduled_s: float, status: str, error: str) -> RequestResult:
    return RequestResult(tenant=req.tenant, status=status, index=idx, slo_class=req.slo_class,
                         scheduled_s=scheduled_s, input_tokens=req.input_length,
                         requested_output_tokens=req.output_length, error=error)


async def _cancel_all(tasks: set[asyncio.Task[RequestResult]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
