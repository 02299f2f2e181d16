"""Decision cost per request through the DecisionCore at 10, 1,000 and 10,000 tenants, per policy.

One request = arrive (admission forecast + enqueue) + the dispatch it eventually gets (scheduler
pop, engine choice) + first_token + finish (counters reconciled, predictors and step model learn,
next dispatch); and the cost of one `DecisionCore.snapshot` with every tenant in it (what the
admin API's /state and the metrics sampler take once a second). The core runs one engine with the
default H100 profile prior, admission on (an SLO loose enough that everything is admitted, so the
full forecast path runs) and every tenant backlogged: before timing, each tenant gets two queued requests; then, per iteration, a new
request arrives for the next tenant (round robin) and the oldest running request finishes,
which dispatches the next one. CPU time of this process (`time.process_time`: other processes on a
shared machine do not count). Target: the cost per request within 2x across tenant counts.

`--baseline-root DIR` measures another checkout beside this one (each cell in its own process per
checkout, the checkouts alternating `--repeat` times; best of each, and their ratio), e.g. a
worktree of an earlier commit: `git worktree add --detach /tmp/base <commit>`.

    .venv/bin/python bench/bench_decision_cost.py [--requests 20000] [--json out.json]
        [--baseline-root DIR] [--repeat 2] [--cells vtc/1000,fcfs/10]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, os.environ.get("SLUICE_ROOT") or ROOT)  # --baseline-root: the other checkout's packages

from controlplane.core.core import DecisionCore  # noqa: E402
from controlplane.core.events import Dispatch, FinishReport, RequestSpec  # noqa: E402
from controlplane.core.policy import Policy, SLOClassPolicy, TenantPolicy  # noqa: E402
from controlplane.predict.errors import ForecastErrors  # noqa: E402
from controlplane.predict.output_length import OutputLengthPredictor  # noqa: E402
from engine_adapter.sim.profile import load_profile  # noqa: E402
from replay.runner import engine_specs  # noqa: E402

POLICIES = ("fcfs", "vtc", "equinox", "wrr")
TENANTS = (10, 1_000, 10_000)
SNAPSHOTS = 5


def build(policy: str, tenants: int) -> tuple[DecisionCore, list[str]]:
    names = [f"t{i:05d}" for i in range(tenants)]
    pol = Policy(scheduler=policy, admission=True, window=64,
                 slo_classes={"interactive": SLOClassPolicy(1e5, 1e3)},
                 tenants={n: TenantPolicy(1.0 + (i % 4)) for i, n in enumerate(names)})
    core = DecisionCore(pol, engine_specs(load_profile("h100-llama3.1-8b"), 1),
                        OutputLengthPredictor(seed=0, torch_expert=False), ForecastErrors())
    return core, names


def measure(policy: str, tenants: int, requests: int) -> dict[str, Any]:
    core, names = build(policy, tenants)
    running: deque[str] = deque()
    now = 0.0
    seq = 0

    def arrive(tenant: str) -> None:
        nonlocal seq
        rid = f"r{seq:09d}"
        seq += 1
        for a in core.arrive(now, RequestSpec(rid, tenant, 512 + (seq % 7) * 64, 256)):
            if isinstance(a, Dispatch):
                running.append(a.rid)

    def finish_one() -> None:
        rid = running.popleft()
        for a in [*core.first_token(now, rid), *core.finish(now + 0.001, rid,
                                                           FinishReport("ok", 512, 0, 100 + seq % 50, now))]:
            if isinstance(a, Dispatch):
                running.append(a.rid)

    for _ in range(2):  # everyone backlogged
        for n in names:
            now += 1e-4
            arrive(n)
    k = 0
    warm = min(2000, requests // 5)
    gc.collect()
    t0 = 0.0
    for i in range(warm + requests):
        if i == warm:
            t0 = time.process_time()
        now += 1e-3
        arrive(names[k])
        k = (k + 1) % len(names)
        finish_one()
    dt = time.process_time() - t0
    t1 = time.process_time()
    for _ in range(SNAPSHOTS):  # what the admin API's /state and the metrics sampler take once a second
        snap = core.snapshot(now)
    snapshot_ms = (time.process_time() - t1) / SNAPSHOTS * 1e3
    return {"policy": policy, "tenants": tenants, "requests": requests, "us_per_request": dt / requests * 1e6,
            "snapshot_ms": snapshot_ms, "queued": snap.queued,
            "backlogged": sum(1 for t in snap.tenants.values() if t.fair_share)}


def compare(baseline: str, cells: list[tuple[str, int]], requests: int, repeat: int) -> list[dict[str, Any]]:
    """Each cell in its own process under this checkout and under `baseline`, alternating; best of each."""
    def run(root: str, policy: str, tenants: int) -> float:
        p = subprocess.run([sys.executable, __file__, "--child", f"{policy}/{tenants}", "--requests", str(requests)],
                           capture_output=True, text=True, env={**os.environ, "SLUICE_ROOT": root})
        if p.returncode:
            raise SystemExit(f"{policy}/{tenants} under {root} failed:\n{p.stderr[-3000:]}")
        return float(json.loads(p.stdout)["us_per_request"])

    rows = []
    print(f"{'cell':>16} {'baseline':>10} {'this':>10}  this/baseline")
    for policy, tenants in cells:
        this, base = [], []
        for _ in range(repeat):
            base.append(run(baseline, policy, tenants))
            this.append(run(ROOT, policy, tenants))
        rows.append({"policy": policy, "tenants": tenants, "this_us": min(this), "baseline_us": min(base)})
        print(f"{policy + '/' + str(tenants):>16} {min(base):>8.1f}us {min(this):>8.1f}us  {min(this) / min(base):.2f}x")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--baseline-root", help="another sluice checkout to measure beside this one (before/after)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cells", help="policy/tenants,... (default: every policy at every tenant count)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        policy, tenants = args.child.split("/")
        print(json.dumps(measure(policy, int(tenants), args.requests)))
        return 0
    cells = [(c.split("/")[0], int(c.split("/")[1])) for c in args.cells.split(",")] if args.cells \
        else [(p, n) for p in POLICIES for n in TENANTS]
    if args.baseline_root:
        rows = compare(args.baseline_root, cells, args.requests, args.repeat)
    else:
        rows = []
        print(f"{'policy':>8} " + " ".join(f"{n:>12,} ten" for n in TENANTS) + "   max/min")
        for p in dict.fromkeys(p for p, _ in cells):
            res = [measure(p, n, args.requests) for q, n in cells if q == p]
            rows += res
            costs = [r["us_per_request"] for r in res]
            print(f"{p:>8} " + " ".join(f"{c:>13.1f}us" for c in costs) + f"   {max(costs) / min(costs):.2f}x"
                  + ("" if max(costs) / min(costs) <= 2.0 else "  (target 2x MISSED)"))
            print(f"{'snapshot':>8} " + " ".join(f"{r['snapshot_ms']:>13.2f}ms" for r in res))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
