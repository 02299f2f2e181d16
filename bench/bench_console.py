"""Refresh cost of the operator console with 1,000 tenants and 10,000 recent requests.

Runs `SluiceConsole` headless (Textual's test driver, no server: `live=False`) and feeds it what
its workers would post:

- a state update: a `/state` body with N tenants where *every* tenant's counters, share and
  latencies changed (worst case), applied with `ingest_state` (the message handler's code path);
- a requests update: M request events (status changes and new requests) merged into a store of
  10,000 requests, then the capped requests table re-rendered in place (`render_rows`).

It reports milliseconds per update (median and p95 of the handler, and of the handler plus the
repaint that follows), Python heap (tracemalloc) and RSS before and after many updates, and
"key to screen": a tab key pressed while the 1,000-tenant states keep arriving, until the screen
it asks for has been painted (Pilot's press, then a pause until idle; target < 100 ms).

`--demo` measures `sluice demo` itself, in process: the demo's server and load start and the
console (headless) comes up at once; it reports the time to the console's first frame, to its
first live data (a state with traffic; target < 5 s), key to screen under the demo's load, and
quit (console exit plus the load's and the server's stop; target < 2 s).

    .venv/bin/python bench/bench_console.py [--tenants 1000] [--requests 10000] [--updates 200]
    .venv/bin/python bench/bench_console.py --demo
    .venv/bin/python bench/bench_console.py --compare DIR [--rounds 3] [--demo]

`--compare DIR` measures key to screen with the console in DIR (another checkout's `tui`
package, e.g. `git archive HEAD tui | tar -x -C DIR`) against this one's, in alternating child
processes (one run of each per round, at 10 and at `--tenants` tenants; with `--demo`, under
`sluice demo`, quit too), and prints both medians and their ratio: on a shared machine only a
side-by-side ratio from one run means anything.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import resource
import shutil
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--tui-from" in sys.argv:  # another checkout's console (for --compare), ahead of this one
    sys.path.insert(0, sys.argv[sys.argv.index("--tui-from") + 1])

from tui.app import SluiceConsole  # noqa: E402

NOW = 1763800000.0


def big_state(i: int, n_tenants: int) -> dict[str, Any]:
    tenants = []
    for k in range(n_tenants):
        tenants.append({
            "name": f"tenant-{k:05d}", "weight": 1.0 + (k % 4), "slo_class": "interactive" if k % 3 else "batch",
            "paused": k % 97 == 0, "share": ((k * 7 + i) % 100) / 1000.0, "fair_share": 1.0 / n_tenants,
            "counters": {"user": 1000.0 + k + i * 3.5, "resource": 10.0 + k / 10 + i * 0.01,
                         "holistic": 0.9 + ((k + i) % 20) / 100},
            "queued": (k + i) % 5, "in_flight": (k * 3 + i) % 7,
            "ttft_p50_ms": 80.0 + (k + i) % 50, "ttft_p99_ms": 300.0 + (k * 3 + i) % 200, "tpot_p50_ms": 21.0,
            "attainment": 0.95 + ((k + i) % 5) / 100, "admitted": 1000 + i, "rejected": (k + i) % 3,
            "finished": 990 + i,
        })
    engines = [{"name": f"sim-{e}", "kind": "sim", "simulated": True, "healthy": True, "url": None,
                "running": 12, "waiting": i % 4, "kv_usage": ((e + i) % 10) / 10, "gen_throughput": 2000.0 + i,
                "window": 16, "in_flight": 12, "forecast": {"ttft_ms": 95.0, "tpot_ms": 22.0}} for e in range(8)]
    gpus = [{"index": g, "name": "H100 (simulated)", "simulated": True, "power_w": 400.0 + (i + g) % 50,
             "energy_j": 1e5 + i * 400.0, "sm_clock_mhz": 1980, "utilization": 0.9,
             "memory_used_bytes": 7e10, "memory_total_bytes": 8e10, "power_limit_w": 700.0} for g in range(8)]
    return {"now": NOW + i, "policy_version": 3, "scheduler": "equinox",
            "totals": {"request_rate": 120.0 + i % 7, "goodput": 110.0, "attainment": 0.97,
                       "rejections_per_s": 0.4, "queued": 70, "in_flight": 160, "output_tokens_per_s": 24000.0},
            "tenants": tenants, "engines": engines, "gpus": gpus, "gpu_status": "ok"}


STATUSES = ("queued", "running", "ok", "ok", "ok", "rejected", "aborted", "error")


def request(n: int, status: str | None = None) -> dict[str, Any]:
    return {"rid": f"req-{n:08d}", "trace_id": f"{n:032x}", "tenant": f"tenant-{n % 1000:05d}",
            "slo_class": "interactive", "engine": f"sim-{n % 8}", "status": status or STATUSES[n % len(STATUSES)],
            "arrival_ts": NOW + n * 0.01, "ttft_ms": 90.0 + n % 40, "tpot_ms": 21.0, "e2e_ms": 1500.0 + n % 300,
            "prompt_tokens": 500 + n % 300, "completion_tokens": 100 + n % 200, "decision": "admit", "reason": ""}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def run(n_tenants: int, n_requests: int, updates: int, tab: str, memory_updates: int,
              profiler: Any = None) -> dict[str, Any]:
    if memory_updates:
        tracemalloc.start()  # from the very start, so that replaced objects are not counted as growth
    app = SluiceConsole("http://127.0.0.1:9", None, live=False, max_requests=500, max_store=n_requests)
    out: dict[str, Any] = {"tab": tab}
    async with app.run_test(size=(200, 60)) as pilot:
        app.action_show_tab(tab)
        await pilot.pause()
        t = time.perf_counter()
        app.ingest_state(big_state(0, n_tenants))
        out["first_state_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        app.ingest_requests([request(n) for n in range(n_requests)], render=False)
        app.requests_pane.render_rows()
        out["first_requests_ms"] = (time.perf_counter() - t) * 1000
        await pilot.pause()

        async def cycle(i: int) -> tuple[float, float, float, float]:
            t0 = time.perf_counter()
            app.ingest_state(big_state(i, n_tenants))
            t1 = time.perf_counter()
            await pilot.pause()  # let the repaint happen
            t2 = time.perf_counter()
            # 50 request events: 25 status changes of existing ones, 25 new requests
            base = n_requests + i * 25
            events = [request(base - 5000 + j * 7, "ok") for j in range(25)] + [request(base + j) for j in range(25)]
            app.ingest_requests(events, render=False)
            app.requests_pane.render_rows()
            t3 = time.perf_counter()
            await pilot.pause()
            t4 = time.perf_counter()
            return (t1 - t0) * 1000, (t2 - t0) * 1000, (t3 - t2) * 1000, (t4 - t2) * 1000

        for i in range(1, 21):  # warm up caches
            await cycle(i)
        out["key_to_screen"] = await key_to_screen(pilot, app, lambda k: app.ingest_state(big_state(k, n_tenants)),
                                             profiler=profiler)
        # timing pass (no tracing: tracemalloc slows allocation-heavy code several-fold)
        rss_before = rss_mib()
        samples = [await cycle(i) for i in range(21, 21 + updates)] or [(0.0, 0.0, 0.0, 0.0)]
        rss_after = rss_mib()
        # memory pass (one tab only, it is slow under tracing): traced heap at checkpoints; it
        # must level off once the bounded structures (request store, deques, DataTable's LRU
        # render caches of 10,000 cells per table) are full
        checkpoints: list[tuple[int, float]] = []
        if memory_updates:
            i = 21 + updates
            for done in range(1, memory_updates + 1):
                await cycle(i)
                i += 1
                if done % max(1, memory_updates // 4) == 0:
                    gc.collect()
                    checkpoints.append((done, tracemalloc.get_traced_memory()[0] / 2**20))
            tracemalloc.stop()
        for idx, name in enumerate(("state_handler", "state_with_repaint", "requests_handler",
                                    "requests_with_repaint")):
            values = [s[idx] for s in samples]
            out[name] = (statistics.median(values), pct(values, 0.95))
        out["heap_mib"] = checkpoints
        out["maxrss_mib"] = (rss_before, rss_after)
        out["store"] = len(app.requests_pane.store)
        out["rows"] = (app.tenants.table.row_count, app.requests_pane.table.row_count)
    return out


KEYS = ("2", "3", "1")  # not "4": the policy tab focuses its editor, where digits are text
TAB_OF = {"1": "overview", "2": "tenants", "3": "requests", "4": "policy"}


async def key_to_screen(pilot: Any, app: SluiceConsole, between: Any = None, presses: int = 40,
                        profiler: Any = None) -> tuple[float, float, float, float]:
    """Milliseconds from a tab key to its screen painted (median, p95, max, and the median CPU time
    of the console's thread over the same span: on a shared machine the wall clock also counts
    other processes' turns), with `between(i)`
    (new data) applied before each press, as the state stream would. The key is queued as a
    terminal's would be (`simulate_key`); the clock stops when the tab has switched and the frame
    after it has been drawn (a `call_after_refresh` callback): what an operator sees. `profiler` (a
    cProfile.Profile) runs from each press to its frame only."""
    times, cpu = [], []
    tabs = app.query_one("#tabs")
    for i in range(presses):
        if between is not None:
            between(10_000 + i)
        key = KEYS[i % len(KEYS)]
        painted = asyncio.Event()
        if profiler is not None:
            profiler.enable()
        t, c = time.perf_counter(), time.thread_time()
        app.simulate_key(key)
        while tabs.active != TAB_OF[key]:
            await asyncio.sleep(0.001)
        app.call_after_refresh(painted.set)
        await painted.wait()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
        if profiler is not None:
            profiler.disable()
        await pilot.pause(0.05)  # a person's pace, not a key-repeat burst
    return statistics.median(times), pct(times, 0.95), max(times), statistics.median(cpu)


async def run_demo(port: int) -> dict[str, Any]:
    import tempfile

    from sluice.demo import _Child
    from sluice.devsetup import dev_state

    out: dict[str, Any] = {}
    state_dir = tempfile.mkdtemp(prefix="sluice-bench-demo-")
    t0 = time.perf_counter()
    _, token, _ = dev_state(state_dir)
    child = _Child(port, state_dir, 1.0)  # as `sluice demo` runs it: the server and the load in a child
    child.start()
    app = SluiceConsole(f"http://127.0.0.1:{port}", token, actor="bench@console", starting=child.status)
    try:
        async with app.run_test(size=(160, 48)) as pilot:
            out["console_up_s"] = time.perf_counter() - t0
            out["starting_banner"] = str(app.query_one("#banner").render())
            while not (app.state and (app.state.get("totals") or {}).get("request_rate")):
                await pilot.pause(0.05)
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError(f"no live data within 120 s; see {child.log}")
            out["first_live_s"] = time.perf_counter() - t0
            await pilot.pause(10.0)  # the load ramps up
            out["key_to_screen"] = await key_to_screen(pilot, app)
            t_quit = time.perf_counter()
            app.exit()
        out["console_exit_s"] = time.perf_counter() - t_quit
    finally:
        t_stop = time.perf_counter()
        child.stop()
        out["stop_s"] = time.perf_counter() - t_stop
    out["quit_s"] = out["console_exit_s"] + out["stop_s"]
    with open(child.log) as log:
        out["sent"] = next((line.strip() for line in log if "requests finished" in line), "?")
    shutil.rmtree(state_dir, ignore_errors=True)  # its config, keys, token and store
    return out


def keys_only(n_tenants: int, n_requests: int) -> None:
    """One key-to-screen measurement as a JSON line (a --compare child)."""
    import json

    r = asyncio.run(run(n_tenants, n_requests, 0, "overview", 0))
    med, p95, worst, cpu = r["key_to_screen"]
    print(json.dumps({"median": med, "p95": p95, "max": worst, "cpu": cpu,
                      "tui": str(Path(sys.modules["tui"].__file__ or "").parent)}))


def compare(before: str, cases: list[tuple[str, list[str]]], rounds: int) -> None:
    """Key to screen, `before` (a directory holding a `tui` package) against this checkout, in
    alternating child processes (`cases`: label, the child's arguments); prints the medians of
    the rounds and after/before."""
    import json
    import subprocess

    print(f"key to screen (ms), before = {before}, after = this checkout; median of {rounds} runs of 40 keys each, "
          "runs alternating")
    print(f"{'case':>14}  {'metric':<12} {'before':>8} {'after':>8} {'after/before':>12}")
    for label, args in cases:
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(rounds):
            for side, extra in (("before", ["--tui-from", before]), ("after", [])):
                out = subprocess.run([sys.executable, __file__, *args, *extra], capture_output=True, text=True,
                                     check=True)
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
        used = {side: {r["tui"] for r in rs} for side, rs in runs.items()}
        if used["before"] == used["after"]:
            raise SystemExit(f"both sides ran the same console ({used['after']}): is {before}/tui there?")
        metrics = [m for m in ("median", "p95", "cpu", "quit_s") if m in runs["after"][0]]
        for metric in metrics:
            b = statistics.median(r[metric] for r in runs["before"])
            a = statistics.median(r[metric] for r in runs["after"])
            name = {"median": "wall median", "p95": "wall p95", "cpu": "CPU median", "quit_s": "quit s"}[metric]
            print(f"{label:>14}  {name:<12} {b:8.2f} {a:8.2f} {a / b:12.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=50, help="timed updates per tab")
    parser.add_argument("--memory-updates", type=int, default=400, help="traced updates (tenants tab)")
    parser.add_argument("--demo", action="store_true", help="measure `sluice demo`: first data, keys, quit")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the key presses (press to frame only) and print the top functions")
    parser.add_argument("--port", type=int, default=8792, help="the demo's port (with --demo)")
    parser.add_argument("--compare", metavar="DIR", help="key to screen: the `tui` package in DIR against this one")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (with --compare)")
    parser.add_argument("--keys-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # --demo as a --compare child
    parser.add_argument("--tui-from", metavar="DIR", help=argparse.SUPPRESS)  # read before the imports
    args = parser.parse_args()
    if args.keys_only:
        keys_only(args.tenants, args.requests)
        return
    if args.compare:
        if args.demo:
            cases = [("sluice demo", ["--demo", "--json", "--port", str(args.port)])]
        else:
            cases = [(f"{n} tenants", ["--keys-only", "--tenants", str(n), "--requests", str(args.requests)])
                     for n in sorted({10, args.tenants})]
        compare(args.compare, cases, args.rounds)
        return
    if args.profile:
        profiler = cProfile.Profile()
        r = asyncio.run(run(args.tenants, args.requests, 0, "overview", 0, profiler))
        print(f"key to screen, {args.tenants} tenants (profiled, slower): median {r['key_to_screen'][0]:.0f} ms")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
        return
    if args.demo:
        r = asyncio.run(run_demo(args.port))
        med, p95, worst, cpu = r["key_to_screen"]
        if args.json:  # a --compare child
            import json

            print(json.dumps({"median": med, "p95": p95, "max": worst, "cpu": cpu, "quit_s": r["quit_s"],
                              "first_live_s": r["first_live_s"],
                              "tui": str(Path(sys.modules["tui"].__file__ or "").parent)}))
            return
        print(f"sluice demo: console up {r['console_up_s']:.1f} s (banner: {r['starting_banner'][:70]!r}), "
              f"first live data {r['first_live_s']:.1f} s (target < 5 s)\n"
              f"  key to screen under the demo's load: median {med:.0f} ms, p95 {p95:.0f} ms, max {worst:.0f} ms "
              f"(target < 100 ms; console CPU median {cpu:.0f} ms)\n  quit {r['quit_s']:.2f} s (console {r['console_exit_s']:.2f} s + load and "
              f"server {r['stop_s']:.2f} s; target < 2 s); {r['sent']}")
        return
    print(f"console refresh cost: {args.tenants} tenants (all changing every update), "
          f"{args.requests} requests in store (table capped at 500), {args.updates} updates")
    for tab in ("tenants", "requests", "overview"):
        r = asyncio.run(run(args.tenants, args.requests, args.updates, tab, 0))
        print(f"\n[{tab} tab visible] first state {r['first_state_ms']:.1f} ms, "
              f"first {args.requests} requests {r['first_requests_ms']:.1f} ms; rows shown {r['rows']}")
        for name in ("state_handler", "state_with_repaint", "requests_handler", "requests_with_repaint"):
            med, p95 = r[name]
            print(f"  {name:<24} median {med:7.2f} ms   p95 {p95:7.2f} ms")
        med, p95, worst, cpu = r["key_to_screen"]
        print(f"  {'key_to_screen':<24} median {med:7.2f} ms   p95 {p95:7.2f} ms   max {worst:7.2f} ms (target < 100; "
              f"CPU median {cpu:.2f} ms)")
        rb, ra = r["maxrss_mib"]
        print(f"  max RSS {rb:.0f} -> {ra:.0f} MiB over the timed updates (store {r['store']} requests)")
    if args.memory_updates:
        r = asyncio.run(run(args.tenants, args.requests, 0, "tenants", args.memory_updates))
        points = ", ".join(f"{n}: {mib:.1f}" for n, mib in r["heap_mib"])
        print(f"\n[memory, tenants tab, traced from start] python heap (MiB) after N updates: {points}")


if __name__ == "__main__":
    main()
