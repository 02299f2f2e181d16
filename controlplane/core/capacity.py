"""How many engine replicas a pool needs: a pure scaling rule and its stabiliser.

Same discipline as the core: no I/O, no clock, no await, no random; `now` is an argument. The
serving runtime and replay compute it on the driver's cadence (`driver.CAPACITY_EVERY_S`) from the
core's snapshot (`pool_load`), so `sluice_desired_replicas` and `sluice simulate --autoscale` are the
same decision.

The rule (Chiron's hierarchy, docs/capacity.md):

1. Interactive headroom first. One replica serves `mu` requests/s within the TPOT budget by the step
   model: the rate at which continuous batching's step time (the decodes of the running batch plus
   the prompts arriving meanwhile) stays within the budget and the batch within its window
   (`replica_capacity`).
   The latency tier's arrival rate (refused requests too: demand, not what got in) is an offered
   load of R = lambda / mu replicas; it needs max(R / target_utilisation, R + burst_reserve * sqrt(R))
   replicas: a proportional headroom for forecast error, and square-root staffing (Halfin-Whitt) for
   bursts, whose size relative to the load shrinks as 1 / sqrt(R), so small fleets keep a spare.
   A rising rate is met where a replica asked for now will serve: `lead_s` (the cold start) ahead
   (`Controller._ahead`).
2. Batch deadlines second. Deferred work rides in that headroom; only when it cannot finish by its
   deadline do replicas get added: the queued deferrable requests, ordered by deadline, need
   max_k (k requests ahead) / (slack of the k-th) requests/s on top of their arrival rate, and
   latency + batch together may run the pool up to `batch_utilisation`.
3. Backpressure overrides the model when it is wrong: a latency request refused for load, a typical
   request's forecast TTFT or TPOT past the budget, or KV nearly full ask for one replica more than
   are serving now (not more than are provisioned: a cold start in progress does not compound).
4. Hysteresis: the model scales down only once its need falls below (1 - tolerance) of the current
   count, and the stabiliser (`Stabiliser`) applies HPA's behaviour: the highest recommendation over
   the scale-down window, the lowest over the (short) scale-up window, and rate limits per period.

Scale to zero: a pool with no demand, nothing queued and nothing running for `idle_to_zero_s`
asks for zero replicas; any arrival (refused while no engine serves) asks for one.

Prefill/decode disaggregation (HeteroScale): sluice's engines are not disaggregated today, so a pool
is a set of identical engines. With `pd_ratio=(p, d)` the rule sizes the prefill and decode pools
together in units of p prefill + d decode replicas, each side's need from its own part of the work,
so the ratio HeteroScale keeps holds (`split_pd`).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from controlplane.core.core import DecisionCore
from controlplane.core.engine_state import RATE_WINDOW_S
from controlplane.core.events import shallow_dict
from controlplane.core.snapshot import CoreSnapshot
from controlplane.core.tiers import DEFERRABLE, LATENCY, tier_of
from controlplane.core.windows import largest_batch
from engine_adapter.base import StepProfile

__all__ = ["BURST_RESERVE", "Behaviour", "CapacityParams", "Controller", "PoolLoad", "Recommendation", "Replica",
           "Stabiliser", "need", "pool_load", "replica_capacity", "replica_window", "split_pd"]


@dataclass(frozen=True, slots=True)
class Replica:
    """One engine replica as the capacity model sees it."""

    profile: StepProfile
    kv_capacity: int
    max_running: int = 256


@dataclass(frozen=True, slots=True)
class PoolLoad:
    """What the rule reads at one instant (all of it known to serving: no oracle)."""

    serving: int  # replicas serving now (healthy)
    latency_rps: float  # latency-tier arrivals per second, refused ones included
    deferrable_rps: float
    mean_prompt: float  # tokens computed per prompt (prefix-cache hits excluded)
    mean_output: float
    tpot_budget_s: float | None  # the tightest latency-tier TPOT, times the admission margin
    deferred: tuple[float, ...] = ()  # slack (s to its deadline) of each queued deferrable request, ascending
    in_flight: int = 0
    queued: int = 0
    pressure: str | None = None  # why the pool is short now (backpressure), or None
    idle_s: float = 0.0  # how long the pool has had no demand, nothing queued and nothing running


# Square-root staffing's factor: R replicas of latency load get R + burst_reserve * sqrt(R) at least.
# The spare serves a burst while a replica asked for is still loading (its cold start): on the
# ServeGen day (docs/capacity.md) 2.5 is the smallest of 1, 2, 2.5 that matched the utilisation HPA's
# attainment on every bench row. Above R = 34 (49 replicas) the proportional headroom governs again.
BURST_RESERVE = 2.5


@dataclass(frozen=True, slots=True)
class CapacityParams:
    """The rule's knobs (the `[capacity]` table, docs/configuration.md). A value of the wrong kind
    or out of range is a ValueError naming the field: a typo must not scale a fleet."""

    target_utilisation: float = 0.7  # of a replica's SLO capacity the latency tier may use
    batch_utilisation: float = 0.95  # latency + deadline-bound batch work together
    tolerance: float = 0.1  # scale down only when the need is below (1 - tolerance) x current
    min_replicas: int = 0
    max_replicas: int = 64
    idle_to_zero_s: float = 60.0  # no demand this long: zero replicas (if min_replicas is 0)
    lead_s: float = 60.0  # how long a new replica takes to serve (its cold start): a rising rate is met there
    burst_reserve: float = BURST_RESERVE  # square-root staffing's factor (0: the proportional headroom alone)

    def __post_init__(self) -> None:
        for name, lo, hi, closed_lo in _PARAM_RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if value < lo or (value == lo and not closed_lo) or value > hi:
                raise ValueError(f"{name} must be in {'[' if closed_lo else '('}{lo:g}, {hi:g}], got {value!r}")
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= 1 and >= min_replicas "
                             f"({self.min_replicas})")
        if self.batch_utilisation < self.target_utilisation:
            raise ValueError(f"batch_utilisation ({self.batch_utilisation}) must be >= target_utilisation "
                             f"({self.target_utilisation}): latency and batch work together may use more than "
                             "latency work alone")


# (field, low, high, low included): the float knobs' ranges
_PARAM_RANGES = (("target_utilisation", 0.0, 1.0, False), ("batch_utilisation", 0.0, 1.0, False),
                 ("tolerance", 0.0, 0.99, True), ("idle_to_zero_s", 0.0, math.inf, True),
                 ("burst_reserve", 0.0, math.inf, True),
                 ("lead_s", 0.0, math.inf, True))


def replica_window(r: Replica, tpot_budget_s: float | None, per_request_tokens: float) -> int:
    """The largest batch whose decode step meets `tpot_budget_s` and whose KV fits (1 if none does)."""
    per = max(1.0, per_request_tokens)
    limit = max(1, min(r.max_running, int(r.kv_capacity / per)))
    if tpot_budget_s is None:
        return limit
    return largest_batch(r.profile, tpot_budget_s, per, limit)


def replica_capacity(r: Replica, tpot_budget_s: float | None, mean_prompt: float, mean_output: float, *,
                     prefill: bool = True) -> float:
    """Requests/s one replica sustains with every step within `tpot_budget_s`.

    Continuous batching: each step decodes the B running requests and prefills the prompt tokens
    that arrived meanwhile. At a rate lam with step time s, B = lam * O * s (Little) and lam * P * s
    prompt tokens go into each step, so s = c + lam * s * (O * (d + e * (P + O)) + prefill(P) - a):
    s = c / (1 - lam * work). s <= budget gives lam <= (1 - c / budget) / work; the batch must also
    fit the window (KV and the running cap): lam * O * s <= W. `prefill=False`: a decode-only
    replica (disaggregated)."""
    p = r.profile
    per = max(1.0, mean_prompt + mean_output)
    o = max(1.0, mean_output)
    work = o * (p.decode_d + p.decode_e * per)
    if prefill:
        work += p.prefill_time(mean_prompt) - p.prefill_a
    if work <= 0:
        return math.inf
    lam = (1.0 - p.decode_c / tpot_budget_s) / work if tpot_budget_s is not None else 1.0 / work
    w = replica_window(r, tpot_budget_s, per)
    # the window: lam * O * c / (1 - lam * work) <= W
    lam_w = w / (o * p.decode_c + w * work) if p.decode_c > 0 else math.inf
    return max(0.0, min(lam, lam_w))


def need(load: PoolLoad, replica: Replica, params: CapacityParams, current: int) -> int:
    """The replicas the pool needs now (before stabilisation); `current` is the count in force
    (the hysteresis band is around it)."""
    active = bool(load.latency_rps > 0 or load.deferrable_rps > 0 or load.queued or load.in_flight or load.deferred)
    if not active and load.idle_s >= params.idle_to_zero_s:
        return params.min_replicas
    mu = replica_capacity(replica, load.tpot_budget_s, load.mean_prompt, load.mean_output)
    offered = load.latency_rps / mu  # the latency tier's load in replicas' worth
    latency = max(offered / params.target_utilisation, offered + params.burst_reserve * math.sqrt(offered))
    rush = max((k + 1) / max(slack, 1e-3) for k, slack in enumerate(load.deferred)) if load.deferred else 0.0
    batch = (load.latency_rps + load.deferrable_rps + rush) / (mu * params.batch_utilisation)
    exact = max(latency, batch)
    up = math.ceil(exact - 1e-9)
    # hysteresis: down only once the need is clearly below the current count
    n = up if up > current else min(current, math.ceil(exact / (1.0 - params.tolerance) - 1e-9))
    if load.pressure is not None:
        n = max(n, load.serving + 1)
    if active or current > 0:
        n = max(n, 1)
    return max(params.min_replicas, min(params.max_replicas, n))


def split_pd(replicas_needed_prefill: float, replicas_needed_decode: float, ratio: tuple[int, int]
             ) -> tuple[int, int]:
    """Prefill and decode replicas scaled together: the fewest units of (p, d) covering both needs."""
    p, d = ratio
    if p < 1 or d < 1:
        raise ValueError("pd_ratio needs p >= 1 and d >= 1")
    units = max(math.ceil(replicas_needed_prefill / p - 1e-9), math.ceil(replicas_needed_decode / d - 1e-9), 0)
    return units * p, units * d


# -- stabilisation (Kubernetes HPA `behavior` semantics) -------------------------------------------

@dataclass(frozen=True, slots=True)
class Behaviour:
    """HPA's scaling behaviour: stabilisation windows and rate policies (the larger change of the
    pods and percent limits applies, as with selectPolicy: Max)."""

    up_window_s: float = 0.0
    down_window_s: float = 300.0
    period_s: float = 15.0
    up_pods: int = 4
    up_percent: float = 100.0
    down_pods: int = 1
    down_percent: float = 50.0


@dataclass(slots=True)
class Stabiliser:
    behaviour: Behaviour = field(default_factory=Behaviour)
    current: int = 0
    _recs: deque[tuple[float, int]] = field(default_factory=deque)
    _changes: deque[tuple[float, int]] = field(default_factory=deque)  # (time, count before the change)

    def start(self, replicas: int, now: float) -> None:
        """The count in force at `now`, remembered as a recommendation: a fleet just started is not
        scaled down before a whole down window has said so."""
        self.current = replicas
        self._recs.append((now, replicas))

    def update(self, now: float, recommendation: int) -> int:
        """The replica count to run now, given the rule's recommendation at `now`."""
        b = self.behaviour
        self._recs.append((now, recommendation))
        keep = max(b.up_window_s, b.down_window_s)
        while self._recs and self._recs[0][0] < now - keep:
            self._recs.popleft()
        up = min(r for t, r in self._recs if t >= now - b.up_window_s)
        down = max(r for t, r in self._recs if t >= now - b.down_window_s)
        target = self.current
        if target < up:
            target = up
        if target > down:
            target = down
        while self._changes and self._changes[0][0] <= now - b.period_s:
            self._changes.popleft()
        base = self._changes[0][1] if self._changes else self.current  # the count one period ago
        if target > self.current:
            target = min(target, base + max(b.up_pods, math.ceil(base * b.up_percent / 100)))
        elif target < self.current:
            target = max(target, base - max(b.down_pods, math.floor(base * b.down_percent / 100)))
        if target != self.current:
            self._changes.append((now, self.current))
            self.current = target
        return self.current


# -- what the core knows ----------------------------------------------------------------------------

KV_HIGH = 0.9  # a pool whose KV is this full is short of memory whatever the forecast says
TREND_S = 15.0  # a rising rate: the last TREND_S against the TREND_S before
CAPACITY_GRID_S = 5.0  # the evaluation period the trend's history is counted in (driver.CAPACITY_EVERY_S)


def pool_load(snap: CoreSnapshot, idle_since: float) -> PoolLoad:
    """The rule's inputs from what the decision core knows at `snap.now` (what serving knows:
    arrivals, queues, forecasts, refusals; never a request's true length). `idle_since`: when the
    pool last had demand or work (the caller keeps it)."""
    now, policy = snap.now, snap.policy
    latency_rps, deferrable_rps = snap.tiers[LATENCY].arrivals_per_s, snap.tiers[DEFERRABLE].arrivals_per_s
    healthy = snap.healthy_engines()
    latency_classes = [c for c in policy.slo_classes.values() if tier_of(c) == LATENCY]
    tpots = [c.tpot_s for c in latency_classes if c.tpot_s is not None]
    ttfts = [c.ttft_s for c in latency_classes if c.ttft_s is not None]
    margin = policy.admission_margin
    pressure = None
    if now - snap.latency_refused_at < RATE_WINDOW_S:
        pressure = "latency requests refused for capacity"
    elif healthy and latency_rps:
        if ttfts and min(e.forecast_ttft_s for e in healthy) > margin * min(ttfts):
            pressure = "forecast TTFT past the budget on every engine"
        elif tpots and min(e.forecast_tpot_s for e in healthy) > margin * min(tpots):
            pressure = "forecast TPOT past the budget on every engine"
    if pressure is None and healthy and sum(e.kv_tokens for e in healthy) \
            > KV_HIGH * sum(e.kv_capacity for e in healthy):
        pressure = "KV cache nearly full"
    return PoolLoad(
        serving=len(healthy), latency_rps=latency_rps, deferrable_rps=deferrable_rps,
        mean_prompt=snap.mean_prompt_tokens, mean_output=snap.mean_output_tokens,
        tpot_budget_s=margin * min(tpots) if tpots else None, deferred=snap.deferred_slack_s,
        in_flight=snap.in_flight, queued=snap.queued, pressure=pressure, idle_s=max(0.0, now - idle_since))


# -- the controller both drivers run -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Recommendation:
    """One evaluation: what the pool should run and why (the admin API's and /metrics' read)."""

    pool: str
    ts: float
    desired: int  # after stabilisation: what an autoscaler should run
    actual: int  # serving now
    need: int  # the rule's recommendation before stabilisation
    capacity_rps: float  # one replica's requests/s at the SLO, by the model
    load: PoolLoad
    prefill: int | None = None  # with a P/D ratio: the two pools' shares of `desired`
    decode: int | None = None

    def to_dict(self) -> dict[str, object]:
        out = {f: getattr(self, f) for f in ("pool", "ts", "desired", "actual", "need", "capacity_rps",
                                              "prefill", "decode")}
        load = shallow_dict(self.load)
        load["deferred"] = len(self.load.deferred)
        out["load"] = load
        return out


@dataclass(slots=True)
class Controller:
    """The rule plus its state (stabiliser, idle clock, the last replica seen) for one pool.

    `replica`: the template a new replica is sized by; taken from the pool's engines (their learned
    step model) whenever one is serving, so a pool scaled to zero remembers it."""

    replica: Replica
    params: CapacityParams = field(default_factory=CapacityParams)
    behaviour: Behaviour = field(default_factory=Behaviour)
    pool: str = "default"
    pd_ratio: tuple[int, int] | None = None
    stabiliser: Stabiliser = field(init=False)
    _rates: deque[tuple[float, float, float]] = field(default_factory=deque)  # (t, latency rps, deferrable rps)
    idle_since: float = 0.0
    last: Recommendation | None = None

    def __post_init__(self) -> None:
        self.stabiliser = Stabiliser(self.behaviour)

    def start(self, replicas: int, now: float) -> None:
        """The count in force before the first evaluation (the fleet the pool starts with)."""
        self.stabiliser.start(replicas, now)
        self.idle_since = now

    def step(self, core: DecisionCore, now: float) -> Recommendation:
        snap = core.snapshot(now, with_tenants=False)
        for e in snap.healthy_engines():
            self.replica = Replica(e.profile, e.kv_capacity, e.max_running)
            break
        load = self._ahead(pool_load(snap, self.idle_since), now)
        if load.latency_rps or load.deferrable_rps or load.queued or load.in_flight:
            self.idle_since = now
        current = self.stabiliser.current
        rec = need(load, self.replica, self.params, current)
        desired = self.stabiliser.update(now, rec)
        mu = replica_capacity(self.replica, load.tpot_budget_s, load.mean_prompt, load.mean_output)
        prefill = decode = None
        if self.pd_ratio is not None:
            prefill, decode = self._pd(load, desired)
        self.last = Recommendation(self.pool, now, desired, load.serving, rec, mu, load, prefill, decode)
        return self.last

    def _ahead(self, load: PoolLoad, now: float) -> PoolLoad:
        """The load a replica asked for now will meet: a new replica serves `lead_s` later, so
        while the rate rises it is sized for the rate then. Rising: the mean rate of the last
        TREND_S exceeds that of the TREND_S before by more than the tolerance (noise within the
        tolerance never anticipates, so a steady load does not flap); the rise is extrapolated
        linearly over the lead. A falling rate is not: scaling down waits for what is."""
        self._rates.append((now, load.latency_rps, load.deferrable_rps))
        while self._rates and self._rates[0][0] < now - 2 * TREND_S:
            self._rates.popleft()
        recent = [(t, lat + dfr) for t, lat, dfr in self._rates if t > now - TREND_S]
        before = [(t, lat + dfr) for t, lat, dfr in self._rates if t <= now - TREND_S]
        if not before or self._rates[0][0] > now - 2 * TREND_S + CAPACITY_GRID_S:
            return load  # not a full window of history yet
        (t1, r1), (t0, r0) = (tuple(sum(v) / len(w) for v in zip(*w)) for w in (recent, before))
        if r1 <= r0 * (1.0 + self.params.tolerance):
            return load
        total = load.latency_rps + load.deferrable_rps
        scale = (total + (r1 - r0) / (t1 - t0) * self.params.lead_s) / total if total > 0 else 1.0
        return replace(load, latency_rps=load.latency_rps * scale, deferrable_rps=load.deferrable_rps * scale)

    def _pd(self, load: PoolLoad, desired: int) -> tuple[int, int]:
        """Disaggregated pools: a prefill replica computes prompts one after another, a decode
        replica runs a window of decodes; each side's need from its part of the work, scaled
        together in units of the ratio, never fewer units than the stabilised total asks for."""
        assert self.pd_ratio is not None
        p, r = self.replica.profile, self.replica
        rate = load.latency_rps + load.deferrable_rps
        util = self.params.target_utilisation
        pre = rate * p.prefill_time(load.mean_prompt) / util
        dec = rate / max(1e-9, replica_capacity(r, load.tpot_budget_s, load.mean_prompt, load.mean_output,
                                                prefill=False)) / util
        a, b = split_pd(pre, dec, self.pd_ratio)
        units = max(a // self.pd_ratio[0], math.ceil(desired / sum(self.pd_ratio)))
        return units * self.pd_ratio[0], units * self.pd_ratio[1]
