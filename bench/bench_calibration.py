"""Check the simulator against published H100 figures and against a real measured vLLM run.

    .venv/bin/python bench/bench_calibration.py [--profile h100-llama3.1-8b] [--seeds 5]
    .venv/bin/python bench/bench_calibration.py --only-run [--run PATH] [--run-profile NAME]

Runs SGLang CI's benchmark workloads on the virtual clock (no sleeping: a SimCore driven by its
own event times) and prints every figure as a ratio to the published threshold:

  1. bs=1 decode: 1 prompt, random 256 in / 1024 out      -> output tok/s, floor 135  (ratio >= 1)
  2. offline: 500 prompts at rate=inf, random uniform      -> output tok/s, floors 3,800 (older
     [1, 4096] in / [1, 2048] out (range ratio 0)              test) / 4,000 (newer); we ask for
                                                              3,800..4,300
  3. online: 100 prompts, Poisson 1 req/s, same lengths    -> median TTFT, ceiling 86 ms (ratio < 1);
                                                              also median ITL (< 10 ms) and median
                                                              E2E (< 11,000 ms)
  4. long prompts: 1,000 prompts of 8,192 in / 8 out at    -> input tok/s vs 27,670 (a measurement,
     rate=inf                                                 sglang PR #1060; GPU and length
                                                              distribution not stated): within 30 %;
                                                              also the same without the attention
                                                              term, and one prompt's TTFT at 8k, 32k
                                                              and 128k tokens beside the FLOPs floor

The thresholds are SGLang's CI pass floors/ceilings (test/srt/test_bench_serving.py,
test_bench_one_batch.py), see shared/reference/workloads-and-calibration.md section 2.6.

  5. a measured run: every request of a real engine run    -> TTFT, TPOT and E2E mean, median,
     (default: LLMServingSim's vLLM 0.19 run on one RTX         p90, p95, p99 beside the real ones
     PRO 6000, 300 ShareGPT requests at 10 req/s) replayed     and LLMServingSim's, with the
     through SimCore with its arrival times and lengths        difference in percent: within 10 %
     on a profile not fitted on it (--run-profile)

Exit status 1 if a check fails (2 if data is missing).
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine_adapter.base import StepProfile  # noqa: E402
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest  # noqa: E402
from engine_adapter.sim.profile import SimProfile, load_profile  # noqa: E402
# the comparison lives in replay/fidelity.py (shared with `sluice replay --live --fidelity`); its names
# are re-exported here for the tests and scripts that read them from the bench
from replay.fidelity import (  # noqa: E402, F401
    Timed,
    compare,
    comparison_lines,
    latencies,
    load_run,
    replay_run,
)

BS1_FLOOR = 135.0
OFFLINE_RANGE = (3800.0, 4300.0)
OFFLINE_NEWER_FLOOR = 4000.0
TTFT_CEIL_MS = 86.0
ITL_CEIL_MS = 10.0
E2E_CEIL_MS = 11_000.0
LONG_INPUT_TOKS = 27_670.0  # sglang PR #1060, Llama-3.1-8B, random 8192 in / 8 out, 1000 prompts
LONG_BAND = 1.3  # the figure's GPU (likely H100) and prompt lengths (fixed 8192 assumed) are not stated
ATTN_FLOPS_PER_PAIR = 4 * 32 * 4096  # Llama-3.1-8B: q.k and p.v over 32 query heads x 128, 32 layers
H100_BF16 = 989e12
RUN_DIR = Path(__file__).resolve().parents[2] / "shared/calibration/llmservingsim/bench/RTXPRO6000/Llama-3.1-8B"
RUN_PROFILE = "rtxpro6000-llama3.1-8b-vllm"
_SUMMARY_NAMES = {"TTFT": "ttft", "TPOT": "tpot", "Latency": "e2e"}  # LLMServingSim's summary.txt


def run(profile: SimProfile, arrivals: list[float], reqs: list[SimRequest], per_token: bool,
        seed: int = 0) -> tuple[list[SimEvent], SimCore]:
    """Drive a SimCore on the virtual clock: submissions at their arrival times, steps at their ends."""
    core = SimCore(profile, seed=seed)
    events: list[SimEvent] = []
    order = sorted(range(len(reqs)), key=lambda i: arrivals[i])
    for i in order:  # advance straight to the next arrival: lets the core merge decode stretches
        events += core.advance(arrivals[i], per_token)
        core.submit(arrivals[i], reqs[i])
    events += core.advance(float("inf"), per_token)
    return events, core


def random_requests(n: int, max_in: int, max_out: int, rng: np.random.Generator, tag: str) -> list[SimRequest]:
    ins = rng.integers(1, max_in + 1, n)
    outs = rng.integers(1, max_out + 1, n)
    return [SimRequest(f"{tag}-{k}", int(i), int(o), output_tokens=int(o)) for k, (i, o) in enumerate(zip(ins, outs))]


def check_bs1(profile: SimProfile) -> float:
    req = SimRequest("bs1", 256, 1024, output_tokens=1024)
    events, _ = run(profile, [0.0], [req], per_token=False)
    fin = [e for e in events if e.kind == "finish"][0]
    return fin.completion_tokens / fin.time


def check_offline(profile: SimProfile, seed: int) -> tuple[float, int]:
    reqs = random_requests(500, 4096, 2048, np.random.default_rng(seed), "off")
    events, core = run(profile, [0.0] * len(reqs), reqs, per_token=False, seed=seed)
    fins = [e for e in events if e.kind == "finish"]
    assert len(fins) == 500 and all(e.finish_reason == "length" for e in fins)
    return sum(e.completion_tokens for e in fins) / max(e.time for e in fins), core.stats.retractions


def check_online(profile: SimProfile, seed: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(1000 + seed)
    reqs = random_requests(100, 4096, 2048, rng, "on")
    arrivals = list(np.cumsum(rng.exponential(1.0, len(reqs))))
    events, _ = run(profile, arrivals, reqs, per_token=True, seed=seed)
    arrival = {r.rid: t for r, t in zip(reqs, arrivals)}
    last: dict[str, float] = {}
    ttft, itl, e2e = [], [], []
    for e in events:
        if e.kind == "first_token":
            ttft.append(e.time - arrival[e.rid])
        elif e.rid in last:
            itl.append(e.time - last[e.rid])
        if e.kind == "finish":
            e2e.append(e.time - arrival[e.rid])
        last[e.rid] = e.time
    return statistics.median(ttft) * 1e3, statistics.median(itl) * 1e3, statistics.median(e2e) * 1e3


def check_long(profile: SimProfile) -> float:
    """Input tokens/s of 1,000 prompts of 8,192 tokens (8 out) all submitted at t = 0."""
    reqs = [SimRequest(f"long-{k}", 8192, 8, output_tokens=8) for k in range(1000)]
    events, _ = run(profile, [0.0] * len(reqs), reqs, per_token=False)
    return sum(r.prompt_tokens for r in reqs) / max(e.time for e in events)


def single_ttft(profile: SimProfile, tokens: int) -> float:
    events, _ = run(profile, [0.0], [SimRequest(f"one-{tokens}", tokens, 1, output_tokens=1)], per_token=False)
    return next(e.time for e in events if e.kind == "first_token")


def load_reference_summary(path: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """LLMServingSim's validation/summary.txt: (metric, stat) -> (real, their simulator, their diff %)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*(TTFT|TPOT|Latency)\s+(Mean|Median|P90|P95|P99)\s+([-\d.]+)\s+([-\d.]+)\s+([-+\d.]+)%", line)
        if m:
            out[(_SUMMARY_NAMES[m[1]], m[2].lower())] = (float(m[3]), float(m[4]), float(m[5]))
    return out


def check_run(path: Path, profile: SimProfile, seed: int = 0) -> bool:
    """Check 5: print the side-by-side table; True if every sluice figure is within the tolerance."""
    real = load_run(path)
    sim = replay_run(profile, real, seed)
    folder = path if path.is_dir() else path.parent
    ref_path = next((p for p in (folder / "validation/summary.txt", folder.parent / "validation/summary.txt")
                     if p.exists()), None)
    ref = load_reference_summary(ref_path) if ref_path else {}
    print(f"5. measured run {path} ({len(real)} requests) replayed on {profile.name}"
          f" ({'derived from ' + profile.calibration['derived_from'] if 'derived_from' in profile.calibration else 'profile'})")
    lines, good = comparison_lines(real, sim, reference=ref)
    print("\n".join(lines))
    return good


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="h100-llama3.1-8b")
    ap.add_argument("--seeds", type=int, default=5, help="workload seeds for checks 2 and 3")
    ap.add_argument("--raw", action="store_true",
                    help="use the uncorrected fit (calibration.raw_step) to show what the corrections change")
    ap.add_argument("--run", type=Path, default=RUN_DIR,
                    help="a measured run to replay (LLMServingSim's requests.jsonl format; file or folder)")
    ap.add_argument("--run-profile", default=RUN_PROFILE, help="the profile the run is replayed on")
    ap.add_argument("--only-run", action="store_true", help="only check 5 (the measured run)")
    args = ap.parse_args(argv)
    if args.only_run:
        if not args.run.exists():
            print(f"no measured run at {args.run}", file=sys.stderr)
            return 2
        return 0 if check_run(args.run, load_profile(args.run_profile)) else 1
    profile = load_profile(args.profile)
    if args.raw:
        raw = profile.calibration.get("raw_step")
        if not raw:
            print(f"profile {profile.name} has no calibration.raw_step", file=sys.stderr)
            return 2
        profile = dataclasses.replace(profile, name=profile.name + " (raw fit)", step=StepProfile(**raw))
    t0 = time.perf_counter()
    ok = True

    bs1 = check_bs1(profile)
    ok &= bs1 >= BS1_FLOOR
    print(f"1. bs=1 decode            {bs1:8.1f} tok/s   ratio to 135 floor       {bs1 / BS1_FLOOR:5.3f}"
          f"   {'PASS' if bs1 >= BS1_FLOOR else 'FAIL'}")

    off = [check_offline(profile, s) for s in range(args.seeds)]
    tput = [x for x, _ in off]
    med = statistics.median(tput)
    good = all(OFFLINE_RANGE[0] <= x <= OFFLINE_RANGE[1] for x in tput)
    ok &= good
    print(f"2. offline throughput     {med:8.1f} tok/s   ratio to 3,800 floor     {med / OFFLINE_RANGE[0]:5.3f}"
          f"   (to 4,000: {med / OFFLINE_NEWER_FLOOR:5.3f}; seeds {min(tput):.0f}..{max(tput):.0f};"
          f" retractions {sum(r for _, r in off)})   {'PASS' if good else 'FAIL'}")

    on = [check_online(profile, s) for s in range(args.seeds)]
    ttft = statistics.median(x[0] for x in on)
    itl = statistics.median(x[1] for x in on)
    e2e = statistics.median(x[2] for x in on)
    good = all(x[0] < TTFT_CEIL_MS for x in on)
    ok &= good
    print(f"3. median TTFT @1 req/s   {ttft:8.1f} ms      ratio to 86 ms ceiling   {ttft / TTFT_CEIL_MS:5.3f}"
          f"   (seeds {min(x[0] for x in on):.1f}..{max(x[0] for x in on):.1f})   {'PASS' if good else 'FAIL'}")
    print(f"   (info) median ITL      {itl:8.2f} ms      ratio to 10 ms ceiling   {itl / ITL_CEIL_MS:5.3f}")
    print(f"   (info) median E2E      {e2e:8.0f} ms      ratio to 11,000 ceiling  {e2e / E2E_CEIL_MS:5.3f}")

    long = check_long(profile)
    linear = dataclasses.replace(profile, step=dataclasses.replace(profile.step, prefill_f=0.0))
    long_lin = check_long(linear)
    good = 1 / LONG_BAND <= long / LONG_INPUT_TOKS <= LONG_BAND
    ok &= good
    print(f"4. 8k prompts input tok/s {long:8.0f} tok/s   ratio to 27,670          {long / LONG_INPUT_TOKS:5.3f}"
          f"   (without the attention term: {long_lin:.0f}, {long_lin / LONG_INPUT_TOKS:.3f})"
          f"   {'PASS' if good else 'FAIL'}")
    for n in (8192, 32768, 131072):
        t, t_lin = single_ttft(profile, n), single_ttft(linear, n)
        floor = ATTN_FLOPS_PER_PAIR * n * n / 2 / H100_BF16
        print(f"   (info) one {n:>6}-token prompt: TTFT {t * 1e3:8.0f} ms (same a, b without f {t_lin * 1e3:6.0f} ms;"
              f" its attention {(t - t_lin) * 1e3:6.0f} ms vs {floor * 1e3:5.0f} ms at H100's BF16 peak)")
    if args.run.exists():
        ok &= check_run(args.run, load_profile(args.run_profile))
    else:
        print(f"5. skipped: no measured run at {args.run}")
    print(f"profile {profile.name}; {args.seeds} seeds; {time.perf_counter() - t0:.1f} s wall")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
