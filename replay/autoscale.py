"""Replay with scaling: simulated engines started and stopped as an autoscaler asks.

`run_autoscaled` is `run_virtual` with the fleet under one of three controllers:

- ``sluice``: the capacity rule (controlplane/core/capacity.py) on the driver's capacity cadence,
  from the core's state: what `sluice_desired_replicas` says while serving;
- ``utilisation``: the setup users run today, an HPA on GPU utilisation (DCGM's GPU_UTIL: the share
  of time a kernel runs, here the simulator's busy time over the period, averaged over the serving
  replicas): desired = ceil(serving x utilisation / target), with HPA's 10% tolerance, its minimum
  of one replica and the same stabilisation behaviour;
- ``fixed``: the initial fleet, never changed (the peak-sized baseline).

The fleet (`_Fleet`): a replica asked for is provisioned at once and serves after its start time:
``cold_start_s`` (weights from remote storage) or ``warm_start_s`` when a replica was released within
``warm_keep_s`` (ServerlessLLM: the checkpoint is still in the host's memory or local SSD; each release
leaves one such warm slot). A replica asked away drains: the core stops dispatching to it (unhealthy)
and it leaves once its requests are done; one still starting is cancelled first. GPU-seconds run
from provisioning to departure (a GPU loading weights is held); energy is the simulator's (its step
power model, engine_adapter/sim/profile.py) plus idle power while loading and between steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.config import load_config
from controlplane.core.capacity import Behaviour, CapacityParams, Controller, Replica, Stabiliser
from controlplane.core.policy import Policy
from controlplane.driver import CAPACITY_EVERY_S, next_capacity
from engine_adapter.base import EngineInfo
from engine_adapter.sim.core import SimCore
from engine_adapter.sim.profile import SimProfile, load_profile
from replay.report import SLOSpec
from replay.outcomes import VirtualResult
from replay.runner import VirtualRun, default_policy
from replay.workload import WorkloadRequest

__all__ = ["MODES", "FleetReport", "Scaling", "add_arguments", "format_fleets", "run_autoscaled", "run_from_args",
           "servegen_day"]

Mode = Literal["sluice", "utilisation", "fixed"]
MODES: tuple[Mode, ...] = ("sluice", "utilisation", "fixed")


@dataclass(frozen=True, slots=True)
class Scaling:
    mode: Mode = "sluice"
    initial: int = 1  # replicas serving at time 0 (already loaded)
    cold_start_s: float = 60.0
    warm_start_s: float = 10.0
    warm_keep_s: float = 900.0
    utilisation_target: float = 0.7
    utilisation_tolerance: float = 0.1
    params: CapacityParams = field(default_factory=CapacityParams)
    behaviour: Behaviour = field(default_factory=Behaviour)
    lead_from_cold_start: bool = True  # the rule's lead_s is cold_start_s (False: params.lead_s stands)


@dataclass(slots=True)
class FleetReport:
    mode: str
    gpu_seconds: float = 0.0
    energy_j: float = 0.0
    actions: int = 0  # changes of the target replica count
    started: int = 0  # replicas provisioned (cold + warm)
    warm_starts: int = 0
    stopped: int = 0  # replicas released (drained or cancelled while starting)
    peak: int = 0  # most replicas held at once
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, desired, serving)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("mode", "gpu_seconds", "energy_j", "actions", "started",
                                              "warm_starts", "stopped", "peak")}


@dataclass(slots=True)
class _Replica:
    name: str
    since: float  # provisioned
    ready_at: float
    sim: SimCore | None = None
    draining: bool = False


class _ScaledRun(VirtualRun):
    def __init__(self, scaling: Scaling, profile: SimProfile, seed: int, *args: Any) -> None:
        super().__init__(*args)
        self.scaling = scaling
        self.profile = profile
        self.seed = seed
        self.report = FleetReport(scaling.mode)
        self.replicas = {name: _Replica(name, 0.0, 0.0, self.sims[name]) for name in self.names}
        self.counter = len(self.names)
        self.released: list[float] = []  # when each warm slot was left
        self.next_eval = 0.0
        self.target = len(self.names)
        self.busy = {name: 0.0 for name in self.names}
        # the operator knows its cold start: a rising rate is met where a replica asked for now serves
        params = dataclasses.replace(scaling.params, lead_s=scaling.cold_start_s) if scaling.lead_from_cold_start \
            else scaling.params
        self.controller = Controller(Replica(profile.step, profile.kv_capacity_tokens, profile.max_running_requests),
                                     params, scaling.behaviour)
        self.controller.start(self.target, 0.0)
        self.hpa = Stabiliser(scaling.behaviour)
        self.hpa.start(self.target, 0.0)
        self.first_dispatch: dict[str, float] = {}

    def dispatch(self, now: float, a: Any) -> None:
        self.first_dispatch.setdefault(a.engine, now)
        super().dispatch(now, a)

    # -- the hook at each load-report instant --------------------------------------------------------
    def scale(self, now: float) -> None:
        for r in list(self.replicas.values()):
            if r.sim is None and r.ready_at <= now:
                self._serve(r, now)
            elif r.draining and not self._in_flight(now)[r.name]:
                self._release(r, now)
        self.report.peak = max(self.report.peak, len(self.replicas))
        if self.scaling.mode == "fixed" or now < self.next_eval:
            return
        self.next_eval = next_capacity(now)
        target = self._desired(now)
        if target != self.target:
            self.report.actions += 1
            self.target = target
        self._reconcile(now)
        serving = sum(1 for r in self.replicas.values() if r.sim is not None and not r.draining)
        self.report.timeline.append((now, self.target, serving))

    def _desired(self, now: float) -> int:
        if self.scaling.mode == "sluice":
            return self.controller.step(self.core, now).desired
        serving = [r for r in self.replicas.values() if r.sim is not None and not r.draining]
        utils = []
        for r in serving:
            assert r.sim is not None
            busy = r.sim.stats.busy_s
            utils.append(min(1.0, (busy - self.busy.get(r.name, busy)) / CAPACITY_EVERY_S))
            self.busy[r.name] = busy
        if not utils:
            return self.hpa.update(now, max(1, self.hpa.current))
        ratio = sum(utils) / len(utils) / self.scaling.utilisation_target
        n = len(utils)
        rec = n if abs(ratio - 1.0) <= self.scaling.utilisation_tolerance else math.ceil(n * ratio)
        bounds = self.scaling.params  # HPA's minReplicas (at least 1: it cannot scale to zero) and maxReplicas
        return self.hpa.update(now, max(1, bounds.min_replicas, min(bounds.max_replicas, rec)))

    def _in_flight(self, now: float) -> dict[str, int]:
        return {e.name: e.in_flight for e in self.core.snapshot(now, with_tenants=False).engines.values()}

    def _reconcile(self, now: float) -> None:
        held = [r for r in self.replicas.values() if not r.draining]
        for r in self.replicas.values():  # un-drain before starting anew: it is warm and holds its GPU
            if len(held) >= self.target:
                break
            if r.draining:
                r.draining = False
                self.driver.engine_health(now, r.name, True)
                held.append(r)
        while len(held) < self.target:
            held.append(self._provision(now))
        # away: first those still starting (newest first), then the least busy serving ones
        excess = len(held) - self.target
        starting = sorted((r for r in held if r.sim is None), key=lambda r: -r.since)
        for r in starting[:excess]:
            self._release(r, now)
        excess -= min(excess, len(starting))
        in_flight = self._in_flight(now)
        serving = sorted((r for r in held if r.sim is not None), key=lambda r: in_flight[r.name])
        for r in serving[:excess]:
            r.draining = True
            self.driver.engine_health(now, r.name, False)
            if not in_flight[r.name]:
                self._release(r, now)

    def _provision(self, now: float) -> _Replica:
        s = self.scaling
        self.released = [t for t in self.released if t >= now - s.warm_keep_s]
        warm = bool(self.released)
        if warm:
            self.released.pop()
            self.report.warm_starts += 1
        name = f"sim-{self.counter}"
        self.counter += 1
        r = _Replica(name, now, now + (s.warm_start_s if warm else s.cold_start_s))
        self.replicas[name] = r
        self.report.started += 1
        return r

    def _serve(self, r: _Replica, now: float) -> None:
        p = self.profile
        r.sim = SimCore(p, seed=self.seed + int(r.name.split("-")[1]))
        self.sims[r.name] = r.sim
        self.names.append(r.name)
        self.busy[r.name] = 0.0
        self.driver.engine_up(now, r.name, EngineInfo(r.name, "sim", p.model, None, p.kv_capacity_tokens, True,
                                                      p.step))

    def _release(self, r: _Replica, now: float) -> None:
        self._account(r, now)
        if r.sim is not None:
            self.driver.engine_down(now, r.name)
            del self.sims[r.name]
            self.names.remove(r.name)
            self.released.append(now)
        self.report.stopped += 1
        del self.replicas[r.name]

    def _account(self, r: _Replica, end: float) -> None:
        idle_w = self.profile.idle_w
        self.report.gpu_seconds += end - r.since
        if r.sim is None or r.name not in self.first_dispatch:
            self.report.energy_j += idle_w * (end - r.since)
        else:  # the simulator meters from its first request; before that the GPU idled (or loaded)
            self.report.energy_j += idle_w * (self.first_dispatch[r.name] - r.since) + r.sim.gpu(end)["energy_j"]

    def close(self, end: float) -> None:
        for r in self.replicas.values():
            self._account(r, end)


def servegen_day(*, group: str = "m-small", day: int = 0, compress: float = 48.0, rate_scale: float = 0.05,
                 lengths: str = "azure-conv", batch_every: int = 5, seed: int = 0) -> list[WorkloadRequest]:
    """A day of ServeGen language rates (its diurnal curve and per-window burstiness), compressed
    `compress` times in time (a day in 86400 / compress seconds) at `rate_scale` x the trace's rate
    (the compressed day's rate: it holds rate_scale x the day's requests / compress).

    Every client is a tenant; every `batch_every`-th client (by id; 0: none) is of the batch class
    (a deadline, deferred), the rest interactive. `lengths`: "azure-conv" draws (prompt, output)
    pairs from Azure's conversation trace (longer than m-small's own, so a few engines carry the
    load with tens of thousands rather than millions of requests); "servegen": the clients' own."""
    import numpy as np

    from replay.loaders import load_length_table, shared_trace
    from replay.servegen import load_servegen, sample_servegen
    from replay.workload import scale_rate

    profile = load_servegen(group=group)
    table = load_length_table(shared_trace("AzureLLMInferenceTrace_conv.csv"), "ContextTokens", "GeneratedTokens")
    reqs = sample_servegen(profile, start_s=86400.0 * day, duration_s=86400.0, seed=seed,
                           rate_scale=rate_scale / compress, fallback_lengths=table)
    reqs = scale_rate(reqs, compress)
    if lengths == "azure-conv":
        ins, outs = table.sample(len(reqs), np.random.default_rng([seed, 7]))
        reqs = [dataclasses.replace(r, input_length=int(i), output_length=int(o), extra=dict(r.extra))
                for r, i, o in zip(reqs, ins, outs)]
    elif lengths != "servegen":
        raise ValueError(f"lengths: 'azure-conv' or 'servegen', got {lengths!r}")
    if batch_every:
        reqs = [dataclasses.replace(r, slo_class="batch" if int(r.tenant.rsplit("-", 1)[1]) % batch_every == 0
                                    else "interactive", extra=dict(r.extra)) for r in reqs]
    return reqs


def run_autoscaled(
    workload: Sequence[WorkloadRequest],
    policy: Policy | str,
    scaling: Scaling,
    *,
    profile: str | SimProfile = "h100-llama3.1-8b",
    seed: int = 0,
    slo: SLOSpec = None,
    weights: Mapping[str, float] | None = None,
    torch_expert: bool = True,
    train_every: int = 256,
) -> tuple[VirtualResult, FleetReport]:
    """Replay `workload` with the fleet under `scaling`; the result as `run_virtual`'s, plus the
    fleet's GPU-seconds, energy and scaling actions (all up to the run's last event)."""
    import time

    if isinstance(policy, str):
        policy = default_policy(policy, weights=weights)
    prof = profile if isinstance(profile, SimProfile) else load_profile(profile)
    if scaling.initial < 1:
        raise ValueError("the initial fleet needs at least one replica")
    run = _ScaledRun(scaling, prof, seed, workload, policy, scaling.initial, prof, seed, None, False, torch_expert,
                     train_every)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    result = run.result(slo, wall, False, 0)
    run.close(result.makespan_s)
    return result, run.report


# -- sluice simulate --autoscale ---------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("autoscaling (docs/capacity.md)")
    g.add_argument("--autoscale", metavar="MODES", help="start and stop simulated engines under "
                   f"{'|'.join(MODES)}|all (comma-separated: side by side); --engines is the starting fleet")
    g.add_argument("--cold-start", type=float, default=60.0, help="seconds to load a replica (default 60)")
    g.add_argument("--warm-start", type=float, default=10.0, help="seconds when a released replica's checkpoint "
                   "is still local (default 10)")
    g.add_argument("--warm-keep", type=float, default=900.0, help="how long a release stays warm (default 900 s)")
    g.add_argument("--down-window", type=float, default=300.0, help="scale-down stabilisation window (default 300 s)")
    g.add_argument("--burst-reserve", type=float, help="the rule's square-root staffing factor: R replicas of "
                   "latency load get R + this x sqrt(R) (default: --config's [capacity], else 2.5; 0: off)")
    g.add_argument("--max-replicas", type=int, help="the ceiling (default: --config's [capacity], else 64)")
    g.add_argument("--min-replicas", type=int, help="0: idle pools scale to zero (default: --config's [capacity], "
                   "else 0)")


def run_from_args(args: argparse.Namespace, workload: Sequence[WorkloadRequest], policy: Policy, label: str
                  ) -> dict[str, tuple[VirtualResult, FleetReport]]:
    modes = list(MODES) if args.autoscale == "all" else [m.strip() for m in args.autoscale.split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"sluice simulate: unknown --autoscale {bad}; use {'|'.join(MODES)}|all")
    try:
        params = capacity_params(args)
    except ValueError as exc:  # a bound out of range, named as the config's errors are
        raise SystemExit(f"sluice simulate: {exc}") from None
    out = {}
    for mode in modes:
        scaling = Scaling(mode=mode, initial=args.engines, cold_start_s=args.cold_start,
                          warm_start_s=args.warm_start, warm_keep_s=args.warm_keep, params=params,
                          lead_from_cold_start=not _sets_lead(args.config),
                          behaviour=Behaviour(down_window_s=args.down_window))
        print(f"sluice simulate: {label}, autoscale {mode}: {len(workload)} requests from {args.engines} engine(s)...",
              file=sys.stderr)
        out[mode] = run_autoscaled(workload, policy, scaling, profile=args.profile, seed=args.seed,
                                   torch_expert=not args.no_torch)
    return out


def capacity_params(args: argparse.Namespace) -> CapacityParams:
    """The scaling rule's parameters a `sluice serve` with `--config` would run with (its
    `[capacity]` table), with `--min-replicas` / `--max-replicas` / `--burst-reserve` overriding where given."""
    base = load_config(args.config).capacity if args.config else CapacityParams()
    given = {k: v for k, v in (("min_replicas", args.min_replicas), ("max_replicas", args.max_replicas),
                                ("burst_reserve", args.burst_reserve)) if v is not None}
    return dataclasses.replace(base, **given) if given else base


def _sets_lead(config: str | None) -> bool:
    """Whether the config's [capacity] table names `lead_s`: then the operator's own lead stands,
    otherwise the simulated fleet's cold start is the lead (the operator knows its cold start)."""
    if not config:
        return False
    with open(config, "rb") as f:
        return "lead_s" in tomllib.load(f).get("capacity", {})


def format_fleets(results: Mapping[str, VirtualResult], fleets: Mapping[str, FleetReport]) -> str:
    """The fleet's cost beside each run's SLO attainment (requests that met every bound / all)."""
    head = f"{'run':>28}  {'SLO%':>6}  {'GPU-s':>9}  {'energy kJ':>10}  {'actions':>7}  {'starts':>6}  {'warm':>4}  {'peak':>4}"
    lines = [head]
    for label, f in fleets.items():
        r = results[label]
        att = r.overall.slo_attainment
        lines.append(f"{label:>28}  {'-' if att is None else f'{100 * att:.2f}':>6}  {f.gpu_seconds:9.0f}  "
                     f"{f.energy_j / 1e3:10.0f}  {f.actions:7d}  {f.started:6d}  {f.warm_starts:4d}  {f.peak:4d}")
    return "\n".join(lines)
