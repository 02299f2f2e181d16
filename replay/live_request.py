"""One live request: its streaming ``POST`` body, reading its SSE stream and timing each chunk, and
classifying how it ended (OK, a 429 rejection, an HTTP / stream / connection failure, cancelled).

:func:`measure_request` is :func:`replay.live.run_live`'s per-request step; what is measured is in
that module's docstring.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from replay.report import CANCELLED, ERROR, OK, REJECTED, RequestResult
from replay.workload import WorkloadRequest

__all__ = ["endpoint_url", "measure_request"]


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


def endpoint_url(base_url: str, endpoint: str) -> str:
    """``/v1/completions`` (or ``/v1/chat/completions``) under ``base_url``, with or without its ``/v1``."""
    base = base_url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + ("/chat/completions" if endpoint == "chat" else "/completions")


@dataclass(slots=True)
class _Stream:
    """What a request's stream has delivered so far; kept outside the reader so that a cancel or a
    broken connection still sees it."""

    sent: float  # perf_counter at the send
    first: float | None = None  # perf_counter of the first non-empty chunk
    last: float | None = None
    chunks: int = 0  # non-empty chunks
    usage_out: int | None = None  # the server's usage.completion_tokens, if it sent one

    def tokens(self) -> int:
        return self.usage_out if self.usage_out is not None else self.chunks

    def token(self, res: RequestResult, now: float) -> None:
        """A non-empty chunk arrived at ``now``: TTFT for the first, an ITL for the others."""
        if self.first is None:
            self.first = now
            res.ttft_s = now - self.sent
        else:
            assert self.last is not None
            res.itl_s.append(now - self.last)
        self.last = now
        self.chunks += 1


def _request_body(req: WorkloadRequest, idx: int, *, model: str, endpoint: str,
                  extra_body: Mapping[str, Any] | None,
                  prompt_fn: Callable[[WorkloadRequest, int], str]) -> dict[str, Any]:
    """The streaming completions (or chat) body: ``max_tokens = output_length``, usage asked for."""
    prompt = prompt_fn(req, idx)
    body: dict[str, Any] = {"model": model, "max_tokens": max(1, req.output_length), "stream": True,
                            "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if extra_body:
        body.update(extra_body)
    return body


def _headers(key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def _record_http_error(resp: aiohttp.ClientResponse, res: RequestResult, sent: float) -> None:
    """A non-200 answer: 429 is a rejection (with its ``Retry-After``), anything else a failure."""
    text = await resp.text(errors="replace")
    res.error = f"HTTP {resp.status}: {_error_message(text)}"
    res.error_code = _error_code(text)
    res.retry_after_s = _retry_after(resp.headers.get("Retry-After"))
    res.status = REJECTED if resp.status == 429 else ERROR
    res.e2e_s = time.perf_counter() - sent


def _chunk_text(obj: Any, endpoint: str) -> str:
    """The generated text of one stream chunk (a chat delta's content or a completion's text)."""
    text = ""
    for choice in (obj.get("choices") or []) if isinstance(obj, dict) else []:
        if endpoint == "chat":
            text += (choice.get("delta") or {}).get("content") or ""
        else:
            text += choice.get("text") or ""
    return text


def _take_usage(obj: Any, res: RequestResult, st: _Stream) -> None:
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if isinstance(usage, dict):
        if isinstance(usage.get("completion_tokens"), int):
            st.usage_out = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] > 0:
            res.input_tokens = usage["prompt_tokens"]


async def _read_stream(resp: aiohttp.ClientResponse, res: RequestResult, st: _Stream, endpoint: str) -> None:
    """Read the SSE stream to ``[DONE]`` (or an error chunk), timing each non-empty chunk."""
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
        _take_usage(obj, res, st)
        if _chunk_text(obj, endpoint):
            st.token(res, now)


def _classify_stream_end(res: RequestResult, st: _Stream, end: float) -> None:
    """The stream ended: an error chunk or no token at all is a failure, else OK with its TPOT."""
    res.e2e_s = end - st.sent
    res.output_tokens = st.tokens()
    if res.error is not None and res.error.startswith("stream error"):
        res.status = ERROR
    elif st.first is None:
        res.status = ERROR
        res.error = res.error or "no tokens streamed"
    else:
        res.status = OK
        if res.output_tokens > 1 and res.ttft_s is not None:
            res.tpot_s = (res.e2e_s - res.ttft_s) / (res.output_tokens - 1)


def _record_connection_error(res: RequestResult, st: _Stream, exc: BaseException) -> None:
    res.status = ERROR
    res.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    res.e2e_s = time.perf_counter() - st.sent
    if st.first is not None:
        res.output_tokens = st.tokens()


async def measure_request(session: aiohttp.ClientSession, url: str, idx: int, req: WorkloadRequest, *,
                          model: str, key: str | None, endpoint: str, extra_body: Mapping[str, Any] | None,
                          run_start: float, scheduled_s: float, prompt_fn: Callable[[WorkloadRequest, int], str],
                          sem: asyncio.Semaphore | None, partial: list[RequestResult]) -> RequestResult:
    """Send one request (after a ``sem`` slot, if given) and measure it; never raises but for a cancel.
    Its result is put in ``partial`` before the send, so a caller still has it when cancelled."""
    res = RequestResult(tenant=req.tenant, status=ERROR, index=idx, slo_class=req.slo_class,
                        scheduled_s=scheduled_s, input_tokens=req.input_length,
                        requested_output_tokens=req.output_length)
    partial.append(res)  # what a cancelled request got so far (its send time, first token, chunks)
    body = _request_body(req, idx, model=model, endpoint=endpoint, extra_body=extra_body, prompt_fn=prompt_fn)
    headers = _headers(key)
    if sem is not None:
        await sem.acquire()
    st = _Stream(sent=time.perf_counter())
    res.sent_s = st.sent - run_start
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            res.http_status = resp.status
            if resp.status != 200:
                await _record_http_error(resp, res, st.sent)
                return res
            await _read_stream(resp, res, st, endpoint)
            _classify_stream_end(res, st, time.perf_counter())
            return res
    except asyncio.CancelledError:
        res.status = CANCELLED
        res.error = "cancelled"
        res.e2e_s = None
        res.output_tokens = st.chunks  # received before the cancel (not counted: the request is unfinished)
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        _record_connection_error(res, st, exc)
        return res
    finally:
        if sem is not None:
            sem.release()
