"""Autoscaling in replay: sluice's capacity rule against a fleet sized for the peak and an HPA on GPU
utilisation, on a day of ServeGen language rates (docs/capacity.md has the setup and the numbers).

    .venv/bin/python bench/bench_autoscale.py                 # a day in 15 minutes, ~54k requests
    .venv/bin/python bench/bench_autoscale.py --quick         # a day in 5 minutes, ~18k requests
    .venv/bin/python bench/bench_autoscale.py --seeds 0,1 --json out.json

A day at the trace's full rate is ~85M requests; here the day's rate curve (ServeGen m-small, 600-s
windows, diurnal 4x peak to trough, bursty inside each window) is compressed `--compress` times in
time at a rate that keeps a few H100 replicas busy (`--mean-replicas`). The same workload goes
through the same core (fcfs + admission) under each controller; only the fleet differs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.core.capacity import BURST_RESERVE, Behaviour, CapacityParams, Replica, replica_capacity  # noqa: E402
from engine_adapter.sim.profile import load_profile  # noqa: E402
from replay.autoscale import Scaling, run_autoscaled, servegen_day  # noqa: E402
from replay.runner import default_policy  # noqa: E402

MEAN_RATE = 985.0  # m-small's mean req/s over day 0 (all clients)


def fleet_for(workload, profile, window_s: float, util: float, which: str) -> int:  # type: ignore[no-untyped-def]
    """What an operator provisions knowing the day: the `which` ("peak" or "first") trace window's
    rate over one replica's SLO capacity at the target utilisation (the rule's own model). The
    peak-sized fleet; and the autoscalers' starting fleet (they ran through the night before)."""
    counts: dict[int, int] = {}
    for w in workload:
        k = int(w.timestamp_ms / 1e3 // window_s)
        counts[k] = counts.get(k, 0) + 1
    peak = (max(counts.values()) if which == "peak" else counts[min(counts)]) / window_s
    prompt = sum(w.input_length for w in workload) / len(workload)
    out = sum(w.output_length for w in workload) / len(workload)
    mu = replica_capacity(Replica(profile.step, profile.kv_capacity_tokens, profile.max_running_requests),
                          0.8 * 0.05, prompt, out)
    return math.ceil(peak / (mu * util))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compress", type=float, default=96.0, help="a day in 86400/X seconds (default 96: 15 min)")
    ap.add_argument("--mean-replicas", type=float, default=4.0, help="the day's mean load in replicas' worth")
    ap.add_argument("--quick", action="store_true", help="a day in 5 minutes")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--cold-start", type=float, default=20.0, help="seconds to load a replica (compressed time)")
    ap.add_argument("--warm-start", type=float, default=4.0)
    ap.add_argument("--down-window", type=float, default=30.0, help="scale-down stabilisation (s)")
    ap.add_argument("--period", type=float, default=5.0, help="HPA rate-policy period (s)")
    ap.add_argument("--target", type=float, default=CapacityParams().target_utilisation,
                    help="sluice's target utilisation of a replica's SLO capacity (the interactive headroom)")
    ap.add_argument("--burst-reserve", type=float, default=BURST_RESERVE,
                    help="sluice's square-root staffing factor (0: the proportional headroom alone, as before)")
    ap.add_argument("--modes", default="sluice,utilisation,fixed")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    compress = 288.0 if args.quick else args.compress
    profile = load_profile()
    behaviour = Behaviour(down_window_s=args.down_window, period_s=args.period)
    policy = default_policy("fcfs", admission=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        # per-replica SLO capacity for Azure-conv lengths is ~21 req/s; 70% of it is a replica's worth
        rate_scale = args.mean_replicas * 0.7 * 21.0 / MEAN_RATE  # of the compressed day
        wl = servegen_day(compress=compress, rate_scale=rate_scale, seed=seed)
        util = CapacityParams().target_utilisation
        fixed_n = fleet_for(wl, profile, 600.0 / compress, util, "peak")
        start_n = fleet_for(wl, profile, 600.0 / compress, util, "first")
        print(f"seed {seed}: {len(wl)} requests over {wl[-1].timestamp_ms / 1e3:.0f} s (a day / {compress:g}); "
              f"peak-sized fleet {fixed_n}, autoscalers start from {start_n}", file=sys.stderr)
        for mode, initial in (("sluice", start_n), ("utilisation", start_n), ("fixed", fixed_n)):
            if mode not in args.modes.split(","):
                continue
            t0 = time.perf_counter()
            # maxReplicas: twice the peak-sized fleet, a budget cap an operator would set
            scaling = Scaling(mode=mode, initial=initial, cold_start_s=args.cold_start, warm_start_s=args.warm_start,
                              behaviour=behaviour,
                              params=CapacityParams(max_replicas=2 * fixed_n, target_utilisation=args.target,
                                                    burst_reserve=args.burst_reserve))
            res, fleet = run_autoscaled(wl, policy, scaling, torch_expert=False)
            serving = [s for _, _, s in fleet.timeline] or [initial]
            row = {"seed": seed, "mode": mode, "requests": len(wl), "gpu_s": fleet.gpu_seconds,
                   "energy_mj": fleet.energy_j / 1e6, "actions": fleet.actions, "started": fleet.started,
                   "warm_starts": fleet.warm_starts, "peak": max(fleet.peak, initial),
                   "mean_serving": sum(serving) / len(serving),
                   "slo": res.overall.slo_attainment,
                   "per_class": {c: o.slo_attainment for c, o in res.per_class.items()},
                   "refused": res.overall.refused, "makespan_s": res.makespan_s,
                   "wall_s": time.perf_counter() - t0}
            rows.append(row)
            print(f"  {mode}: {row['wall_s']:.0f} s wall", file=sys.stderr)
    print(table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


def table(rows: list[dict]) -> str:  # type: ignore[type-arg]
    classes = sorted({c for r in rows for c in r["per_class"]})
    head = ["seed", "controller", "peak", "mean", "GPU-s", "vs util", "energy MJ", "actions", "missed", "SLO% all",
            *[f"SLO% {c}" for c in classes], "refused%"]
    lines = []
    for r in rows:
        util = next((x for x in rows if x["seed"] == r["seed"] and x["mode"] == "utilisation"), r)
        lines.append([str(r["seed"]), r["mode"], str(r["peak"]), f"{r['mean_serving']:.1f}", f"{r['gpu_s']:.0f}",
                      f"{100 * (r['gpu_s'] / util['gpu_s'] - 1):+.0f}%", f"{r['energy_mj']:.1f}", str(r["actions"]),
                      str(round((1 - r["slo"]) * r["requests"])), f"{100 * r['slo']:.3f}",
                      *[f"{100 * r['per_class'].get(c, float('nan')):.3f}" for c in classes],
                      f"{100 * (r['refused'] or 0):.2f}"])
    widths = [max(len(h), *(len(x[k]) for x in lines)) for k, h in enumerate(head)]
    out = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    out += ["  ".join(v.rjust(w) for v, w in zip(x, widths)) for x in lines]
    out.append("")
    for seed in sorted({r["seed"] for r in rows}):
        if len({r["mode"] for r in rows if r["seed"] == seed}) < 3:
            continue
        s, u, f = (next(x for x in rows if x["seed"] == seed and x["mode"] == m) for m in ("sluice", "utilisation",
                                                                                          "fixed"))
        out.append(f"seed {seed}: sluice vs utilisation: SLO {100 * (s['slo'] - u['slo']):+.3f} pt (target >= 0), "
                   f"GPU-s {100 * (s['gpu_s'] / u['gpu_s'] - 1):+.1f}% (target <= -30%); vs peak-sized fleet: SLO "
                   f"{100 * (s['slo'] - f['slo']):+.2f} pt (target >= -1), GPU-s {100 * (s['gpu_s'] / f['gpu_s'] - 1):+.1f}%")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
