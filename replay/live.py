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
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import numpy as np

from replay.report import (
    CANCELLED,
    ERROR,
    OK,
    REJECTED,
    RequestResult,
    SLOSpec,
    Summary,
    clean_json,
    format_benchmark_block,
    format_table,
    summarize,
)
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


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_message(body: str) -> str:
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:500]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err
            return str(msg)[:500]
        if "message" in obj:
            return str(obj["message"])[:500]
        return str(err)[:500]
    return body[:500]


def _error_code(body: str) -> str | None:
    """The OpenAI error body's ``code`` (sluice: the refusal reason, e.g. ``ttft_unattainable``)."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    code = err.get("code") if isinstance(err, dict) else None
    return None if code is None else str(code)


def _endpoint_url(base_url: str, endpoint: str) -> str:
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + ("/chat/completions" if endpoint == "chat" else "/completions")


async def _one(session: aiohttp.ClientSession, url: str, idx: int, req: WorkloadRequest, *, model: str,
               key: str | None, endpoint: str, extra_body: Mapping[str, Any] | None, run_start: float,
               scheduled_s: float, prompt_fn: Callable[[WorkloadRequest, int], str],
               sem: asyncio.Semaphore | None, partial: list[RequestResult]) -> RequestResult:
    res = RequestResult(tenant=req.tenant, status=ERROR, index=idx, slo_class=req.slo_class,
                        scheduled_s=scheduled_s, input_tokens=req.input_length,
                        requested_output_tokens=req.output_length)
    partial.append(res)  # what a cancelled request got so far (its send time, first token, chunks)
    max_tokens = max(1, req.output_length)
    prompt = prompt_fn(req, idx)
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True,
                            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if extra_body:
        body.update(extra_body)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if sem is not None:
        await sem.acquire()
    sent = time.perf_counter()
    res.sent_s = sent - run_start
    first: float | None = None
    last: float | None = None
    chunks = 0
    usage_out: int | None = None
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            res.http_status = resp.status
            if resp.status != 200:
                text = await resp.text(errors="replace")
                res.error = f"HTTP {resp.status}: {_error_message(text)}"
                res.error_code = _error_code(text)
                res.retry_after_s = _retry_after(resp.headers.get("Retry-After"))
                res.status = REJECTED if resp.status == 429 else ERROR
                res.e2e_s = time.perf_counter() - sent
                return res
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                now = time.perf_counter()
                try:
                    obj = json.loads(payload)
                except ValueError:
                    res.error = f"bad stream chunk: {payload[:200]}"
                    continue
                if isinstance(obj, dict) and obj.get("error"):
                    res.error = f"stream error: {_error_message(payload)}"
                    res.error_code = _error_code(payload)
                    break
                usage = obj.get("usage") if isinstance(obj, dict) else None
                if isinstance(usage, dict):
                    if isinstance(usage.get("completion_tokens"), int):
                        usage_out = usage["completion_tokens"]
                    if isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] > 0:
                        res.input_tokens = usage["prompt_tokens"]
                text = ""
                for choice in (obj.get("choices") or []) if isinstance(obj, dict) else []:
                    if endpoint == "chat":
                        text += (choice.get("delta") or {}).get("content") or ""
                    else:
                        text += choice.get("text") or ""
                if not text:
                    continue
                if first is None:
                    first = now
                    res.ttft_s = now - sent
                else:
                    assert last is not None
                    res.itl_s.append(now - last)
                last = now
                chunks += 1
            end = time.perf_counter()
            res.e2e_s = end - sent
            res.output_tokens = usage_out if usage_out is not None else chunks
            if res.error is not None and res.error.startswith("stream error"):
                res.status = ERROR
            elif first is None:
                res.status = ERROR
                res.error = res.error or "no tokens streamed"
            else:
                res.status = OK
                if res.output_tokens > 1 and res.ttft_s is not None:
                    res.tpot_s = (res.e2e_s - res.ttft_s) / (res.output_tokens - 1)
            return res
    except asyncio.CancelledError:
        res.status = CANCELLED
        res.error = "cancelled"
        res.e2e_s = None
        res.output_tokens = chunks  # received before the cancel (not counted: the request is unfinished)
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        res.status = ERROR
        res.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        res.e2e_s = time.perf_counter() - sent
        if first is not None:
            res.output_tokens = usage_out if usage_out is not None else chunks
        return res
    finally:
        if sem is not None:
            sem.release()


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
    url = _endpoint_url(base_url, endpoint)
    order = sorted(range(len(workload)), key=lambda i: workload[i].timestamp_ms)
    keys = keys or {}
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    results: list[RequestResult] = []
    tasks: set[asyncio.Task[RequestResult]] = set()
    stopped = False
    sent: dict[int, float] = {}  # index -> due time (s) of every request handed to a task

    async def deliver(r: RequestResult) -> None:
        results.append(r)
        if on_result is not None:
            try:
                out = on_result(r)
                if inspect.isawaitable(out):
                    await out
            except Exception:  # a broken callback must not stop the run
                log.exception("on_result callback failed")

    async def wrapped(idx: int, req: WorkloadRequest, scheduled_s: float) -> RequestResult:
        partial: list[RequestResult] = []
        try:
            r = await _one(session, url, idx, req, model=model, key=keys.get(req.tenant, keys.get("*")),
                           endpoint=endpoint, extra_body=extra_body, run_start=run_start,
                           scheduled_s=scheduled_s, prompt_fn=prompt_fn, sem=sem, partial=partial)
        except asyncio.CancelledError:
            if partial:
                partial[0].status, partial[0].error = CANCELLED, "cancelled"
            results.append(partial[0] if partial else _unfinished(idx, req, scheduled_s, CANCELLED, "cancelled"))
            raise
        except Exception as exc:  # defensive: a bug in measurement never kills the run
            log.exception("request %d failed unexpectedly", idx)
            r = _unfinished(idx, req, scheduled_s, ERROR, f"{type(exc).__name__}: {exc}")
        await deliver(r)
        return r

    timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, force_close=False)
    session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False)
    run_start, started_unix = time.perf_counter(), time.time()  # sent_s counts from run_start
    try:
        for idx in order:
            req = workload[idx]
            # timestamps count from the workload start (0): leading idle time is kept
            due_s = req.timestamp_ms / 1e3 / speedup if math.isfinite(speedup) else 0.0
            delay = run_start + due_s - time.perf_counter()
            if stop is not None:
                if delay > 0 and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                # checked after the wait too: its timeout and the stop can come in the same loop turn
                if stop.is_set():
                    stopped = True
                    break
            elif delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(wrapped(idx, req, due_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent[idx] = due_s
        if tasks:
            pending = set(tasks)
            if stop is not None and not stopped:
                waiter = asyncio.create_task(stop.wait())
                try:
                    while pending:
                        done, _ = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
                        pending = {t for t in pending if not t.done()}
                        if waiter in done:
                            stopped = True
                            break
                finally:
                    waiter.cancel()
            elif not stopped:
                await asyncio.gather(*pending, return_exceptions=True)
        if stopped:
            await _cancel_all(tasks)
            # a task cancelled before its first step never ran wrapped(): it still gets its result
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
