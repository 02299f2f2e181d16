"""`GET /admin/v1/plan`: placement advice for the models this sluice serves (docs/placement.md).

Read now, per model (its engines' `info().model`): where each engine runs (its `mig` or `gpu`
binding matched to the GPU readings, or a simulated engine's profile), the KV capacity it reports
(`info().max_total_tokens`), and its load as it reports it (the `/state` row: running sequences and
KV usage; where that is missing, the mean context of its recent finished requests). The estimate is
controlplane/core/placement.py; nothing here moves an engine.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.config import EngineConfig
from controlplane.core.placement import Demand, Replica, document, plan_model
from controlplane.core.placement_catalog import ModelConfigError, Target, board_of, board_targets, known_model

DEFAULT_BOARD = "H100-80GB"
RECENT = 1000  # finished requests whose mean context stands in when nothing is in flight


def devices_seen(gpus: Iterable[Mapping[str, Any]]) -> list[Target]:
    """The real devices in the GPU readings, as targets: each MIG instance, and each GPU without any."""
    rows = [g for g in gpus if not g.get("simulated") and g.get("memory_total_bytes")]
    carved = {g["gpu"] for g in rows if g.get("mig")}
    return [_device(g, rows) for g in rows if g.get("mig") or g["gpu"] not in carved]


def _device(g: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Target:
    parent = next((r for r in rows if r["gpu"] == g["gpu"] and not r.get("mig")), g)
    board = board_of(str(parent.get("name") or ""))
    if g.get("mig"):
        return Target(f"GPU {g['gpu']} MIG {g.get('mig_profile') or '?'} ({g['mig']})", int(g["memory_total_bytes"]),
                      board, g.get("mig_profile"))
    return Target(f"GPU {g['gpu']} ({g.get('name')})", int(g["memory_total_bytes"]), board)


def engine_target(cfg: EngineConfig | None, engine: Any, gpus: Sequence[Mapping[str, Any]]) -> Target | None:
    """Where an engine runs: its bound MIG instance or GPU as the readings show it, or a simulated
    engine's simulated GPU (its profile's memory)."""
    if cfg is not None and (cfg.mig or cfg.gpu is not None):
        real = [g for g in gpus if not g.get("simulated")]
        match = [g for g in real if g.get("mig") == cfg.mig] if cfg.mig else \
            [g for g in real if g.get("gpu") == cfg.gpu and not g.get("mig")]
        return _device(match[0], real) if match and match[0].get("memory_total_bytes") else None
    profile = getattr(engine, "profile", None)
    memory = int(getattr(profile, "memory_total_bytes", 0) or 0)
    if memory > 0:
        return Target(f"{getattr(profile, 'gpu', 'GPU')} (simulated)", memory, board_of(getattr(profile, "gpu", None)))
    return None


def candidates(boards: str | None, seen: Sequence[Target]) -> list[Target]:
    """The catalogue's boards asked for (comma-separated), else those of the devices seen, else an
    H100; then the live devices themselves. ModelConfigError for an unknown board."""
    names = [b.strip() for b in boards.split(",") if b.strip()] if boards else []
    if not names:
        names = sorted({t.board for t in seen if t.board}) or [DEFAULT_BOARD]
    return [t for b in names for t in board_targets(b)] + list(seen)


@dataclass(frozen=True, slots=True)
class EngineView:
    """What the plan reads of one engine: its model and capacity (its `info()`), its load (the
    `/state` row: running sequences and KV usage as the engine reports them), its config."""

    name: str
    model: str | None  # None: the engine did not answer `info()`
    kv_capacity: int | None
    sequences: float
    kv_tokens: float | None
    config: EngineConfig | None = None
    engine: Any = None


async def engine_views(configs: Sequence[EngineConfig], engines: Mapping[str, Any],
                       rows: Sequence[Mapping[str, Any]]) -> list[EngineView]:
    """One view per engine row of the `/state` document, with its `info()` (asked now)."""
    by_name = {c.name: c for c in configs}
    out = []
    for row in rows:
        name = str(row["name"])
        engine = engines.get(name)
        try:
            info = await engine.info() if engine is not None else None
        except Exception:  # an engine down: its model and capacity unknown, the rest of the plan stands
            info = None
        capacity = int(info.max_total_tokens) if info is not None and info.max_total_tokens else None
        usage = row.get("kv_usage")
        out.append(EngineView(name, str(info.model) if info is not None else None, capacity,
                              float(row.get("running") or 0), usage * capacity if usage is not None and capacity
                              else None, by_name.get(name), engine))
    return out


def plan_document(views: Sequence[EngineView], gpus: Sequence[Mapping[str, Any]],
                  recent: Iterable[Mapping[str, Any]], boards: str | None = None) -> dict[str, Any]:
    """The plan of every model the engines serve; ModelConfigError for an unknown board."""
    seen = devices_seen(gpus)
    targets = candidates(boards, seen)
    recent = list(recent)
    pools: dict[str | None, list[EngineView]] = {}
    for v in views:
        pools.setdefault(v.model, []).append(v)
    models = []
    for model, members in pools.items():
        names = [v.name for v in members]
        spec = known_model(model) if model is not None else None
        if spec is None:
            why = (f"{model!r} is not a model sluice knows: size it offline with `sluice plan --model "
                   "<its config.json>` (docs/placement.md)") if model else "the engine did not say what it serves"
            models.append({"model": model or "?", "engines": names, "error": why})
            continue
        replicas = [Replica(v.name, engine_target(v.config, v.engine, gpus), v.kv_capacity) for v in members]
        demand = _demand(members, recent)
        models.append({**plan_model(spec, demand, targets, replicas).to_dict(), "engines": names})
    notes = [] if seen else ["no real GPU reading: the catalogue's boards only"]
    return document(models, notes)


def _demand(members: Sequence[EngineView], recent: Sequence[Mapping[str, Any]]) -> Demand | None:
    sequences = sum(v.sequences for v in members)
    kv = [v.kv_tokens for v in members]
    if sequences > 0 and all(k is not None for k in kv):
        return Demand(sequences, sum(k or 0.0 for k in kv) / sequences, "engines' reports: running and KV in use now")
    names = {v.name for v in members}
    rows = [r for r in recent if r.get("engine") in names and r.get("status") == "ok"][-RECENT:]
    if not rows:
        return None
    mean = sum((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in rows) / len(rows)
    return Demand(sequences, mean, f"{sequences:g} running; mean context of {len(rows)} recent requests")


__all__ = ["EngineView", "ModelConfigError", "candidates", "devices_seen", "engine_target", "engine_views",
           "plan_document"]
