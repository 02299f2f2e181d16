"""Prometheus metrics (``sluice_*``) on their own registry, with bounded label cardinality.

Tenant labels: the first ``max_tenants`` distinct tenants seen get their own label value; every
later tenant is reported as ``"other"`` (first-come, stable for the life of the process: a label
never changes meaning mid-series). Engines and rejection reasons are bounded the same way
(``max_engines``, ``max_reasons``). The per-pool series (requests, latencies, tokens, queue depth,
engines) carry a ``pool`` label: the model pool (controlplane/model_pools.py), "" where none was
chosen (a request refused before routing).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .metrics_collectors import GpuCollector, StoreCollector

OTHER = "other"
HIDDEN = "all"  # the one tenant label value when tenant names are hidden

# OpenTelemetry GenAI semconv advisory buckets (seconds)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# absolute percentage error as a fraction (0.1 = 10 %)
APE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

OUTCOMES = ("ok", "rejected", "aborted", "error", "expired")
_REFUSED = ("rejected", "expired")  # outcomes where the client got an error status and no tokens
# how late the event loop runs a timer (seconds); 0.02 is the soak target for its p99
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_PERIOD_S = 0.05


class _Bounded:
    """First-N-seen label values; the rest map to "other"."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> str:
        v = "" if value is None else str(value)
        if v in self.seen:
            return v
        with self._lock:
            if v in self.seen:
                return v
            if len(self.seen) < self.limit and v != OTHER:
                self.seen.add(v)
                return v
        return OTHER


class _Hidden:
    """Every tenant as one label value: no tenant name in any series."""

    def __call__(self, value: Any) -> str:
        return HIDDEN


class Metrics:
    """All of sluice's Prometheus metrics. Every method is cheap and thread-safe.

    ``hide_tenants``: every series that has a ``tenant`` label reports ``tenant="all"`` (the sum
    over tenants), so scrapers see no tenant names; per-tenant detail stays in DuckDB and the
    admin API.
    """

    def __init__(self, max_tenants: int = 50, *, max_engines: int = 64, max_reasons: int = 32,
                 hide_tenants: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant_label: Any = _Hidden() if hide_tenants else _Bounded(max_tenants)
        self.engine_label = _Bounded(max_engines)
        self.reason_label = _Bounded(max_reasons)
        self.class_label = _Bounded(32)
        self.pool_label = _Bounded(32)
        r = self.registry
        self._add_request_metrics(r)
        self._add_engine_metrics(r)
        self.forecast_error = Histogram(
            "sluice_forecast_error", "Absolute percentage error of forecasts, |pred - actual| / actual",
            ["kind"], buckets=APE_BUCKETS, registry=r,
        )
        self._gpu = GpuCollector()
        r.register(self._gpu)
        self._store = StoreCollector()
        r.register(self._store)
        # label children resolved once per (tenant, slo_class, pool) / forecast kind: .labels() takes
        # a lock and builds tuples, and a request would call it up to six times
        self._request_children: dict[tuple[Any, Any, Any], _RequestChildren] = {}
        self._forecast_children: dict[str, Any] = {}
        self._decision_children: dict[tuple[Any, Any], Any] = {}
        self._refusal_children: dict[tuple[Any, Any], Any] = {}

    def _add_request_metrics(self, r: CollectorRegistry) -> None:
        """Per-request series: outcomes, admission and refusals, loop lag, queues, latencies, tokens."""
        self.requests_total = Counter(
            "sluice_requests", "Finished requests by outcome", ["tenant", "slo_class", "outcome", "pool"], registry=r
        )
        self.admission_decisions_total = Counter(
            "sluice_admission_decisions", "Admission decisions", ["decision", "reason"], registry=r
        )
        self.refusals_total = Counter(
            "sluice_refusals", "Requests answered with an error status before any token, by the error code the "
            "client received (bad input, unknown model, policy refusals, unauthenticated ...)",
            ["reason", "http_status"], registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "sluice_event_loop_lag_seconds", f"How late the event loop ran a {LOOP_LAG_PERIOD_S:g} s timer",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("sluice_queue_depth", "Queued requests per tenant and model pool", ["tenant", "pool"],
                                 registry=r)
        self._queue_labels: dict[str, set[str]] = {}  # pool -> tenant labels set so far
        self.in_flight = Gauge("sluice_in_flight", "Requests dispatched to an engine", ["engine", "pool"], registry=r)
        self.ttft_seconds = Histogram(
            "sluice_ttft_seconds", "Time to first token", ["tenant", "slo_class", "pool"], buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot_seconds = Histogram(
            "sluice_tpot_seconds", "Time per output token after the first", ["tenant", "slo_class", "pool"],
            buckets=TPOT_BUCKETS, registry=r,
        )
        self.tokens_total = Counter(
            "sluice_tokens", "Tokens by kind (prompt, completion, cached prompt)", ["tenant", "kind", "pool"], registry=r
        )
        self.tenant_energy_total = Counter(
            "sluice_tenant_energy_joules", "GPU energy attributed to the tenant's requests (their share of each "
            "engine step by tokens computed; engines that report it)", ["tenant"], registry=r
        )

    def _add_engine_metrics(self, r: CollectorRegistry) -> None:
        """Per-engine load and the pool's replica counts (the autoscaling signal)."""
        self.engine_running = Gauge("sluice_engine_running", "Engine's running requests", ["engine", "pool"],
                                    registry=r)
        self.engine_waiting = Gauge("sluice_engine_waiting", "Engine's waiting requests", ["engine", "pool"],
                                    registry=r)
        self.engine_kv_usage = Gauge("sluice_engine_kv_usage", "Engine's KV-cache usage (0..1)", ["engine", "pool"],
                                     registry=r)
        # the autoscaling signal (docs/capacity.md): KEDA / an HPA scale the pool's engines to `desired`
        self.desired_replicas = Gauge("sluice_desired_replicas", "Engine replicas the pool needs to meet its "
                                      "SLOs (capacity rule, stabilised)", ["pool"], registry=r)
        self.actual_replicas = Gauge("sluice_actual_replicas", "Engine replicas serving now (healthy)", ["pool"],
                                     registry=r)

    def _children(self, tenant_raw: Any, cls_raw: Any, pool_raw: Any) -> _RequestChildren:
        key = (tenant_raw, cls_raw, pool_raw)
        c = self._request_children.get(key)
        if c is None:
            tenant, cls, pool = self.tenant_label(tenant_raw), self.class_label(cls_raw), self.pool_label(pool_raw)
            c = _RequestChildren(self, tenant, cls, pool)
            if len(self._request_children) < 4096:  # bounded whatever the label values
                self._request_children[key] = c
        return c

    # -------------------------------------------------------------- request lifecycle

    def observe_request(self, row: Mapping[str, Any]) -> None:
        """Count a finished request from its request row (the dict given to ``Store.record_request``).

        Uses ``tenant``, ``slo_class``, ``pool``, ``status``, ``ttft_ms``, ``tpot_ms``, ``prompt_tokens``,
        ``completion_tokens``, ``cached_tokens`` and ``energy_j``. Not the forecast errors: those come
        once per forecast from where the predictors learn (``observe_forecast``), not again from the row.
        """
        c = self._children(row.get("tenant") or "default", row.get("slo_class") or "", row.get("pool") or "")
        status = row.get("status") or "ok"
        outcome = status if status in OUTCOMES else "error"
        c.child("requests", outcome).inc()
        if outcome in _REFUSED:
            self.observe_refusal(row.get("error_code") or row.get("error"), row.get("http_status"))
        ttft = row.get("ttft_ms")
        if ttft is not None:
            c.child("ttft", "").observe(float(ttft) / 1000.0)
        tpot = row.get("tpot_ms")
        if tpot is not None:
            c.child("tpot", "").observe(float(tpot) / 1000.0)
        for key, kind in _TOKEN_KINDS:
            n = row.get(key)
            if n:
                c.child("tokens", kind).inc(int(n))
        joules = row.get("energy_j")
        if joules:
            c.child("energy", "").inc(float(joules))

    def observe_decision(self, decision: str, reason: str | None = None) -> None:
        key = (decision, reason)
        child = self._decision_children.get(key)
        if child is None:
            child = self.admission_decisions_total.labels(str(decision), self.reason_label(reason or ""))
            if len(self._decision_children) < 1024:
                self._decision_children[key] = child
        child.inc()

    def observe_refusal(self, reason: str | None, http_status: int | None) -> None:
        """One refused request; also called, without a request row, for unauthenticated ones."""
        key = (reason, http_status)
        child = self._refusal_children.get(key)
        if child is None:
            child = self.refusals_total.labels(self.reason_label(reason or ""), str(http_status or ""))
            if len(self._refusal_children) < 1024:
                self._refusal_children[key] = child
        child.inc()

    async def watch_loop_lag(self, period_s: float = LOOP_LAG_PERIOD_S) -> None:
        """Until cancelled: a timer every `period_s` on the running loop, its lateness observed."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period_s
            await asyncio.sleep(period_s)
            self.loop_lag_seconds.observe(max(0.0, loop.time() - due))

    def observe_forecast(self, kind: str, predicted: float | None, actual: float | None) -> None:
        """Record |predicted - actual| / actual (skipped when either is missing or actual is 0)."""
        if predicted is None or actual is None or float(actual) == 0.0:
            return
        child = self._forecast_children.get(kind)
        if child is None:
            child = self.forecast_error.labels(kind)
            if len(self._forecast_children) < 64:
                self._forecast_children[kind] = child
        child.observe(abs(float(predicted) - float(actual)) / abs(float(actual)))

    # -------------------------------------------------------------- gauges

    def set_queue_depths(self, depths: Mapping[str, int], pool: str = "") -> None:
        """Set every tenant's queue depth in a model pool at once (tenants over the bound are summed
        into "other"; tenants absent from ``depths`` read 0)."""
        p = self.pool_label(pool)
        agg: dict[str, float] = {}
        for tenant, n in depths.items():
            label = self.tenant_label(tenant)
            agg[label] = agg.get(label, 0) + n
        seen = self._queue_labels.setdefault(p, set())
        for label in seen - agg.keys():
            self.queue_depth.labels(label, p).set(0)
        for label, n in agg.items():
            self.queue_depth.labels(label, p).set(n)
        seen.update(agg)

    def set_in_flight(self, engine: str, n: int, pool: str = "") -> None:
        self.in_flight.labels(self.engine_label(engine), self.pool_label(pool)).set(n)

    def set_engine_load(self, engine: str, running: float | None, waiting: float | None,
                        kv_usage: float | None, pool: str = "") -> None:
        e, p = self.engine_label(engine), self.pool_label(pool)
        if running is not None:
            self.engine_running.labels(e, p).set(running)
        if waiting is not None:
            self.engine_waiting.labels(e, p).set(waiting)
        if kv_usage is not None:
            self.engine_kv_usage.labels(e, p).set(kv_usage)

    def set_replicas(self, pool: str, desired: int, actual: int) -> None:
        self.desired_replicas.labels(pool).set(desired)
        self.actual_replicas.labels(pool).set(actual)

    def set_gpu_samples(self, samples: Iterable[Mapping[str, Any]]) -> None:
        """The latest GPU readings (``GpuSampler.sample()`` dicts), exported on the next scrape."""
        self._gpu.latest = [dict(s) for s in samples]

    def bind_store(self, stats: Callable[[], Mapping[str, Any]] | Any) -> None:
        """Export the store's lag, pending, written and dropped counts, read at scrape time."""
        self._store.stats = stats if callable(stats) else stats.stats

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type, for a ``GET /metrics`` response."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


_TOKEN_KINDS = (("prompt_tokens", "prompt"), ("completion_tokens", "completion"), ("cached_tokens", "cached"))


class _RequestChildren:
    """One (tenant, slo_class, pool)'s metric children, each created on first use (as .labels() would)."""

    __slots__ = ("metrics", "tenant", "cls", "pool", "cache")

    def __init__(self, metrics: Metrics, tenant: str, cls: str, pool: str) -> None:
        self.metrics, self.tenant, self.cls, self.pool = metrics, tenant, cls, pool
        self.cache: dict[tuple[str, str], Any] = {}

    def child(self, metric: str, label: str) -> Any:
        c = self.cache.get((metric, label))
        if c is None:
            m = self.metrics
            if metric == "requests":
                c = m.requests_total.labels(self.tenant, self.cls, label, self.pool)
            elif metric == "ttft":
                c = m.ttft_seconds.labels(self.tenant, self.cls, self.pool)
            elif metric == "tpot":
                c = m.tpot_seconds.labels(self.tenant, self.cls, self.pool)
            elif metric == "energy":
                c = m.tenant_energy_total.labels(self.tenant)
            else:
                c = m.tokens_total.labels(self.tenant, label, self.pool)
            self.cache[(metric, label)] = c
        return c
