"""KV-locality-aware dispatch against least-load on the Mooncake synthetic trace, 4 engines.

Every run is replay.runner.run_virtual (the real decision core and 4 SimCores on the default H100 /
Llama-3.1-8B profile, each with its 882-block prefix cache); the core sees Mooncake's `hash_ids` as
the requests' prefix hashes, never an engine's cache. Dispatch configurations (docs/dispatch.md):

- `least-load`: {load = 1}: the engine with the smallest share of its window in flight;
- `ttft`: the default, {ttft = 1} with the tenant's hit share as every engine's cached estimate;
- `ttft+index`: {ttft = 1} with each engine's prefix index (the forecast itself locality-aware);
- `ttft+prefix=W`: {ttft = 1, prefix = W} with the index: W more seconds of score per second of
  prefill the cached prefix saves (stickier than the forecast alone);
- `ttft+load=W`: {ttft = 1, load = W} with the index: a full window costs W seconds more;
- `prefix+load=W`: {prefix = 1, load = W}: locality against the window's fill, no forecast (the
  shape of llm-d's default prefix + load scorers).

Offered loads are multiples of 4 x the single-engine SLO capacity (bench_matrix.capacity_factor);
each run offers `--seconds` of the trace and drains for the batch deadline. The scenario's tenants,
classes and weights are bench_matrix's (replay/scenarios.py), under equinox, admission off and on.
Overloaded runs without admission are chaotic (from one tenant assignment to the next the TTFT p99
goes from 8 s to 41 s), so every cell is the mean over `--seeds` tenant assignments of the scenario.
Reported: the engines' prefix-cache hit rate (cached / prompt tokens of completed requests), TTFT
p50 / p99 of completed interactive requests, their SLO attainment and refusals, goodput and the
busiest engine's share of the dispatches (0.25 = even); then each configuration across the loads.

    .venv/bin/python bench/bench_dispatch.py [--seconds 800] [--loads 0.5,0.8,1,1.5] [--seeds 0,1,2]
        [--json out.json] [--markdown]
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_matrix import DRAIN_S, capacity_factor, matrix_parser  # noqa: E402
from controlplane.core.policy import DispatchPolicy  # noqa: E402
from replay.runner import run_virtual  # noqa: E402
from replay.scenarios import build_scenario, scenario_policy  # noqa: E402
from replay.workload import scale_rate, window  # noqa: E402

ENGINES = 4
LOADS = (0.5, 0.8, 1.0, 1.5)
CONFIGS: dict[str, DispatchPolicy] = {
    "least-load": DispatchPolicy({"load": 1.0}, "tenant"),
    "ttft": DispatchPolicy(),
    "ttft+index": DispatchPolicy({"ttft": 1.0}, "prefix"),
    "ttft+prefix=1": DispatchPolicy({"ttft": 1.0, "prefix": 1.0}, "prefix"),
    "ttft+prefix=4": DispatchPolicy({"ttft": 1.0, "prefix": 4.0}, "prefix"),
    "ttft+load=0.5": DispatchPolicy({"ttft": 1.0, "load": 0.5}, "prefix"),
    "prefix+load=1": DispatchPolicy({"prefix": 1.0, "load": 1.0}, "prefix"),
}


METRICS = ("cache_hit_rate", "ttft_p50_s", "ttft_p99_s", "slo_admitted", "refused", "goodput_tps", "busiest_share")


def _run(args: tuple[float, float, float, str, bool, int]) -> dict[str, Any]:
    factor, load, seconds, config, admission, seed = args
    sc = build_scenario("mooncake", seed=seed, span_s=seconds * factor * load + 1.0)
    w = window(scale_rate(sc.requests, factor * load), 0, seconds * 1e3)
    policy = dataclasses.replace(scenario_policy(sc, "equinox", admission), dispatch=CONFIGS[config])
    t0 = time.perf_counter()
    r = run_virtual(w, policy, engines=ENGINES, torch_expert=False, horizon_s=seconds + DRAIN_S)
    i = r.per_class.get("interactive")
    placed = Counter(rec.engine for rec in r.records if rec.engine is not None)
    return {"load": load, "config": config, "admission": admission, "seed": seed, "requests": len(w),
            "wall_s": time.perf_counter() - t0, "cache_hit_rate": r.overall.cache_hit_rate,
            "ttft_p50_s": i.ttft_p50_s if i else None, "ttft_p99_s": i.ttft_p99_s if i else None,
            "slo_admitted": i.slo_attainment_admitted if i else None, "refused": i.refused if i else None,
            "goodput_tps": r.overall.goodput_tps,
            "busiest_share": max(placed.values()) / sum(placed.values()) if placed else None}


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _mean(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return sum(values) / len(values) if values else None


def cells(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs averaged over seeds, per (load, admission, config), in run order."""
    groups: dict[tuple[float, bool, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["load"], r["admission"], r["config"]), []).append(r)
    return [{"load": k[0], "admission": k[1], "config": k[2], "seeds": len(g), **{m: _mean(g, m) for m in METRICS}}
            for k, g in groups.items()]


def _row(label: str, c: dict[str, Any]) -> str:
    pct = {m: None if c[m] is None else 100 * c[m] for m in ("cache_hit_rate", "slo_admitted", "refused")}
    return (f"| {label} | {_f(pct['cache_hit_rate'], '.1f')} | {_f(c['ttft_p50_s'], '.2f')} | "
            f"{_f(c['ttft_p99_s'], '.2f')} | {_f(pct['slo_admitted'], '.1f')} | {_f(pct['refused'], '.1f')} | "
            f"{_f(c['goodput_tps'], '.0f')} | {_f(c['busiest_share'], '.2f')} |")


_HEAD = ("cache hit % | int. TTFT p50 s | int. TTFT p99 s | int. SLO % adm. | int. refused % | goodput tok/s | "
         "busiest engine |")


def markdown(doc: dict[str, Any]) -> str:
    table = cells(doc["runs"])
    lines = ["| load | adm. | dispatch | " + _HEAD, "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(f"{c['load']}x | {'on' if c['admission'] else 'off'} | {c['config']}", c) for c in table]
    lines += ["", "Across the loads (the mean of the rows above):", "",
              "| adm. | dispatch | " + _HEAD, "|---|---|---|---|---|---|---|---|---|"]
    across: dict[tuple[bool, str], list[dict[str, Any]]] = {}
    for c in table:
        across.setdefault((c["admission"], c["config"]), []).append(c)
    lines += [_row(f"{'on' if adm else 'off'} | {config}", {m: _mean(g, m) for m in METRICS})
              for (adm, config), g in across.items()]
    return "\n".join(lines)


def main() -> int:
    ap = matrix_parser(__doc__, 800.0, LOADS)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--seeds", default="0,1,2", help="the scenario's tenant assignments to average over")
    ap.add_argument("--admission", default="off,on", help="off, on or off,on")
    args = ap.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown --configs {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    admissions = [{"off": False, "on": True}[a] for a in args.admission.split(",")]
    t0 = time.perf_counter()
    single, target = capacity_factor("mooncake", 90.0)
    factor = ENGINES * single
    print(f"mooncake: one engine's SLO capacity at {single:.3f}x the trace rate; 1x here = {factor:.3f}x",
          file=sys.stderr)
    seeds = [int(x) for x in args.seeds.split(",")]
    jobs = [(factor, load, args.seconds, c, a, s) for load in loads for a in admissions for c in configs
            for s in seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(_run, jobs))
    doc = {"seconds": args.seconds, "engines": ENGINES, "capacity_factor_1x": factor, "runs": runs,
           "wall_s": time.perf_counter() - t0}
    print(f"{len(runs)} runs in {doc['wall_s']:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.markdown:
        print(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
