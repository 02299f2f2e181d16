"""The serving runtime: drives the pure decision core with the wall clock and real engines.

One `Sluice` per process. Every request becomes a `Ticket`: admitted or refused by the core,
queued until the core dispatches it, streamed from the chosen engine, and closed exactly once,
whatever happens (finish, client gone, engine dead), so the core's bookkeeping stays consistent
and every request leaves one row in the store.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from controlplane.config import Config, TenantConfig, hash_key
from controlplane.core.core import DecisionCore
from controlplane.core.events import ADMISSION_KINDS, Decision, Dispatch, FinishReport, Reject, RequestSpec
from controlplane.core.policy import Policy, SLOClassPolicy
from controlplane.core.capacity import Controller, Replica
from controlplane.core.frequency import FrequencyController, FrequencyParams
from controlplane.driver import (DEFAULT_PROFILE, LOAD_EVERY_S, ClockSteering, Driver, engine_model, next_capacity,
                                 next_frequency, next_load, next_tick, slo_met)
from controlplane.errors import ApiError, refusal
from controlplane.livestats import LiveStats
from controlplane.recorder import Recorder
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.prompt_tokens import PromptTokenEstimator
from controlplane.requests import CompletionRequest
from engine_adapter.base import Chunk, Engine, EngineError, EngineOverloaded, GenerateRequest
from engine_adapter.tokens import estimate_tokens, tokenizer_counter

log = logging.getLogger("sluice")

# The output-length trainer may use at most this share of one core (wall time of its steps): at
# high request rates it would otherwise train up to its step cap every second, on the core that
# serves requests.
TRAIN_SHARE = 0.1

__all__ = ["Sluice", "Ticket"]


@dataclass(slots=True)
class Ticket:
    """One request's life in the gateway; `row` becomes its record in the `requests` table."""

    rid: str
    tenant: str
    request: CompletionRequest
    slo_class: str
    arrival: float
    row: dict[str, Any]
    waiter: asyncio.Future[Dispatch | Reject]
    engine: str | None = None
    priority: int | None = None
    dispatched_at: float | None = None
    first_token_at: float | None = None
    closed: bool = False
    spans: dict[str, Any] | None = None  # the recorder's open spans
    task: asyncio.Task[Any] | None = None  # the handler serving it, cancelled by an operator abort
    abort_reason: str | None = None
    decisions: list[Decision] = field(default_factory=list)


class Sluice:
    def __init__(self, config: Config, engines: dict[str, Engine], *, recorder: Recorder | None = None,
                 clock: Callable[[], float] = time.time, predictor: OutputLengthPredictor | None = None,
                 clock_control: FrequencyParams | None = None,
                 set_clock: Callable[[str, float], str] | None = None) -> None:
        self.config = config
        self.engines = engines
        self.clock = clock
        self.recorder = recorder  # telemetry sink: spans, request rows, decisions, metrics (see observe.py)
        self.keys = config.tenant_by_key_hash()
        self.tenants = {t.name: t for t in config.tenants}
        self.model_names = {config.server.model_name} | {e.model for e in config.engines}
        self.tickets: dict[str, Ticket] = {}
        self.core: DecisionCore | None = None
        self.driver: Driver | None = None
        self.infos: dict[str, Any] = {}
        self.predictor = predictor if predictor is not None else OutputLengthPredictor(seed=0, torch_expert=True)
        self.errors = ForecastErrors()
        self.prompt_estimator = PromptTokenEstimator()
        tokenizer = config.server.tokenizer  # the model's own count when configured, else 4 chars/token
        self.count_tokens = tokenizer_counter(tokenizer) if tokenizer else estimate_tokens
        self.stats = LiveStats()
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # admin event stream
        self.engine_loads: dict[str, Any] = {}  # last EngineLoad per engine, for the admin state
        self.capacity: Controller | None = None  # desired replicas (docs/capacity.md), on the driver's cadence
        # SLO-aware SM clocks (controlplane/core/frequency.py): a simulated engine sets its own, a real
        # one's GPU goes through `set_clock(engine, mhz)` (NVML, a dry run where not permitted)
        self.clock_control, self.set_clock = clock_control, set_clock
        self.steering: ClockSteering | None = None
        self.clock_status: dict[str, str] = {}
        self._frequency_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = threading.Event()
        self._trainer: threading.Thread | None = None
        # request ids: a generator seeded from the OS, no system call (and no GIL release) per request
        self._rid_bits = random.Random(os.urandom(32)).getrandbits

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        specs = []
        for name, engine in self.engines.items():
            try:
                info = await engine.info()
            except EngineError as exc:
                raise RuntimeError(f"engine {name!r} is not reachable: {exc}") from None
            self.infos[name] = info
            specs.append(engine_model(name, info))
        self.core = DecisionCore(self.config.policy, specs, self.predictor, _ForecastTee(self))
        self.driver = Driver(self.core, _TicketSink(self))
        engines = self.core.snapshot(self.clock(), with_tenants=False).engines
        first = next(iter(engines.values()), None)
        if first is not None:
            self.capacity = Controller(Replica(first.profile, first.kv_capacity, first.max_running))
            self.capacity.start(len(engines), self.clock())
        if self.clock_control is not None:
            from engine_adapter.clock import ClockModel

            self._frequency_at = next_frequency(self.clock())  # the first instant after the start, as replay
            controllers = {}
            for name, engine in self.engines.items():
                model = getattr(engine, "clock_model", None) or ClockModel()  # a real GPU: H100-class defaults
                controllers[name] = FrequencyController(name, self.infos[name].profile or DEFAULT_PROFILE,
                                                        model, self.clock_control)
            self.steering = ClockSteering(self.core, controllers, self._set_clock)
        self._tasks = [asyncio.create_task(self._cadence())]
        if self.predictor.mlp is None:
            return  # nothing to train in the background
        # the trainer thread imports torch first (seconds): the server serves meanwhile, the MLP
        # expert cold (it answers only once trained) and the other experts answering
        self._trainer = threading.Thread(target=self._train, name="sluice-trainer", daemon=True)
        self._trainer.start()

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self.engines.values():
            await engine.close()

    def _train(self) -> None:
        """Background training of the output-length model's torch expert (never on the event loop)."""
        if self._stop.is_set() or not self.predictor.prepare():
            mlp = self.predictor.mlp
            if not self._stop.is_set():  # (an import cut short by the shutdown is no news)
                log.warning("output-length predictor: the MLP expert stays cold (%s)", mlp and mlp.error)
            return
        # torch's modules live as long as the process: out of the cyclic GC's reach, as the
        # server's start-up does for everything before them (sluice/server.py, lifespan)
        gc.freeze()
        wait = 1.0
        while not self._stop.wait(wait):
            t0 = time.perf_counter()
            try:
                self.predictor.train_pending(64)
            except Exception:  # a training failure must never take serving down
                log.exception("output-length trainer step failed")
            busy = time.perf_counter() - t0
            wait = max(1.0, busy * (1.0 - TRAIN_SHARE) / TRAIN_SHARE)

    async def _cadence(self) -> None:
        """The core's tick and the engines' load reports, at the driver's instants of `clock`
        (controlplane/driver.py): the first poll at once, then both on their grids."""
        assert self.driver is not None
        driver, clock = self.driver, self.clock
        poll: asyncio.Task[None] | None = None
        now = clock()
        tick_at, load_at, capacity_at = next_tick(now), now, next_capacity(now)
        while True:
            due = min(tick_at, load_at)
            now = clock()
            if now < due:
                if due - now > LOAD_EVERY_S:  # the clock was set back: start the grid again from now
                    tick_at, load_at, capacity_at = next_tick(now), next_load(now), next_capacity(now)
                    continue
                await asyncio.sleep(due - now)
                continue  # a timer may fire a hair early: sleep again until the clock is there
            # At one instant the tick comes after the arrivals (the driver's order): yield once, so that
            # request handlers whose timers fell due together with ours run first.
            await asyncio.sleep(0)
            now = clock()
            if tick_at <= now:
                tick_at = next_tick(now)
                try:
                    driver.tick(now)
                except Exception:  # a bug must not stop the cadence (and with it every deadline)
                    log.exception("tick failed")
            if load_at <= now:
                load_at = next_load(now)
                if capacity_at <= now and self.capacity is not None:  # before the reports, as replay
                    capacity_at = next_capacity(now)
                    try:
                        self.capacity.step(self.driver.core, now)
                    except Exception:
                        log.exception("capacity evaluation failed")
                # A task of its own: a slow engine delays its own report, never the tick. Started after
                # the tick, it runs after the handlers of the tick's dispatches have submitted to their
                # engines, so the reports include them (as replay's do).
                if poll is None or poll.done():
                    poll = asyncio.create_task(self._poll_engines())
                    self._tasks.append(poll)
                    poll.add_done_callback(self._tasks.remove)

    async def _poll_engines(self) -> None:
        assert self.driver is not None
        for name, engine in self.engines.items():
            try:
                load = await engine.load()
                self.engine_loads[name] = load
                self.driver.engine_load(self.clock(), name, load)
            except EngineError:
                self.engine_loads.pop(name, None)
                self.driver.engine_health(self.clock(), name, await engine.health())
            except Exception:
                log.exception("polling engine %s failed", name)
        now = self.clock()
        if self.steering is not None and now >= self._frequency_at:  # after the reports it reads, as replay
            self._frequency_at = next_frequency(now)
            try:  # nothing here may fail serving: an engine that cannot take a clock keeps running
                self.driver.apply(now, self.steering.evaluate(now))
            except Exception:
                log.exception("frequency rule failed")

    def _set_clock(self, now: float, name: str, mhz: float) -> None:
        """The frequency rule's change (`ClockSteering`): a simulated engine sets its own clock, a
        real one's GPU goes through `set_clock` (NVML, a dry run where not permitted)."""
        engine = self.engines[name]
        if hasattr(engine, "set_frequency"):
            engine.set_frequency(mhz)
            self.clock_status[name] = "simulated"
        elif self.set_clock is not None:
            self.clock_status[name] = self.set_clock(name, mhz)
        else:
            self.clock_status[name] = "dry run: no clock actuator"

    # -- authentication ------------------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> TenantConfig:
        if not authorization or not authorization.startswith("Bearer "):
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        tenant = self.keys.get(hash_key(authorization[7:].strip()))
        if tenant is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return tenant

    # -- the request path ------------------------------------------------------------------------
    def fit_context(self, req: CompletionRequest) -> None:
        """Correct the prompt estimate for the model, then fit the smallest context window of the
        engines (any of them may serve it); raises OpenAI's 400 `context_length_exceeded`."""
        req.prompt_tokens = self.prompt_estimator.correct(req.model, req.estimate or req.prompt_tokens)
        windows = [info.context_length for info in self.infos.values() if info.context_length]
        if windows:
            req.fit_context(min(windows))

    def submit(self, tenant: TenantConfig, req: CompletionRequest) -> Ticket:
        """Admission: returns a ticket that is queued or already dispatched; raises ApiError on refusal."""
        assert self.core is not None and self.driver is not None
        now = self.clock()
        rid = self._new_rid()
        slo_class = self.core.policy.tenant(tenant.name).slo_class
        ticket = Ticket(rid, tenant.name, req, slo_class, now, _new_row(rid, tenant.name, slo_class, req, now),
                        asyncio.get_running_loop().create_future())
        self.tickets[rid] = ticket
        if self.recorder is not None:
            self.recorder.begin(ticket)
        self.driver.arrive(now, RequestSpec(rid, tenant.name, req.prompt_tokens, req.max_tokens, None, req.stream))
        if ticket.waiter.done() and isinstance(ticket.waiter.result(), Reject):
            rej = ticket.waiter.result()
            err = refusal(rej.code, rej.message, rej.retry_after_s)
            err.request_id = rid
            self.close(ticket, "rejected", err.status, error=rej.code, code=rej.code)
            raise err
        return ticket

    def _new_rid(self) -> str:
        # 128 random bits, fixed length: no rid is a prefix of another (SGLang aborts by prefix)
        return f"{self._rid_bits(128):032x}"

    def refuse(self, tenant: TenantConfig, kind: str, req: CompletionRequest | None, status: str,
               http_status: int, *, code: str | None, error: str | None) -> str:
        """An authenticated request that never reached admission (bad input, unknown model, a client
        gone while sending it): its one row and span, nothing for the core to reconcile. Returns its rid."""
        assert self.core is not None
        now, rid, parsed = self.clock(), self._new_rid(), req is not None
        req = req or CompletionRequest(kind, "", "", 0, 0, False, False)
        slo_class = self.core.policy.tenant(tenant.name).slo_class
        ticket = Ticket(rid, tenant.name, req, slo_class, now, _new_row(rid, tenant.name, slo_class, req, now),
                        asyncio.get_running_loop().create_future())
        if not parsed:  # nothing is known of what was asked
            ticket.row.update(model=None, stream=None, prompt_tokens=None, max_tokens=None)
        if self.recorder is not None:
            self.recorder.begin(ticket)
        self.close(ticket, status, http_status, error=error, code=code)
        return rid

    async def wait_dispatch(self, ticket: Ticket) -> None:
        """Wait in sluice's queue until the core dispatches the request (or expires it)."""
        outcome = await ticket.waiter
        if isinstance(outcome, Reject):
            status = {"deadline_expired": "expired", "aborted": "aborted"}.get(outcome.code, "rejected")
            err = refusal(outcome.code, outcome.message, outcome.retry_after_s)
            err.request_id = ticket.rid
            self.close(ticket, status, err.status, error=outcome.code, code=outcome.code)
            raise err

    def open_stream(self, ticket: Ticket) -> AsyncIterator[Sequence[Chunk]]:
        """The engine's chunks for a dispatched ticket, in batches (those that arrived together).

        The hot path: the caller iterates the engine's own generator (no generator of sluice's in
        between), so it owes sluice three things: `first_token` at the first chunk with a token or
        a finish reason (before sending it), `engine_failed` on an EngineError, and `aclose()` on
        the iterator when it stops early (which aborts the request at the engine). `stream` does
        all three for callers that want single chunks.
        """
        assert ticket.engine is not None
        engine = self.engines[ticket.engine]
        req = ticket.request
        traceparent = self.recorder.engine_call(ticket) if self.recorder is not None else None
        body = None if req.body is None else {**req.body, "model": self.infos[ticket.engine].model}
        greq = GenerateRequest(rid=ticket.rid, prompt=req.prompt, sampling_params=dict(req.sampling),
                               stream=True, priority=ticket.priority, traceparent=traceparent,
                               prompt_tokens=req.prompt_tokens, openai=body)
        batches = getattr(engine, "submit_batches", None)
        if batches is not None:
            return batches(greq)
        return _singles(engine.submit(greq))

    def first_token(self, ticket: Ticket, batch: Sequence[Chunk]) -> None:
        """Record the first token if `batch` has it (call while ticket.first_token_at is None)."""
        for chunk in batch:
            if chunk.completion_tokens or chunk.finish_reason:
                ticket.first_token_at = self.clock()
                self.driver.first_token(ticket.first_token_at, ticket.rid)  # type: ignore[union-attr]
                if self.recorder is not None:
                    self.recorder.first_token(ticket)
                return

    def engine_failed(self, ticket: Ticket, exc: EngineError) -> None:
        """A stream ended in an EngineError: a dead engine is marked unhealthy (an overloaded one is not,
        nor one that refused a bad request: a 4xx is the request's fault)."""
        if not isinstance(exc, EngineOverloaded) and exc.status_code >= 500 and ticket.engine is not None:
            self.driver.engine_health(self.clock(), ticket.engine, False)  # type: ignore[union-attr]

    def close(self, ticket: Ticket, status: str, http_status: int, *, chunk: Chunk | None = None,
              error: str | None = None, code: str | None = None) -> None:
        """End a ticket exactly once: reconcile the core, write the request row, notify listeners.

        `http_status` and `code` are what the client received (200 and the in-band error's code for a
        stream that failed after its headers); `error` is the detail, for operators only."""
        if ticket.closed:
            return
        ticket.closed = True
        now = self.clock()
        self.tickets.pop(ticket.rid, None)
        assert self.core is not None and self.driver is not None
        if ticket.engine is not None:
            report = FinishReport(
                status if status in ("ok", "aborted") else "error",
                chunk.prompt_tokens if chunk else ticket.request.prompt_tokens,
                chunk.cached_tokens if chunk else 0,
                chunk.completion_tokens if chunk else 0,
                ticket.first_token_at)
            self.driver.finish(now, ticket.rid, report)
        elif status in ("aborted", "error"):
            self.driver.abort(now, ticket.rid, error or status)
        if chunk is not None and chunk.prompt_tokens and ticket.request.estimate:
            req = ticket.request
            self.prompt_estimator.observe(req.model, req.estimate, chunk.prompt_tokens)
            _ForecastTee(self).record("prompt_tokens", req.prompt_tokens, chunk.prompt_tokens)
        row = ticket.row
        row.update(status=status, http_status=http_status, error=error, error_code=code, finish_ts=now,
                   engine=ticket.engine, dispatch_ts=ticket.dispatched_at, first_token_ts=ticket.first_token_at)
        if chunk is not None:
            row.update(prompt_tokens=chunk.prompt_tokens, cached_tokens=chunk.cached_tokens,
                       completion_tokens=chunk.completion_tokens, finish_reason=chunk.finish_reason,
                       energy_j=chunk.energy_j)
        _derive_latencies(row, self.core.policy.slo(ticket.slo_class))
        self.stats.record(row)
        if self.recorder is not None:
            self.recorder.request_finished(ticket, row)
        self._emit("request", row)

    def abort(self, rid: str, reason: str) -> bool:
        """An operator abort: a queued request is refused, a running one is cut off at the engine."""
        ticket = self.tickets.get(rid)
        if ticket is None or ticket.closed:
            return False
        ticket.abort_reason = reason
        if not ticket.waiter.done():
            ticket.waiter.set_result(Reject(rid, "aborted", f"request aborted: {reason}", None))
        elif ticket.task is not None:
            ticket.task.cancel()
        return True

    def live_row(self, ticket: Ticket) -> dict[str, Any]:
        """A queued or running request as the admin API lists it."""
        row = dict(ticket.row)
        row.update(status="running" if ticket.engine else "queued", engine=ticket.engine)
        if ticket.first_token_at is not None:
            row["ttft_ms"] = (ticket.first_token_at - ticket.arrival) * 1e3
        return row

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(kind, payload)

    # -- policy --------------------------------------------------------------------------------
    def set_policy(self, policy: Policy) -> None:
        assert self.driver is not None
        self.driver.set_policy(self.clock(), policy)
        self._emit("policy", policy.to_dict())


async def _singles(gen: AsyncIterator[Chunk]) -> AsyncIterator[Sequence[Chunk]]:
    """An engine without `submit_batches`: one chunk per batch."""
    try:
        async for chunk in gen:
            yield (chunk,)
    finally:
        await gen.aclose()  # type: ignore[attr-defined]


class _TicketSink:
    """The core's actions in serving (the driver's ActionSink): a decision updates its ticket's row
    and goes to the recorder; a dispatch or a refusal resolves the ticket's waiter."""

    __slots__ = ("sluice",)

    def __init__(self, sluice: Sluice) -> None:
        self.sluice = sluice

    def decision(self, d: Decision) -> None:
        ticket = self.sluice.tickets.get(d.rid)
        if ticket is not None:
            ticket.decisions.append(d)
            if d.kind in ADMISSION_KINDS:
                ttft, tpot = d.outputs.get("ttft_s"), d.outputs.get("tpot_s")  # the row says ms
                ticket.row.update(decision=d.kind, reason=d.reason, policy_version=d.policy_version,
                                  predicted_output_tokens=d.inputs.get("output_tokens"),
                                  predicted_ttft_ms=None if ttft is None else ttft * 1e3,
                                  predicted_tpot_ms=None if tpot is None else tpot * 1e3)
        if self.sluice.recorder is not None:
            self.sluice.recorder.decision(d)

    def dispatch(self, now: float, action: Dispatch) -> None:
        ticket = self.sluice.tickets.get(action.rid)
        if ticket is None or ticket.waiter.done():
            return
        ticket.engine, ticket.priority, ticket.dispatched_at = action.engine, action.priority, now
        ticket.waiter.set_result(action)
        steering = self.sluice.steering
        if steering is not None:
            try:  # a raise between evaluations when the dispatch leaves the clock short
                for d in steering.dispatched(now, action.engine):
                    self.decision(d)
            except Exception:
                log.exception("frequency rule on engine %s failed", action.engine)

    def reject(self, now: float, action: Reject) -> None:
        ticket = self.sluice.tickets.get(action.rid)
        if ticket is not None and not ticket.waiter.done():
            ticket.waiter.set_result(action)


class _ForecastTee:
    """Forecast errors go to the rolling summary (admin API) and to the recorder (Prometheus)."""

    def __init__(self, sluice: Sluice) -> None:
        self.sluice = sluice

    def record(self, kind: str, predicted: float, actual: float) -> None:
        self.sluice.errors.record(kind, predicted, actual)
        if self.sluice.recorder is not None:
            self.sluice.recorder.forecast(kind, predicted, actual)


def _new_row(rid: str, tenant: str, slo_class: str, req: CompletionRequest, now: float) -> dict[str, Any]:
    return {"rid": rid, "trace_id": None, "tenant": tenant, "slo_class": slo_class, "model": req.model,
            "engine": None, "stream": req.stream, "status": None, "http_status": None, "decision": None,
            "reason": None, "finish_reason": None, "error": None, "error_code": None, "arrival_ts": now,
            "dispatch_ts": None, "first_token_ts": None, "finish_ts": None, "queue_ms": None, "ttft_ms": None, "tpot_ms": None,
            "e2e_ms": None, "prompt_tokens": req.prompt_tokens, "cached_tokens": 0, "completion_tokens": 0,
            "max_tokens": req.max_tokens, "predicted_output_tokens": None, "predicted_ttft_ms": None,
            "predicted_tpot_ms": None, "policy_version": None, "slo_met": None, "end_user": req.user,
            "energy_j": None}


def _derive_latencies(row: dict[str, Any], slo: SLOClassPolicy) -> None:
    arrival, first, end = row["arrival_ts"], row["first_token_ts"], row["finish_ts"]
    if row["dispatch_ts"] is not None:
        row["queue_ms"] = (row["dispatch_ts"] - arrival) * 1e3
    if first is not None:
        row["ttft_ms"] = (first - arrival) * 1e3
        if row["completion_tokens"] > 1:
            row["tpot_ms"] = (end - first) * 1e3 / (row["completion_tokens"] - 1)
    row["e2e_ms"] = (end - arrival) * 1e3
    if row["status"] == "ok":  # judged in seconds, as the core and replay judge it
        n = row["completion_tokens"]
        row["slo_met"] = slo_met(slo, row["prompt_tokens"], None if first is None else first - arrival,
                                 (end - first) / (n - 1) if first is not None and n > 1 else None, end - arrival)
