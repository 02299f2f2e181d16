"""Gateway overhead and proxy capacity of sluice in front of an SGLang-shaped server, over loopback.

    .venv/bin/python bench/bench_gateway.py [--quick] [--no-pin] [--sluice-loop uvloop|asyncio]
                                            [--baseline-root DIR] [--cap-profile NAME]

Every role is its own process on 127.0.0.1: `sluice sim-server` (SimEngine behind SGLang's HTTP
API), the sluice gateway (sluice.server.create_app with a kind="sglang" engine pointing at the
sim-server, two tenants with known keys, the DuckDB store in a temp dir; run like `sluice serve`:
uvicorn_config on uvloop, as the CLI runs it, unless --sluice-loop asyncio), and an aiohttp
client (uvloop). With pinning (default when there are >= 2 CPUs), sluice gets CPU 0 to itself and the
sim-server and the client share CPU 1, so "sluice on one core" is what is measured.

1. Gateway overhead. One sim-server with the H100 profile (real step times). An open-loop Poisson
   load at --rate req/s (streaming /v1/completions, fixed short prompt, max_tokens 64) alternates in
   --block-second blocks between (a) the sim-server's own OpenAI /v1/completions and (b) sluice's
   /v1/completions, so both see the same engine, machine and background load. TTFT = time from
   sending the request to the first SSE chunk with non-empty text. Reported: p50/p99 each way and the
   difference (target: p99 added <= 2 ms).
2. Proxy capacity. A sim-server with the zero-delay profile (first token + final chunk per request).
   Closed loop with N concurrent streaming clients, N swept; completions/s in a measurement window,
   and the CPU seconds the sluice process (all threads: /proc/<pid>/stat utime+stime) spent per
   request. Run with tracing on (trace_sample_ratio 1.0) and off (0.0: no spans, request rows still
   written); the sim-server alone is measured the same way as a reference. Target >= 1,000 req/s.
   cpu-ceiling = 1 / (sluice CPU s per request): the rate one fully busy core would sustain, which is
   what counts when the client and the sim-server on the other core saturate first.

--baseline-root DIR (another checkout of sluice, e.g. `git worktree add /tmp/base <commit>`) runs a
second sluice from DIR beside this one: the overhead test alternates three targets (direct, sluice,
baseline) and the capacity test measures both, so a before/after comparison comes from one run.

Never a pass/fail: the numbers are printed (and written as JSON with --json PATH).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
KEYS = {"acme": "sk-bench-acme", "globex": "sk-bench-globex"}
PROMPT = "Write a short note about the sea and the wind in the evening."
TICK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------- helpers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds_task(pid: int, tid: str) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process, keyed 'tid:name'."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[f"{tid}:{name}"] = cpu_seconds_task(pid, tid)
        except OSError:
            pass
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")
        time.sleep(0.2)


class Procs:
    """Child processes started by this bench, stopped (only these, by pid) on exit."""

    def __init__(self, tmp: str, pin: bool) -> None:
        self.tmp = tmp
        self.pin = pin
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], cpu: int | None) -> subprocess.Popen:
        if self.pin and cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")  # noqa: SIM115 (the child's, for its lifetime)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        p.bench_name = name  # type: ignore[attr-defined]
        p.bench_log = log.name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


def start_sim(procs: Procs, profile: str, cpu: int | None) -> tuple[subprocess.Popen, str]:
    """What `sluice sim-server --port P --profile X` runs (called directly: the bench does not depend
    on the rest of the CLI importing cleanly)."""
    port = free_port()
    spec = {"port": port, "profile": profile}
    p = procs.start(f"sim-{profile}-{port}", [sys.executable, os.path.abspath(__file__), "_sim", json.dumps(spec)],
                    cpu)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=p)
    return p, url


def warm_sluice(procs: Procs, url: str, seconds: float, cpu: int | None) -> None:
    """Light load before measuring: the first requests start the output-length trainer, whose first
    step imports torch in a thread (seconds of CPU holding the GIL), stalling the event loop."""
    if seconds > 0:
        run_client(procs, {"mode": "closed", "url": url + "/v1/completions", "concurrency": 4, "warmup_s": seconds,
                           "duration_s": 0.1, "max_tokens": 16, "pids": {}}, cpu)


def start_sluice(procs: Procs, engine_url: str, trace_ratio: float, loop: str, cpu: int | None,
                 profile_out: str | None = None, root: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    d = tempfile.mkdtemp(prefix="sluice-", dir=procs.tmp)
    spec = {"port": port, "dir": d, "engine_url": engine_url, "trace_ratio": trace_ratio, "loop": loop,
            "profile_out": profile_out, "root": root}
    p = procs.start(f"sluice-{port}", [sys.executable, os.path.abspath(__file__), "_sluice", json.dumps(spec)], cpu)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", proc=p)
    return p, url


def run_client(procs: Procs, spec: dict[str, Any], cpu: int | None) -> dict[str, Any]:
    out = os.path.join(procs.tmp, f"client-{time.monotonic_ns()}.json")
    spec = dict(spec, out=out)
    p = procs.start("client", [sys.executable, os.path.abspath(__file__), "_client", json.dumps(spec)], cpu)
    p.wait()
    procs.procs.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"client failed ({p.returncode}); see {p.bench_log}")  # type: ignore[attr-defined]
    with open(out) as f:
        return json.load(f)


# ----------------------------------------------------------------------------------- server roles


def sim_main(spec: dict[str, Any]) -> None:
    """`sluice sim-server` (sluice/cli.py cmd_sim_server), on uvloop as SGLang's server runs: it
    stands in for the engine and shares a core with the client, so it should not be the bottleneck."""
    from engine_adapter.sglang_server import serve_sglang
    from engine_adapter.sim.engine import SimEngine
    from engine_adapter.sim.profile import load_profile, zero_delay

    profile = zero_delay() if spec["profile"] == "zero-delay" else load_profile(spec["profile"])
    engine = SimEngine("sim", profile, seed=0)
    try:
        import uvloop

        uvloop.run(serve_sglang(engine, host="127.0.0.1", port=spec["port"], model_name=MODEL))
    except KeyboardInterrupt:
        pass


def sluice_config(spec: dict[str, Any]) -> Any:
    """The config of the sluice under test: the two bench tenants, one SGLang engine at
    `spec["engine_url"]`, its store and admin token in `spec["dir"]`, tracing at `spec["trace_ratio"]`."""
    from controlplane.config import Config, EngineConfig, ServerConfig, TelemetryConfig, TenantConfig, hash_key

    token = os.path.join(spec["dir"], "admin.token")
    with open(token, "w") as f:
        f.write("bench-admin-token")
    return Config(
        server=ServerConfig(port=spec["port"], db_path=os.path.join(spec["dir"], "sluice.duckdb"),
                            admin_token_file=token),
        telemetry=TelemetryConfig(trace_sample_ratio=spec["trace_ratio"]),
        tenants=[TenantConfig(name, api_key_sha256=hash_key(key)) for name, key in KEYS.items()],
        engines=[EngineConfig(name="sim", kind="sglang", url=spec["engine_url"], model=MODEL)],
    )


def sluice_main(spec: dict[str, Any]) -> None:
    if spec.get("root"):  # a baseline checkout: its packages before this one's
        sys.path.insert(0, os.path.abspath(spec["root"]))
    if spec.get("root") and not os.path.exists(os.path.join(spec["root"], "sluice", "server.py")):
        from controlplane.server import create_app, uvicorn_config  # a checkout from before sluice/
    else:
        from sluice.server import create_app, uvicorn_config

    import uvicorn

    config = sluice_config(spec)

    async def serve() -> None:  # what sluice.server.serve does, with the config built here
        app, _ = create_app(config)
        await uvicorn.Server(uvicorn_config(app, "127.0.0.1", spec["port"])).serve()

    prof = None
    if spec.get("profile_out"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        if spec["loop"] == "uvloop":
            import uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    finally:
        if prof is not None:
            prof.disable()
            prof.dump_stats(spec["profile_out"])


# ----------------------------------------------------------------------------------- client role


async def one_request(session: Any, url: str, body: bytes, headers: dict[str, str]) -> tuple[bool, float | None, int]:
    """POST a streaming completion; (ok, seconds to the first chunk with non-empty text, SSE events
    received: every `data:` line, [DONE] included)."""
    t0 = time.perf_counter()
    ttft = None
    events = 0
    async with session.post(url, data=body, headers=headers) as resp:
        if resp.status != 200:
            await resp.read()
            return False, None, 0
        content = resp.content
        done = False
        async for line in content:
            if line.startswith(b"data: "):
                events += 1
            if ttft is None:
                if line.startswith(b"data: "):
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    obj = json.loads(payload)
                    ch = obj.get("choices") or ()
                    if ch and ch[0].get("text"):
                        ttft = time.perf_counter() - t0
            elif line.startswith(b"data: [DONE]"):
                done = True
                break
        if done:
            await content.read()
        return done and ttft is not None, ttft, events


def request_body(max_tokens: int) -> bytes:
    return json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}).encode()


def auth_headers() -> list[dict[str, str]]:
    return [{"Content-Type": "application/json", "Authorization": f"Bearer {k}"} for k in KEYS.values()]


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Poisson arrivals at spec['rate']; the target alternates between spec['targets'] every block."""
    import aiohttp

    targets: list[tuple[str, str]] = spec["targets"]  # (label, url)
    rate, block, per_target, warmup = spec["rate"], spec["block_s"], spec["duration_s"], spec["warmup_s"]
    body = request_body(spec["max_tokens"])
    hdrs = auth_headers()
    rng = random.Random(spec.get("seed", 1))
    total = warmup + per_target * len(targets)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= total:
            break
        arrivals.append(t)
    results: dict[str, list[float]] = {label: [] for label, _ in targets}
    failures: dict[str, int] = {label: 0 for label, _ in targets}
    sent: dict[str, int] = {label: 0 for label, _ in targets}
    lateness: list[float] = []
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def fire(i: int, at: float) -> None:
            if at < warmup:
                label, url = targets[i % len(targets)]
                record = False
            else:
                label, url = targets[int((at - warmup) // block) % len(targets)]
                record = True
            try:
                ok, ttft, _ = await one_request(session, url, body, hdrs[i % len(hdrs)])
            except Exception:
                ok, ttft = False, None
            if record:
                sent[label] += 1
                if ok and ttft is not None:
                    results[label].append(ttft)
                else:
                    failures[label] += 1

        pids = spec.get("pids", {})
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        tasks = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, at in enumerate(arrivals):
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lateness.append(-delay)
            tasks.append(asyncio.create_task(fire(i, at)))
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in pids.items()}
    return {"ttft_s": results, "failures": failures, "sent": sent, "elapsed_s": elapsed, "cpu_s": cpu,
            "requests": len(arrivals), "late_sends": len(lateness),
            "max_lateness_ms": max(lateness) * 1e3 if lateness else 0.0}


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """N workers, each sending its next request as soon as the previous one ends."""
    import aiohttp

    url, n, warmup, duration = spec["url"], spec["concurrency"], spec["warmup_s"], spec["duration_s"]
    body = request_body(spec["max_tokens"])
    hdrs = auth_headers()
    pids: dict[str, int] = spec.get("pids", {})
    state = {"measuring": False, "done": 0, "failed": 0, "events": 0, "stop": False}
    ttfts: list[float] = []
    conn = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker(w: int) -> None:
            h = hdrs[w % len(hdrs)]
            while not state["stop"]:
                try:
                    ok, ttft, events = await one_request(session, url, body, h)
                except Exception:
                    ok, ttft, events = False, None, 0
                if state["measuring"]:
                    state["events"] += events
                    if ok:
                        state["done"] += 1
                        ttfts.append(ttft or 0.0)
                    else:
                        state["failed"] += 1

        workers = [asyncio.create_task(worker(w)) for w in range(n)]
        await asyncio.sleep(warmup)
        cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
        th0 = thread_cpu(pids["sluice"]) if "sluice" in pids else {}
        me0 = os.times()
        t0 = time.perf_counter()
        state["measuring"] = True
        await asyncio.sleep(duration)
        state["measuring"] = False
        t1 = time.perf_counter()
        me1 = os.times()
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in pids.items()}
        th1 = thread_cpu(pids["sluice"]) if "sluice" in pids else {}
        state["stop"] = True
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = t1 - t0
    cpu["client"] = (me1.user - me0.user) + (me1.system - me0.system)
    return {"concurrency": n, "done": state["done"], "failed": state["failed"], "events": state["events"],
            "elapsed_s": elapsed,
            "rps": state["done"] / elapsed, "cpu_s": cpu,
            "sluice_threads_cpu_s": {k: round(v - th0.get(k, 0.0), 3) for k, v in th1.items()
                                     if v - th0.get(k, 0.0) >= 0.01},
            "ttft_p50_ms": pct(ttfts, 0.5) * 1e3, "ttft_p99_ms": pct(ttfts, 0.99) * 1e3}


def client_main(spec: dict[str, Any]) -> None:
    import uvloop

    result = uvloop.run(open_loop(spec) if spec["mode"] == "open" else closed_loop(spec))
    with open(spec["out"], "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------------- the bench


def overhead(procs: Procs, args: argparse.Namespace, cpus: dict[str, int | None]) -> dict[str, Any]:
    sim, sim_url = start_sim(procs, "h100-llama3.1-8b", cpus["sim"])
    sl, sl_url = start_sluice(procs, sim_url, 1.0, args.sluice_loop, cpus["sluice"])
    base = None
    targets = [["direct", sim_url + "/v1/completions"], ["sluice", sl_url + "/v1/completions"]]
    pids = {"sluice": sl.pid, "sim": sim.pid}
    try:
        if args.baseline_root:
            base, base_url = start_sluice(procs, sim_url, 1.0, args.sluice_loop, cpus["sluice"],
                                          root=args.baseline_root)
            targets.append(["baseline", base_url + "/v1/completions"])
            pids["baseline"] = base.pid
            warm_sluice(procs, base_url, args.sluice_warmup, cpus["client"])
        warm_sluice(procs, sl_url, args.sluice_warmup, cpus["client"])
        res = run_client(procs, {
            "mode": "open", "rate": args.rate, "block_s": args.block, "duration_s": args.duration,
            "warmup_s": 3.0, "max_tokens": 64, "targets": targets, "pids": pids}, cpus["client"])
    finally:
        procs.stop(sl)
        if base is not None:
            procs.stop(base)
        procs.stop(sim)
    out: dict[str, Any] = {"rate": args.rate, "elapsed_s": res["elapsed_s"], "late_sends": res["late_sends"],
                           "max_lateness_ms": res["max_lateness_ms"], "cpu_s": res["cpu_s"]}
    for label, _ in targets:
        v = res["ttft_s"][label]
        out[label] = {"n": len(v), "sent": res["sent"][label], "failures": res["failures"][label],
                      "p50_ms": pct(v, 0.5) * 1e3, "p90_ms": pct(v, 0.9) * 1e3, "p99_ms": pct(v, 0.99) * 1e3,
                      "mean_ms": sum(v) / len(v) * 1e3 if v else float("nan")}
    for who in ("sluice", "baseline"):
        if who not in out:
            continue
        prefix = "" if who == "sluice" else "baseline_"
        out[prefix + "added_p50_ms"] = out[who]["p50_ms"] - out["direct"]["p50_ms"]
        out[prefix + "added_p99_ms"] = out[who]["p99_ms"] - out["direct"]["p99_ms"]
        # a sluice is idle in the other targets' blocks but for its pollers: CPU per request it served
        out[prefix + "sluice_cpu_ms_per_req"] = res["cpu_s"][who] / (out[who]["sent"] or 1) * 1e3
    return out


def sweep(procs: Procs, url: str, pids: dict[str, int], args: argparse.Namespace,
          cpus: dict[str, int | None], who: str, tag: str = "") -> list[dict[str, Any]]:
    rows = []
    for n in args.concurrency:
        r = run_client(procs, {"mode": "closed", "url": url, "concurrency": n, "warmup_s": args.cap_warmup,
                               "duration_s": args.cap_duration, "max_tokens": args.cap_tokens, "pids": pids},
                       cpus["client"])
        r["who"] = who
        if r["done"]:
            for k, v in r["cpu_s"].items():
                r[f"{k}_cpu_ms_per_req"] = v / r["done"] * 1e3
            r[f"{who}_util"] = r["cpu_s"][who] / r["elapsed_s"]
        # per proxied SSE event, the per-request work included (an upper bound); a sim-server behind
        # on its own streams merges tokens into fewer events, so compare at equal events/request
        if r["events"]:
            r[f"{who}_cpu_us_per_event"] = r["cpu_s"][who] / r["events"] * 1e6
        rows.append(r)
        print(f"  {tag or who:>20} N={n:<4} {r['rps']:7.0f} req/s  failed={r['failed']}  "
              f"{who} CPU {r['cpu_s'][who] / r['elapsed_s'] * 100:5.1f}%  "
              f"{r.get(who + '_cpu_ms_per_req', float('nan')):.3f} ms CPU/req  "
              f"{r.get(who + '_cpu_us_per_event', float('nan')):.1f} us CPU/event "
              f"({r['events'] / (r['done'] or 1):.0f} events/req)  "
              f"client {r['cpu_s']['client'] / r['elapsed_s'] * 100:5.1f}%  "
              f"TTFT p50 {r['ttft_p50_ms']:.1f} ms", flush=True)
    return rows


def capacity(procs: Procs, args: argparse.Namespace, cpus: dict[str, int | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sim, sim_url = start_sim(procs, args.cap_profile, cpus["sim"])
    try:
        out["sim_alone"] = sweep(procs, sim_url + "/v1/completions", {"sim": sim.pid}, args, cpus, "sim")
        runs = [("", None)] + ([("baseline_", args.baseline_root)] if args.baseline_root else [])
        for label, ratio in (("tracing_on", 1.0), ("tracing_off", 0.0)):
            for prefix, root in runs:
                profile_out = os.path.join(args.profile_dir, f"sluice-{prefix}{label}.prof") \
                    if args.profile_dir else None
                sl, sl_url = start_sluice(procs, sim_url, ratio, args.sluice_loop, cpus["sluice"], profile_out,
                                          root=root)
                try:
                    warm_sluice(procs, sl_url, args.sluice_warmup, cpus["client"])
                    out[prefix + label] = sweep(procs, sl_url + "/v1/completions",
                                                {"sluice": sl.pid, "sim": sim.pid}, args, cpus,
                                                "sluice", tag=prefix + label)
                finally:
                    procs.stop(sl)
    finally:
        procs.stop(sim)
    return out


def summarize_capacity(cap: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for label in ("sim_alone", "tracing_on", "tracing_off", "baseline_tracing_on", "baseline_tracing_off"):
        if label not in cap:
            continue
        rows = cap[label]
        best = max(rows, key=lambda r: r["rps"])
        who = "sim" if label == "sim_alone" else "sluice"
        # CPU per request: the median over the sweep (stable across N once saturated)
        per = sorted(r[f"{who}_cpu_ms_per_req"] for r in rows if f"{who}_cpu_ms_per_req" in r)
        cpu_ms = per[len(per) // 2] if per else float("nan")
        ev = sorted(r[f"{who}_cpu_us_per_event"] for r in rows if f"{who}_cpu_us_per_event" in r)
        s[label] = {"max_rps": best["rps"], "at_n": best["concurrency"], "cpu_ms_per_req": cpu_ms,
                    "cpu_us_per_event": ev[len(ev) // 2] if ev else float("nan"),
                    "cpu_ceiling_rps": 1e3 / cpu_ms if cpu_ms else float("nan"),
                    "util_at_max": best.get(f"{who}_util")}
    s["sluice_vs_sim_rps"] = s["tracing_on"]["max_rps"] / s["sim_alone"]["max_rps"]
    s["tracing_cpu_ratio_on_off"] = s["tracing_on"]["cpu_ms_per_req"] / s["tracing_off"]["cpu_ms_per_req"]
    for label in ("tracing_on", "tracing_off"):
        if "baseline_" + label in s:  # < 1: this checkout needs less CPU per request than the baseline
            s[f"cpu_ratio_vs_baseline_{label}"] = (s[label]["cpu_ms_per_req"]
                                                   / s["baseline_" + label]["cpu_ms_per_req"])
    return s


def main() -> None:
    roles = {"_sluice": sluice_main, "_client": client_main, "_sim": sim_main}
    if len(sys.argv) == 3 and sys.argv[1] in roles:
        return roles[sys.argv[1]](json.loads(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test, noisy numbers)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument("--sluice-loop", choices=("asyncio", "uvloop"), default="uvloop",
                    help="event loop of the sluice process (`sluice serve` runs on uvloop when installed)")
    ap.add_argument("--baseline-root", help="another sluice checkout to measure beside this one (before/after)")
    ap.add_argument("--rate", type=float, default=100.0, help="overhead test: Poisson arrivals per second")
    ap.add_argument("--duration", type=float, help="overhead test: seconds per target (default 25, quick 6)")
    ap.add_argument("--block", type=float, default=5.0, help="overhead test: seconds per alternation block")
    ap.add_argument("--concurrency", type=int, nargs="+", help="capacity test: N values (default 16 64 128)")
    ap.add_argument("--cap-duration", type=float, help="capacity: measured seconds per N (default 8, quick 3)")
    ap.add_argument("--cap-warmup", type=float, default=2.0)
    ap.add_argument("--cap-tokens", type=int, default=64, help="capacity: max_tokens per request")
    ap.add_argument("--cap-profile", default="zero-delay",
                    help="capacity: the sim-server's profile (zero-delay: first token + final chunk per "
                         "request; h100-llama3.1-8b: one chunk per token, so CPU/request shows per-chunk cost)")
    ap.add_argument("--sluice-warmup", type=float,
                    help="seconds of light load on a fresh sluice before measuring (default 20, quick 10)")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-capacity", action="store_true")
    ap.add_argument("--profile-dir", help="run the sluice processes of the capacity test under cProfile, "
                                          "dumping sluice-tracing_{on,off}.prof here (slows sluice ~2x)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    args.duration = args.duration or (6.0 if args.quick else 25.0)
    if args.sluice_warmup is None:
        args.sluice_warmup = 10.0 if args.quick else 20.0
    args.cap_duration = args.cap_duration or (3.0 if args.quick else 8.0)
    args.concurrency = args.concurrency or ([32] if args.quick else [16, 64, 128])
    if args.quick:
        args.block = min(args.block, 3.0)
        args.cap_warmup = min(args.cap_warmup, 1.0)
    ncpu = len(os.sched_getaffinity(0))
    pin = not args.no_pin and ncpu >= 2
    cpus: dict[str, int | None] = ({"sluice": 0, "sim": 1, "client": 1} if pin
                                   else {"sluice": None, "sim": None, "client": None})
    tmp = tempfile.mkdtemp(prefix="bench-gateway-")
    procs = Procs(tmp, pin)
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    print(f"machine: {ncpu} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{'pinned: sluice on CPU 0, sim-server + client on CPU 1' if pin else 'not pinned'}; "
          f"sluice loop: {args.sluice_loop}", flush=True)
    results: dict[str, Any] = {"machine": {"cpus": ncpu, "loadavg_start": load, "pinned": pin,
                                           "sluice_loop": args.sluice_loop}}
    try:
        if not args.skip_overhead:
            print(f"\n1. gateway overhead: {args.rate:.0f} req/s Poisson, streaming, max_tokens 64, H100 profile, "
                  f"{args.duration:.0f} s per target in {args.block:.0f} s alternating blocks", flush=True)
            o = overhead(procs, args, cpus)
            results["overhead"] = o
            for label in ("direct", "sluice", "baseline"):
                if label not in o:
                    continue
                r = o[label]
                print(f"  {label:>7}: n={r['n']:<5} failures={r['failures']:<3} TTFT p50 {r['p50_ms']:7.2f} ms  "
                      f"p90 {r['p90_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms")
            print(f"  added by sluice: p50 {o['added_p50_ms']:+.2f} ms, p99 {o['added_p99_ms']:+.2f} ms "
                  f"(target p99 <= 2 ms: {'met' if o['added_p99_ms'] <= 2.0 else 'MISSED'}); "
                  f"sluice CPU {o['sluice_cpu_ms_per_req']:.3f} ms/request; client sends late: {o['late_sends']} "
                  f"(max {o['max_lateness_ms']:.1f} ms)", flush=True)
            if "baseline" in o:
                print(f"  added by the baseline: p50 {o['baseline_added_p50_ms']:+.2f} ms, "
                      f"p99 {o['baseline_added_p99_ms']:+.2f} ms; baseline CPU "
                      f"{o['baseline_sluice_cpu_ms_per_req']:.3f} ms/request", flush=True)
        if not args.skip_capacity:
            print(f"\n2. proxy capacity: {args.cap_profile} engine, closed loop, N = {args.concurrency}, "
                  f"max_tokens {args.cap_tokens}, {args.cap_duration:.0f} s per N", flush=True)
            cap = capacity(procs, args, cpus)
            s = summarize_capacity(cap)
            results["capacity"] = cap
            results["capacity_summary"] = s
            for label in ("sim_alone", "tracing_on", "tracing_off", "baseline_tracing_on", "baseline_tracing_off"):
                if label not in s:
                    continue
                r = s[label]
                print(f"  {label:>20}: max {r['max_rps']:7.0f} req/s (N={r['at_n']}), "
                      f"{r['cpu_ms_per_req']:.3f} ms CPU/request ({r['cpu_us_per_event']:.1f} us/SSE event) "
                      f"-> one-core ceiling {r['cpu_ceiling_rps']:6.0f} req/s")
            print(f"  sluice/sim-alone throughput: {s['sluice_vs_sim_rps']:.2f}; "
                  f"tracing CPU/request on/off: {s['tracing_cpu_ratio_on_off']:.2f} "
                  f"(target >= 1000 req/s: {'met' if s['tracing_on']['max_rps'] >= 1000 else 'MISSED'})")
            for label in ("tracing_on", "tracing_off"):
                if f"cpu_ratio_vs_baseline_{label}" in s:
                    print(f"  CPU/request vs baseline, {label}: {s[f'cpu_ratio_vs_baseline_{label}']:.2f}")
        try:
            results["machine"]["loadavg_end"] = os.getloadavg()
        except OSError:
            pass
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        procs.stop_all()
        if args.keep_tmp:
            print(f"logs and databases kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
