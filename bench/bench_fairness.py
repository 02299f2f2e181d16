"""Outcomes of the scheduling policies on the simulated H100 under 1.5x overload (virtual time).

Protocol (everything through replay.runner.run_virtual: the real decision core + SimCore):

1. Capacity. For a length mix, the engine's capacity is the completion rate of FCFS without
   admission under a saturating Poisson load (3x a first guess), measured over the second half
   of a 60 s run. Offered loads below are 1.5x this capacity.
2. SLO capacity (DistServe's goodput): the largest Poisson rate at which FCFS without admission
   still meets the interactive SLO (TTFT 500 ms, TPOT 50 ms) for >= 90 % of requests, found by
   bisection; its goodput (rate x attainment) is the reference "goodput at SLO capacity".
3. Workloads at 1.5x capacity, for fcfs, vtc, equinox and equinox with admission:
   - VTC `overload`: two tenants, rates 1:2, 256/256 tokens;
   - VTC `overload-weighted`: four tenants, rates 2:2:3:4, weights 1:2:3:4;
   - ServeGen language/m-small: the busiest hour's clients (a `--servegen-s` slice of it), rates
     scaled so that the total is 1.5x the capacity for that length mix.
   Reported: share of service over weight share while every tenant is backlogged (targets within
   5 %), VTC's max service difference between backlogged tenants, goodput, SLO attainment of
   admitted requests (target >= 99 %), goodput / goodput at SLO capacity (target >= 90 %),
   Jain's index (target >= 0.95) and TTFT forecast median APE (target <= 15 %).

4. Cost of VTC's service difference (no replay: a small discrete-event run of the real
   schedulers, `synthetic_run`): the pairwise reference against the pruned exact computation at
   10, 30 and 100 tenants, CPU time side by side, with the pairs each one computed.

    .venv/bin/python bench/bench_fairness.py [--vtc-s 120] [--servegen-s 60] [--json out.json]
    .venv/bin/python bench/bench_fairness.py --skip-vtc --skip-servegen   # the service difference only
"""
from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairness import Outcome, Work, make_scheduler  # noqa: E402
from fairness.metrics import (Served, demand_fairness, service_difference,  # noqa: E402
                              service_difference_pairwise)
from replay.loaders import LengthTable, poisson_workload, vtc_overload, vtc_weighted  # noqa: E402
from replay.outcomes import VirtualResult  # noqa: E402
from replay.runner import default_policy, run_virtual  # noqa: E402
from replay.workload import WorkloadRequest, scale_rate  # noqa: E402

SLO_TARGET = 0.90  # DistServe's attainment goal for the SLO capacity


def measure_capacity(lengths: LengthTable, guess: float, seed: int = 0, seconds: float = 60.0) -> float:
    """Completion rate in the second half of a run offered 3x `guess`; if that load did not
    saturate the engine (completions >= 90 % of the offered rate), retry with a 4x larger guess."""
    while True:
        offered = 3.0 * guess
        w = poisson_workload(lengths, offered, duration_s=seconds, seed=seed)
        r = run_virtual(w, "fcfs", seed=seed, torch_expert=False, horizon_s=seconds)
        done = [x.finish_s for x in r.records
                if x.status == "ok" and x.finish_s is not None and x.finish_s >= seconds / 2]
        rate = len(done) / (seconds / 2)
        if rate < 0.9 * offered:
            return rate
        guess *= 4.0


def slo_capacity(lengths: LengthTable, capacity: float, seed: int = 0, seconds: float = 120.0,
                 steps: int = 7) -> dict[str, float]:
    """Bisection on the Poisson rate for >= 90 % interactive SLO attainment under FCFS, no admission."""
    lo, hi = 0.1 * capacity, capacity
    best = {"rate": lo, "attainment": 1.0, "goodput": lo}
    for _ in range(steps):
        mid = (lo + hi) / 2
        w = poisson_workload(lengths, mid, duration_s=seconds, seed=seed)
        r = run_virtual(w, "fcfs", seed=seed, torch_expert=False)
        att = r.overall.slo_attainment or 0.0
        if att >= SLO_TARGET:
            lo = mid
            best = {"rate": mid, "attainment": att, "goodput": r.overall.good / seconds}
        else:
            hi = mid
    return best


def maxmin_fair_jain(result: VirtualResult, workload: list[WorkloadRequest]) -> float:
    """Jain's index over service / weighted max-min fair share (`demand_fairness`): the fair shares
    water-fill the delivered service over the tenants' demands (a tenant asking for less than its
    share is owed only what it asked for)."""
    demand: dict[str, float] = {}
    for w in workload:
        demand[w.tenant] = demand.get(w.tenant, 0.0) + max(1, w.input_length) + 2.0 * max(1, w.output_length)
    weights = {t: result.policy.tenant(t).weight for t in demand}
    delivered = {t: o.service for t, o in result.per_tenant.items() if t in demand}
    return demand_fairness(demand, delivered, weights).jain


def policies() -> dict[str, Any]:
    return {"fcfs": "fcfs", "vtc": "vtc", "equinox": "equinox", "equinox+adm": None}


def run_all(workload: list[WorkloadRequest], weights: dict[str, float], seed: int) -> dict[str, VirtualResult]:
    out = {}
    for label in policies():
        sched = label.split("+")[0]
        pol = default_policy(sched, admission=label.endswith("+adm"), weights=weights)
        out[label] = run_virtual(workload, pol, seed=seed)
    return out


def row(label: str, r: VirtualResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    fz = r.fairness
    d = {
        "policy": label,
        "requests": r.overall.requests,
        "admitted": r.overall.admitted,
        "goodput_rps": r.overall.goodput_rps,
        "slo_attainment_admitted": r.overall.slo_attainment_admitted,
        "ttft_p50_s": r.overall.ttft_p50_s,
        "ttft_p99_s": r.overall.ttft_p99_s,
        "tpot_p50_s": r.overall.tpot_p50_s,
        "jain_weighted": fz["jain_weighted"],
        "jain_backlogged": fz.get("jain_backlogged"),
        "service_difference": fz["service_difference"],
        "all_backlogged_s": fz["all_backlogged_s"],
        "share_ratio_backlogged": {t: o.share_ratio_backlogged for t, o in r.per_tenant.items()},
        "max_share_error": (max(abs(o.share_ratio_backlogged - 1.0) for o in r.per_tenant.values())
                            if all(o.share_ratio_backlogged is not None for o in r.per_tenant.values()) else None),
        "ttft_mdape": r.forecast["ttft"]["median_ape"],
        "ttft_bias_s": r.forecast["ttft"]["bias"],
        "virtual_s": r.makespan_s,
        "wall_s": r.wall_s,
    }
    d.update(extra or {})
    return d


def fmt(x: Any, d: int = 3, scale: float = 1.0) -> str:
    return "-" if x is None else f"{x * scale:.{d}f}"


def print_rows(title: str, rows: list[dict[str, Any]], cols: list[tuple[str, str, int, float]]) -> None:
    print(f"\n== {title}")
    heads = ["policy"] + [c[0] for c in cols]
    cells = [[r["policy"]] + [fmt(r.get(k), d, s) for _, k, d, s in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


FAIR_COLS = [("max|sh/w-1|%", "max_share_error", 1, 100), ("svc diff", "service_difference", 0, 1),
             ("Jain(bkl)", "jain_backlogged", 3, 1), ("backlog s", "all_backlogged_s", 0, 1),
             ("good/s", "goodput_rps", 2, 1), ("SLO%adm", "slo_attainment_admitted", 1, 100),
             ("TTFT p99", "ttft_p99_s", 3, 1), ("MdAPE%", "ttft_mdape", 1, 100), ("wall s", "wall_s", 1, 1)]


def vtc_suites(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """VTC's overload and overload-weighted suites (256/256 tokens) at `args.overload` x capacity."""
    lengths = LengthTable.constant(256, 256)
    cap = measure_capacity(lengths, 40.0, args.seed)
    print(f"capacity of the simulated H100 for 256/256 requests: {cap:.2f} req/s "
          f"(offered: {args.overload * cap:.2f} req/s)")
    out["capacity_256_256_rps"] = cap
    total = args.overload * cap
    w = vtc_overload(args.vtc_s, rates=(total / 3, 2 * total / 3), seed=42 + args.seed)
    res = run_all(w, {}, args.seed)
    out["vtc_overload"] = [row(k, r) for k, r in res.items()]
    print_rows(f"VTC overload: 2 tenants at {total / 3:.1f} and {2 * total / 3:.1f} req/s, {args.vtc_s:.0f} s",
               out["vtc_overload"], FAIR_COLS)

    base = (0.8, 0.8, 1.2, 1.6)  # VTC's overload-weighted rates; scaled to the total
    wv, weights = vtc_weighted(args.vtc_s * total / sum(base), seed=42 + args.seed)
    wv = scale_rate(wv, total / sum(base))
    res = run_all(wv, weights, args.seed)
    out["vtc_weighted"] = [row(k, r) for k, r in res.items()]
    print_rows(f"VTC overload-weighted: 4 tenants, rates 2:2:3:4 (total {total:.1f} req/s), weights 1:2:3:4",
               out["vtc_weighted"], FAIR_COLS)


def synthetic_run(tenants: int, policy: str, seconds: float, seed: int = 0, slots: int = 32,
                  overload: float = 1.5) -> tuple[list[Served], dict[str, list[tuple[float, float]]]]:
    """A small discrete-event run of a real scheduler, for the cost of the service difference:
    `slots` concurrent requests, prompt at 20k tokens/s then 50 tokens/s of output per request;
    Poisson tenants with Zipf(0.8) rates totalling `overload` x capacity; prompts U(50, 2000),
    outputs U(20, 400). Returns the Served records and each tenant's backlogged intervals
    (queue non-empty in the scheduler)."""
    rng = random.Random(seed)
    tok_s = 50.0
    capacity = slots / (210.0 / tok_s)  # mean output 210 tokens
    skew = [1 / (i + 1) ** 0.8 for i in range(tenants)]
    arrivals = []
    for i, x in enumerate(skew):
        rate = overload * capacity * x / sum(skew)
        t = rng.expovariate(rate)
        while t < seconds:
            arrivals.append((t, f"t{i}", rng.randint(50, 2000), rng.randint(20, 400)))
            t += rng.expovariate(rate)
    arrivals.sort()
    sched = make_scheduler(policy)
    running: list[tuple[float, str, Work]] = []
    served: list[Served] = []
    back: dict[str, list[tuple[float, float]]] = {}
    since: dict[str, float] = {}
    free, k, now = slots, 0, 0.0
    while k < len(arrivals) or running:
        if running and (k >= len(arrivals) or running[0][0] <= arrivals[k][0]):
            now, tenant, work = heapq.heappop(running)
            free += 1
            sched.finish(tenant, work, Outcome(work))
        else:
            now, tenant, inp, out = arrivals[k]
            k += 1
            if not sched.queued(tenant):
                since[tenant] = now
            sched.push(tenant, k, Work(inp, out))
        while free and len(sched):
            got = sched.pop()
            assert got is not None
            tenant, _, work = got
            if not sched.queued(tenant):
                back.setdefault(tenant, []).append((since.pop(tenant), now))
            start = now + work.input_tokens / 20000
            end = start + work.output_tokens / tok_s
            served.append(Served(tenant, start, end, work.input_tokens + 2.0 * work.output_tokens, now))
            heapq.heappush(running, (end, tenant, work))
            free -= 1
    for tenant, t0 in since.items():
        back.setdefault(tenant, []).append((t0, now))
    return served, back


def service_difference_bench(args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Pairwise reference vs pruned exact service difference: CPU time (best of args.repeat)."""
    def best_of(fn: Any) -> tuple[float, Any]:
        times, got = [], None
        for _ in range(args.repeat):
            t0 = time.process_time()
            got = fn()
            times.append(time.process_time() - t0)
        return min(times), got

    rows = []
    print(f"\n== VTC's service difference, {args.sd_s:.0f} s synthetic runs at 1.5x capacity "
          f"(CPU s, best of {args.repeat})")
    print(f"{'tenants':>7} {'policy':>6} {'requests':>8} {'spans':>6} {'difference':>11} "
          f"{'pairwise s':>10} {'pruned s':>9} {'speed-up':>8} {'pairs computed':>15}")
    for tenants in args.sd_tenants:
        for policy in ("vtc", "fcfs"):
            rs, back = synthetic_run(tenants, policy, args.sd_s, seed=args.seed)
            t_ref, ref = best_of(partial(service_difference_pairwise, rs, back))
            t_new, new = best_of(partial(service_difference, rs, back))
            if abs(new.value - ref.value) > 1e-9 * max(1.0, ref.value):
                raise SystemExit(f"mismatch at {tenants} tenants, {policy}: {new.value} != {ref.value}")
            spans = sum(len(v) for v in back.values())
            row_ = {"tenants": tenants, "policy": policy, "requests": len(rs), "spans": spans,
                    "value": new.value, "pairwise_s": t_ref, "pruned_s": t_new, "speedup": t_ref / t_new,
                    "pairs_computed": new.pairs_evaluated, "pairs": ref.pairs_evaluated}
            rows.append(row_)
            print(f"{tenants:>7} {policy:>6} {len(rs):>8} {spans:>6} {new.value:>11.0f} {t_ref:>10.3f} "
                  f"{t_new:>9.3f} {t_ref / t_new:>7.1f}x {new.pairs_evaluated:>7}/{ref.pairs_evaluated:<7}")
    out["service_difference_cost"] = rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vtc-s", type=float, default=120.0, help="seconds of the VTC suites")
    ap.add_argument("--servegen-s", type=float, default=60.0, help="seconds of ServeGen's busiest hour")
    ap.add_argument("--overload", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-servegen", action="store_true")
    ap.add_argument("--skip-vtc", action="store_true")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--skip-sd", action="store_true", help="skip the service-difference cost benchmark")
    ap.add_argument("--sd-s", type=float, default=300.0, help="seconds of each synthetic run")
    ap.add_argument("--sd-tenants", type=lambda x: [int(v) for v in x.split(",")], default=[10, 30, 100])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out: dict[str, Any] = {"overload": args.overload, "seed": args.seed}
    t_start = time.perf_counter()

    if not args.skip_vtc:
        vtc_suites(args, out)

    # -- ServeGen m-small --------------------------------------------------------------------------
    if not args.skip_servegen:
        from replay.servegen import busiest_hour, load_servegen, sample_servegen

        profile = load_servegen(group="m-small")
        start = busiest_hour(profile)
        probe = sample_servegen(profile, start_s=start, duration_s=args.servegen_s, seed=args.seed)
        mix = LengthTable.from_workload(probe, "servegen m-small busiest hour")
        mean_in = float(mix.inputs.mean())
        mean_out = float(mix.outputs.mean())
        cap_sg = measure_capacity(mix, 20.0, args.seed)
        rate = len(probe) / args.servegen_s
        scale = args.overload * cap_sg / rate
        wsg = sample_servegen(profile, start_s=start, duration_s=args.servegen_s, seed=args.seed, rate_scale=scale)
        slo_cap = slo_capacity(mix, cap_sg, args.seed, seconds=min(60.0, args.servegen_s), steps=6)
        print(f"\nServeGen m-small busiest hour (start {start} s), {args.servegen_s:.0f} s slice: "
              f"{len({x.tenant for x in wsg})} clients, mean in/out {mean_in:.0f}/{mean_out:.0f} tokens; "
              f"capacity {cap_sg:.2f} req/s; SLO capacity {slo_cap['rate']:.2f} req/s at "
              f"{100 * slo_cap['attainment']:.1f} % (goodput {slo_cap['goodput']:.2f} req/s); "
              f"offered {len(wsg) / args.servegen_s:.2f} req/s (rate x{scale:.3f})")
        out["servegen"] = {"start_s": start, "slice_s": args.servegen_s, "clients": len({x.tenant for x in wsg}),
                           "requests": len(wsg), "capacity_rps": cap_sg, "slo_capacity": slo_cap,
                           "rate_scale": scale, "mean_input": mean_in, "mean_output": mean_out}
        res = run_all(wsg, {}, args.seed)
        rows = []
        for k, r in res.items():
            rows.append(row(k, r, {"goodput_vs_slo_capacity": r.overall.goodput_rps / slo_cap["goodput"],
                                   "jain_maxmin": maxmin_fair_jain(r, wsg)}))
        out["servegen"]["runs"] = rows
        print_rows("ServeGen m-small at 1.5x capacity", rows, [
            ("good/s", "goodput_rps", 2, 1), ("good/SLOcap%", "goodput_vs_slo_capacity", 1, 100),
            ("SLO%adm", "slo_attainment_admitted", 2, 100), ("admit%", "admitted", 0, 100 / len(wsg)),
            ("Jain(w)", "jain_weighted", 3, 1), ("Jain(maxmin)", "jain_maxmin", 3, 1),
            ("TTFT p50", "ttft_p50_s", 3, 1), ("TTFT p99", "ttft_p99_s", 3, 1), ("MdAPE%", "ttft_mdape", 1, 100),
            ("bias s", "ttft_bias_s", 3, 1), ("wall s", "wall_s", 1, 1)])
    if not args.skip_sd:
        service_difference_bench(args, out)
    out["total_wall_s"] = time.perf_counter() - t_start
    print(f"\ntotal wall time {out['total_wall_s']:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
