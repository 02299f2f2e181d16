"""`sluice replay --live URL --fidelity PROFILE` (replay/fidelity.py, replay/live_command.py): a workload
sent over loopback HTTP to the simulated engine behind SGLang's API, recorded as requests.jsonl, then
the same requests simulated and compared. The sim-server runs on its wall clock (20x fast here), so
real and simulated figures differ: the tests hold the structure and the arithmetic, not closeness."""
from __future__ import annotations

import json
import re

import pytest

from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from replay.fidelity import (
    Timed,
    compare,
    comparison_lines,
    from_live,
    live_comparison,
    load_run,
    replay_run,
    write_run,
)
from replay.report import CANCELLED, ERROR, OK, RequestResult
from replay.workload import WorkloadRequest, write_workload
from sluice.cli import main
from tests.servers import ServerThread

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROFILE = "h100-llama3.1-8b"
ROW = re.compile(r"^ +(ttft|tpot|e2e)\s+(mean|median|p90|p95|p99)\s+([-\d.]+)\s+([-\d.]+)\s+([-+\d.inf]+)%(.*)$")


@pytest.fixture
def sim_server():
    """`sluice sim-server` in-process: the H100 profile 20x faster than real time."""
    with ServerThread(make_sglang_app(SimEngine("sim", load_profile(PROFILE), seed=1, speedup=20.0),
                                      model_name=MODEL)) as server:
        yield server.url


def workload(n: int = 30) -> list[WorkloadRequest]:
    # prompts 60..350 tokens, outputs 5..16 tokens (one of 1 token: no TPOT for it), every 40 ms
    return [WorkloadRequest(i * 40.0, 60 + 10 * i, 1 if i == 3 else 5 + i % 12, ("acme", "globex")[i % 2])
            for i in range(n)]


def test_fidelity_against_the_sim_server(sim_server, tmp_path, capsys):
    wl = workload()
    write_workload(tmp_path / "w.jsonl", wl)
    recorded, out = tmp_path / "requests.jsonl", tmp_path / "run.json"
    rc = main(["replay", "--live", sim_server, "--workload", str(tmp_path / "w.jsonl"), "--speedup", "4",
               "--fidelity", PROFILE, "--requests-out", str(recorded), "--json", str(out)])
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["completed"] == 30

    # the recorded file: one line per request, in send order, times from the run's start
    lines = [json.loads(x) for x in recorded.read_text().splitlines()]
    assert len(lines) == 30 and len({r["request_id"] for r in lines}) == 30
    sent = {f"live-{r['index']}": r for r in doc["requests"]}
    for r in lines:
        live = sent[r["request_id"]]
        assert 0 <= r["queued_ts"] < r["first_token_ts"] <= r["last_token_ts"] and r["scheduled_ts"] is None
        assert r["queued_ts"] == pytest.approx(live["sent_ms"] / 1e3)
        assert r["first_token_ts"] - r["queued_ts"] == pytest.approx(live["ttft_ms"] / 1e3)
        assert r["last_token_ts"] - r["queued_ts"] <= live["e2e_ms"] / 1e3 + 1e-9  # the stream ends after its last token
        assert r["arrival_time"] == pytest.approx(doc["started_unix"] + r["queued_ts"])
        assert r["input_toks"] == live["input_tokens"] > 0
        # --fidelity implied ignore_eos (the server is SGLang): every workload length was generated
        assert r["output_toks"] == wl[live["index"]].output_length
    assert [r["queued_ts"] for r in lines] == sorted(r["queued_ts"] for r in lines)

    # the table: 15 rows, each the arithmetic of the recorded file against its replay on the profile
    assert f"fidelity: 30 completed requests replayed on {PROFILE}" in text
    rows = {(m.group(1), m.group(2)): m.groups()[2:] for m in map(ROW.match, text.splitlines()) if m}
    real = load_run(recorded)
    expected = compare(real, replay_run(load_profile(PROFILE), real))
    assert len(rows) == len(expected) == 15
    for metric, stat, r, s, d in expected:
        shown = rows[metric, stat]
        assert float(shown[0]) == pytest.approx(r, abs=0.051) and float(shown[1]) == pytest.approx(s, abs=0.051)
        assert float(shown[2]) == pytest.approx(d, abs=0.051)
        assert ("off by more than 10 %" in shown[3]) == (abs(d) > 10)
    off = any(abs(d) > 10 for *_, d in expected)
    assert ("FAIL" if off else "PASS") in text and rc == (1 if off else 0)


def _hand_made(ttft_scale: float, decode_s: float) -> list[Timed]:
    # five requests of 11 output tokens: TTFT 100..500 ms (x scale), decode_s from first to last token
    return [Timed(f"q{i}", 1.0 * i, 100, 11, 1.0 * i + 0.1 * i * ttft_scale, 1.0 * i + 0.1 * i * ttft_scale + decode_s)
            for i in range(1, 6)]


def test_comparison_arithmetic_and_the_flag_on_a_hand_made_case():
    # simulated: TTFT +8 % (not flagged), TPOT 100 -> 125 ms (+25 %, flagged)
    lines, good = comparison_lines(_hand_made(1.0, 1.0), _hand_made(1.08, 1.25), sim_label="simulated")
    rows = {(m.group(1), m.group(2)): m.groups()[2:] for m in map(ROW.match, lines) if m}
    assert len(rows) == 15 and not good
    assert rows["ttft", "p90"][:3] == ("460.0", "496.8", "+8.0")  # numpy's linear p90: 400 + 0.6 x 100
    assert not any(rows["ttft", s][3] for s in ("mean", "median", "p90", "p95", "p99"))
    assert rows["tpot", "mean"][:3] == ("100.0", "125.0", "+25.0") and "off by more than 10 %" in rows["tpot", "mean"][3]
    # E2E mean: real 300 + 1000 ms, simulated 324 + 1250 ms: +21.1 %
    assert rows["e2e", "mean"][:3] == ("1300.0", "1574.0", "+21.1")
    assert lines[-1].endswith("largest |diff| 25.0 %   FAIL") and "every simulated figure within 10 %" in lines[-1]
    lines, good = comparison_lines(_hand_made(1.0, 1.0), _hand_made(0.95, 1.05))
    assert good and lines[-1].endswith("largest |diff| 5.0 %   PASS") and not any("off by" in x for x in lines)


def test_zero_real_figures_and_single_token_runs():
    # every token in one chunk: a real TPOT of 0 is infinitely off, not a division by zero
    real = [Timed("a", 0.0, 10, 3, 0.5, 0.5)]
    lines, good = comparison_lines(real, [Timed("a", 0.0, 10, 3, 0.5, 0.6)])
    assert not good and any(x.startswith("   tpot   mean") and "+inf%" in x and "off by" in x for x in lines)
    # no request with two output tokens: no TPOT rows, said so
    one = [Timed("a", 0.0, 10, 1, 0.5, 0.5)]
    lines, good = comparison_lines(one, one)
    assert good and "   tpot   (no request with more than one output token)" in lines
    assert not any(x.startswith("   tpot   mean") for x in lines)


def test_a_live_run_becomes_a_run_file(tmp_path):
    results = [
        RequestResult("t", OK, index=1, sent_s=0.25, ttft_s=0.04, e2e_s=0.3, itl_s=[0.1, 0.12],
                      input_tokens=0, output_tokens=3),
        RequestResult("t", OK, index=0, sent_s=0.0, ttft_s=0.02, e2e_s=0.1, input_tokens=7, output_tokens=1),
        RequestResult("t", ERROR, index=2, sent_s=0.26, e2e_s=0.005, error="HTTP 500: boom"),
        RequestResult("t", CANCELLED, index=3, sent_s=0.27, ttft_s=0.01, output_tokens=2),
    ]
    run = from_live(results)
    # send order; last token = first + the ITLs; a prompt without usage counts as 1 token
    assert run == [Timed("live-0", 0.0, 7, 1, 0.02, 0.02), Timed("live-1", 0.25, 1, 3, 0.29, 0.29 + 0.22)]
    path = tmp_path / "requests.jsonl"
    write_run(path, run, wall_origin=1000.0)
    assert load_run(path) == run
    assert json.loads(path.read_text().splitlines()[1])["arrival_time"] == pytest.approx(1000.25)
    lines, _ = live_comparison(results, load_profile(PROFILE), not_sent=4)
    assert lines[0].startswith(f"fidelity: 2 completed requests replayed on {PROFILE}")
    assert lines[1] == "  6 request(s) did not complete and are on neither side"
    with pytest.raises(ValueError, match="no request completed"):
        live_comparison(results[2:], load_profile(PROFILE))


def test_the_simulated_side_is_deterministic_for_a_seed():
    run = [Timed(f"r{i}", 0.03 * i, 200 + 37 * i, 20 + i, 0.0, 0.0) for i in range(40)]
    prof = load_profile(PROFILE)
    a, b = replay_run(prof, run, seed=7), replay_run(prof, run, seed=7)
    assert a == b and [r.output_tokens for r in a] == [20 + i for i in range(40)]
    assert all(r.arrival <= r.scheduled < r.first_token < r.last_token for r in a)


def test_a_profile_that_cannot_serve_the_run_is_a_clear_error():
    with pytest.raises(ValueError, match=r"1 request\(s\) got no token on profile h100-llama3.1-8b, e.g. big "
                                         r"\(abort: prompt longer than the KV capacity\)"):
        replay_run(load_profile(PROFILE), [Timed("big", 0.0, 10**8, 5, 0.0, 0.0)])


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    write_workload(tmp_path / "w.jsonl", workload(2))
    # an unknown profile is refused before anything is sent (nothing listens on this URL)
    assert main(["replay", "--live", "http://127.0.0.1:9", "--workload", str(tmp_path / "w.jsonl"),
                 "--fidelity", "no-such-gpu"]) == 2
    assert "sluice replay: --fidelity no-such-gpu: no simulator profile 'no-such-gpu'" in capsys.readouterr().err
    # a live flag with the what-if replay is refused, not ignored
    assert main(["replay", "--db", str(tmp_path / "x.duckdb"), "--policy", "vtc", "--fidelity", PROFILE]) == 2
    assert "--fidelity belong to the live replay (--live)" in capsys.readouterr().err


def test_a_requests_out_in_a_missing_folder_is_refused_before_sending(tmp_path, capsys):
    write_workload(tmp_path / "w.jsonl", workload(2))
    rc = main(["replay", "--live", "http://127.0.0.1:9", "--workload", str(tmp_path / "w.jsonl"),
               "--requests-out", str(tmp_path / "no" / "such.jsonl")])
    assert rc == 2 and f"--requests-out {tmp_path / 'no' / 'such.jsonl'}: no folder {tmp_path / 'no'}" \
        in capsys.readouterr().err
