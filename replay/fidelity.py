"""The simulated engine against a measured run, request by request: TTFT, TPOT and E2E side by side.

A run is a list of `Timed` requests (arrival, first-token and last-token times, input and output
tokens), read from or written to LLMServingSim's ``requests.jsonl`` format. `replay_run` submits the
same requests (arrival times, prompt and output lengths) to a `SimCore` on a virtual clock;
`compare` and `comparison_lines` put the two runs' figures side by side with the difference in
percent. Used by ``bench/bench_calibration.py --only-run`` (a measured vLLM run) and by ``sluice
replay --live URL --fidelity PROFILE`` (a run it measures itself, client side).
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.profile import SimProfile
from replay.report import OK, RequestResult

__all__ = ["METRICS", "STATS", "TOLERANCE_PCT", "Timed", "compare", "comparison_lines", "from_live",
           "latencies", "live_comparison", "load_run", "replay_run", "summarize", "write_run"]

TOLERANCE_PCT = 10.0  # issue 16's target: every figure within 10 % of the real one
METRICS = ("ttft", "tpot", "e2e")
STATS = ("mean", "median", "p90", "p95", "p99")


@dataclass(frozen=True, slots=True)
class Timed:
    """One request of a run, real or simulated: seconds on one clock (any origin)."""

    rid: str
    arrival: float  # entered the engine's queue (the real run's queued_ts): what TTFT counts from
    input_tokens: int
    output_tokens: int
    first_token: float
    last_token: float
    scheduled: float | None = None  # first step that computed part of its prompt


def load_run(path: Path) -> list[Timed]:
    """A run in LLMServingSim's requests.jsonl format (a file, or a folder holding one or vllm/requests.jsonl)."""
    if path.is_dir():
        path = path / "requests.jsonl" if (path / "requests.jsonl").exists() else path / "vllm" / "requests.jsonl"
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.append(Timed(str(r["request_id"]), float(r["queued_ts"]), int(r["input_toks"]), int(r["output_toks"]),
                             float(r["first_token_ts"]), float(r["last_token_ts"]),
                             None if r.get("scheduled_ts") is None else float(r["scheduled_ts"])))
    return out


def write_run(path: Path, run: Sequence[Timed], wall_origin: float | None = None) -> None:
    """`run` as requests.jsonl (what `load_run` reads); `arrival_time` = wall_origin + arrival (Unix
    seconds) when the run's clock has a known wall-clock origin, else null."""
    with path.open("w") as f:
        for r in run:
            f.write(json.dumps({
                "request_id": r.rid, "input_toks": r.input_tokens, "output_toks": r.output_tokens,
                "arrival_time": None if wall_origin is None else wall_origin + r.arrival,
                "queued_ts": r.arrival, "scheduled_ts": r.scheduled,
                "first_token_ts": r.first_token, "last_token_ts": r.last_token}) + "\n")


def from_live(results: Sequence[RequestResult]) -> list[Timed]:
    """The completed requests of a live run, in send order, seconds from its start (client side):
    arrival = send, first token = send + TTFT, last token = the last streamed chunk (first + ITLs;
    the end of the stream can come later, with the usage chunk). Not completed: not part of it."""
    out = []
    for r in sorted(results, key=lambda r: (r.sent_s or 0.0, r.index)):
        if r.status != OK or r.sent_s is None or r.ttft_s is None:
            continue
        first = r.sent_s + r.ttft_s
        # the prompt is at least one word (live.synth_prompt) when the server reports no usage
        out.append(Timed(f"live-{r.index}", r.sent_s, max(1, r.input_tokens), r.output_tokens, first,
                         first + sum(r.itl_s)))
    return out


def replay_run(profile: SimProfile, run: Sequence[Timed], seed: int = 0) -> list[Timed]:
    """The run's requests (arrival times, prompt and output lengths) through SimCore on a virtual clock.

    Steps are completed one at a time so that each request's first prefill step (its scheduled time)
    can be read from the step plan; event times are the same as when advancing straight to arrivals.
    """
    core = SimCore(profile, seed=seed)
    t0 = min(r.arrival for r in run)
    order = sorted(run, key=lambda r: (r.arrival, r.rid))
    scheduled: dict[str, float] = {}
    events: list[SimEvent] = []

    def note_step() -> None:
        step = core.current_step()
        if step is not None:
            for rid in step.prefill_rids:
                scheduled.setdefault(rid, step.start)

    i = 0
    while True:
        end, arrival = core.next_time(), order[i].arrival - t0 if i < len(order) else math.inf
        if end is not None and end <= arrival:  # a step ending at an arrival completes before it is queued
            note_step()
            events += core.advance(end, per_token=False)
        elif i < len(order):
            r = order[i]
            events += core.advance(arrival, per_token=False)
            core.submit(arrival, SimRequest(r.rid, r.input_tokens, r.output_tokens, output_tokens=r.output_tokens))
            i += 1
        else:
            break
    events += core.advance(math.inf, per_token=False)  # idle: only what submit() left pending (aborts)
    first = {e.rid: e.time for e in events if e.kind == "first_token"}
    last = {e.rid: e.time for e in events if e.kind == "finish"}
    lost = [e for e in events if e.kind == "finish" and e.rid not in first]
    if lost:  # e.g. a prompt longer than the profile's KV capacity: the profile cannot serve this run
        raise ValueError(f"{len(lost)} request(s) got no token on profile {profile.name}, e.g. {lost[0].rid} "
                         f"({lost[0].finish_reason}: {lost[0].message or 'no reason given'})")
    return [Timed(r.rid, r.arrival - t0, r.input_tokens, r.output_tokens, first[r.rid], last[r.rid],
                  scheduled.get(r.rid)) for r in order]


def latencies(run: Sequence[Timed]) -> dict[str, list[float]]:
    """Per request, ms: TTFT = first token - arrival, TPOT = (last - first) / (output - 1) (requests
    with more than one output token), E2E = last token - arrival (vLLM's and LLMServingSim's)."""
    return {
        "ttft": [(r.first_token - r.arrival) * 1e3 for r in run],
        "tpot": [(r.last_token - r.first_token) / (r.output_tokens - 1) * 1e3 for r in run if r.output_tokens > 1],
        "e2e": [(r.last_token - r.arrival) * 1e3 for r in run],
    }


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, median and p90/p95/p99 (linear interpolation between order statistics, numpy's default)."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "median": float(np.median(v)),
            **{f"p{q}": float(np.percentile(v, q)) for q in (90, 95, 99)}}


def diff_pct(real: float, sim: float) -> float:
    """The simulated figure's difference in % of the real one (a real 0: 0 if equal, else infinite)."""
    if real == 0:
        return 0.0 if sim == 0 else math.copysign(math.inf, sim)
    return (sim / real - 1.0) * 100.0


def compare(real: Sequence[Timed], sim: Sequence[Timed]) -> list[tuple[str, str, float, float, float]]:
    """(metric, stat, real, simulated, difference in % of real) for every metric and statistic; a
    metric without values on either side (TPOT when no request has two output tokens) has no rows."""
    rl, sl = latencies(real), latencies(sim)
    rows = []
    for m in METRICS:
        if rl[m] and sl[m]:
            rs, ss = summarize(rl[m]), summarize(sl[m])
            rows += [(m, st, rs[st], ss[st], diff_pct(rs[st], ss[st])) for st in STATS]
    return rows


def comparison_lines(real: Sequence[Timed], sim: Sequence[Timed], *, sim_label: str = "sluice",
                     reference: Mapping[tuple[str, str], tuple[float, float, float]] | None = None,
                     reference_label: str = "LLMServingSim", tolerance_pct: float = TOLERANCE_PCT,
                     indent: str = "   ") -> tuple[list[str], bool]:
    """The side-by-side table (real, an optional reference simulator's figure and diff, ours and its
    diff; a figure off by more than the tolerance is marked), the verdict line, and the queue-wait and
    FCFS lines where both runs have scheduled times. Returns the lines and whether every figure is
    within the tolerance."""
    ref_head = f" {reference_label:>14} {'diff':>7}" if reference is not None else ""
    lines = [f"{indent}{'metric':<6} {'stat':<6} {'real':>10}{ref_head} {sim_label:>10} {'diff':>7}"]
    rows = compare(real, sim)
    worst = 0.0
    for m, st, r, s_, d in rows:
        theirs = ""
        if reference is not None:
            their = reference.get((m, st))
            theirs = f" {their[1]:14.1f} {their[2]:+6.1f}%" if their else f" {'-':>14} {'':>7}"
        mark = f"  <- off by more than {tolerance_pct:g} %" if abs(d) > tolerance_pct else ""
        lines.append(f"{indent}{m:<6} {st:<6} {r:10.1f}{theirs} {s_:10.1f} {d:+6.1f}%{mark}")
        worst = max(worst, abs(d))
    lines += [f"{indent}{m:<6} (no request with more than one output token)"
              for m in METRICS if not any(row[0] == m for row in rows)]
    good = bool(rows) and worst <= tolerance_pct
    lines.append(f"{indent}every {sim_label} figure within {tolerance_pct:.0f} %: largest |diff| {worst:.1f} %"
                 f"   {'PASS' if good else 'FAIL'}")
    return lines + _schedule_lines(real, sim, sim_label, indent), good


def live_comparison(results: Sequence[RequestResult], profile: SimProfile, *, not_sent: int = 0,
                    seed: int = 0) -> tuple[list[str], bool]:
    """`sluice replay --live --fidelity`: a live run's completed requests (`from_live`) replayed on
    `profile`, the table under a header that says what was compared. ValueError: nothing completed, or
    the profile cannot serve one of them."""
    real = from_live(results)
    if not real:
        raise ValueError("no request completed, nothing to compare")
    lines, good = comparison_lines(real, replay_run(profile, real, seed), sim_label="simulated", indent="  ")
    left = len(results) + not_sent - len(real)
    head = [f"fidelity: {len(real)} completed requests replayed on {profile.name} with their send times, prompt "
            f"and output lengths (ms; real: client side, from each send; off by > {TOLERANCE_PCT:g} % marked)"]
    if left:
        head.append(f"  {left} request(s) did not complete and are on neither side")
    return head + lines, good


def _schedule_lines(real: Sequence[Timed], sim: Sequence[Timed], sim_label: str, indent: str) -> list[str]:
    """Queue wait and FCFS order, where both runs say when each request was first scheduled (an
    engine's own records do; a client cannot tell)."""
    runs = (sorted(real, key=lambda r: r.arrival), list(sim))
    if not all(run and all(r.scheduled is not None for r in run) for run in runs):
        return []
    waits = [[(r.scheduled - r.arrival) * 1e3 for r in run] for run in runs]  # type: ignore[operator]
    (rm, rmed), (sm, smed) = ((statistics.mean(w), statistics.median(w)) for w in waits)
    fcfs = ["yes" if all(a.scheduled <= b.scheduled for a, b in itertools.pairwise(run)) else "no"  # type: ignore[operator]
            for run in runs]
    return [f"{indent}(info) queue wait (scheduled - arrival) mean / median ms: real {rm:.0f} / {rmed:.0f},"
            f" {sim_label} {sm:.0f} / {smed:.0f}",
            f"{indent}(info) scheduled in arrival order (FCFS): {' / '.join(fcfs)} (real / {sim_label})"]
