"""Soak: a long streaming load through a real `sluice serve`, watched for leaks and stalls.

    .venv/bin/python bench/bench_soak.py [--minutes 10] [--rate 100] [--warmup 60] [--max-tokens 64]
                                         [--sample-every 10] [--json PATH]

Issue 9 item 14. `sluice serve` runs as its own process with its local dev setup (the embedded
simulated H100 engine, four tenants, the DuckDB store, tracing on) on a free loopback port. This
process sends an open-loop Poisson load of streaming `/v1/completions` at --rate req/s, spread over
the tenants, for --minutes, and every --sample-every seconds reads from the server process:

* RSS (`/proc/PID/status` VmRSS) and open file descriptors (`/proc/PID/fd`);
* event-loop lag: `sluice_event_loop_lag_seconds` from `/metrics` (a 50 ms timer on the server's
  loop, how late it fires), the p99 of the interval from the histogram's buckets (an upper bound:
  the bucket edge it falls under);
* the store's queue: `sluice_store_pending_rows` (all tables) and `sluice_store_lag_seconds`.

Then SIGTERM, and the store file is read: every request that got a response carries its rid
(`x-request-id`); a rid with no row in `requests` is a lost row.

Targets (reported, never asserted): memory growth from the first sample after --warmup to the
last under 5%, 0 lost rows, p99 loop lag after warm-up under 20 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_loop_stall import free_port, wait_http  # noqa: E402

MODEL = "sluice-default"
PROMPT = "Write a short note about the sea and the wind in the evening."


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(url: str) -> dict[str, Any]:
    """The loop-lag histogram's cumulative buckets and the store's queue, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"lag_buckets": {}, "pending_rows": 0.0, "store_lag_s": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "sluice_event_loop_lag_seconds_bucket":
                out["lag_buckets"][float(s.labels["le"])] = s.value
            elif s.name == "sluice_store_pending_rows":
                out["pending_rows"] += s.value
            elif s.name == "sluice_store_lag_seconds":
                out["store_lag_s"] = s.value
    return out


def p99_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The p99 of the observations between two scrapes, as the upper edge of its bucket (seconds)."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    for edge, cum in zip(edges, counts):
        if cum >= 0.99 * total:
            return edge
    return edges[-1]


async def stream_one(session: Any, url: str, key: str, max_tokens: int, out: list[dict[str, Any]]) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    try:
        async with session.post(url + "/v1/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            done = False
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    done = True
            out.append({"status": resp.status, "rid": resp.headers.get("x-request-id"), "done": done})
    except Exception as exc:  # noqa: BLE001 - counted: a request that got no response
        out.append({"status": None, "rid": None, "done": False, "error": repr(exc)})


async def load(url: str, keys: list[str], rate: float, seconds: float, max_tokens: int, seed: int,
               out: list[dict[str, Any]]) -> None:
    import aiohttp

    rng = random.Random(seed)
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as session:
        tasks = set()
        t_end = time.monotonic() + seconds
        i = 0
        next_at = time.monotonic()
        while next_at < t_end:
            task = asyncio.create_task(stream_one(session, url, keys[i % len(keys)], max_tokens, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            next_at += rng.expovariate(rate)  # open loop: arrivals on their own clock, not the responses'
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)


async def watch(url: str, pid: int, every: float, t0: float, stop: asyncio.Event, sent: list[dict[str, Any]],
                samples: list[dict[str, Any]]) -> None:
    prev = await asyncio.to_thread(scrape, url)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every)
        except TimeoutError:
            pass
        m = await asyncio.to_thread(scrape, url)
        p99 = p99_bound(prev["lag_buckets"], m["lag_buckets"])
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": rss_bytes(pid) / 2**20,
                        "fds": open_fds(pid), "loop_lag_p99_ms": None if p99 is None else p99 * 1e3,
                        "store_pending_rows": m["pending_rows"], "store_lag_s": m["store_lag_s"],
                        "requests_sent": len(sent), "lag_buckets": m["lag_buckets"]})
        prev = m


async def soak(url: str, pid: int, keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    sent: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    watcher = asyncio.create_task(watch(url, pid, args.sample_every, t0, stop, sent, samples))
    await load(url, keys, args.rate, args.minutes * 60, args.max_tokens, 1, sent)
    stop.set()
    await watcher
    return {"sent": sent, "samples": samples}


def stored_rids(db_path: str) -> set[str]:
    from telemetry.store import open_read_only

    with open_read_only(db_path) as db:
        return {r[0] for r in db.execute("SELECT rid FROM requests").fetchall()}


def summarise(run: dict[str, Any], rids: set[str], warmup_s: float) -> dict[str, Any]:
    sent, samples = run["sent"], run["samples"]
    answered = [r for r in sent if r["rid"]]
    lost = [r["rid"] for r in answered if r["rid"] not in rids]
    statuses: dict[str, int] = {}
    for r in sent:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    after = [s for s in samples if s["t_s"] >= warmup_s]
    out: dict[str, Any] = {"requests_sent": len(sent), "statuses": statuses,
                           "no_response": len(sent) - len(answered), "rows_in_store": len(rids),
                           "lost_rows": len(lost), "streams_completed": sum(r["done"] for r in sent)}
    if len(after) >= 2:
        first, last = after[0], after[-1]
        out["rss_mb_after_warmup"] = first["rss_mb"]
        out["rss_mb_end"] = last["rss_mb"]
        out["memory_growth_pct"] = 100.0 * (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
        out["fds_after_warmup"], out["fds_end"] = first["fds"], last["fds"]
        p99 = p99_bound(first["lag_buckets"], last["lag_buckets"])
        out["loop_lag_p99_ms_after_warmup"] = None if p99 is None else p99 * 1e3
        out["store_pending_rows_max"] = max(s["store_pending_rows"] for s in after)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=100.0, help="streaming requests per second (Poisson)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds excluded from growth and lag figures")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--json", help="write the samples and the summary here")
    args = ap.parse_args()

    state = tempfile.mkdtemp(prefix="bench-soak-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_METRICS_TOKEN"}  # /metrics open to the watcher
    with open(os.path.join(state, "serve.log"), "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "sluice.cli", "serve", "--port", str(port), "--state-dir",
                                 state], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        with open(os.path.join(state, "keys.toml"), "rb") as f:
            keys = list(tomllib.load(f).values())
        try:
            import uvloop

            run = uvloop.run
        except ImportError:  # pragma: no cover
            run = asyncio.run
        result = run(soak(url, proc.pid, keys, args))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # graceful: spans and rows flushed, the file checkpointed
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    summary = summarise(result, stored_rids(os.path.join(state, "sluice.duckdb")), args.warmup)

    print(f"sluice serve soak: {args.minutes:g} min at {args.rate:g} req/s streaming (max_tokens {args.max_tokens}), "
          f"warm-up {args.warmup:g} s; state in {state}")
    print(f"{'t_s':>6} {'rss_mb':>8} {'fds':>5} {'lag_p99_ms':>11} {'store_pending':>14} {'store_lag_s':>12} "
          f"{'sent':>7}")
    for s in result["samples"]:
        lag = "-" if s["loop_lag_p99_ms"] is None else f"{s['loop_lag_p99_ms']:.0f}"
        print(f"{s['t_s']:>6.0f} {s['rss_mb']:>8.1f} {s['fds']:>5} {lag:>11} {s['store_pending_rows']:>14.0f} "
              f"{s['store_lag_s']:>12.2f} {s['requests_sent']:>7}")
    for k, v in summary.items():
        print(f"{k:30} {v:.2f}" if isinstance(v, float) else f"{k:30} {v}")
    growth, lag = summary.get("memory_growth_pct"), summary.get("loop_lag_p99_ms_after_warmup")
    print("targets: memory growth < 5%:", "-" if growth is None else ("met" if growth < 5 else "MISSED"),
          "| lost rows 0:", "met" if summary["lost_rows"] == 0 else "MISSED",
          "| p99 loop lag < 20 ms:", "-" if lag is None else ("met" if lag <= 20 else "MISSED"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "samples": result["samples"]}, f, indent=2)


if __name__ == "__main__":
    main()
