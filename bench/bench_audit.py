"""Audit speed: decisions re-derived per second by `sluice audit` (replay/audit.py `audit_db`) on a
store holding an hour of `sluice demo`'s load.

The store is made as serving makes it: the demo's four-tenant workload (sluice/demo.py) under the
dev setup's policy (equinox, admission on, weights 2:1:1:1, one batch tenant) through the decision
core and one simulated H100 in virtual time (replay/runner.py, `record_decisions=True`: the very
rows the gateway's recorder writes), written through the real telemetry Store, with the policy in
the audit log so that the policy checks run too. Then `audit_db` reads it back (read-only, batched
fetch) and re-derives every decision; the best of `--repeat` runs is reported.
Target (issue 15): >= 10,000 decisions/s, 100% re-derived, 0 mismatches.

    .venv/bin/python bench/bench_audit.py [--duration 3600] [--scale 1] [--store PATH] [--profile] [--json out.json]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replay.audit import audit_db  # noqa: E402
from replay.runner import run_virtual  # noqa: E402
from sluice.demo import demo_workload  # noqa: E402
from sluice.devsetup import dev_config  # noqa: E402
from telemetry.store import Store  # noqa: E402


def make_store(path: Path, duration_s: float, scale: float, engines: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as state:
        policy = dev_config(state)[0].policy
    workload = demo_workload(duration_s, seed=7, scale=scale)
    t0 = time.perf_counter()
    result = run_virtual(workload, policy, engines=engines, record_decisions=True, torch_expert=False)
    replay_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = Store(path, flush_interval_s=0.5)
    try:
        doc = json.dumps(policy.to_dict())
        store.record_policy_change_now({"version": policy.version, "ts": 0.0, "actor": "config",
                                        "reason": "bench: the dev setup's policy", "before": None, "after": doc})
        for row in result.decisions:
            store.record_decision(row)
        store.flush(600)
    finally:
        store.close()
    return {"requests": len(workload), "decisions": len(result.decisions), "replay_s": replay_s,
            "write_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds of demo load (default: an hour)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the demo load's request rates")
    ap.add_argument("--engines", type=int, default=1)
    ap.add_argument("--store", help="keep the store here (reused when it exists)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the audit's top functions (cProfile)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    path = Path(args.store) if args.store else Path(tmp.name) / "bench.duckdb"
    made = None
    if not path.exists():
        made = make_store(path, args.duration, args.scale, args.engines)
        print(f"store: {made['requests']} requests, {made['decisions']} decisions of {args.duration:.0f} s of demo "
              f"load (replayed in {made['replay_s']:.1f} s, written in {made['write_s']:.1f} s) -> {path}")
    runs, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        rep = audit_db(path)
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(runs)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    admissions = sum(rep.by_kind.get(k, 0) for k in ("admit", "defer", "reject"))
    covered = rep.rederived + rep.dispatch_rederived + rep.checked
    print(f"audited {rep.rows} decisions ({rep.by_kind}): {rep.rederived}/{admissions} admissions and "
          f"{rep.dispatch_rederived}/{rep.by_kind.get('dispatch', 0)} dispatches re-derived, {rep.checked} other "
          f"rows checked, {sum(rep.skipped.values())} neither ({rep.skipped}); {len(rep.mismatches)} mismatches")
    print(f"{rep.rows / best:,.0f} decisions/s (best of {len(runs)}: {best:.2f} s wall, all runs "
          f"{', '.join(f'{r:.2f}' for r in runs)} s, read + decode + re-derive); {rep.rows / min(cpu):,.0f} "
          f"decisions per CPU second (this process: DuckDB's reader threads included); load average "
          f"{load:.1f} per core while it ran")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        audit_db(path)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "store": made, "rows": rep.rows, "by_kind": rep.by_kind, "rederived": rep.rederived,
            "dispatch_rederived": rep.dispatch_rederived, "checked": rep.checked, "skipped": rep.skipped,
            "covered": covered, "mismatches": len(rep.mismatches), "runs_s": runs,
            "decisions_per_s": rep.rows / best, "cpu_s": cpu, "load_per_core": load}, indent=1))
    tmp.cleanup()
    return 0 if rep.ok and covered == rep.rows else 1


if __name__ == "__main__":
    sys.exit(main())
