"""Virtual-time replay speed: virtual seconds per wall second of `run_virtual` (the decision core and
one simulated H100), this checkout beside another one (`--baseline-root`) in the same run.

Cases (`--cases`, default all):

- ``azure``: the Azure LLM inference conversation trace (19,366 requests, 58 min), equinox with
  admission, the output-length predictor without its MLP expert (torch never imported);
- ``azure+mlp``: the same with the MLP expert trained inline every 256 finishes, as serving does
  (torch imported once per process, before timing);
- ``servegen``: an hour of ServeGen language m-mid (48 tenants, every fourth batch) at 1.5x its SLO
  capacity (bench/bench_matrix.py's scenario and capacity factor), equinox with admission.

Each run is its own process with the checkout's packages first on the path; the checkouts
alternate, `--repeat` times, and the report gives each one's best wall time, the speed-up of each
pair and whether both produced the same requests' outcomes (a digest of every record). The
machine may be shared and noisy: read the ratios. `--split` adds one run per checkout with timers
around the simulator and the decision core (where the time goes; the timers add a little).
`--profile` prints this checkout's top functions instead (cProfile).

    .venv/bin/python bench/bench_replay.py [--cases azure,azure+mlp,servegen] [--baseline-root DIR]
        [--root DIR] [--repeat 2] [--split] [--profile] [--seconds 3600] [--json out.json]

(`git worktree add --detach /tmp/base <commit>` makes a baseline checkout; `--root` another one
to measure as "this", e.g. a clean checkout of HEAD when the working tree has others' edits.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = ("azure", "azure+mlp", "servegen")
SERVEGEN = "servegen:m-mid"
LOAD = 1.5


def _workload(case: str, seconds: float) -> tuple[list[Any], Any, str]:
    """(workload, policy, label) of a case, built by the checkout on the path."""
    from replay.runner import default_policy

    if case.startswith("azure"):
        from replay.loaders import load_azure, shared_trace

        path = shared_trace("AzureLLMInferenceTrace_conv.csv")
        if not path.exists():
            raise SystemExit(f"{path} not found")
        return load_azure(path, "conv"), default_policy("equinox", admission=True), "Azure conv, equinox+adm"
    from bench.bench_frequency import CAPACITY
    from bench.bench_matrix import _slice
    from replay.scenarios import scenario_policy

    factor = CAPACITY[SERVEGEN] * LOAD
    sc, w = _slice(SERVEGEN, factor, seconds)
    label = f"ServeGen m-mid {seconds:.0f} s at {LOAD}x capacity, {len(sc.tenants)} tenants, equinox+adm"
    return w, scenario_policy(sc, "equinox", True), label


def _timers() -> dict[str, float]:
    """Wrap the simulator's and the decision core's entry points in timers (the core's own calls
    into the simulator, a dispatch's submit, count as simulator time)."""
    import controlplane.driver as driver
    import engine_adapter.sim.core as simcore

    acc = {"sim_s": 0.0, "core_s": 0.0}
    depth = [0]

    def wrap(cls: Any, name: str, key: str) -> None:
        f = getattr(cls, name, None)
        if f is None:
            return

        def timed(*a: Any, **k: Any) -> Any:
            if key == "core_s":
                depth[0] += 1
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                dt = time.perf_counter() - t
                if key == "core_s":
                    depth[0] -= 1
                    if not depth[0]:
                        acc["core_s"] += dt
                else:
                    acc["sim_s"] += dt
                    if depth[0]:
                        acc["core_s"] -= dt

        setattr(cls, name, timed)

    for name in ("advance", "submit", "load", "next_time", "next_event_time", "due"):
        wrap(simcore.SimCore, name, "sim_s")
    for name in ("arrive", "finish", "first_token", "tick", "engine_load", "apply"):
        wrap(driver.Driver, name, "core_s")
    return acc


def child(spec: dict[str, Any]) -> None:
    """One measured run, in this process; prints one JSON line."""
    sys.path.insert(0, spec["root"])
    import replay.runner as runner

    case = spec["case"]
    w, policy, label = _workload(case, spec["seconds"])
    mlp = case.endswith("+mlp")
    if mlp:
        import torch  # noqa: F401  (once per process, before timing: an import is not replay cost)
    acc = _timers() if spec.get("split") else None
    cpu = [0.0]
    run = runner.VirtualRun.run

    def timed_run(self: Any) -> None:
        t = time.process_time()
        run(self)
        cpu[0] = time.process_time() - t

    runner.VirtualRun.run = timed_run  # type: ignore[method-assign]
    r = runner.run_virtual(w, policy, torch_expert=mlp)
    digest = hashlib.sha256(json.dumps([(x.rid, x.status, x.engine, x.first_token_s, x.finish_s)
                                        for x in r.records]).encode()).hexdigest()[:16]
    out = {"case": case, "label": label, "requests": len(w), "virtual_s": r.makespan_s, "wall_s": r.wall_s,
           "cpu_s": cpu[0], "virtual_per_wall": r.virtual_per_wall, "steps": r.engines["sim-0"]["steps"],
           "slo_attainment": r.overall.slo_attainment, "digest": digest,
           "torch_imported": "torch" in sys.modules}
    if acc is not None:
        out.update(acc, rest_s=r.wall_s - acc["sim_s"] - acc["core_s"])
    print(json.dumps(out))


def measure(root: str, case: str, seconds: float, split: bool = False) -> dict[str, Any]:
    spec = {"root": root, "case": case, "seconds": seconds, "split": split}
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=root, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": root})
    if p.returncode != 0:
        raise SystemExit(f"{case} under {root} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def profile(case: str, seconds: float) -> None:
    import cProfile
    import pstats

    sys.path.insert(0, str(ROOT))
    from replay.runner import run_virtual

    w, policy, _ = _workload(case, seconds)
    prof = cProfile.Profile()
    prof.enable()
    run_virtual(w, policy, torch_expert=case.endswith("+mlp"))
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def report(doc: dict[str, Any]) -> None:
    for per in doc["cases"].values():
        me = per["this"]
        print(f"{me[0]['label']}: {me[0]['requests']} requests, {me[0]['virtual_s']:.0f} virtual s, "
              f"{me[0]['steps']} engine steps, torch imported: {me[0]['torch_imported']}")
        for who in ("this", "baseline"):
            if who not in per:
                continue
            runs = per[who]
            walls = ", ".join(f"{x['wall_s']:.2f}" for x in runs)
            cpus = ", ".join(f"{x['cpu_s']:.2f}" for x in runs)
            best = min(x["wall_s"] for x in runs)
            print(f"  {who:8s} wall {walls} s (CPU {cpus} s): best {me[0]['virtual_s'] / best:,.0f}x real time")
        if "speedup" in per:
            ratios = ", ".join(f"{x:.2f}" for x in per["speedup"])
            print(f"  speed-up (baseline wall / this wall, per pair): {ratios}; same outcomes: {per['same_outcomes']}")
        for who, s in per.get("split", {}).items():
            print(f"  {who} split: simulator {s['sim_s']:.2f} s, decision core {s['core_s']:.2f} s, "
                  f"loop and records {s['rest_s']:.2f} s of {s['wall_s']:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--baseline-root", help="another sluice checkout to measure beside this one (before/after)")
    ap.add_argument("--root", default=str(ROOT), help="the checkout measured as 'this' (default: this file's)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3600.0, help="span of the ServeGen case")
    ap.add_argument("--split", action="store_true", help="also time the simulator and the core apart")
    ap.add_argument("--profile", action="store_true", help="cProfile this checkout's run of each case")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    if args.profile:
        for case in cases:
            profile(case, args.seconds)
        return 0
    roots = {"this": os.path.abspath(args.root)}
    if args.baseline_root:
        roots["baseline"] = os.path.abspath(args.baseline_root)
    doc: dict[str, Any] = {"roots": roots, "load_avg": os.getloadavg(), "cases": {}}
    for case in cases:
        per: dict[str, Any] = {who: [] for who in roots}
        for k in range(args.repeat):
            order = list(roots) if k % 2 == 0 else list(roots)[::-1]  # alternate who goes first
            for who in order:
                per[who].append(measure(roots[who], case, args.seconds))
        if "baseline" in per:
            per["speedup"] = [b["wall_s"] / t["wall_s"] for t, b in zip(per["this"], per["baseline"])]
            per["median_speedup"] = statistics.median(per["speedup"])
            per["same_outcomes"] = len({x["digest"] for x in per["this"] + per["baseline"]}) == 1
        if args.split:
            per["split"] = {who: measure(root, case, args.seconds, split=True) for who, root in roots.items()}
        doc["cases"][case] = per
    report(doc)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
