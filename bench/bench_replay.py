"""Virtual-time replay speed: the Azure LLM inference conversation trace (19,366 requests, 58 min)
through the decision core and one simulated H100, virtual seconds per wall second.

The predictor runs as in serving (MLP expert on, trained inline every 256 finishes); torch is
imported before timing. Target (DESIGN.md): hours of trace per minute of wall time.

    .venv/bin/python bench/bench_replay.py [--policy fcfs] [--scale-rate 1] [--profile] [--json out.json]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replay.loaders import load_azure, shared_trace  # noqa: E402
from replay.runner import default_policy, run_virtual  # noqa: E402
from replay.tables import format_result  # noqa: E402
from replay.workload import scale_rate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", default="fcfs,equinox+adm")
    ap.add_argument("--scale-rate", type=float, default=1.0)
    ap.add_argument("--profile", action="store_true", help="print the top functions (cProfile)")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    path = shared_trace("AzureLLMInferenceTrace_conv.csv")
    if not path.exists():
        print(f"{path} not found", file=sys.stderr)
        return 2
    w = load_azure(path, "conv")
    if args.scale_rate != 1.0:
        w = scale_rate(w, args.scale_rate)
    import torch  # noqa: F401  (import cost is not replay cost)

    out = []
    for label in args.policy.split(","):
        pol = default_policy(label.split("+")[0], admission=label.endswith("+adm"))
        prof = cProfile.Profile() if args.profile else None
        if prof:
            prof.enable()
        r = run_virtual(w, pol)
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        speed = r.virtual_per_wall
        print(format_result(r, f"{label}: {len(w)} requests, {r.makespan_s:.0f} virtual s"))
        print(f"{label}: {r.makespan_s:.0f} virtual s in {r.wall_s:.1f} wall s = {speed:.0f}x "
              f"({speed / 60:.1f} hours of trace per wall minute); engine steps {r.engines['sim-0']['steps']}\n")
        out.append({"policy": label, "requests": len(w), "virtual_s": r.makespan_s, "wall_s": r.wall_s,
                    "virtual_per_wall": speed, "steps": r.engines["sim-0"]["steps"],
                    "ttft_mdape": r.forecast["ttft"]["median_ape"], "goodput_rps": r.overall.goodput_rps,
                    "slo_attainment": r.overall.slo_attainment})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
