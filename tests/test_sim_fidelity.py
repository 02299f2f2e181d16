"""The simulator against a real measured engine run: profile derivation, replay and comparison.

The measured run (LLMServingSim's vLLM run on an RTX PRO 6000) lives in ../shared/calibration;
tests that read it skip when it is absent. Nothing here asserts on wall-clock time.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from engine_adapter.base import StepProfile
from engine_adapter.sim.core import SimCore, SimRequest
from engine_adapter.sim.profile import load_profile

REPO = Path(__file__).resolve().parents[1]
RUN = REPO.parent / "shared/calibration/llmservingsim/bench/RTXPRO6000/Llama-3.1-8B"
needs_run = pytest.mark.skipif(not (RUN / "vllm/requests.jsonl").exists(),
                               reason="shared/calibration (the measured vLLM run) is not next to the repository")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


cal = _load("calibrate_sim")
bench = _load("bench_calibration")


# -- the profile is derived, not fitted -------------------------------------------------------------
def test_roofline_derivation_against_hand_computed_numbers():
    h = {"prefill_a": 4.0, "prefill_b": 2.0, "decode_c": 8.0, "decode_d": 1.0, "decode_e": 5.0, "prefill_f": 3.0}
    # compute 2x slower (1000 -> 500), bandwidth 4x slower (4 -> 1); weights read in 19.2 / (0.8 x 4) = 6
    # of c's 8, so 2 is fixed: c = 2 + 6 x 4 = 26
    out = cal.derive_step(h, peak_from=1000.0, peak_to=500.0, bw_from=4.0, bw_to=1.0, weight_bytes=19.2, bw_eff=0.8)
    assert out == pytest.approx({"prefill_a": 8.0, "prefill_b": 4.0, "prefill_f": 6.0,
                                 "decode_c": 26.0, "decode_d": 4.0, "decode_e": 20.0})
    with pytest.raises(ValueError):  # c below the weight-read floor: the split is meaningless
        cal.derive_step(h, peak_from=1.0, peak_to=1.0, bw_from=1.0, bw_to=1.0, weight_bytes=100.0)


def test_committed_rtx_profile_is_the_h100_profile_moved_by_the_roofline():
    h100, rtx = load_profile("h100-llama3.1-8b"), load_profile("rtxpro6000-llama3.1-8b-vllm")
    derived = cal.derive_step(dataclasses.asdict(h100.step), peak_from=989e12, peak_to=503.8e12,
                              bw_from=3.35e12, bw_to=1.792e12, weight_bytes=8_030_261_248 * 2)
    assert dataclasses.asdict(rtx.step) == pytest.approx(derived, rel=1e-5)  # JSON keeps 6 digits
    # by hand: c = 6.52521 ms - 16.06 GB / (0.8 x 3.35 TB/s) = 0.532 ms fixed + 5.993 ms x 3.35 / 1.792
    assert rtx.step.decode_c == pytest.approx(0.53249e-3 + 5.99274e-3 * 3.35 / 1.792, rel=1e-4)
    assert rtx.step.prefill_b == pytest.approx(h100.step.prefill_b * 989 / 503.8, rel=1e-5)
    assert rtx.step.decode_e == pytest.approx(131072 / (0.8 * 1.792e12), rel=1e-5)  # the KV read, as on H100
    # the run's engine: vLLM max_num_seqs 128, max_num_batched_tokens 2048, no admission reserve
    assert (rtx.max_running_requests, rtx.chunked_prefill_size, rtx.new_token_ratio) == (128, 2048, 0.0)
    assert rtx.kv_capacity_tokens == (int(0.9 * 96 * 2**30) - 8_030_261_248 * 2 - 2 * 2**30) // 131072
    assert rtx.calibration["derived_from"] == "h100-llama3.1-8b"


# -- the scheduler behaves like vLLM's where it matters ---------------------------------------------
def test_fcfs_admission_and_chunked_prefill_mixed_with_decode():
    core = SimCore(load_profile("rtxpro6000-llama3.1-8b-vllm"))
    core.submit(0.0, SimRequest("r0", 100, 50, output_tokens=50))
    core.submit(0.0, SimRequest("r1", 3000, 5, output_tokens=5))
    core.submit(0.0, SimRequest("r2", 10, 5, output_tokens=5))
    steps = []
    while (t := core.next_time()) is not None and len(steps) < 3:
        steps.append(core.current_step())
        core.advance(t)
    # r0 found the engine idle and runs alone; r1 and r2 arrived during that step and wait for the next
    assert steps[0].prefill_rids == ("r0",) and steps[0].n_prefill == 100
    # a step's budget is max_num_batched_tokens: 1 for r0's decode, 2,047 for r1's first chunk; r2 waits
    assert steps[1].decode_rids == ("r0",) and steps[1].prefill_rids == ("r1",) and steps[1].n_prefill == 2047
    # then r1's remaining 953 tokens and r2 (FCFS) are prefilled in the same step as r0's decode
    assert steps[2].decode_rids == ("r0",) and steps[2].prefill_rids == ("r1", "r2")
    assert steps[2].n_prefill == 953 + 10
    assert steps[2].prefill_pairs == 953 * (2047 + 953 / 2) + 10 * 5  # r1's chunk attends to its first 2,047


def test_batch_is_capped_at_max_num_seqs():
    core = SimCore(load_profile("rtxpro6000-llama3.1-8b-vllm"))
    for i in range(130):
        core.submit(0.0, SimRequest(f"r{i:03d}", 10, 100, output_tokens=100))
    running = []
    while (t := core.next_time()) is not None:
        running.append(core.load(t).running)
        core.advance(t)
    assert max(running) == 128


# -- the comparison's arithmetic ----------------------------------------------------------------------
def _timed(scale_first: float, decode_s: float) -> list:
    # five requests arriving at 0 with 11 output tokens: TTFT 100..500 ms (x scale), 10 decode intervals
    return [bench.Timed(f"q{i}", 0.0, 100, 11, 0.1 * i * scale_first, 0.1 * i * scale_first + decode_s)
            for i in range(1, 6)]


def test_comparison_arithmetic_on_a_hand_made_case():
    real, sim = _timed(1.0, 1.0), _timed(1.1, 1.2)
    rows = {(m, s): (r, x, d) for m, s, r, x, d in bench.compare(real, sim)}
    assert len(rows) == 15
    # TTFT 100, 200, 300, 400, 500 ms: p90 interpolates 400 + 0.6 x 100 (numpy's linear percentile)
    assert [rows["ttft", s][0] for s in ("mean", "median", "p90", "p95", "p99")] == pytest.approx(
        [300, 300, 460, 480, 496])
    assert all(rows["ttft", s][2] == pytest.approx(10.0) for s in ("mean", "median", "p90", "p95", "p99"))
    # TPOT = (last - first) / (11 - 1): 100 ms real, 120 ms simulated
    assert rows["tpot", "p99"][:2] == pytest.approx((100.0, 120.0)) and rows["tpot", "mean"][2] == pytest.approx(20.0)
    # E2E mean: real 300 + 1000 ms, simulated 330 + 1200 ms
    assert rows["e2e", "mean"][:2] == pytest.approx((1300.0, 1530.0))
    assert rows["e2e", "mean"][2] == pytest.approx((1530 / 1300 - 1) * 100)


def test_single_token_outputs_have_no_tpot():
    run = [bench.Timed("a", 0.0, 10, 1, 0.5, 0.5), bench.Timed("b", 1.0, 10, 3, 1.5, 1.7)]
    lat = bench.latencies(run)
    assert lat["tpot"] == pytest.approx([100.0]) and lat["ttft"] == pytest.approx([500.0, 500.0])


def test_reference_summary_is_parsed(tmp_path):
    (tmp_path / "summary.txt").write_text(
        "Metric    vLLM    Sim    Diff%\n-----\nTTFT Mean   7097.2   6815.7   -4.0%\n"
        "TPOT P99   37.3   37.6   +0.6%\nLatency Median   29615.6   29248.8   -1.2%\n")
    ref = bench.load_reference_summary(tmp_path / "summary.txt")
    assert ref == {("ttft", "mean"): (7097.2, 6815.7, -4.0), ("tpot", "p99"): (37.3, 37.6, 0.6),
                   ("e2e", "median"): (29615.6, 29248.8, -1.2)}


# -- the replay ---------------------------------------------------------------------------------------
def test_replay_of_a_small_run_file(tmp_path):
    rows = [{"request_id": f"x{i}", "input_toks": 500 + 100 * i, "output_toks": 20, "arrival_time": 1e9 + i,
             "queued_ts": 50.0 + 0.05 * i, "scheduled_ts": 50.0 + 0.05 * i, "first_token_ts": 50.2 + 0.05 * i,
             "last_token_ts": 50.9 + 0.05 * i} for i in range(6)]
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = bench.load_run(tmp_path)
    assert [r.arrival for r in run] == pytest.approx([50.0 + 0.05 * i for i in range(6)])
    prof = load_profile("rtxpro6000-llama3.1-8b-vllm")
    sim = bench.replay_run(prof, run)
    assert [r.arrival for r in sim] == pytest.approx([0.05 * i for i in range(6)])  # origin: the first arrival
    for r in sim:
        assert r.arrival <= r.scheduled < r.first_token < r.last_token
    # the first request arrives at an idle engine: its TTFT is one prefill step of 500 tokens
    assert sim[0].first_token == pytest.approx(prof.step.prefill_time(500))
    assert sim == bench.replay_run(prof, run)


@needs_run
def test_replay_of_the_measured_run_is_deterministic_for_a_seed():
    run = bench.load_run(RUN)
    assert len(run) == 300
    prof = load_profile("rtxpro6000-llama3.1-8b-vllm")
    a, b = bench.replay_run(prof, run, seed=3), bench.replay_run(prof, run, seed=3)
    assert a == b
    assert [r.rid for r in a] == [r.rid for r in sorted(run, key=lambda r: r.arrival)]
    scheduled = [r.scheduled for r in a]
    assert scheduled == sorted(scheduled)  # FCFS, as the real run (its scheduled_ts are in arrival order)
    ref = bench.load_reference_summary(RUN / "validation/summary.txt")
    real_rows = {(m, s): r for m, s, r, _, _ in bench.compare(run, a)}
    for key, (vllm, _, _) in ref.items():  # our arithmetic on the real run gives LLMServingSim's vLLM column
        assert real_rows[key] == pytest.approx(vllm, abs=0.05)


@needs_run
def test_the_check_fails_on_a_profile_that_is_wrong_for_this_gpu(capsys):
    # the H100 step times on the RTX run: queueing collapses, so the comparison must fail
    wrong = dataclasses.replace(load_profile("rtxpro6000-llama3.1-8b-vllm"), step=StepProfile(
        **dataclasses.asdict(load_profile("h100-llama3.1-8b").step)))
    assert bench.check_run(RUN, wrong) is False
    assert "FAIL" in capsys.readouterr().out
