"""The output-length experts that are tables of running means: "tenant" (per-tenant statistics,
shrunk toward the global mean) and "bucket" (log2 prompt-length cells, the tenant's cell shrunk
toward the global cell). See output_length.py for how the gate mixes them."""
from __future__ import annotations

from typing import Any

from controlplane.predict.features import Features, log2_bucket
from controlplane.predict.running_stats import LogQuantile, RunningMean, shrunk_mean


class _TenantStats:
    __slots__ = ("mean", "p50", "p90")

    def __init__(self, alpha: float) -> None:
        self.mean = RunningMean(alpha)
        self.p50 = LogQuantile(0.5)
        self.p90 = LogQuantile(0.9)


class TenantExpert:
    name = "tenant"

    def __init__(self, alpha: float = 0.03, shrink: float = 2.0) -> None:
        self.alpha = alpha
        self.shrink = shrink
        self.global_mean = RunningMean(alpha)
        self.tenants: dict[str, _TenantStats] = {}

    def predict(self, f: Features) -> float | None:
        if self.global_mean.n == 0:
            return None
        t = self.tenants.get(f.tenant)
        return shrunk_mean(t.mean if t else None, self.global_mean.mean, self.shrink)

    def observe(self, f: Features, actual: float) -> None:
        self.global_mean.update(actual)
        t = self.tenants.get(f.tenant)
        if t is None:
            t = self.tenants[f.tenant] = _TenantStats(self.alpha)
        t.mean.update(actual)
        t.p50.update(actual)
        t.p90.update(actual)

    def state(self) -> dict[str, Any]:
        return {
            "global_mean": self.global_mean.mean if self.global_mean.n else None,
            "tenants": {
                name: {"count": t.mean.n, "mean": t.mean.mean, "p50": t.p50.get(), "p90": t.p90.get()}
                for name, t in sorted(self.tenants.items())
            },
        }


class BucketExpert:
    name = "bucket"

    def __init__(self, alpha: float = 0.03, shrink: float = 5.0) -> None:
        self.alpha = alpha
        self.shrink = shrink
        self.global_cells: dict[int, RunningMean] = {}
        self.tenant_cells: dict[tuple[str, int], RunningMean] = {}

    def predict(self, f: Features) -> float | None:
        b = log2_bucket(f.prompt_tokens)
        g = self.global_cells.get(b)
        if g is None:
            return None
        return shrunk_mean(self.tenant_cells.get((f.tenant, b)), g.mean, self.shrink)

    def observe(self, f: Features, actual: float) -> None:
        b = log2_bucket(f.prompt_tokens)
        g = self.global_cells.get(b)
        if g is None:
            g = self.global_cells[b] = RunningMean(self.alpha)
        g.update(actual)
        t = self.tenant_cells.get((f.tenant, b))
        if t is None:
            t = self.tenant_cells[(f.tenant, b)] = RunningMean(self.alpha)
        t.update(actual)

    def state(self) -> dict[str, Any]:
        return {
            "global": {
                f"{(1 << b) - 1}-{(1 << (b + 1)) - 2}": {"count": c.n, "mean": c.mean}
                for b, c in sorted(self.global_cells.items())
            },
            "tenant_cells": len(self.tenant_cells),
        }
