"""The serving runtime: drives the pure decision core with the wall clock and real engines.

One `Sluice` per process: what the gateway and the admin API call. Every request becomes a
`Ticket` (controlplane/tickets.py): admitted or refused by the core, queued until the core
dispatches it, streamed from the chosen engine, and closed exactly once, whatever happens (finish,
client gone, engine dead), so the core's bookkeeping stays consistent and every request leaves one
row in the store.

Its parts: the engines, their core and its controllers (`EnginePool`, engine_pool.py, opened by
`start()` once the engines have said what they are), the cadence that ticks the core and polls the
engines (cadence.py), the output-length trainer's thread (trainer.py).
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from controlplane.cadence import Cadence
from controlplane.config import Config, TenantConfig
from controlplane.core.events import FinishReport, Reject, RequestSpec
from controlplane.core.frequency import FrequencyParams
from controlplane.core.policy import Policy, PolicyError
from controlplane.core.snapshot import CoreSnapshot
from controlplane.engine_call import engine_batches, generate_request
from controlplane.engine_pool import EnginePool
from controlplane.errors import refusal
from controlplane.livestats import LiveStats
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.prefix_hash import request_prefix
from controlplane.prompt_tokens import PromptTokenEstimator
from controlplane.recorder import Recorder
from controlplane.tenant_access import TenantAccess
from controlplane.requests import CompletionRequest
from controlplane.tickets import Ticket
from controlplane.trainer import PredictorTrainer
from engine_adapter.base import Chunk, Engine, EngineError, EngineOverloaded, Push, has_first_token
from engine_adapter.tokens import estimate_tokens, tokenizer_counter

log = logging.getLogger("sluice")

__all__ = ["Sluice"]


class Sluice:
    def __init__(self, config: Config, engines: dict[str, Engine], *, recorder: Recorder | None = None,
                 clock: Callable[[], float] = time.time, predictor: OutputLengthPredictor | None = None,
                 clock_control: FrequencyParams | None = None,
                 set_clock: Callable[[str, float], str] | None = None) -> None:
        self.config = config
        self.engines = engines
        self.clock = clock
        self.recorder = recorder  # telemetry sink: spans, request rows, decisions, metrics (see observe.py)
        self.access = TenantAccess(config)  # keys and the model catalog (tenant_access.py)
        self.keys, self.catalog = self.access.keys, self.access.catalog
        self.authenticate, self.resolve_model = self.access.authenticate, self.access.resolve_model
        self.model_list, self.route = self.access.model_list, self.access.route
        self._policy = config.policy  # the one policy; each pool's core takes it with its own weights
        self.tickets: dict[str, Ticket] = {}
        self.predictor = predictor if predictor is not None else OutputLengthPredictor(seed=0, torch_expert=True)
        self.errors = ForecastErrors()
        self.forecasts = _ForecastTee(self.errors, recorder)
        self.prompt_estimator = PromptTokenEstimator()
        tokenizer = config.server.tokenizer  # the model's own count when configured, else 4 chars/token
        self.count_tokens = tokenizer_counter(tokenizer) if tokenizer else estimate_tokens
        self.stats = LiveStats()
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # admin event stream
        # SLO-aware SM clocks (docs/frequency.md): a simulated engine sets its own, a real one's GPU
        # goes through `set_clock(engine, mhz)` (NVML, a dry run where not permitted)
        self.clock_control, self.set_clock = clock_control, set_clock
        self.trainer = PredictorTrainer(self.predictor)
        self._pools: dict[str, EnginePool] = {}
        self._engine_pool: dict[str, EnginePool] = {}
        self._cadences: list[Cadence] = []
        # request ids: a generator seeded from the OS, no system call (and no GIL release) per request
        self._rid_bits = random.Random(os.urandom(32)).getrandbits

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Ask the engines what they are and open one pool per model (each with its own core and
        cadence); then the trainer runs. An engine the config does not list (tests that build
        their engines themselves) joins the first pool."""
        first = next(iter(self.catalog.pools))
        members: dict[str, dict[str, Engine]] = {name: {} for name in self.catalog.pools}
        for name, engine in self.engines.items():
            members[self.catalog.engine_pool.get(name, first)][name] = engine
        for name, engines in members.items():
            names = self.catalog.pools[name].names
            pool = await EnginePool.open(name, engines, self._policy.for_pool(names), self.predictor, self.forecasts,
                                         self.tickets, self.recorder, self.clock,
                                         clock_control=self.clock_control, set_clock=self.set_clock,
                                         capacity_params=self.config.capacity)
            self._pools[name] = pool
            self._engine_pool.update(dict.fromkeys(engines, pool))
        for pool in self._pools.values():
            cadence = Cadence(pool, self.clock)
            cadence.start()
            self._cadences.append(cadence)
        self.trainer.start()

    async def stop(self) -> None:
        self.trainer.stop()
        for cadence in self._cadences:
            await cadence.stop()
        for engine in self.engines.values():
            await engine.close()

    @property
    def pools(self) -> dict[str, EnginePool]:
        """Each model pool's engines, core and controllers, by pool name: there from `start()` on."""
        if not self._pools:
            raise RuntimeError("Sluice.start() has not run: the engines are not known yet")
        return self._pools

    @property
    def pool(self) -> EnginePool:
        """The pool, where there is one (most deployments and tests); with several, `pools`."""
        pools = self.pools
        if len(pools) != 1:
            raise RuntimeError(f"{len(pools)} model pools ({sorted(pools)}): name one (Sluice.pools)")
        return next(iter(pools.values()))

    def pool_of(self, engine: str) -> EnginePool:
        """The pool an engine serves in (from `start()` on)."""
        return self._engine_pool[engine]

    # -- reading and steering the core ---------------------------------------------------------------
    def snapshot(self, pool: str | None = None, *, with_tenants: bool = True, also: Iterable[str] = ()) -> CoreSnapshot:
        """What a pool's core knows now (controlplane/core/snapshot.py); `pool` None: the only pool."""
        p = self.pool if pool is None else self.pools[pool]
        return p.core.snapshot(self.clock(), with_tenants=with_tenants, also=also)

    def snapshots(self, *, with_tenants: bool = True, also: Iterable[str] = ()) -> dict[str, CoreSnapshot]:
        """Every pool's snapshot, at one instant."""
        now = self.clock()
        return {name: p.core.snapshot(now, with_tenants=with_tenants, also=also) for name, p in self.pools.items()}

    @property
    def policy(self) -> Policy:
        """The policy in force (each pool's core holds it with the tenants' weights in that pool)."""
        return self._policy

    def check_policy(self, policy: Policy) -> None:
        """Raises PolicyError if `policy` cannot replace the one in force (a per-pool weight naming no
        pool, a dropped class that queued requests in some pool still belong to)."""
        problem = self.catalog.weights_problem(policy.tenants)
        if problem:
            raise PolicyError(problem)
        for name, pool in self.pools.items():
            pool.core.check_policy(policy.for_pool(self.catalog.pools[name].names))

    def set_policy(self, policy: Policy) -> None:
        """One policy for every pool, swapped in each pool's core at the same instant."""
        now = self.clock()
        self._policy = policy
        for name, pool in self.pools.items():
            pool.driver.set_policy(now, policy.for_pool(self.catalog.pools[name].names))
        self._emit("policy", policy.to_dict())

    # -- the request path ------------------------------------------------------------------------
    def fit_context(self, req: CompletionRequest) -> None:
        """Correct the prompt estimate for the model, then fit the smallest context window of its
        pool's engines (any of them may serve it); raises OpenAI's 400 `context_length_exceeded`."""
        req.prompt_tokens = self.prompt_estimator.correct(req.model, req.estimate or req.prompt_tokens)
        window = self._request_pool(req).context_window()
        if window is not None:
            req.fit_context(window)

    def submit(self, tenant: TenantConfig, req: CompletionRequest, *, rid: str | None = None,
               prefix: tuple[tuple[int, ...], int] | None = None) -> Ticket:
        """Admission: returns a ticket that is queued or already dispatched; raises ApiError on refusal.
        `rid` and `prefix` (its prefix hashes and block size): given by a gateway worker, which
        names its requests and hashes their prompts itself (controlplane/worker_hub.py)."""
        pool, now, rid = self._request_pool(req), self.clock(), rid or self._new_rid()
        ticket = Ticket.open(rid, tenant.name, req, pool.core.policy.tenant(tenant.name).slo_class, now)
        self.tickets[rid] = ticket
        if self.recorder is not None:
            self.recorder.begin(ticket)
        hashes, block = prefix or request_prefix(req)  # where dispatch expects the prompt cached (docs/dispatch.md)
        pool.driver.arrive(now, RequestSpec(rid, tenant.name, req.prompt_tokens, req.max_tokens, None, req.stream,
                                            hashes, block, req.adapter))
        if ticket.waiter.done() and isinstance(ticket.waiter.result(), Reject):
            rej = ticket.waiter.result()
            err = refusal(rej.code, rej.message, rej.retry_after_s)
            err.request_id = rid
            self.close(ticket, "rejected", err.status, error=rej.code, code=rej.code)
            raise err
        return ticket

    def _request_pool(self, req: CompletionRequest) -> EnginePool:
        """The pool `route` chose (the only pool for a request no route was taken for: tests that
        drive the runtime without the gateway)."""
        return self.pools[req.pool] if req.pool else self.pool

    def _pool_if_routed(self, req: CompletionRequest) -> EnginePool | None:
        """Its pool, or None for a request refused before routing while there are several."""
        if req.pool or len(self.pools) == 1:
            return self._request_pool(req)
        return None

    def _new_rid(self) -> str:
        # 128 random bits, fixed length: no rid is a prefix of another (SGLang aborts by prefix)
        return f"{self._rid_bits(128):032x}"

    def refuse(self, tenant: TenantConfig, kind: str, req: CompletionRequest | None, status: str,
               http_status: int, *, code: str | None, error: str | None, rid: str | None = None) -> str:
        """An authenticated request that never reached admission (bad input, unknown model, a client
        gone while sending it): its one row and span, nothing for the core to reconcile. Returns its rid."""
        now, rid, parsed = self.clock(), rid or self._new_rid(), req is not None
        req = req or CompletionRequest(kind, "", "", 0, 0, False, False)
        ticket = Ticket.open(rid, tenant.name, req, self.policy.tenant(tenant.name).slo_class, now)
        if not parsed:  # nothing is known of what was asked
            ticket.row.update(model=None, stream=None, prompt_tokens=None, max_tokens=None)
        if self.recorder is not None:
            self.recorder.begin(ticket)
        self.close(ticket, status, http_status, error=error, code=code)
        return rid

    async def wait_dispatch(self, ticket: Ticket) -> None:
        """Wait in sluice's queue until the core dispatches the request (or expires it)."""
        await ticket.waiter
        self.settle(ticket)

    def settle(self, ticket: Ticket) -> None:
        """Once its waiter is resolved: a refusal in the queue closes the ticket and raises its ApiError."""
        outcome = ticket.waiter.result()
        if isinstance(outcome, Reject):
            status = {"deadline_expired": "expired", "aborted": "aborted"}.get(outcome.code, "rejected")
            err = refusal(outcome.code, outcome.message, outcome.retry_after_s)
            err.request_id = ticket.rid
            self.close(ticket, status, err.status, error=outcome.code, code=outcome.code)
            raise err

    def open_stream(self, ticket: Ticket, push: Push | None = None) -> AsyncIterator[Sequence[Chunk]]:
        """The engine's chunks for a dispatched ticket, in batches (those that arrived together).

        The hot path: the caller iterates the engine's own generator (no generator of sluice's in
        between), so it owes sluice three things: `first_token` at the first chunk with a token or
        a finish reason (before sending it), `engine_failed` on an EngineError, and `aclose()` on
        the iterator when it stops early (which aborts the request at the engine). With `push`,
        an engine that can hands the batches to it as they are read (engine_call.engine_batches)
        and `push` owes `first_token` in their place.
        """
        assert ticket.engine is not None
        traceparent, model = self.engine_call(ticket)
        greq = generate_request(ticket.rid, ticket.request, ticket.priority, traceparent, model,
                                self.catalog.pools[ticket.request.pool].adapters if ticket.request.adapter else None)
        return engine_batches(self.engines[ticket.engine], greq, push)

    def engine_call(self, ticket: Ticket) -> tuple[str | None, str | None]:
        """A dispatched ticket's engine call begins: the traceparent to send (its engine span's) and
        the model name its engine serves."""
        assert ticket.engine is not None
        traceparent = self.recorder.engine_call(ticket) if self.recorder is not None else None
        return traceparent, self.pool_of(ticket.engine).infos[ticket.engine].model

    def first_token(self, ticket: Ticket, batch: Sequence[Chunk]) -> None:
        """Record the first token if `batch` has it (call while ticket.first_token_at is None)."""
        if has_first_token(batch):
            self.mark_first_token(ticket)

    def mark_first_token(self, ticket: Ticket) -> None:
        """Its first token (or its end) has come: the core and the recorder learn it now."""
        ticket.first_token_at = self.clock()
        self._request_pool(ticket.request).driver.first_token(ticket.first_token_at, ticket.rid)
        if self.recorder is not None:
            self.recorder.first_token(ticket)

    def engine_failed(self, ticket: Ticket, exc: EngineError) -> None:
        """A stream ended in an EngineError: a dead engine is marked unhealthy (an overloaded one is not,
        nor one that refused a bad request: a 4xx is the request's fault)."""
        if not isinstance(exc, EngineOverloaded) and exc.status_code >= 500 and ticket.engine is not None:
            self.pool_of(ticket.engine).driver.engine_health(self.clock(), ticket.engine, False)

    def close(self, ticket: Ticket, status: str, http_status: int, *, chunk: Chunk | None = None,
              error: str | None = None, code: str | None = None) -> None:
        """End a ticket exactly once: reconcile the core, write the request row, notify listeners.

        `http_status` and `code` are what the client received (200 and the in-band error's code for a
        stream that failed after its headers); `error` is the detail, for operators only."""
        if ticket.closed:
            return
        ticket.closed = True
        now, pool = self.clock(), self._pool_if_routed(ticket.request)
        self.tickets.pop(ticket.rid, None)
        if pool is None:  # refused before routing: the core never saw it
            pass
        elif ticket.engine is not None:
            report = FinishReport(
                status if status in ("ok", "aborted") else "error",
                chunk.prompt_tokens if chunk else ticket.request.prompt_tokens,
                chunk.cached_tokens if chunk else 0,
                chunk.completion_tokens if chunk else 0,
                ticket.first_token_at)
            pool.driver.finish(now, ticket.rid, report)
        elif status in ("aborted", "error"):
            pool.driver.abort(now, ticket.rid, error or status)
        if chunk is not None and chunk.prompt_tokens and ticket.request.estimate:
            req = ticket.request
            self.prompt_estimator.observe(req.model, req.estimate, chunk.prompt_tokens)
            self.forecasts.record("prompt_tokens", req.prompt_tokens, chunk.prompt_tokens)
        row = ticket.finish_row(now, status, http_status, chunk, error, code, self._policy.slo(ticket.slo_class))
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

    def _emit(self, kind: str, payload: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(kind, payload)


class _ForecastTee:
    """Forecast errors go to the rolling summary (admin API) and to the recorder (Prometheus)."""

    __slots__ = ("errors", "recorder")

    def __init__(self, errors: ForecastErrors, recorder: Recorder | None) -> None:
        self.errors = errors
        self.recorder = recorder

    def record(self, kind: str, predicted: float, actual: float) -> None:
        self.errors.record(kind, predicted, actual)
        if self.recorder is not None:
            self.recorder.forecast(kind, predicted, actual)
