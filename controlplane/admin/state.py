"""`GET /admin/v1/state`: the decision cores' snapshots (one per model pool), serialised, beside
what only the runtime knows (rolling request statistics, the engines' own load reports, GPU
readings, forecast errors). Top-level `tenants` and `engines` span every pool; `pools` has each
pool's engines and each tenant's weight, share and requests in that pool.

The field names are the console's and docs/admin-api.md's; `controlplane/admin/openapi.py`
describes the document (`STATE`), and the console's fake admin in tests is held to it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from controlplane.core.frequency import FrequencyController
from controlplane.core.policy import ON_MISS, SCHEDULERS, Policy
from controlplane.core.snapshot import CoreSnapshot, EngineSnapshot, TenantSnapshot
from controlplane.livestats import LiveStats


def state_document(snaps: Mapping[str, CoreSnapshot], stats: LiveStats, loads: Mapping[str, Any],
                   infos: Mapping[str, Any], gpus: tuple[list[dict[str, Any]], str],
                   forecast_errors: dict[str, object], aliases: Mapping[str, Sequence[str]] | None = None,
                   policy: Policy | None = None, clocks: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `/state` body: tenants the policy names or that sent requests, every engine, and each
    model pool (`snaps`: pool -> its core's snapshot; `aliases`: the pools' other names; `policy`:
    the one in force, whose base weights the top-level tenants show where pools weigh them apart;
    `clocks`: each engine's SM clock and the frequency rule's target, `engine_clocks`)."""
    clocks = clocks or {}
    first = next(iter(snaps.values()))
    now, policy = first.now, policy or first.policy
    names = set(policy.tenants) | set(stats.tenants)
    service = {n: stats.tenant(n, now) for n in names}
    total_service = sum(s["service"] for s in service.values()) or 1.0
    tenants = [_tenant(_across(n, snaps, policy), service[n], total_service) for n in sorted(names)]
    engines = [_engine(e, loads.get(e.name), infos.get(e.name)) | {"pool": pool, "clock": clocks.get(e.name)}
               for pool, snap in snaps.items() for e in snap.engines.values()]
    pools = [{"name": pool, "aliases": list((aliases or {}).get(pool, ())), "engines": list(snap.engines),
              "queued": snap.queued, "in_flight": snap.in_flight,
              "tenants": [_pool_tenant(t) for n, t in sorted(snap.tenants.items()) if n in names]}
             for pool, snap in snaps.items()]
    gpu_list, gpu_status = gpus
    return {"now": now, "policy_version": policy.version, "scheduler": first.scheduler,
            "totals": stats.totals(now) | {"queued": sum(s.queued for s in snaps.values()),
                                           "in_flight": sum(s.in_flight for s in snaps.values())},
            "tenants": tenants, "engines": engines, "pools": pools, "gpus": gpu_list, "gpu_status": gpu_status,
            "policy_choices": {"scheduler": list(SCHEDULERS), "on_miss": list(ON_MISS)},
            "forecast_errors": forecast_errors}


def _across(name: str, snaps: Mapping[str, CoreSnapshot], policy: Policy) -> TenantSnapshot:
    """A tenant over every pool: its own snapshot where there is one pool; else its queued and
    running requests and fairness counters summed, its base weight, and its largest fair share."""
    if len(snaps) == 1:
        return next(iter(snaps.values())).tenants[name]
    parts = [s.tenants[name] for s in snaps.values() if name in s.tenants]
    counters: dict[str, float] = {}
    tp = policy.tenant(name)
    for t in parts:
        for k, v in t.counters.items():
            counters[k] = tp.weight if k == "weight" else counters.get(k, 0.0) + v
    return replace(parts[0], weight=tp.weight, slo_class=tp.slo_class, paused=tp.paused,
                   queued=sum(t.queued for t in parts), in_flight=sum(t.in_flight for t in parts),
                   fair_share=max(t.fair_share for t in parts), counters=counters)


def _pool_tenant(t: TenantSnapshot) -> dict[str, Any]:
    """A tenant in one pool: its weight there, fair share, requests and counters."""
    return {"name": t.name, "weight": t.weight, "fair_share": t.fair_share, "queued": t.queued,
            "in_flight": t.in_flight, "counters": dict(t.counters)}


def _tenant(t: TenantSnapshot, stats: dict[str, Any], total_service: float) -> dict[str, Any]:
    rest = dict(stats)
    share = rest.pop("service") / total_service
    return {"name": t.name, "weight": t.weight, "slo_class": t.slo_class, "paused": t.paused, "share": share,
            "fair_share": t.fair_share, "counters": dict(t.counters), "queued": t.queued, "in_flight": t.in_flight,
            **rest}


def _engine(e: EngineSnapshot, load: Any, info: Any) -> dict[str, Any]:
    return {"name": e.name, "kind": info.kind if info else None, "simulated": bool(info and info.simulated),
            "healthy": e.healthy, "url": info.url if info else None,
            "running": load.running if load else e.in_flight, "waiting": load.waiting if load else 0,
            "kv_usage": load.kv_usage if load else None, "gen_throughput": load.gen_throughput if load else None,
            "window": e.window, "in_flight": e.in_flight,
            "forecast": {"ttft_ms": e.forecast_ttft_s * 1e3, "tpot_ms": e.forecast_tpot_s * 1e3}}


def engine_clocks(engines: Mapping[str, Any], controllers: Mapping[str, FrequencyController],
                  status: Mapping[str, str], bindings: Mapping[str, int | None],
                  gpus: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each engine's `clock` in the state (docs/frequency.md): its GPU's SM clock now (a simulated
    engine's own GPU, else the reading of the GPU its [[engines]] `gpu` names) and the frequency
    rule's last evaluation: the target in force, the clock the rule wanted, both floors, why, and
    how the last change went (`status`: simulated, locked, application clocks, dry run: ...). An
    engine with neither (no clock control, no known GPU) has none."""
    by_index = {g.get("gpu"): g for g in gpus if not g.get("mig")}
    out: dict[str, dict[str, Any]] = {}
    for name, engine in engines.items():
        if hasattr(engine, "gpu"):  # a simulated engine: its GPU follows the clock it was set to
            now = engine.gpu().get("sm_clock_mhz")
        else:
            now = (by_index.get(bindings.get(name)) or {}).get("sm_clock_mhz")
        ctl = controllers.get(name)
        last = ctl.last if ctl is not None else None
        if now is None and ctl is None:
            continue
        out[name] = {"sm_clock_mhz": now, "control": ctl is not None,
                     "target_mhz": ctl.current_mhz if ctl is not None else None,
                     "wanted_mhz": last.wanted_mhz if last else None,
                     "slo_floor_mhz": last.slo_floor_mhz if last else None,
                     "energy_floor_mhz": last.energy_floor_mhz if last else None,
                     "reason": last.reason if last else None, "ts": last.ts if last else None,
                     "status": status.get(name)}
    return out
