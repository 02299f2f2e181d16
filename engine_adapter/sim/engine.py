"""SimEngine: the calibrated simulator behind the `Engine` protocol, on the asyncio wall clock.

One background task drives a `SimCore`: it sleeps until the end of the step in progress (divided
by `speedup`), advances the core to now and hands each request its newest event. Each `submit`
stream wakes on its own event and yields one `Chunk` per wake-up, coalescing the tokens produced
since the previous chunk (chunks carry text deltas and cumulative counts, so that is lossless).
The text is synthetic and says so; the timings are the point.

With the zero-delay profile every step takes no time: a request completes as soon as the driver
runs, and its stream yields the first token and the final chunk only.

LoRA (`lora_paths` / `max_loaded_loras`, engine_adapter/lora.py): the engine holds adapters as
SGLang does, by name, least recently used out; a request whose adapter it does not hold is refused
in SGLang's words unless it says where to load it from (`GenerateRequest.lora_source`, sluice's
configured path). A load stalls the whole engine for `lora_load_s` simulated seconds (its clock
stops: every step in progress ends that much later), as SGLang's scheduler loads an adapter between
batches while every running request waits.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from engine_adapter.base import Chunk, EngineError, EngineInfo, EngineLoad, GenerateRequest
from engine_adapter.clock import ClockModel
from engine_adapter.lora import AdapterError, AdapterSet
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import DEFAULT_PROFILE, SimProfile, load_profile
from engine_adapter.sim.reply import plan_reply, reply_delta
from engine_adapter.tokens import estimate_chat_tokens, estimate_tokens

VERSION = "sluice-sim/1"
# seconds to load a LoRA adapter (an assumption, not a measurement: reading a rank-16 8B adapter's
# ~30-160 MB of safetensors and copying it to the GPU; override per engine with `lora_load_s`)
LORA_LOAD_S = 0.1
_DUE_S = 1e-9  # a step end this close to the clock is due (a sleep that short may not move the clock)


class _Stream:
    __slots__ = ("latest", "wake", "offset")

    def __init__(self, offset: int) -> None:
        self.latest: SimEvent | None = None
        self.wake = asyncio.Event()
        self.offset = offset  # where this request starts in the vocabulary


class SimEngine:
    def __init__(self, name: str, profile: SimProfile | str | Path = DEFAULT_PROFILE, seed: int = 0,
                 speedup: float = 1.0, *, lora_paths: dict[str, str | None] | None = None,
                 max_loaded_loras: int | None = None, lora_load_s: float = LORA_LOAD_S) -> None:
        if speedup <= 0:
            raise ValueError("speedup must be > 0")
        self.name = name
        self.profile = profile if isinstance(profile, SimProfile) else load_profile(profile)
        self.seed = seed
        self.speedup = float(speedup)
        self.core = SimCore(self.profile, seed=seed)
        s = self.profile.step
        self._zero_delay = not any((s.prefill_a, s.prefill_b, s.decode_c, s.decode_d, s.decode_e, s.prefill_f))
        self._streams: dict[str, _Stream] = {}
        self._t0: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # whose clock _t0 is on
        self._last_now = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._error: BaseException | None = None
        # LoRA: None unless enabled (SGLang's --enable-lora); the adapters given here are loaded at start
        self.lora: AdapterSet | None = None
        if lora_paths is not None or max_loaded_loras is not None:
            self.lora = AdapterSet(max_loaded_loras, lora_load_s)
            for adapter, path in (lora_paths or {}).items():
                self.lora.load(adapter, path)
        self._loading: asyncio.Lock | None = None  # one adapter load at a time
        self._stalled: asyncio.Event | None = None  # set while the clock runs; cleared during a load

    # -- clock and driver ----------------------------------------------------------------------
    def _now(self) -> float:
        """Simulated seconds since the engine started (wall time x speedup), never decreasing."""
        try:
            loop_time = asyncio.get_running_loop().time()
        except RuntimeError:  # no loop (e.g. a generator finalised at shutdown): last known time
            return self._last_now
        if self._stalled is not None and not self._stalled.is_set():  # a LoRA load: the clock stands still
            return self._last_now
        if self._t0 is None:
            self._t0, self._loop = loop_time, asyncio.get_running_loop()
        self._last_now = max(self._last_now, (loop_time - self._t0) * self.speedup)
        return self._last_now

    def _sync(self, now: float) -> None:
        """Advance the core to `now` and hand the events to their streams."""
        events = self.core.advance(now, per_token=not self._zero_delay)
        streams = self._streams
        for ev in events:
            st = streams.get(ev.rid)
            if st is not None:
                st.latest = ev
                st.wake.set()

    def _ensure_driver(self) -> None:
        if self._error is not None:
            raise EngineError(f"simulated engine failed: {self._error!r}")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._drive(), name=f"sim-engine-{self.name}")

    async def _drive(self) -> None:
        assert self._wake is not None
        try:
            while not self._closed:
                if self._stalled is not None and not self._stalled.is_set():
                    await self._stalled.wait()
                nt = self.core.next_time()
                if nt is None:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                now = self._now()
                if nt > now + _DUE_S:
                    await asyncio.sleep((nt - now) / self.speedup)
                    continue
                if nt > now:  # a rounding error short of the step's end (a clock shifted by a stall): it is due
                    now = self._last_now = nt
                self._sync(now)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # pragma: no cover - a bug in the model: fail streams, don't hang
            self._error = exc
            for st in self._streams.values():
                st.wake.set()
            raise

    # -- Engine protocol ----------------------------------------------------------------------------
    def _prompt_tokens(self, request: GenerateRequest) -> int:
        body = request.openai
        if body is not None:  # the engine counts the tokens of what it was sent
            if "messages" in body:
                return estimate_chat_tokens(body["messages"])
            return estimate_tokens(body.get("prompt") or "")
        if request.prompt_tokens is not None:
            return max(1, int(request.prompt_tokens))
        if request.input_ids is not None:
            return max(1, len(request.input_ids))
        return estimate_tokens(request.prompt or "")

    def _enqueue(self, request: GenerateRequest, prompt_tokens: int, max_new: int,
                 output_tokens: int | None) -> tuple[_Stream, float]:
        """Hand `request` to the core now, waking the driver if the core was idle; its stream and the
        submit time."""
        rid = request.rid
        now = self._now()
        self._sync(now)
        was_idle = self.core.next_time() is None
        st = self._streams[rid] = _Stream(0)  # every reply reads "synthetic simulated tokens from ..."
        self.core.submit(now, SimRequest(rid, prompt_tokens, max_new, output_tokens,
                                         request.hash_ids, request.priority))
        if was_idle and self._wake is not None:
            self._wake.set()
        return st, now

    async def submit(self, request: GenerateRequest) -> AsyncIterator[Chunk]:
        if self._closed:
            raise EngineError("simulated engine is closed", status_code=503)
        rid = request.rid
        if rid in self._streams:
            raise EngineError(f"duplicate rid {rid!r}", status_code=400, retryable=False)
        prompt_tokens = self._prompt_tokens(request)
        if prompt_tokens + 1 > self.profile.kv_capacity_tokens:
            raise EngineError(f"prompt of {prompt_tokens} tokens exceeds the KV capacity "
                              f"({self.profile.kv_capacity_tokens})", status_code=400, retryable=False)
        max_new, output_tokens, script = plan_reply(request, prompt_tokens, self.profile.context_length)
        adapter = await self._take_adapter(request)  # after every check: held from here to the stream's end
        try:
            self._ensure_driver()
        except EngineError:
            self._drop_adapter(adapter)
            raise
        st, start = self._enqueue(request, prompt_tokens, max_new, output_tokens)
        sent = 0
        finished = False
        try:
            while True:
                await st.wake.wait()
                st.wake.clear()
                if self._error is not None:
                    raise EngineError(f"simulated engine failed: {self._error!r}")
                ev, st.latest = st.latest, None
                if ev is None:  # woken by close()
                    if self._closed:
                        finished = True
                        yield Chunk("", sent, prompt_tokens, 0, finish_reason="abort",
                                    message="engine closed")
                        return
                    continue
                if ev.kind != "finish" and not request.stream:
                    continue  # non-streaming: one chunk at the end, with all the text
                text, extra = reply_delta(script, st.offset, sent, ev.completion_tokens)
                sent = ev.completion_tokens
                if ev.kind == "finish":
                    finished = True
                    reason = ev.finish_reason
                    if script is not None and script.pieces is not None and reason == "stop":
                        reason = script.finish_reason
                    yield Chunk(text, sent, ev.prompt_tokens, ev.cached_tokens, finish_reason=reason,
                                message=ev.message, e2e_latency=(ev.time - start) / self.speedup,
                                num_retractions=ev.num_retractions, extra=extra, energy_j=ev.energy_j)
                    return
                yield Chunk(text, sent, ev.prompt_tokens, ev.cached_tokens, num_retractions=ev.num_retractions,
                            extra=extra)
        finally:
            self._streams.pop(rid, None)
            self._drop_adapter(adapter)
            if not finished:  # the consumer went away (or was cancelled): free the engine's work
                now = self._now()
                self._sync(now)
                self.core.abort(now, rid)

    # -- LoRA adapters -------------------------------------------------------------------------------
    async def _take_adapter(self, request: GenerateRequest) -> str | None:
        """The request's adapter, held for it until it ends: loaded first from its `lora_source`
        when the engine does not hold it; EngineError (400) as SGLang refuses otherwise."""
        name = request.lora_path
        if name is None:
            return None
        if self.lora is None:
            raise EngineError("LoRA is not enabled on this engine (start it with --enable-lora)", status_code=400,
                              retryable=False)
        try:
            if name not in self.lora and request.lora_source is not None:
                await self.load_adapter(name, request.lora_source)
            self.lora.acquire(name)
        except AdapterError as e:
            raise EngineError(str(e), status_code=400, retryable=False) from None
        return name

    def _drop_adapter(self, name: str | None) -> None:
        if name is not None and self.lora is not None:
            self.lora.release(name)

    async def load_adapter(self, name: str, path: str | None, pinned: bool = False) -> str | None:
        """Load a LoRA adapter (SGLang's /load_lora_adapter): the engine stalls for the load; the
        least recently used idle adapter makes room. Returns the one evicted; AdapterError when
        LoRA is off or there is no room."""
        if self.lora is None:
            raise AdapterError("LoRA is not enabled on this engine (start it with --enable-lora)")
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if name in self.lora:
                return self.lora.load(name, path, pinned)
            self.lora.victim()  # no room: refused before the engine pays for a load
            await self._stall(self.lora.load_s)
            return self.lora.load(name, path, pinned)

    def unload_adapter(self, name: str) -> None:
        """SGLang's /unload_lora_adapter; AdapterError when it is not loaded or still in use."""
        if self.lora is None:
            raise AdapterError("LoRA is not enabled on this engine (start it with --enable-lora)")
        self.lora.unload(name)

    async def _stall(self, seconds: float) -> None:
        """Stop the engine's clock for `seconds` of simulated time: what runs ends that much later."""
        if seconds <= 0:
            return
        self._ensure_driver()
        self._sync(self._now())
        loop = asyncio.get_running_loop()
        if self._stalled is None:
            self._stalled = asyncio.Event()
        self._stalled.clear()
        start = loop.time()
        try:
            await asyncio.sleep(seconds / self.speedup)
        finally:
            if self._t0 is not None:
                self._t0 += loop.time() - start  # the stall's wall time never reaches the engine's clock
            self._stalled.set()

    async def abort(self, rid: str) -> None:
        now = self._now()
        self._sync(now)
        if self.core.abort(now, rid):
            self._sync(now)  # deliver the "abort" finish to the stream now

    async def load(self) -> EngineLoad:
        now = self._now()
        self._sync(now)
        load = self.core.load(now)
        load.gen_throughput *= self.speedup  # per wall second
        load.timestamp = time.time()
        if self.lora is not None:
            load.adapters = self.lora.state()
        return load

    async def info(self) -> EngineInfo:
        return EngineInfo(name=self.name, kind="sim", model=self.profile.model, url=None,
                          max_total_tokens=self.profile.kv_capacity_tokens, simulated=True,
                          profile=self.profile.step, version=f"{VERSION} profile={self.profile.name}",
                          context_length=self.profile.context_length)

    async def health(self) -> bool:
        return not self._closed and self._error is None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._now()
        self._sync(now)
        for rid in list(self._streams):
            self.core.abort(now, rid)
        self._sync(now)
        for st in self._streams.values():
            st.wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # -- simulated GPU ------------------------------------------------------------------------------
    def gpu(self) -> dict[str, float]:
        """NVML-like readings of the simulated GPU (power_w, energy_j, sm_clock_mhz, ...), with its
        power limit (the profile's max_w, what nvmlDeviceGetEnforcedPowerLimit reports on a real one)."""
        # the server samples from a worker thread: read the engine loop's clock (without moving
        # _last_now, which belongs to the loop), so an idle engine's readings do not stand still
        now, loop = self._now(), self._loop
        stalled = self._stalled is not None and not self._stalled.is_set()
        if loop is not None and self._t0 is not None and not loop.is_closed() and not stalled:
            now = max(now, (loop.time() - self._t0) * self.speedup)
        return {**self.core.gpu(now), "power_limit_w": self.core.profile.max_w}

    def set_frequency(self, mhz: float) -> float:
        """Lock the simulated SM clock; returns the clamped value."""
        return self.core.set_frequency(mhz)

    @property
    def clock_model(self) -> ClockModel:
        """Step time and power against the SM clock (the frequency rule plans with it)."""
        return self.core.profile.clock
