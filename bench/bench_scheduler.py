"""Scheduling cost per request vs the number of backlogged tenants, for every policy.

    .venv/bin/python bench/bench_scheduler.py [--ops 30000] [--repeat 3]

Each measured operation is one request's life in the scheduler: `pop` (decision + charge),
`push` of a new request for the same tenant (so the backlog stays at T tenants) and `finish`
of the popped request with an outcome that differs from the prediction (actual output
0.5x-1.5x, GPU time 0.7x-1.3x of the estimate, a latency factor): every reconcile moves a
counter, and Equinox's k drifts as it would in service.

Two shapes: "steady" (every tenant keeps 2 queued requests) and "churn" (1 queued request:
every pop empties the tenant's queue and the push brings it back, so every operation also runs
the lift rule). Reported: microseconds per request, best of --repeat, after a warm-up of
2*T operations, in CPU time of this process (time.process_time: the machine is shared), and
the ratio to the 10-tenant cost (the target is within 2x).
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fairness import POLICIES, Equinox, Outcome, Scheduler, Work, make_scheduler  # noqa: E402

SIZES = (10, 1_000, 10_000)


def _workload(n: int, seed: int) -> list[tuple[Work, Outcome]]:
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        inp, out = rng.randint(1, 2000), rng.randint(1, 500)
        predicted = Work(inp, out)
        actual = Work(max(0, inp - rng.choice([0, 0, inp // 2])), max(1, int(out * rng.uniform(0.5, 1.5))))
        gpu = (5e-5 * actual.input_tokens + 2e-4 * actual.output_tokens) * rng.uniform(0.7, 1.3)
        items.append((predicted, Outcome(actual, latency_factor=rng.choice([1.0, 1.0, 0.8]), gpu_seconds=gpu)))
    return items


def _setup(policy: str, tenants: int, depth: int, items: list[tuple[Work, Outcome]]) -> tuple[Scheduler, int]:
    weights = {f"t{i}": 1.0 + (i % 4) for i in range(tenants)}
    sched = make_scheduler(policy, weights)
    n = 0
    for _ in range(depth):
        for name in weights:
            sched.push(name, n, items[n % len(items)][0])
            n += 1
    return sched, n


def _run(sched: Scheduler, start: int, ops: int, items: list[tuple[Work, Outcome]]) -> int:
    n = start
    size = len(items)
    pop, push, finish = sched.pop, sched.push, sched.finish
    for _ in range(ops):
        tenant, key, predicted = pop()  # type: ignore[misc]
        push(tenant, n, items[n % size][0])
        finish(tenant, predicted, items[key % size][1])  # type: ignore[operator]
        n += 1
    return n


def measure(policy: str, tenants: int, depth: int, ops: int, repeat: int,
            items: list[tuple[Work, Outcome]]) -> tuple[float, int]:
    best = float("inf")
    rebuilds = 0
    for _ in range(repeat):
        sched, n = _setup(policy, tenants, depth, items)
        n = _run(sched, n, 2 * tenants, items)  # warm-up: every tenant served twice
        before = getattr(sched, "rebuilds", 0)
        t0 = time.process_time()
        _run(sched, n, ops, items)
        best = min(best, (time.process_time() - t0) / ops)
        rebuilds = getattr(sched, "rebuilds", 0) - before
        assert len(sched) == tenants * depth
    return best * 1e6, rebuilds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policies", nargs="*", default=sorted(POLICIES))
    args = ap.parse_args()
    items = _workload(4096, seed=1)
    print(f"push+pop+finish per request, best of {args.repeat}, {args.ops} ops after a 2*T warm-up")
    header = "policy   shape   " + "".join(f"{f'T={t}':>18}" for t in SIZES)
    print(header)
    for policy in args.policies:
        for shape, depth in (("steady", 2), ("churn", 1)):
            cells = []
            base = None
            for t in SIZES:
                us, rebuilds = measure(policy, t, depth, args.ops, args.repeat, items)
                base = base if base is not None else us
                extra = f" r{rebuilds}" if policy == Equinox.name else ""
                cells.append(f"{us:6.2f}us x{us / base:4.2f}{extra}")
            print(f"{policy:8} {shape:7} " + "".join(f"{c:>18}" for c in cells))
    print("x: ratio to the 10-tenant cost; r: Equinox heap re-keyings during the measured ops")


if __name__ == "__main__":
    main()
