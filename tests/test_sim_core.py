"""Unit tests of the pure simulator model (engine_adapter.sim.core)."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_adapter.base import StepProfile
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import SimProfile, load_profile, zero_delay

A, B, C, D, E = 0.010, 0.001, 0.005, 0.0001, 0.00001


def small_profile(**kw) -> SimProfile:
    base = SimProfile(
        name="test", model="m", gpu="g", step=StepProfile(A, B, C, D, E), kv_capacity_tokens=100_000,
        chunked_prefill_size=64, max_running_requests=64, prefix_block_size=512, prefix_cache_blocks=16,
        new_token_ratio=0.0, f_max_mhz=2000.0, f_min_mhz=500.0, idle_w=100.0, max_w=500.0,
        decode_power_fraction=0.5,
    )
    return dataclasses.replace(base, **kw)


def run_all(core: SimCore, per_token: bool = True, observe=None) -> list[SimEvent]:
    """Advance step by step until idle; `observe(core)` sees every planned step."""
    events: list[SimEvent] = []
    while (t := core.next_time()) is not None:
        if observe:
            observe(core)
        events += core.advance(t, per_token)
    return events + core.advance(float("inf"), per_token)


def finishes(events: list[SimEvent]) -> dict[str, SimEvent]:
    out = {}
    for e in events:
        if e.kind == "finish":
            assert e.rid not in out, "finished twice"
            out[e.rid] = e
    return out


def test_step_time_formula_single_request():
    core = SimCore(small_profile())
    core.submit(0.0, SimRequest("r", 40, 3, output_tokens=3))
    events = run_all(core)
    t1 = A + B * 40  # prefill step: 40 tokens (budget 64)
    t2 = t1 + C + D * 1 + E * 41  # decode: batch 1, 40 prompt + 1 new KV token
    t3 = t2 + C + D * 1 + E * 42
    assert [(e.kind, e.completion_tokens) for e in events] == [("first_token", 1), ("tokens", 2), ("finish", 3)]
    assert [e.time for e in events] == pytest.approx([t1, t2, t3], abs=1e-12)
    assert events[-1].finish_reason == "length"
    assert core.step_time(3, 100, 10) == pytest.approx(C + 3 * D + 100 * E + A + 10 * B)
    assert core.step_time(0, 0, 10) == pytest.approx(A + 10 * B)


def test_chunked_prefill_splits_a_long_prompt_and_mixes_decode():
    core = SimCore(small_profile())
    core.submit(0.0, SimRequest("long", 150, 5, output_tokens=5))
    core.submit(0.0, SimRequest("short", 10, 50, output_tokens=50))
    seen = []
    run_all(core, observe=lambda c: seen.append(c.current_step()))
    budget = 64
    for s in seen:
        assert s.n_decode + s.n_prefill <= max(budget, s.n_decode)
        assert s.end - s.start == pytest.approx(
            (C + D * s.n_decode + E * s.kv_decode if s.n_decode else 0.0) + (A + B * s.n_prefill if s.n_prefill else 0.0))
    # 150 + 10 prompt tokens need ceil(160 / 64) = 3 prefill steps, the last one mixed with decode
    assert [s.n_prefill for s in seen[:3]] == [64, 64, 32]
    assert seen[2].n_decode == 0 and seen[3].n_decode == 2
    assert sum(s.n_prefill for s in seen) == 160


F = 1e-6  # seconds per new token x context token, large enough to dominate these small prompts


def test_each_chunk_pays_attention_over_its_own_context():
    core = SimCore(small_profile(step=StepProfile(A, B, C, D, E, F)))
    core.submit(0.0, SimRequest("long", 150, 1, output_tokens=1))
    seen = []
    run_all(core, observe=lambda c: seen.append(c.current_step()))
    # 150 tokens in chunks of 64, 64, 22 after 0, 64, 128 tokens already in the KV
    assert [(s.n_prefill, s.prefill_pairs) for s in seen] == [(64, 64 * 32), (64, 64 * 96), (22, 22 * 139)]
    for s in seen:
        assert s.end - s.start == pytest.approx(A + B * s.n_prefill + F * s.prefill_pairs)
    # chunking moves attention between steps but not its total: sum of pairs = 150^2 / 2
    assert sum(s.prefill_pairs for s in seen) == pytest.approx(150 * 150 / 2)
    assert core.step_time(0, 0, 10, 500.0) == pytest.approx(A + 10 * B + F * 500)
    assert core.step_time(2, 30, 0, 500.0) == pytest.approx(C + 2 * D + 30 * E)  # no prefill, no attention


def test_cached_prefix_is_context_for_the_computed_tokens():
    core = SimCore(small_profile(step=StepProfile(A, B, C, D, E, F), chunked_prefill_size=8192))
    core.submit(0.0, SimRequest("a", 1024, 1, output_tokens=1, hash_ids=[1, 2]))
    t = run_all(core)[-1].time
    core.submit(t, SimRequest("b", 1100, 1, output_tokens=1, hash_ids=[1, 2, 3]))
    step = core.current_step()
    # b hits 1024 cached tokens and computes 76 that attend to them (not free: the KV is read)
    assert step.n_prefill == 76 and step.prefill_pairs == 76 * (1024 + 38)
    first = next(e for e in run_all(core) if e.kind == "first_token")
    assert first.cached_tokens == 1024
    assert first.time - t == pytest.approx(A + B * 76 + F * 76 * (1024 + 38))


def test_budget_shrinks_with_decoders():
    core = SimCore(small_profile(chunked_prefill_size=16))
    for i in range(10):
        core.submit(0.0, SimRequest(f"d{i}", 1, 100, output_tokens=100))
    core.submit(0.0, SimRequest("big", 200, 2, output_tokens=2))
    seen = []
    run_all(core, observe=lambda c: seen.append(c.current_step()))
    assert any(s.n_decode == 10 and s.n_prefill == 6 for s in seen)  # 16 - 10 decoders
    assert all(s.n_decode + s.n_prefill <= 16 for s in seen)


def test_retraction_under_kv_pressure_retracts_newest_and_recomputes():
    core = SimCore(small_profile(kv_capacity_tokens=300, chunked_prefill_size=512))
    for i in range(4):
        core.submit(0.0, SimRequest(f"r{i}", 50, 100, output_tokens=100))
    used = []
    first_retraction: list[str] = []

    def observe(c: SimCore) -> None:
        used.append(c.load(0.0).used_tokens)
        if c.stats.retractions and not first_retraction:
            first_retraction.append(next(r for r in ("r3", "r2", "r1", "r0") if c._reqs[r].retractions))

    events = run_all(core, observe=observe)
    fin = finishes(events)
    assert set(fin) == {"r0", "r1", "r2", "r3"}
    assert all(e.completion_tokens == 100 and e.finish_reason == "length" for e in fin.values())
    assert core.stats.retractions > 0 and fin["r3"].num_retractions > 0
    assert first_retraction == ["r3"]  # the newest goes first
    assert fin["r0"].num_retractions == 0  # the oldest is never retracted
    assert max(used) <= 300
    assert core.load(1e9).used_tokens == 0
    # recompute costs prefill: more prefill tokens computed than prompts submitted
    assert core.stats.prefill_tokens > 4 * 50


def test_decode_growth_never_eats_kv_committed_to_a_chunked_prefill():
    core = SimCore(small_profile(kv_capacity_tokens=200, chunked_prefill_size=11))
    core.submit(0.0, SimRequest("dec", 10, 150, output_tokens=150))
    events = []
    for _ in range(10):
        events += core.advance(core.next_time())
    now = core.next_time() - 1e-9
    core.submit(now, SimRequest("pre", 170, 5, output_tokens=5))  # 10-token chunks over 17 steps
    used = []
    events += run_all(core, observe=lambda c: used.append(c.load(0).used_tokens))
    assert max(used) <= 200
    fin = finishes(events)
    assert fin["dec"].completion_tokens == 150 and fin["pre"].completion_tokens == 5
    assert fin["pre"].num_retractions >= 1  # the newest gave way while "dec" kept decoding
    assert fin["dec"].num_retractions == 0


def test_request_alone_reaching_kv_capacity_stops_with_length():
    core = SimCore(small_profile(kv_capacity_tokens=100))
    core.submit(0.0, SimRequest("r", 90, 1000, output_tokens=1000))
    fin = finishes(run_all(core))["r"]
    assert fin.finish_reason == "length" and fin.completion_tokens < 1000
    assert core.load(1e9).used_tokens == 0


def test_prompt_longer_than_capacity_is_aborted():
    core = SimCore(small_profile(kv_capacity_tokens=100))
    core.submit(0.0, SimRequest("huge", 100, 5))
    ev = core.advance(0.0)
    assert [(e.rid, e.kind, e.finish_reason) for e in ev] == [("huge", "finish", "abort")]
    assert core.next_time() is None


def test_prefix_cache_hits_cut_computed_tokens_and_ttft():
    core = SimCore(small_profile(chunked_prefill_size=8192))
    core.submit(0.0, SimRequest("a", 2048, 2, output_tokens=2, hash_ids=[1, 2, 3, 4]))
    ev_a = run_all(core)
    t0 = ev_a[-1].time + 1.0
    core.advance(t0)
    core.submit(t0, SimRequest("b", 2048, 2, output_tokens=2, hash_ids=[1, 2, 3, 4]))
    core.submit(t0, SimRequest("c", 1500, 2, output_tokens=2, hash_ids=[1, 2, 9]))
    ev = run_all(core)
    first = {e.rid: e for e in ev if e.kind == "first_token"}
    assert first["b"].cached_tokens == 2047  # all 4 blocks, but one token is always computed
    assert first["c"].cached_tokens == 1024  # blocks 1, 2 then a miss
    assert ev_a[0].cached_tokens == 0
    # b starts alone at the idle engine and computes 1 token; c (476 computed) joins the next step
    assert first["b"].time - t0 == pytest.approx(A + B * 1)
    assert first["c"].time - first["b"].time == pytest.approx(C + D + E * 2049 + A + B * 476)
    assert ev_a[0].time == pytest.approx(A + B * 2048)
    assert core.stats.prefill_tokens == 2048 + 1 + 476
    assert core.load(1e9).cache_hit_rate == pytest.approx((2047 + 1024) / (2048 + 2048 + 1500))


def test_prefix_cache_is_lru_bounded():
    core = SimCore(small_profile(prefix_cache_blocks=2))
    t = 0.0
    for rid, ids in (("a", [1, 2]), ("b", [3, 4])):
        core.submit(t, SimRequest(rid, 1024, 1, output_tokens=1, hash_ids=ids))
        t = run_all(core)[-1].time
    core.submit(t, SimRequest("c", 1024, 1, output_tokens=1, hash_ids=[1, 2]))
    assert [e.cached_tokens for e in run_all(core) if e.kind == "finish"] == [0]  # evicted by b


def test_abort_frees_kv_and_reports_abort():
    core = SimCore(small_profile())
    core.submit(0.0, SimRequest("a", 100, 1000, output_tokens=1000))
    core.submit(0.0, SimRequest("b", 100, 1000, output_tokens=1000))
    for _ in range(5):
        core.advance(core.next_time())
    now = core.next_time() - 1e-6
    used_before = core.load(now).used_tokens
    assert used_before > 200
    assert core.abort(now, "a") is True
    assert core.load(now).used_tokens < used_before - 100
    assert core.abort(now, "a") is False and core.abort(now, "nope") is False
    ev = core.advance(now)
    assert [(e.rid, e.finish_reason) for e in ev] == [("a", "abort")] and ev[0].completion_tokens > 0
    assert core.abort(now, "b")
    run_all(core)
    assert core.load(1e9).used_tokens == 0 and core.load(1e9).running == 0 and core.active() == 0


def test_abort_waiting_request():
    core = SimCore(small_profile(max_running_requests=1))
    core.submit(0.0, SimRequest("a", 10, 10, output_tokens=10))
    core.submit(0.0, SimRequest("b", 10, 10, output_tokens=10))
    assert core.load(0.0).waiting == 1 and core.load(0.0).waiting_uncached_tokens == 10
    assert core.abort(0.0, "b")
    assert core.load(0.0).waiting == 0 and core.load(0.0).waiting_uncached_tokens == 0
    fin = finishes(run_all(core))
    assert fin["b"].finish_reason == "abort" and fin["b"].completion_tokens == 0
    assert fin["a"].completion_tokens == 10


def test_max_running_and_priority_order():
    core = SimCore(small_profile(max_running_requests=1))
    core.submit(0.0, SimRequest("first", 10, 3, output_tokens=3))
    core.submit(0.0, SimRequest("low", 10, 3, output_tokens=3, priority=0))
    core.submit(0.0, SimRequest("high", 10, 3, output_tokens=3, priority=5))
    core.submit(0.0, SimRequest("low2", 10, 3, output_tokens=3))
    counts = []
    order = [e.rid for e in run_all(core, observe=lambda c: counts.append(c.load(0).running)) if e.kind == "finish"]
    assert order == ["first", "high", "low", "low2"]
    assert max(counts) == 1


def test_output_lengths_drawn_from_seed_and_rid():
    def lengths(seed: int) -> dict[str, tuple[int, str]]:
        core = SimCore(small_profile(chunked_prefill_size=4096, max_running_requests=512), seed=seed)
        for i in range(200):
            core.submit(0.0, SimRequest(f"q{i}", 5, 400))
        return {r: (e.completion_tokens, e.finish_reason) for r, e in finishes(run_all(core, per_token=False)).items()}

    a, b, c = lengths(1), lengths(1), lengths(2)
    assert a == b
    assert a != c
    assert all(1 <= n <= 400 for n, _ in a.values())
    assert all((reason == "length") == (n == 400) for n, reason in a.values())
    assert 0 < sum(reason == "length" for _, reason in a.values()) < 100  # a tail, not the rule
    assert len({n for n, _ in a.values()}) > 50  # a spread of lengths


def test_zero_max_new_tokens_finishes_after_prefill():
    core = SimCore(small_profile())
    core.submit(0.0, SimRequest("z", 10, 0, output_tokens=5))
    ev = run_all(core)
    assert [(e.kind, e.completion_tokens, e.finish_reason) for e in ev] == [("finish", 0, "length")]


def workload(core: SimCore, n: int = 60) -> None:
    for i in range(n):
        core.submit(0.0, SimRequest(f"w{i}", 20 + (i * 37) % 300, 200, output_tokens=(i * 53) % 180,
                                    hash_ids=[i % 3, 100 + i]))


def test_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        core = SimCore(small_profile(kv_capacity_tokens=4000), seed=7)
        workload(core)
        runs.append(run_all(core))
    assert runs[0] == runs[1] and len(runs[0]) > 100


def test_per_token_false_emits_first_token_and_finish_only_at_identical_times():
    def go(per_token: bool) -> list[SimEvent]:
        core = SimCore(small_profile(kv_capacity_tokens=4000), seed=3)
        workload(core)
        return core.advance(float("inf"), per_token=per_token)

    full, sparse = go(True), go(False)
    assert {e.kind for e in sparse} == {"first_token", "finish"}
    assert "tokens" in {e.kind for e in full}
    kept = [e for e in full if e.kind != "tokens"]

    def exact(e: SimEvent) -> tuple:  # everything but the attributed GPU time/energy (float sums)
        return dataclasses.replace(e, gpu_seconds=0.0, energy_j=0.0)

    assert [exact(e) for e in sparse] == [exact(e) for e in kept]  # same events, same times, bit for bit
    assert [e.gpu_seconds for e in sparse] == pytest.approx([e.gpu_seconds for e in kept])
    assert [e.energy_j for e in sparse] == pytest.approx([e.energy_j for e in kept])
    assert len(finishes(sparse)) == 60


def test_advance_stops_at_until():
    core = SimCore(small_profile())
    core.submit(0.0, SimRequest("r", 10, 100, output_tokens=100))
    ev = core.advance(0.1, per_token=False)
    assert all(e.time <= 0.1 for e in ev)
    assert core.next_time() > 0.1
    rest = core.advance(float("inf"), per_token=False)
    assert rest and rest[-1].kind == "finish" and rest[-1].completion_tokens == 100


def test_a_long_virtual_run_finishes_every_request_once():
    """(How much faster than real time it runs is bench/bench_sim_clock.py's question.)"""
    core = SimCore(load_profile("h100-llama3.1-8b"), seed=0)
    events: list[SimEvent] = []
    for i in range(2000):  # 2,000 requests arriving over 400 simulated seconds
        t = i * 0.2
        events += core.advance(t, per_token=False)
        core.submit(t, SimRequest(f"v{i}", 500 + (i * 131) % 2000, 400, output_tokens=(i * 97) % 400 + 1))
    events += core.advance(float("inf"), per_token=False)
    done = finishes(events)  # (and none twice)
    assert sorted(done) == sorted(f"v{i}" for i in range(2000))
    assert all(e.completion_tokens == (int(rid[1:]) * 97) % 400 + 1 for rid, e in done.items())
    assert max(e.time for e in events) > 400


def test_frequency_scales_step_time_and_power():
    prof = small_profile()
    core = SimCore(prof)
    assert core.set_frequency(100.0) == prof.f_min_mhz  # clamped
    assert core.set_frequency(1000.0) == 1000.0
    core.submit(0.0, SimRequest("r", 40, 1, output_tokens=1))
    step = core.current_step()
    assert step.end - step.start == pytest.approx(2 * (A + B * 40))
    g = core.gpu(step.start + 1e-3)
    assert g["sm_clock_mhz"] == 1000.0 and g["utilization"] == 1.0
    busy_w = 100 + 400 * (1 - prof.sm_power_share + prof.sm_power_share * 0.5**3)  # the clock-scaled share only
    assert g["power_w"] == pytest.approx(busy_w)
    run_all(core)
    idle = core.gpu(10.0)
    assert idle["utilization"] == 0.0 and idle["power_w"] == 100.0
    busy_j = busy_w * 2 * (A + B * 40)
    assert idle["energy_j"] == pytest.approx(busy_j + 100 * (10.0 - 2 * (A + B * 40)))
    assert core.gpu(20.0)["energy_j"] > idle["energy_j"]


def test_decode_is_memory_bound_prefill_compute_bound():
    """At half the clock a prefill takes twice as long, a decode step only 1 + phi longer (its HBM
    reads do not follow the SM clock), and a decode-only step draws less than a prefill one."""
    prof = small_profile()
    core = SimCore(prof)
    full = (core.step_time(8, 800, 0), core.step_time(0, 0, 40))
    core.set_frequency(prof.f_max_mhz / 2)
    half = (core.step_time(8, 800, 0), core.step_time(0, 0, 40))
    assert half[1] == pytest.approx(2 * full[1])
    assert half[0] == pytest.approx((1 + prof.decode_clock_share) * full[0])
    clock = prof.clock
    assert clock.power_w(1000.0, False) < clock.power_w(1000.0, True) < clock.power_w(2000.0, True) == prof.max_w
    # the dynamic energy of a prefill is U-shaped in the clock: the f-independent power is paid longer
    energy = [clock.dynamic_w(f, True) * clock.prefill_scale(f) for f in (500.0, 1200.0, 2000.0)]
    assert energy[1] < energy[0] and energy[1] < energy[2]


def test_gpu_readings_have_nvml_fields():
    g = SimCore(load_profile("h100-llama3.1-8b")).gpu(0.0)
    assert set(g) == {"power_w", "energy_j", "sm_clock_mhz", "utilization", "memory_used_bytes", "memory_total_bytes"}
    assert 0 < g["memory_used_bytes"] < g["memory_total_bytes"]


def test_zero_delay_profile_completes_in_no_time():
    prof = zero_delay()
    assert prof.step.decode_c == 0 and prof.kv_capacity_tokens > 0
    core = SimCore(prof)
    for i in range(100):
        core.submit(5.0, SimRequest(f"z{i}", 100, 50, output_tokens=50))
    ev = core.advance(5.0)
    fin = finishes(ev)
    assert len(fin) == 100 and all(e.time == 5.0 and e.completion_tokens == 50 for e in fin.values())
    assert core.next_time() is None


def test_default_profile_loads_and_matches_calibration_claims():
    prof = load_profile("h100-llama3.1-8b")
    s = prof.step
    assert 0.005 < s.decode_c < 0.0074  # <= 7.4 ms: SGLang's bs=1 floor of 135 tok/s
    assert 0 < s.prefill_b < 0.00003 and 0 < s.decode_e < 1e-7
    # attention between the FLOPs floor at H100's peak (5.3e-10 s per token pair) and 10x it
    assert 5.3e-10 < s.prefill_f < 5.3e-9
    assert prof.kv_capacity_tokens > 400_000 and prof.chunked_prefill_size == 8192
    with pytest.raises(FileNotFoundError):
        load_profile("no-such-profile")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reqs=st.lists(st.tuples(st.integers(1, 120), st.integers(0, 60), st.integers(0, 80), st.integers(0, 3)),
                  min_size=1, max_size=14),
    cap=st.integers(150, 600),
    chunk=st.integers(1, 64),
    per_token=st.booleans(),
)
def test_invariants_random_workloads(reqs, cap, chunk, per_token):
    core = SimCore(small_profile(kv_capacity_tokens=cap, chunked_prefill_size=chunk, max_running_requests=6,
                                 new_token_ratio=0.2), seed=1)
    expected = {}
    events: list[SimEvent] = []
    for i, (prompt, max_new, out, when) in enumerate(sorted(reqs, key=lambda r: r[3])):
        rid = f"h{i}"
        events += core.advance(float(when), per_token)  # arrivals spread over a few seconds
        core.submit(float(when), SimRequest(rid, prompt, max_new, output_tokens=out, hash_ids=[i % 2]))
        expected[rid] = min(out, max_new)

    def observe(c: SimCore) -> None:
        assert c.load(0).used_tokens <= cap
        s = c.current_step()
        assert s.n_prefill <= max(0, chunk - s.n_decode)

    events += run_all(core, per_token, observe)
    times = [e.time for e in events]
    assert times == sorted(times)
    fin = finishes(events)
    for rid, n in expected.items():
        if fin[rid].finish_reason != "abort":  # only an oversized prompt is aborted
            assert fin[rid].completion_tokens == n or fin[rid].finish_reason == "length"
    assert core.load(1e9).used_tokens == 0 and core.active() == 0


SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.mark.skipif(not (SHARED / "calibration" / "SOURCES.md").exists(),
                    reason="shared/calibration (the public calibration data) is not next to the repository")
def test_calibration_script_reproduces_the_committed_profile(capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "calibrate_sim.py"
    spec = importlib.util.spec_from_file_location("calibrate_sim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, capsys.readouterr().out
