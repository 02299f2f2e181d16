"""CPU per request of each sluice process with `sluice serve --workers N`, beside single-process serving.

    .venv/bin/python bench/bench_workers.py [--rate 150] [--duration 15] [--workers 1 2]
                                            [--profile zero-delay|h100-llama3.1-8b] [--max-tokens 16]

One run, every mode side by side against the same `sluice sim-server` on loopback (a process of its
own): the single-process `sluice serve` (no IPC), then the decision process with N = 1, 2, ...
gateway workers (sluice/workers.py's `serve_workers`, as `sluice serve --workers N` runs it; N = 1
is run through it too, so the cost of the split itself shows). Each mode gets a fresh sluice, a
light warm-up (the trainer's torch import), then the same open-loop Poisson load at --rate req/s
(streaming /v1/completions, two tenants) from bench_gateway's client in a process of its own.

Measured for each process of sluice (the decision process and every worker, found as its
children): CPU seconds (/proc/<pid>/stat utime + stime, all threads) over the run divided by the
requests sent, i.e. what one offered request costs that process, and the same per thread (the
event loop's main thread, the store's writer, the trainer, ...): a thread's fixed cost per
second (the trainer's tenth of a core, the sampler) shows as a cost per request that falls as the
rate rises. The ceiling of a mode is
1 / (CPU per request of its busiest process): the request rate at which that process would fill
one core, which bounds the whole when every process has a core of its own. Workers split the
requests, so their CPU per offered request falls with N; the decision process's does not, and
is the limit N cannot lift.

Never a pass/fail: the numbers are printed (and written as JSON with --json PATH).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_gateway as bg  # noqa: E402  (the helpers, the sim-server and client roles)


def sluice_main(spec: dict[str, Any]) -> None:
    """The sluice under test: single-process (`workers` 0) or `serve_workers(config, workers)`."""
    import uvicorn
    import uvloop

    from sluice.server import create_app, uvicorn_config
    from sluice.workers import serve_workers

    config = bg.sluice_config(spec)

    async def single() -> None:
        app, _ = create_app(config)
        await uvicorn.Server(uvicorn_config(app, "127.0.0.1", spec["port"], config)).serve()

    prof = None
    if spec.get("profile_out"):  # the main thread's CPU (the event loop), not the wall clock
        import cProfile
        import time

        prof = cProfile.Profile(time.thread_time)
        prof.enable()
    try:
        uvloop.run(serve_workers(config, spec["workers"]) if spec["workers"] else single())
    except KeyboardInterrupt:
        pass
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(spec["profile_out"])


def workers_of(pid: int) -> list[int]:
    """The worker processes of a decision process (its multiprocessing children but the resource tracker)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    if b"spawn_main" in c.read():
                        out.append(int(child))
    return sorted(out)


def _thread_ms(pid: int, before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU ms per request of each thread that used at least 0.01 ms/request: the main thread (the
    event loop) as `loop`, the others as `tid:name` (Python threads are all named `python` here)."""
    out = {}
    for key, cpu in after.items():
        tid = key.split(":", 1)[0]
        ms = (cpu - before.get(key, 0.0)) * 1e3 / n
        if ms >= 0.01:
            out["loop" if tid == str(pid) else key] = round(ms, 3)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def run_mode(procs: bg.Procs, engine_url: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    port = bg.free_port()
    d = tempfile.mkdtemp(prefix="sluice-", dir=procs.tmp)
    label = f"workers-{workers}" if workers else "single"
    spec = {"port": port, "dir": d, "engine_url": engine_url, "trace_ratio": args.trace_ratio, "workers": workers,
            "profile_out": os.path.join(args.profile_dir, f"{label}.prof") if args.profile_dir else None}
    p = procs.start(label, [sys.executable, os.path.abspath(__file__), "_sluice", json.dumps(spec)], None)
    url = f"http://127.0.0.1:{port}"
    try:
        bg.wait_http(url + "/health", proc=p)
        bg.warm_sluice(procs, url, args.warmup, None)
        pids = {"decision" if workers else "sluice": p.pid}
        pids.update({f"worker-{i}": pid for i, pid in enumerate(workers_of(p.pid))} if workers else {})
        threads0 = {name: bg.thread_cpu(pid) for name, pid in pids.items()}
        r = bg.run_client(procs, {"mode": "open", "targets": [["sluice", url + "/v1/completions"]],
                                  "rate": args.rate, "block_s": args.duration, "duration_s": args.duration,
                                  "warmup_s": 0.0, "max_tokens": args.max_tokens, "pids": pids}, None)
        threads = {name: _thread_ms(pid, threads0[name], bg.thread_cpu(pid), r["requests"]) for name, pid in pids.items()}
    finally:
        procs.stop(p)
    n = r["requests"]
    cpu_ms = {name: s * 1e3 / n for name, s in r["cpu_s"].items()}
    busiest = max(cpu_ms, key=cpu_ms.__getitem__)
    return {"mode": label, "requests": n, "failures": r["failures"]["sluice"], "elapsed_s": r["elapsed_s"],
            "late_sends": r["late_sends"], "cpu_ms_per_request": cpu_ms, "total_cpu_ms_per_request": sum(cpu_ms.values()),
            "busiest": busiest, "ceiling_rps": 1e3 / cpu_ms[busiest], "threads_cpu_ms_per_request": threads,
            "ttft_p50_ms": bg.pct(r["ttft_s"]["sluice"], 0.5) * 1e3,
            "ttft_p99_ms": bg.pct(r["ttft_s"]["sluice"], 0.99) * 1e3}


def main() -> None:
    roles = {"_sluice": sluice_main, "_client": bg.client_main, "_sim": bg.sim_main}
    if len(sys.argv) == 3 and sys.argv[1] in roles:
        return roles[sys.argv[1]](json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=150.0, help="offered load: Poisson arrivals per second")
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per mode")
    ap.add_argument("--warmup", type=float, default=20.0,
                    help="seconds of light load on each fresh sluice first (the trainer imports torch: seconds of CPU)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="the N values to run beside single")
    ap.add_argument("--profile", default="zero-delay", help="the sim-server's profile")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--trace-ratio", type=float, default=1.0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--profile-dir", help="cProfile each mode's sluice (the decision process: its event loop's "
                                          "thread CPU) into DIR/<mode>.prof; the profiler inflates the CPU figures")
    args = ap.parse_args()
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="bench-workers-")
    procs = bg.Procs(tmp, pin=False)
    load = os.getloadavg()
    print(f"machine: {len(os.sched_getaffinity(0))} CPUs, load average {load[0]:.2f}; {args.rate:.0f} req/s "
          f"offered for {args.duration:.0f} s per mode, {args.profile} engine, max_tokens {args.max_tokens}, "
          f"tracing {args.trace_ratio:g}", flush=True)
    results: list[dict[str, Any]] = []
    try:
        _, engine_url = bg.start_sim(procs, args.profile, None)
        for workers in [0, *args.workers]:
            r = run_mode(procs, engine_url, workers, args)
            results.append(r)
            per = ", ".join(f"{name} {ms:.3f}" for name, ms in r["cpu_ms_per_request"].items())
            print(f"  {r['mode']:>10}: {r['requests']} requests, {r['failures']} failed; CPU ms/request: {per} "
                  f"(all {r['total_cpu_ms_per_request']:.3f}); ceiling {r['ceiling_rps']:.0f} req/s "
                  f"({r['busiest']}); TTFT p50 {r['ttft_p50_ms']:.1f} ms p99 {r['ttft_p99_ms']:.1f} ms; "
                  f"late sends {r['late_sends']}", flush=True)
            for name, threads in r["threads_cpu_ms_per_request"].items():
                print(f"{'':14}{name} by thread: " + ", ".join(f"{t} {ms:.3f}" for t, ms in threads.items()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "loadavg_start": load, "modes": results}, f, indent=1)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
