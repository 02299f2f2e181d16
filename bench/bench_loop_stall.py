"""Event-loop stalls of `sluice serve` under streaming load, with and without admin reads.

    .venv/bin/python bench/bench_loop_stall.py [--rate 40] [--seconds 20] [--admin-rate 5]
                                               [--root DIR] [--json PATH]

Issue 9 item 3: the admin trace lookup ran `store.flush` and a DuckDB query on the event loop;
under 40 req/s of streaming, the longest stall inside a stream went from 19 to 89 ms and TTFT p99
from 64 to 177 ms. This bench measures the same thing, in one run per checkout:

* the sluice gateway in its own process (like `sluice serve`: uvloop, `uvicorn_config`), with
  the embedded simulated H100 engine (real step times), tracing on (every request's spans go to
  the store, so trace lookups read a growing `spans` table);
* a streaming open-loop Poisson load at --rate req/s (`/v1/completions`, max_tokens 64), from
  this process (aiohttp);
* two phases of --seconds each: (A) load only; (B) load plus admin reads at --admin-rate/s (a
  trace lookup of a recent request, the policy history, `/metrics`, `/admin/v1/state`, in turn)
  and a policy change every 2 s.

Reported per phase: TTFT p50/p99, the longest gap between two chunks inside one stream (p99 over
streams and max), and the server's own event-loop lag (a 10 ms ticker on its loop, reported by a
bench-only route): p99 and max. --root DIR runs the gateway from another checkout (for example
`git worktree add /tmp/before <commit>`) so that before/after come from the same machine.

Never a pass/fail: numbers are printed (and written as JSON with --json PATH).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEYS = {"acme": "sk-bench-acme", "globex": "sk-bench-globex"}
ADMIN = "bench-admin-token"
MODEL = "sluice-default"
PROMPT = "Write a short note about the sea and the wind in the evening."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


# ---------------------------------------------------------------------------------- the server


def server_main(spec: dict[str, Any]) -> None:
    if spec.get("root"):  # another checkout: its packages before this one's
        sys.path.insert(0, os.path.abspath(spec["root"]))
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from controlplane.config import Config, EngineConfig, ServerConfig, TelemetryConfig, TenantConfig, hash_key
    if spec.get("root") and not os.path.exists(os.path.join(spec["root"], "sluice", "server.py")):
        from controlplane.server import create_app, uvicorn_config  # a checkout from before sluice/
    else:
        from sluice.server import create_app, uvicorn_config

    token = os.path.join(spec["dir"], "admin.token")
    with open(token, "w") as f:
        f.write(ADMIN)
    config = Config(
        server=ServerConfig(port=spec["port"], db_path=os.path.join(spec["dir"], "sluice.duckdb"),
                            admin_token_file=token),
        telemetry=TelemetryConfig(trace_sample_ratio=1.0),
        tenants=[TenantConfig("acme", api_key_sha256=hash_key(KEYS["acme"])),
                 TenantConfig("globex", api_key_sha256=hash_key(KEYS["globex"]))],
        engines=[EngineConfig(name="sim-0", kind="sim")],
    )
    lags: list[float] = []
    ticker: list[asyncio.Task[None]] = []

    async def tick() -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t0 - 0.01)

    async def lag(request: Any) -> Any:
        """GET: the loop lag since the previous call (the first call starts the ticker)."""
        if not ticker:
            ticker.append(asyncio.get_running_loop().create_task(tick()))
        out = {"samples": len(lags), "p50_ms": (pct(lags, 0.5) or 0) * 1e3, "p99_ms": (pct(lags, 0.99) or 0) * 1e3,
               "max_ms": max(lags, default=0.0) * 1e3}
        lags.clear()
        return JSONResponse(out)

    async def serve() -> None:
        app, _ = create_app(config)
        app.routes.insert(0, Route("/bench/lag", lag))
        await uvicorn.Server(uvicorn_config(app, "127.0.0.1", spec["port"])).serve()

    import uvloop

    try:
        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------------- the client


async def stream_one(session: Any, url: str, tenant: str, out: list[dict[str, Any]]) -> None:
    body = json.dumps({"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "stream": True}).encode()
    headers = {"Authorization": f"Bearer {KEYS[tenant]}", "Content-Type": "application/json"}
    t0 = time.perf_counter()
    ttft = None
    last = None
    gap = 0.0
    try:
        async with session.post(url + "/v1/completions", data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                out.append({"ok": False, "status": resp.status})
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                elif last is not None:
                    gap = max(gap, now - last)
                last = now
                if line.startswith(b"data: [DONE]"):
                    break
    except Exception as exc:  # noqa: BLE001 - counted
        out.append({"ok": False, "error": repr(exc)})
        return
    out.append({"ok": ttft is not None, "ttft": ttft, "gap": gap})


async def admin_reader(session: Any, url: str, rate: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    calls = ["trace", "history", "metrics", "state"]
    i = 0
    last_patch = time.monotonic()
    weight = 1.0
    while not stop.is_set():
        kind = calls[i % len(calls)]
        i += 1
        try:
            if kind == "trace":
                async with session.get(url + "/admin/v1/requests?status=ok&limit=5", headers=auth) as r:
                    rows = (await r.json())["requests"]
                if rows:
                    async with session.get(url + f"/admin/v1/requests/{rows[-1]['rid']}/trace", headers=auth) as r:
                        await r.read()
            elif kind == "history":
                async with session.get(url + "/admin/v1/policy/history", headers=auth) as r:
                    await r.read()
            elif kind == "metrics":
                async with session.get(url + "/metrics") as r:
                    await r.read()
            else:
                async with session.get(url + "/admin/v1/state", headers=auth) as r:
                    await r.read()
            counts[kind] = counts.get(kind, 0) + 1
            if time.monotonic() - last_patch >= 2.0:
                last_patch = time.monotonic()
                weight = 3.0 - weight
                body = {"reason": "bench", "changes": {"tenants": {"acme": {"weight": weight}}}}
                async with session.patch(url + "/admin/v1/policy", json=body, headers=auth) as r:
                    await r.read()
                counts["patch"] = counts.get("patch", 0) + 1
        except Exception:  # noqa: BLE001 - the gateway's numbers are the point
            counts["errors"] = counts.get("errors", 0) + 1
        await asyncio.sleep(1.0 / rate)


async def phase(url: str, rate: float, seconds: float, admin_rate: float, seed: int) -> dict[str, Any]:
    import aiohttp

    rng = random.Random(seed)
    results: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async with session.get(url + "/bench/lag") as r:  # starts the ticker / resets its samples
            await r.read()
        stop = asyncio.Event()
        reader = asyncio.create_task(admin_reader(session, url, admin_rate, stop, counts)) if admin_rate > 0 else None
        tasks = []
        t_end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < t_end:
            tasks.append(asyncio.create_task(stream_one(session, url, "acme" if i % 2 else "globex", results)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        stop.set()
        await asyncio.gather(*tasks)
        if reader is not None:
            await reader
        async with session.get(url + "/bench/lag") as r:
            lag = await r.json()
    ok = [r for r in results if r["ok"]]
    ttfts = [r["ttft"] * 1e3 for r in ok]
    gaps = [r["gap"] * 1e3 for r in ok]
    return {"requests": len(results), "ok": len(ok), "admin_calls": counts,
            "ttft_p50_ms": pct(ttfts, 0.5), "ttft_p99_ms": pct(ttfts, 0.99),
            "stream_gap_p99_ms": pct(gaps, 0.99), "stream_gap_max_ms": max(gaps, default=None),
            "loop_lag_p99_ms": lag["p99_ms"], "loop_lag_max_ms": lag["max_ms"]}


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def _cell(v: object) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=40.0, help="streaming requests per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--admin-rate", type=float, default=5.0, help="admin reads per second in phase B")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds of load before measuring")
    ap.add_argument("--root", help="run the gateway from this checkout (before/after)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-loop-stall-")
    port = free_port()
    spec = {"port": port, "dir": tmp, "root": args.root}
    log = open(os.path.join(tmp, "gateway.log"), "w")  # noqa: SIM115 (the child's, for its lifetime)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_server", json.dumps(spec)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=args.root or ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc)
        try:
            import uvloop

            run = uvloop.run
        except ImportError:  # pragma: no cover
            run = asyncio.run
        run(phase(url, args.rate, args.warmup, 0.0, seed=1))  # torch import, trainer's first steps, caches
        out = {"rate": args.rate, "seconds": args.seconds, "admin_rate": args.admin_rate,
               "root": args.root or ROOT,
               "A_load_only": run(phase(url, args.rate, args.seconds, 0.0, seed=2)),
               "B_load_and_admin_reads": run(phase(url, args.rate, args.seconds, args.admin_rate, seed=3))}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(f"gateway from {out['root']}: {args.rate:g} req/s streaming, phases of {args.seconds:g} s")
    keys = ["requests", "ok", "ttft_p50_ms", "ttft_p99_ms", "stream_gap_p99_ms", "stream_gap_max_ms",
            "loop_lag_p99_ms", "loop_lag_max_ms"]
    print(f"{'':24}" + "".join(f"{k:>20}" for k in ("A: load only", "B: + admin reads")))
    for k in keys:
        a, b = out["A_load_only"][k], out["B_load_and_admin_reads"][k]
        print(f"{k:24}{_cell(a):>20}{_cell(b):>20}")
    print("admin calls in B:", out["B_load_and_admin_reads"]["admin_calls"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_server":
        server_main(json.loads(sys.argv[2]))
    else:
        main()
