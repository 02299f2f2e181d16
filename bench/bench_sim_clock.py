"""The simulator's virtual clock against real time: simulated seconds per wall second of `SimCore`
alone (no decision core), 2,000 requests arriving over 400 simulated seconds on one H100 profile,
advanced two ways: to every step end (`advance(next_time())`, the way a loop that must see every
step drives it) and straight to each arrival (`advance(arrival, per_token=False)`: decode-only
stretches run in one go, engine_adapter/sim/fastforward.py). Both give the same events, bit for
bit (checked here too).

Then the cost of one decode step by batch size (`--batches`), three ways: inside a stretch run in
one go (`advance(far)`), one step per call (`advance(next_time())`, no per-token events) and one
step per call with an event per token (`per_token=True`, as SimEngine serves).

    .venv/bin/python bench/bench_sim_clock.py [--requests 2000] [--repeat 3] [--batches 8,64,256]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_adapter.sim.core import SimCore, SimEvent, SimRequest  # noqa: E402
from engine_adapter.sim.profile import load_profile  # noqa: E402


def run(requests: int, every_step: bool) -> tuple[float, float, list[SimEvent]]:
    """(simulated seconds, wall seconds, events) of one run."""
    core = SimCore(load_profile("h100-llama3.1-8b"), seed=0)
    events: list[SimEvent] = []
    wall = time.perf_counter()
    for i in range(requests):
        t = i * 0.2
        if every_step:
            while (nt := core.next_time()) is not None and nt <= t:
                events += core.advance(nt, per_token=False)
        events += core.advance(t, per_token=False)
        core.submit(t, SimRequest(f"v{i}", 500 + (i * 131) % 2000, 400, output_tokens=(i * 97) % 400 + 1))
    while every_step and (nt := core.next_time()) is not None:
        events += core.advance(nt, per_token=False)
    events += core.advance(float("inf"), per_token=False)
    return max(e.time for e in events), time.perf_counter() - wall, events


def step_cost(batch: int, mode: str) -> tuple[float, int]:
    """(microseconds per decode step, steps) with `batch` requests decoding."""
    core = SimCore(load_profile("h100-llama3.1-8b"), seed=0)
    for i in range(batch):
        core.submit(0.0, SimRequest(f"d{i}", 100, 30000, output_tokens=20000 + i))
    while core.current_step().n_prefill:  # (prefill first)
        core.advance(core.next_time(), per_token=False)
    steps0, span = core.stats.steps, {"stretch": 100.0, "per_step": 20.0, "per_token": 5.0}[mode]
    end = core.next_time() + span
    wall = time.perf_counter()
    if mode == "stretch":
        core.advance(end, per_token=False)
    else:
        while core.next_time() <= end:
            core.advance(core.next_time(), per_token=mode == "per_token")
    steps = core.stats.steps - steps0
    return 1e6 * (time.perf_counter() - wall) / steps, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", default="8,64,256")
    args = ap.parse_args()
    for _ in range(args.repeat):
        simulated, step_wall, stepped = run(args.requests, every_step=True)
        _, fast_wall, fast = run(args.requests, every_step=False)
        print(f"{args.requests} requests, {simulated:.0f} simulated s: every step end {step_wall:.3f} wall s "
              f"({simulated / step_wall:,.0f}x real time), to arrivals only {fast_wall:.3f} s "
              f"({simulated / fast_wall:,.0f}x); same events: {stepped == fast}")
    for b in (int(x) for x in args.batches.split(",") if x):
        costs = {mode: min(step_cost(b, mode) for _ in range(args.repeat)) for mode in ("stretch", "per_step", "per_token")}
        print(f"batch {b}: per decode step {costs['stretch'][0]:.2f} us in a stretch, {costs['per_step'][0]:.2f} us "
              f"one per advance, {costs['per_token'][0]:.1f} us with per-token events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
