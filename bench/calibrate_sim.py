"""Fit the simulator's default profile (H100 80GB, Llama-3.1-8B, TP1) from public measurements.

    .venv/bin/python bench/calibrate_sim.py            # fit, print, write the profile JSONs
    .venv/bin/python bench/calibrate_sim.py --check    # fit and fail if a committed JSON differs

It writes two profiles: the fitted default (H100) and one derived from it, not fitted, for the GPU
of the measured vLLM run that bench/bench_calibration.py replays (RTX PRO 6000 Blackwell; see
derive_step and docs/simulator.md, "A measured run").

Data (read from ../shared/calibration, never copied into the repository; see its SOURCES.md):
  * LLMServingSim layers.csv (H100, Llama-3.1-8B, TP1, eager HF PyTorch, per-op latency for 1..2048
    tokens): the forward pass, for the prefill (a, b) and decode (c, d) terms, and its causal
    attention over the chunk itself, for the prefill attention term (f);
  * DistServe's fitted decode coefficients (OPT-13B, TP1, A100-80G): the per-KV-token decode cost,
    scaled to Llama-3.1-8B's KV bytes per token and to H100's HBM bandwidth (e).
Cross-checks of f (printed and kept in the profile's calibration block, not used in the fit): the
FLOPs floor at H100's BF16 peak, and the attention cost relative to the linear layers measured by
Splitwise (vLLM, H100, Llama-2-70B, prompts up to 8,192 tokens) and fitted by DistServe (OPT-13B,
A100), each moved to Llama-3.1-8B by the ratio of attention to linear FLOPs.

Method and corrections are documented in docs/simulator.md. The one correction applied to the
measured forward pass models SGLang's kernels instead of eager Hugging Face PyTorch: the
elementwise ops (RMSNorms, RoPE, SiLU*mul), which the eager profile runs as many small kernels, are
replaced by fused kernels costing a fixed replay/launch time each plus their memory traffic at the
achievable HBM bandwidth. GEMMs, attention, embedding and lm_head are used as measured.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CAL = SHARED / "calibration"
LAYERS_CSV = CAL / "llmservingsim/perf_models/H100/meta-llama/Llama-3.1-8B/tp1/layers.csv"
DISTSERVE_JSON = CAL / "distserve/profiler-a100-80g.distserve.json"
SPLITWISE_CSV = CAL / "splitwise/perf_model.csv"
OUT = REPO / "engine_adapter/sim/profiles/h100-llama3.1-8b.json"
RTX_OUT = REPO / "engine_adapter/sim/profiles/rtxpro6000-llama3.1-8b-vllm.json"

# --- Llama-3.1-8B (config.json of meta-llama/Llama-3.1-8B) ---------------------------------------
N_LAYERS = 32
HIDDEN = 4096
INTERMEDIATE = 14336
N_KV_HEADS = 8
HEAD_DIM = 128
Q_DIM = 32 * HEAD_DIM
PARAMS = 8_030_261_248
BYTES = 2  # BF16
KV_BYTES_PER_TOKEN = 2 * N_LAYERS * N_KV_HEADS * HEAD_DIM * BYTES  # K and V: 131,072 B = 128 KiB
VOCAB = 128_256
# attention FLOPs of one new token against one context token: q.k and p.v, 2 FLOPs per multiply-add,
# over all query heads and layers (GQA shares K/V but not the arithmetic)
ATTN_FLOPS_PER_PAIR = 4 * N_LAYERS * Q_DIM  # 524,288
LINEAR_FLOPS_PER_TOKEN = 2 * (PARAMS - 2 * VOCAB * HIDDEN)  # the matmuls a prefill token pays (no logits)

# --- H100 SXM5 80GB (vendor specs; estimates where marked) ---------------------------------------
HBM_BW = 3.35e12  # B/s
BF16_PEAK = 989e12  # dense BF16 tensor FLOP/s (vendor spec)
HBM_EFF = 0.8  # achievable fraction of peak HBM bandwidth for streaming kernels (estimate)
MEM_TOTAL = 81_559 * 2**20  # bytes, as nvidia-smi reports an H100 80GB HBM3
F_MAX_MHZ, F_MIN_MHZ = 1980.0, 345.0
IDLE_W, MAX_W = 70.0, 700.0  # idle draw (estimate) and TDP
# --- OPT-13B and A100-80G, to rescale DistServe's per-token decode cost -----------------------------
OPT13B_KV_BYTES_PER_TOKEN = 2 * 40 * 5120 * BYTES  # MHA, 40 layers, hidden 5120: 819,200 B
A100_80G_BW = 2.039e12  # B/s
# --- models of the attention cross-checks: (attention FLOPs per token pair, linear FLOPs per token) ---
OPT13B_FLOPS = (4 * 40 * 5120, 2 * (12_853_473_280 - 50_272 * 5120 - 2050 * 5120))  # tied embeddings
LLAMA2_70B_FLOPS = (4 * 80 * 8192, 2 * (68_976_648_192 - 2 * 32_000 * 8192))
SPLITWISE_SERIES = ("llama2-70b", "h100-80gb", "2")  # model, hardware, TP: the most compute-bound H100 series
SPLITWISE_FIT = (512, 8192)  # prompt tokens (batch 1)

# --- SGLang defaults on one H100 (estimates from SGLang's server_args, see docs/simulator.md) ---------
MEM_FRACTION_STATIC = 0.88  # tp=1
CHUNKED_PREFILL_SIZE = 8192
MAX_RUNNING_REQUESTS = 2048
NEW_TOKEN_RATIO = 0.3  # between SGLang's initial (0.7) and decayed minimum (~0.1) admission reserve
PREFIX_BLOCK = 512

# --- RTX PRO 6000 Blackwell Workstation Edition (vendor specs; estimates where marked) --------------
RTX_BF16_PEAK = 503.8e12  # dense BF16 tensor FLOP/s, FP32 accumulate
RTX_MEM_BW = 1.792e12  # B/s: 512-bit GDDR7 at 28 Gbps (the run's config.json says 1,597 GB/s, see the docs)
RTX_MEM_TOTAL = 96 * 2**30  # bytes (config.json: mem_size 96)
RTX_F_MAX_MHZ, RTX_F_MIN_MHZ = 2617.0, 180.0  # boost clock; the minimum is an estimate
RTX_IDLE_W, RTX_MAX_W = 30.0, 600.0  # idle draw (estimate) and TDP
# --- the measured run's engine: vLLM 0.19 (meta.json, config.json) ----------------------------------
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # config.json mem_util, vLLM's default
VLLM_MAX_NUM_SEQS = 128
VLLM_MAX_NUM_BATCHED_TOKENS = 2048
VLLM_RESERVED = 2 * 2**30  # activations, CUDA graphs, non-torch memory inside the 0.9 (estimate)

# --- the fused-kernel model of the elementwise ops ---------------------------------------------------
ELEMENTWISE_OPS = ("input_layernorm", "rope", "post_layernorm", "act_fn")
FUSED_KERNELS_PER_LAYER = 4  # add+RMSNorm x2, RoPE, SiLU*mul
KERNEL_US = 3.0  # per fused kernel (CUDA-graph replay or a launch), estimate
# bytes moved per token by the fused elementwise kernels of one layer
ELEMENTWISE_BYTES_PER_TOKEN = BYTES * (
    2 * 3 * HIDDEN  # add+RMSNorm: read x and residual, write x (twice per layer)
    + 2 * (Q_DIM + N_KV_HEADS * HEAD_DIM)  # RoPE: read and write q and k
    + 3 * INTERMEDIATE  # SiLU*mul: read gate and up, write the product
)
DECODE_FIT = (1, 256)  # batch sizes (tokens) for c, d
PREFILL_FIT = (256, 2048)  # tokens for a, b
ATTN_FIT = (256, 2048)  # tokens for the attention row's quadratic (f); below 256 launch cost dominates


def load_layers() -> dict[int, dict[str, float]]:
    """Per token count: op -> latency in ms (one decoder layer, or model-level ops)."""
    rows: dict[int, dict[str, float]] = defaultdict(dict)
    with LAYERS_CSV.open() as f:
        for r in csv.DictReader(f):
            assert r["tp_size"] == "1" and r["kv_cache"] == "0"
            rows[int(r["input"])][r["layer_name"]] = int(r["latency(ns)"]) / 1e6
    return rows


def eager_forward_ms(rows: dict[int, dict[str, float]], n: int, logits: int) -> float:
    """The measured eager forward of n tokens with `logits` rows through lm_head."""
    op = rows[n]
    layer = sum(v for k, v in op.items() if k not in ("embedding", "final_layernorm", "lm_head"))
    return N_LAYERS * layer + op["embedding"] + op["final_layernorm"] + rows[logits]["lm_head"]


def sglang_forward_ms(rows: dict[int, dict[str, float]], n: int, logits: int) -> float:
    """Eager forward with the elementwise ops replaced by the fused-kernel model."""
    op = rows[n]
    measured = sum(v for k, v in op.items()
                   if k not in ELEMENTWISE_OPS and k not in ("embedding", "final_layernorm", "lm_head"))
    fused = FUSED_KERNELS_PER_LAYER * KERNEL_US / 1e3 + n * ELEMENTWISE_BYTES_PER_TOKEN / (HBM_BW * HBM_EFF) * 1e3
    final_norm = KERNEL_US / 1e3 + n * 2 * HIDDEN * BYTES / (HBM_BW * HBM_EFF) * 1e3
    return N_LAYERS * (measured + fused) + op["embedding"] + final_norm + rows[logits]["lm_head"]


def linfit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares on relative error (weights 1/y): (intercept, slope, max relative error)."""
    w = 1.0 / y
    a = np.vstack([np.ones_like(x), x]).T * w[:, None]
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
    err = float(np.max(np.abs((coef[0] + coef[1] * x) - y) / y))
    return float(coef[0]), float(coef[1]), err


def polyfit_rel(x: np.ndarray, y: np.ndarray, deg: int) -> tuple[np.ndarray, float, float]:
    """Polynomial least squares on relative error: (coefficients by rising power, max and rms rel. error)."""
    w = 1.0 / y
    a = np.vstack([x**k for k in range(deg + 1)]).T
    coef, *_ = np.linalg.lstsq(a * w[:, None], y * w, rcond=None)
    rel = np.abs(a @ coef - y) / y
    return coef, float(rel.max()), float(np.sqrt(np.mean(rel**2)))


def splitwise_prompt_fit() -> tuple[np.ndarray, float, int]:
    """a + b*N + c*N^2 (ms) through Splitwise's batch-1 prompt times of one series: (coef, max rel err, rows)."""
    model, hw, tp = SPLITWISE_SERIES
    pts = [(float(r["prompt_size"]), float(r["prompt_time"])) for r in csv.DictReader(SPLITWISE_CSV.open())
           if (r["model"], r["hardware"], r["tensor_parallel"]) == (model, hw, tp) and r["batch_size"] == "1"
           and SPLITWISE_FIT[0] <= int(r["prompt_size"]) <= SPLITWISE_FIT[1]]
    x, y = np.array(pts).T
    coef, err, _ = polyfit_rel(x, y, 2)
    return coef, err, len(pts)


def attention_ratio(b: float, c: float, flops: tuple[int, int]) -> float:
    """Cost per attention FLOP over cost per linear FLOP, from a + b*N + c*N^2 of a causal prefill."""
    per_pair, linear = flops
    return (c / (per_pair / 2)) / (b / linear)


def fit() -> dict:
    rows = load_layers()
    out: dict = {"fits": {}}
    # prefill attention (f): the attn row is one layer's causal attention of n tokens over themselves
    # (kv_cache = 0), fitted as alpha + beta*n + gamma*n^2. In the model the quadratic part is
    # f * n * (0 + n/2) over 32 layers, so f = 2 * 32 * gamma; alpha and beta stay in a and b.
    na = np.arange(ATTN_FIT[0], ATTN_FIT[1] + 1, dtype=float)
    (_, _, gamma), err_attn, rms_attn = polyfit_rel(na, np.array([rows[int(k)]["attn"] for k in na]), 2)
    f = 2 * N_LAYERS * gamma  # ms per token pair
    # prefill: one request's chunk of n tokens, logits for its last token only (as SGLang computes);
    # a and b are fitted on the forward without the quadratic part that f carries
    n = np.arange(PREFILL_FIT[0], PREFILL_FIT[1] + 1, dtype=float)
    quad = f * n * n / 2
    y_eager = np.array([eager_forward_ms(rows, int(k), 1) for k in n])
    y_sg = np.array([sglang_forward_ms(rows, int(k), 1) for k in n])
    a_raw, b_raw, _ = linfit(n, y_eager - quad)
    a, b, _ = linfit(n, y_sg - quad)
    err_raw = float(np.max(np.abs(a_raw + b_raw * n + quad - y_eager) / y_eager))
    err = float(np.max(np.abs(a + b * n + quad - y_sg) / y_sg))
    out["fits"]["prefill_raw_eager"] = {"a_ms": a_raw, "b_ms_per_token": b_raw, "max_rel_err": err_raw}
    out["fits"]["prefill"] = {"a_ms": a, "b_ms_per_token": b, "max_rel_err": err,
                              "range_tokens": list(PREFILL_FIT)}
    # cross-checks of f (not used in the fit)
    g = rows[PREFILL_FIT[1]]
    gemm_eff = 2 * HIDDEN * INTERMEDIATE * PREFILL_FIT[1] / (g["gate_proj"] / 1e3) / BF16_PEAK
    sw, sw_err, sw_rows = splitwise_prompt_fit()
    rho_sw = attention_ratio(sw[1], sw[2], LLAMA2_70B_FLOPS)
    ds = json.loads(DISTSERVE_JSON.read_text())["facebook/opt-13b"]["1"]["prefill"]
    rho_ds = attention_ratio(float(ds[1]), float(ds[2]), OPT13B_FLOPS)
    per_linear_flop = b / LINEAR_FLOPS_PER_TOKEN  # ms per linear FLOP in this profile
    out["fits"]["prefill_attn"] = {
        "f_ms_per_token_pair": f, "range_tokens": list(ATTN_FIT), "attn_row_max_rel_err": err_attn,
        "attn_row_rms_rel_err": rms_attn,
        "implied_attn_TFLOPs": ATTN_FLOPS_PER_PAIR / (f / 1e3) / 1e12,
        "attn_cost_ratio": attention_ratio(b, f / 2, (ATTN_FLOPS_PER_PAIR, LINEAR_FLOPS_PER_TOKEN)),
        "flops_floor_ms": ATTN_FLOPS_PER_PAIR / BF16_PEAK * 1e3,
        "gemm_efficiency_at_2048": gemm_eff,
        "flops_at_gemm_efficiency_ms": ATTN_FLOPS_PER_PAIR / (BF16_PEAK * gemm_eff) * 1e3,
        "splitwise": {"series": "/".join(SPLITWISE_SERIES), "range_tokens": list(SPLITWISE_FIT), "rows": sw_rows,
                      "a_ms": float(sw[0]), "b_ms_per_token": float(sw[1]), "c_ms_per_token2": float(sw[2]),
                      "max_rel_err": sw_err, "attn_cost_ratio": rho_sw,
                      "f_ms": rho_sw * per_linear_flop * ATTN_FLOPS_PER_PAIR},
        "distserve_opt13b_a100": {"b_ms_per_token": float(ds[1]), "c_ms_per_token2": float(ds[2]),
                                  "attn_cost_ratio": rho_ds, "f_ms": rho_ds * per_linear_flop * ATTN_FLOPS_PER_PAIR},
    }
    # decode: a batch of B sequences is a forward of B tokens with B logits rows
    bsz = np.arange(DECODE_FIT[0], DECODE_FIT[1] + 1, dtype=float)
    y_eager = np.array([eager_forward_ms(rows, int(k), int(k)) for k in bsz])
    y_sg = np.array([sglang_forward_ms(rows, int(k), int(k)) for k in bsz])
    c_raw, d_raw, errd_raw = linfit(bsz, y_eager)
    c, d, errd = linfit(bsz, y_sg)
    out["fits"]["decode_raw_eager"] = {"c_ms": c_raw, "d_ms_per_seq": d_raw, "max_rel_err": errd_raw}
    out["fits"]["decode"] = {"c_ms": c, "d_ms_per_seq": d, "max_rel_err": errd, "range_batch": list(DECODE_FIT)}
    # decode KV term: DistServe's per-context-token cost (OPT-13B TP1 on A100-80G, B >= 95 set),
    # rescaled by KV bytes per token and by HBM bandwidth (the decode-attention read is bandwidth-bound)
    ds = json.loads(DISTSERVE_JSON.read_text())["facebook/opt-13b"]["1"]
    e_opt = float(ds["decoding_largebs"][1])  # ms per context token
    e_opt_small = float(ds["decoding_smallbs"][1])
    scale = (KV_BYTES_PER_TOKEN / OPT13B_KV_BYTES_PER_TOKEN) * (A100_80G_BW / HBM_BW)
    e_distserve = e_opt * scale
    # used: the bandwidth-bound read of 128 KiB per KV token at the same achievable HBM bandwidth as
    # the fused elementwise kernels (SGLang's FlashInfer/FA3 paged GQA decode on H100); DistServe's
    # rescaled value (OPT-13B, MHA, A100, 2024 kernels) implies only 69 % of H100's peak bandwidth
    e = KV_BYTES_PER_TOKEN / (HBM_BW * HBM_EFF) * 1e3
    out["fits"]["decode_kv"] = {
        "e_ms_per_kv_token": e, "rule": f"KV bytes per token / ({HBM_EFF} x HBM peak)",
        "distserve_scaled_ms_per_kv_token": e_distserve, "distserve_opt13b_a100_largebs_ms": e_opt,
        "distserve_opt13b_a100_smallbs_ms": e_opt_small, "scale": scale,
        "correction_factor": e / e_distserve,
        "implied_bw_of_distserve_scaled_TBps": KV_BYTES_PER_TOKEN / (e_distserve / 1e3) / 1e12,
        "peak_bw_floor_ms_per_kv_token": KV_BYTES_PER_TOKEN / HBM_BW * 1e3,
    }
    out["raw_s"] = (a_raw / 1e3, b_raw / 1e3, c_raw / 1e3, d_raw / 1e3, e_distserve / 1e3, f / 1e3)
    # check points (ms) for the docs
    out["fits"]["points"] = {
        str(k): {"eager": round(eager_forward_ms(rows, k, 1), 3), "sglang_model": round(sglang_forward_ms(rows, k, 1), 3),
                 "prefill_fit": round(a + b * k + f * k * k / 2, 3)} for k in (256, 512, 1024, 2048)
    }
    out["fits"]["decode_points"] = {
        str(k): {"eager": round(eager_forward_ms(rows, k, k), 3), "sglang_model": round(sglang_forward_ms(rows, k, k), 3),
                 "decode_fit": round(c + d * k, 3)} for k in (1, 8, 32, 64, 128, 256)
    }
    out["coef_s"] = (a / 1e3, b / 1e3, c / 1e3, d / 1e3, e / 1e3, f / 1e3)
    return out


def build_profile(f: dict) -> dict:
    a, b, c, d, e, pf = (float(f"{v:.6g}") for v in f["coef_s"])
    weights = PARAMS * BYTES
    kv_pool = int(MEM_FRACTION_STATIC * MEM_TOTAL) - weights
    kv_tokens = kv_pool // KV_BYTES_PER_TOKEN
    return {
        "name": "h100-llama3.1-8b",
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "gpu": "NVIDIA H100 80GB HBM3",
        "step": {"prefill_a": a, "prefill_b": b, "decode_c": c, "decode_d": d, "decode_e": e, "prefill_f": pf},
        "kv_capacity_tokens": kv_tokens,
        "chunked_prefill_size": CHUNKED_PREFILL_SIZE,
        "max_running_requests": MAX_RUNNING_REQUESTS,
        "prefix_block_size": PREFIX_BLOCK,
        "prefix_cache_blocks": kv_tokens // PREFIX_BLOCK,
        "new_token_ratio": NEW_TOKEN_RATIO,
        "f_max_mhz": F_MAX_MHZ,
        "f_min_mhz": F_MIN_MHZ,
        "idle_w": IDLE_W,
        "max_w": MAX_W,
        "decode_power_fraction": 0.6,
        "memory_total_bytes": MEM_TOTAL,
        "memory_used_bytes": weights + kv_tokens * KV_BYTES_PER_TOKEN,
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
        "calibration": {
            "script": "bench/calibrate_sim.py",
            "doc": "docs/simulator.md",
            "sources": [
                "casys-kaist/LLMServingSim profiler/v0/perf_models/H100/meta-llama/Llama-3.1-8B/tp1/layers.csv @3012eb1",
                "LLMServe/DistServe simdistserve/estimators/profile_data/profiler-a100-80g.distserve.json @4c68ed9",
                "Mutinifni/splitwise-sim data/perf_model.csv @3780880 (cross-check of prefill_f only)",
            ],
            "correction": (f"decode_e: bandwidth-bound KV read at {HBM_EFF:.0%} of peak HBM instead of "
                           "DistServe's rescaled fit; "
                           f"elementwise ops modelled as {FUSED_KERNELS_PER_LAYER} fused kernels per layer "
                           f"({KERNEL_US} us each) + memory traffic at {HBM_EFF:.0%} of {HBM_BW / 1e12} TB/s, "
                           "instead of eager HF PyTorch"),
            "kv_capacity": (f"{MEM_FRACTION_STATIC} x {MEM_TOTAL} B - {weights} B BF16 weights, "
                            f"/ {KV_BYTES_PER_TOKEN} B per token"),
            "fits": {k: v for k, v in f["fits"].items()},
            # the uncorrected fit (eager prefill and decode, DistServe-scaled KV term), for comparison
            "raw_step": dict(zip(("prefill_a", "prefill_b", "decode_c", "decode_d", "decode_e", "prefill_f"),
                                 (float(f"{v:.6g}") for v in f["raw_s"]))),
        },
    }


def derive_step(h100: dict, *, peak_from: float, peak_to: float, bw_from: float, bw_to: float,
                weight_bytes: float, bw_eff: float = HBM_EFF) -> dict:
    """Move a step profile to another GPU by a roofline argument (docs/simulator.md):

    * prefill (a, b, f) is compute-bound: times x peak_from / peak_to;
    * decode's weight read (weight_bytes at bw_eff x bw_from, the part of c it explains) and its
      per-sequence and per-KV-token costs (d, e) are bandwidth-bound: times x bw_from / bw_to;
    * the rest of c (CUDA-graph replay, launches, sampling) is a fixed per-step cost: kept.
    """
    compute, memory = peak_from / peak_to, bw_from / bw_to
    weight_read = weight_bytes / (bw_eff * bw_from)
    fixed = h100["decode_c"] - weight_read
    if fixed < 0:
        raise ValueError("decode_c is below the weight-read time: the roofline split does not apply")
    return {
        "prefill_a": h100["prefill_a"] * compute,
        "prefill_b": h100["prefill_b"] * compute,
        "decode_c": fixed + weight_read * memory,
        "decode_d": h100["decode_d"] * memory,
        "decode_e": h100["decode_e"] * memory,
        "prefill_f": h100["prefill_f"] * compute,
    }


def build_rtx_profile(h100: dict) -> dict:
    """The RTX PRO 6000 / vLLM profile: the committed H100 fit moved by derive_step, vLLM's engine limits."""
    weights = PARAMS * BYTES
    step = derive_step(h100["step"], peak_from=BF16_PEAK, peak_to=RTX_BF16_PEAK, bw_from=HBM_BW, bw_to=RTX_MEM_BW,
                       weight_bytes=weights)
    budget = int(VLLM_GPU_MEMORY_UTILIZATION * RTX_MEM_TOTAL)
    kv_tokens = (budget - weights - VLLM_RESERVED) // KV_BYTES_PER_TOKEN
    return {
        "name": "rtxpro6000-llama3.1-8b-vllm",
        "model": "meta-llama/Llama-3.1-8B",
        "gpu": "NVIDIA RTX PRO 6000 Blackwell Workstation Edition",
        "step": step,
        "kv_capacity_tokens": kv_tokens,
        "chunked_prefill_size": VLLM_MAX_NUM_BATCHED_TOKENS,
        "max_running_requests": VLLM_MAX_NUM_SEQS,
        "prefix_block_size": PREFIX_BLOCK,
        "prefix_cache_blocks": kv_tokens // PREFIX_BLOCK,
        "new_token_ratio": 0.0,  # vLLM reserves no KV for future output tokens: it preempts instead
        "f_max_mhz": RTX_F_MAX_MHZ,
        "f_min_mhz": RTX_F_MIN_MHZ,
        "idle_w": RTX_IDLE_W,
        "max_w": RTX_MAX_W,
        "decode_power_fraction": 0.6,
        "memory_total_bytes": RTX_MEM_TOTAL,
        "memory_used_bytes": budget,  # vLLM preallocates gpu_memory_utilization x total
        "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
        "calibration": {
            "script": "bench/calibrate_sim.py",
            "doc": "docs/simulator.md",
            "derived_from": h100["name"],
            "rule": ("roofline: prefill a, b, f x peak BF16 ratio; decode c's weight read, d, e x bandwidth ratio; "
                     "the rest of c fixed"),
            "not_fitted_on": "casys-kaist/LLMServingSim bench/examples/RTXPRO6000/Llama-3.1-8B (the run it is checked on)",
            "hardware": {"bf16_peak_tflops": RTX_BF16_PEAK / 1e12, "mem_bw_GBps": RTX_MEM_BW / 1e9,
                         "from_bf16_peak_tflops": BF16_PEAK / 1e12, "from_mem_bw_GBps": HBM_BW / 1e9},
            "compute_ratio": BF16_PEAK / RTX_BF16_PEAK,
            "bandwidth_ratio": HBM_BW / RTX_MEM_BW,
            "decode_c_fixed_ms": (h100["step"]["decode_c"] - weights / (HBM_EFF * HBM_BW)) * 1e3,
            "kv_capacity": (f"{VLLM_GPU_MEMORY_UTILIZATION} x {RTX_MEM_TOTAL} B - {weights} B weights - "
                            f"{VLLM_RESERVED} B activations/graphs (estimate), / {KV_BYTES_PER_TOKEN} B per token"),
            "engine": (f"vLLM 0.19: max_num_seqs {VLLM_MAX_NUM_SEQS}, max_num_batched_tokens "
                       f"{VLLM_MAX_NUM_BATCHED_TOKENS}, chunked prefill mixed with decode, FCFS"),
            "estimates": "clocks' minimum, idle power, the activation reserve",
        },
    }


def _round(o):
    if isinstance(o, float):
        return float(f"{o:.6g}")
    if isinstance(o, dict):
        return {k: _round(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_round(v) for v in o]
    return o


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail if the committed profile differs from the fit")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not LAYERS_CSV.exists():
        print(f"calibration data not found under {CAL}", file=sys.stderr)
        return 2
    profile = _round(build_profile(fit()))
    text = json.dumps(profile, indent=2) + "\n"
    fits = profile["calibration"]["fits"]
    print(json.dumps({k: fits[k] for k in ("prefill_raw_eager", "prefill", "prefill_attn", "decode_raw_eager", "decode",
                                           "decode_kv")}, indent=2))
    s = profile["step"]
    print(f"step (ms): prefill {s['prefill_a'] * 1e3:.3f} + {s['prefill_b'] * 1e3:.5f}*tokens"
          f" + {s['prefill_f'] * 1e3:.4e}*tokens*(context + tokens/2); "
          f"decode {s['decode_c'] * 1e3:.3f} + {s['decode_d'] * 1e3:.5f}*batch + {s['decode_e'] * 1e3:.3e}*kv_tokens")
    print(f"kv_capacity_tokens {profile['kv_capacity_tokens']}")
    rtx = _round(build_rtx_profile(profile))
    rtx_text = json.dumps(rtx, indent=2) + "\n"
    r = rtx["step"]
    print(f"{rtx['name']} (derived): prefill {r['prefill_a'] * 1e3:.3f} + {r['prefill_b'] * 1e3:.5f}*tokens"
          f" + {r['prefill_f'] * 1e3:.4e}*pairs; decode {r['decode_c'] * 1e3:.3f} + {r['decode_d'] * 1e3:.5f}*batch"
          f" + {r['decode_e'] * 1e3:.3e}*kv_tokens; kv_capacity_tokens {rtx['kv_capacity_tokens']}")
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        same_rtx = RTX_OUT.exists() and RTX_OUT.read_text() == rtx_text
        for ok, path in ((same, args.out), (same_rtx, RTX_OUT)):
            print(f"committed {path.name} matches" if ok else f"MISMATCH: {path} differs from what the data gives")
        return 0 if same and same_rtx else 1
    args.out.write_text(text)
    RTX_OUT.write_text(rtx_text)
    print(f"wrote {args.out} and {RTX_OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
