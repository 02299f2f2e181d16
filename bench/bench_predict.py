"""Benchmark the predictors: cost per call and output-length accuracy on a real length distribution.

Workload: the Azure LLM inference conversation trace (ContextTokens, GeneratedTokens; 19,366
requests), read in place (never copied into the repo), with synthetic tenants layered on top so that
tenant identity and prompt length carry signal the way they do in a multi-tenant deployment:

    chat       40 %  output = GeneratedTokens                    max_tokens 1024  interactive
    summarize  25 %  output = ceil(0.4 * GeneratedTokens)        max_tokens  256  batch
    code       20 %  output = 2 * GeneratedTokens                max_tokens 2048  interactive
    extract    15 %  output = ceil(0.1 * ContextTokens * U(0.8, 1.2))  max_tokens 1024  batch

(outputs clamped to max_tokens). Protocol, in arrival order: predict(), then observe() the truth;
the MLP trains inline every 256 observations (replay mode, deterministic). Each expert alone is
scored from `Prediction.by_expert` of the same run (experts do not depend on the gate); when it
abstains it falls back to the prior. Baselines: VTC's per-client moving average (window 5) and
max_tokens (worst-case reservation).

    .venv/bin/python bench/bench_predict.py [--trace PATH] [--seed 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.predict import OutputLengthPredictor, StepTimeModel  # noqa: E402
from engine_adapter.base import StepProfile  # noqa: E402

TRACE = "/work/shared/traces/AzureLLMInferenceTrace_conv.csv"
TENANTS = [  # name, share, max_tokens, slo_class
    ("chat", 0.40, 1024, "interactive"),
    ("summarize", 0.25, 256, "batch"),
    ("code", 0.20, 2048, "interactive"),
    ("extract", 0.15, 1024, "batch"),
]


def load_workload(path: str, seed: int) -> list[tuple[str, int, int, str, int]]:
    with open(path, newline="") as fh:
        rows = [(int(r["ContextTokens"]), int(r["GeneratedTokens"])) for r in csv.DictReader(fh)]
    rng = np.random.default_rng(seed)
    names = [t[0] for t in TENANTS]
    pick = rng.choice(len(TENANTS), size=len(rows), p=[t[1] for t in TENANTS])
    jitter = rng.uniform(0.8, 1.2, size=len(rows))
    out = []
    for (ctx, gen), k, j in zip(rows, pick, jitter):
        name, _, max_tokens, slo = TENANTS[k]
        if name == "chat":
            y = gen
        elif name == "summarize":
            y = math.ceil(0.4 * gen)
        elif name == "code":
            y = 2 * gen
        else:
            y = math.ceil(0.1 * ctx * j)
        out.append((names[k], ctx, max_tokens, slo, max(1, min(y, max_tokens))))
    return out


def score(preds: list[float], truth: list[int]) -> dict[str, float]:
    ape = [abs(p - a) / a for p, a in zip(preds, truth)]
    return {
        "median_ape": statistics.median(ape),
        "p90_ape": float(np.percentile(ape, 90)),
        "mae": sum(abs(p - a) for p, a in zip(preds, truth)) / len(truth),
        "bias": sum(p - a for p, a in zip(preds, truth)) / len(truth),
    }


def accuracy(work, seed: int, warmup: int, **opts) -> dict[str, dict[str, float]]:
    m = OutputLengthPredictor(seed=seed, train_every=256, train_steps=64, **opts)
    names = [e.name for e in m.experts]
    cols: dict[str, list[float]] = {k: [] for k in ["mixture", *names, "vtc_ma5", "max_tokens"]}
    vtc: dict[str, float] = {}
    truth = []
    tenants = []
    for tenant, prompt, max_tokens, slo, y in work:
        pr = m.predict(tenant, prompt, max_tokens, slo)
        prior = pr.by_expert.get("prior", min(m.default_tokens, max_tokens))
        cols["mixture"].append(pr.tokens)
        for n in names:
            cols[n].append(pr.by_expert.get(n, prior))
        cols["vtc_ma5"].append(max(1.0, min(vtc.get(tenant, m.default_tokens), max_tokens)))
        cols["max_tokens"].append(float(max_tokens))
        truth.append(y)
        tenants.append(tenant)
        m.observe(tenant, prompt, max_tokens, slo, y)
        vtc[tenant] = y if tenant not in vtc else (vtc[tenant] * 4 + y) / 5
    out = {k: score(v[warmup:], truth[warmup:]) for k, v in cols.items()}
    for name, *_ in TENANTS:  # per synthetic tenant: median APE of each predictor
        idx = [i for i in range(warmup, len(truth)) if tenants[i] == name]
        out[f"tenant={name}"] = {
            k: statistics.median(abs(v[i] - truth[i]) / truth[i] for i in idx) for k, v in cols.items()
        }
    return out


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _predict_next(m, probes) -> None:
    t, p, mx, s, _ = next(probes)
    m.predict(t, p, mx, s)


def _observe_next(m, probes) -> None:
    m.observe(*next(probes))


def cost(work, seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for torch_expert in (False, True):
        m = OutputLengthPredictor(seed=seed, torch_expert=torch_expert, train_every=256 if torch_expert else None)
        for tenant, prompt, max_tokens, slo, y in work[:5000]:
            m.observe(tenant, prompt, max_tokens, slo, y)
        probe = work[5000:5200]
        tag = "with_mlp" if torch_expert else "no_mlp"
        out[f"predict_us_{tag}"] = per_call_us(partial(_predict_next, m, itertools.cycle(probe)), 20000)
        obs = partial(_observe_next, m, itertools.cycle(probe))
        if not torch_expert:
            out[f"observe_us_{tag}"] = per_call_us(obs, 20000)
        else:
            m.train_every = None
            out["observe_us_with_mlp_no_training"] = per_call_us(obs, 5000)
            t0 = time.perf_counter()
            steps = m.train_pending(200)
            out["train_ms_per_step"] = (time.perf_counter() - t0) / max(steps, 1) * 1e3
    st = StepTimeModel(StepProfile(0.01, 3e-5, 0.008, 1e-4, 3e-8))
    out["step_observe_decode_us"] = per_call_us(lambda: st.observe_decode(32, 64000, 0.02), 20000)
    out["step_decode_time_us"] = per_call_us(lambda: st.decode_time(32, 64000), 20000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=TRACE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=500, help="requests left out of the accuracy scores")
    ap.add_argument("--sweep", action="store_true", help="also sweep gate_power and tenant_alpha")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    work = load_workload(args.trace, args.seed)
    print(f"workload: {len(work)} requests from {args.trace}; tenants "
          + ", ".join(f"{n} {sum(1 for w in work if w[0] == n)}" for n, *_ in TENANTS))
    t0 = time.perf_counter()
    acc = accuracy(work, args.seed, args.warmup)
    wall = time.perf_counter() - t0
    print(f"\naccuracy after {args.warmup} warm-up requests (online: predict, then observe); run {wall:.1f} s")
    print(f"{'predictor':<12} {'median APE':>11} {'p90 APE':>9} {'MAE tok':>9} {'bias tok':>9}")
    for k, s in acc.items():
        if not k.startswith("tenant="):
            print(f"{k:<12} {s['median_ape']:>10.1%} {s['p90_ape']:>8.1%} {s['mae']:>9.1f} {s['bias']:>+9.1f}")
    print("\nmedian APE per synthetic tenant")
    cols = [k for k in acc if not k.startswith("tenant=")]
    print(f"{'tenant':<12} " + " ".join(f"{c:>10}" for c in cols))
    for k, s in acc.items():
        if k.startswith("tenant="):
            print(f"{k[7:]:<12} " + " ".join(f"{s[c]:>10.1%}" for c in cols))
    results = {"accuracy": acc, "accuracy_run_s": wall}
    if args.sweep:
        sweep = {}
        for power in (1.0, 2.0, 4.0, 8.0):
            for by_bucket in (False, True):
                s = accuracy(work, args.seed, args.warmup, gate_power=power, gate_by_bucket=by_bucket)["mixture"]
                sweep[f"power={power},by_bucket={by_bucket}"] = s
                print(f"sweep gate_power={power} gate_by_bucket={by_bucket}: median APE {s['median_ape']:.1%}"
                      f" p90 APE {s['p90_ape']:.1%} MAE {s['mae']:.1f}")
        results["sweep"] = sweep
    c = cost(work, args.seed)
    print("\ncost per call (this machine, shared CPU; µs unless noted)")
    for k, v in c.items():
        print(f"  {k:<34} {v:8.1f}")
    results["cost"] = c
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
