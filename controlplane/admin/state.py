"""`GET /admin/v1/state`: the decision core's snapshot, serialised, beside what only the runtime
knows (rolling request statistics, the engines' own load reports, GPU readings, forecast errors).

The field names are the console's and docs/admin-api.md's; `controlplane/admin/openapi.py`
describes the document (`STATE`), and the console's fake admin in tests is held to it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.core.policy import ON_MISS, SCHEDULERS
from controlplane.core.snapshot import CoreSnapshot, EngineSnapshot, TenantSnapshot
from controlplane.livestats import LiveStats


def state_document(snap: CoreSnapshot, stats: LiveStats, loads: Mapping[str, Any], infos: Mapping[str, Any],
                   gpus: tuple[list[dict[str, Any]], str], forecast_errors: dict[str, object]) -> dict[str, Any]:
    """The `/state` body at `snap.now`: tenants the policy names or that sent requests, every engine."""
    now = snap.now
    names = set(snap.policy.tenants) | set(stats.tenants)
    service = {n: stats.tenant(n, now) for n in names}
    total_service = sum(s["service"] for s in service.values()) or 1.0
    tenants = [_tenant(snap.tenants[n], service[n], total_service) for n in sorted(names)]
    engines = [_engine(e, loads.get(e.name), infos.get(e.name)) for e in snap.engines.values()]
    gpu_list, gpu_status = gpus
    return {"now": now, "policy_version": snap.policy.version, "scheduler": snap.scheduler,
            "totals": stats.totals(now) | {"queued": snap.queued, "in_flight": snap.in_flight},
            "tenants": tenants, "engines": engines, "gpus": gpu_list, "gpu_status": gpu_status,
            "policy_choices": {"scheduler": list(SCHEDULERS), "on_miss": list(ON_MISS)},
            "forecast_errors": forecast_errors}


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
