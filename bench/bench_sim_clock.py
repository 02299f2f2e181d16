"""The simulator's virtual clock against real time: simulated seconds per wall second of `SimCore`
alone (no decision core), 2,000 requests arriving over 400 simulated seconds on one H100 profile.

    .venv/bin/python bench/bench_sim_clock.py [--requests 2000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_adapter.sim.core import SimCore, SimEvent, SimRequest  # noqa: E402
from engine_adapter.sim.profile import load_profile  # noqa: E402


def run(requests: int) -> tuple[float, float]:
    """(simulated seconds, wall seconds) of one run."""
    core = SimCore(load_profile("h100-llama3.1-8b"), seed=0)
    events: list[SimEvent] = []
    wall = time.perf_counter()
    for i in range(requests):
        t = i * 0.2
        events += core.advance(t, per_token=False)
        core.submit(t, SimRequest(f"v{i}", 500 + (i * 131) % 2000, 400, output_tokens=(i * 97) % 400 + 1))
    events += core.advance(float("inf"), per_token=False)
    return max(e.time for e in events), time.perf_counter() - wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for _ in range(args.repeat):
        simulated, wall = run(args.requests)
        print(f"{args.requests} requests: {simulated:.0f} simulated s in {wall:.3f} wall s "
              f"= {simulated / wall:,.0f}x real time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
