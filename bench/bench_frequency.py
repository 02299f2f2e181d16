"""SLO-aware frequency control in virtual time: energy per SLO-meeting output token against the fixed
maximum clock, and SLO attainment per class, on the matrix workloads at 0.5x-1x of their capacity.

Every run goes through replay.runner.run_virtual (the real decision core, SimCore on the default
H100 / Llama-3.1-8B profile and its clock model, engine_adapter/clock.py); the frequency rule
(controlplane/core/frequency.py) sees only what serving would. For each scenario and load the same
workload runs twice under the same policy, once at the fixed maximum clock and once with the rule.

- Loads are multiples of each scenario's SLO capacity: by default the factors bench/bench_matrix.py
  measured (docs/performance.md, "Decision quality"), so this bench takes minutes; `--measure`
  bisects them again (bench_matrix.capacity_factor; ~20 runs per scenario).
- Energy: the simulated GPU's energy (busy steps at their power, idle power between them), both
  runs measured up to the later of their last events (the same GPU over the same time), over the
  output tokens of the requests that met their SLO (a request refused, expired or late earns none).
- Attainment: per SLO class, requests that met every bound of their class over all requests of the
  class (refused ones included).

- `--fixed-clocks 1800,1650,...` also runs each row with the SM clock held at each of those clocks
  from the first evaluation (1 s) on: the rule and its prefill guard replaced by that constant. The
  best of them that keeps every class within 1 point is what a clock chosen per row in hindsight
  would save, a bound to read the rule's saving against (a clock that varies can beat it in a
  bursty row, one that must be chosen from what serving knows rarely does).

Target (issue 12): at least 20 % less energy per good token, attainment within 1 point per class.

    .venv/bin/python bench/bench_frequency.py [--seconds 60] [--jobs 2] [--policy fcfs] [--admission]
        [--scenarios a,b] [--loads 0.5,0.8,1.0] [--fixed-clocks MHz,...] [--json out.json] [--markdown]
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_matrix import DRAIN_S, _slice, capacity_factor, matrix_parser  # noqa: E402
from controlplane.core import frequency  # noqa: E402
from controlplane.core.frequency import FrequencyParams  # noqa: E402
from replay.outcomes import VirtualResult  # noqa: E402
from replay.runner import run_virtual  # noqa: E402
from replay.scenarios import scenario_policy  # noqa: E402
from replay.simulate import energy_per_good_token  # noqa: E402

LOADS = (0.5, 0.8, 1.0)
# SLO capacity (x the trace's own rate) as bench/bench_matrix.py measured it on 60 s runs
# (docs/performance.md, 2026-12-01); the clock model does not change anything at f_max
CAPACITY = {"azure-conv": 4.09, "azure-code": 2.23, "mooncake": 0.20, "servegen:m-small": 0.110,
            "servegen:m-mid": 0.0056, "servegen:m-large": 0.092, "arxiv-mix": 1.14, "vtc-overload": 9.93,
            "vtc-weighted": 10.60}
TARGET_SAVING = 0.20
TARGET_POINTS = 0.01


def _classes(r: VirtualResult) -> dict[str, dict[str, Any]]:
    return {c: {"requests": o.requests, "attainment": o.slo_attainment, "refused": o.refused}
            for c, o in r.per_class.items()}


def _held(w: list[Any], pol: Any, horizon: float, mhz: float) -> VirtualResult:
    """The run with the SM clock held at `mhz` from the first evaluation on (the oracle of
    --fixed-clocks): the rule asks for `mhz` whatever it sees, the guard for nothing, and the
    hysteresis takes the first ask."""
    def want(x: Any, p: Any, clock: Any, params: Any) -> tuple[float, float, float, str]:
        return mhz, mhz, mhz, "held"

    with mock.patch.multiple(frequency, choose_clock=want,
                             guard_clock=lambda x, p, clock, params: (clock.f_min_mhz, "")):
        return run_virtual(w, pol, torch_expert=False, horizon_s=horizon,
                           clock_control=FrequencyParams(down_after=1, band_mhz=0.0))


def _row(args: tuple[str, float, float, float, str, bool, tuple[float, ...]]) -> dict[str, Any]:
    name, factor, load, seconds, policy, admission, held = args
    sc, w = _slice(name, factor * load, seconds)
    pol = scenario_policy(sc, policy, admission)
    horizon = seconds + DRAIN_S
    t0 = time.perf_counter()
    fixed = run_virtual(w, pol, torch_expert=False, horizon_s=horizon)
    ctl = run_virtual(w, pol, torch_expert=False, horizon_s=horizon, clock_control=FrequencyParams())
    runs = [_held(w, pol, horizon, mhz) for mhz in held]
    end = max(fixed.makespan_s, ctl.makespan_s)
    e_fixed, e_ctl = energy_per_good_token(fixed, end), energy_per_good_token(ctl, end)
    eng = ctl.engines["sim-0"]
    row = {"scenario": name, "load": load, "requests": len(w), "wall_s": time.perf_counter() - t0,
           "j_per_good_token": {"fixed": e_fixed, "clock": e_ctl},
           "saving": 1.0 - e_ctl / e_fixed if e_fixed and e_ctl else None,
           "mean_clock_mhz": eng["mean_clock_mhz"], "clock_changes": eng["clock_changes"],
           "utilisation": {"fixed": fixed.engines["sim-0"]["utilization"], "clock": eng["utilization"]},
           "classes": {"fixed": _classes(fixed), "clock": _classes(ctl)},
           "tenant_energy_j": {t: o.energy_j for t, o in ctl.per_tenant.items()}}
    row["held"] = [_versus(fixed, r, mhz) for mhz, r in zip(held, runs)]
    return row


def _versus(fixed: VirtualResult, r: VirtualResult, mhz: float) -> dict[str, Any]:
    """A held clock's saving and worst class drop against the fixed maximum clock (both to the later
    of their last events, as the rule's)."""
    end = max(fixed.makespan_s, r.makespan_s)
    e_fixed, e = energy_per_good_token(fixed, end), energy_per_good_token(r, end)
    return {"mhz": mhz, "saving": 1.0 - e / e_fixed if e_fixed and e else None,
            "drop": _drop({"classes": {"fixed": _classes(fixed), "clock": _classes(r)}})}


def _pct(x: float | None, d: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{d}f}"


def _drop(row: dict[str, Any]) -> float:
    """The largest attainment loss over the classes, in points (negative: every class gained)."""
    f, c = row["classes"]["fixed"], row["classes"]["clock"]
    return max(100 * ((f[k]["attainment"] or 0.0) - (c[k]["attainment"] or 0.0)) for k in f)


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| scenario | load | req | J/good tok fixed | J/good tok clock | saving % | mean MHz | changes "
             "| int. SLO % fixed / clock | batch SLO % fixed / clock | worst drop (pt) | target |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        f, c = r["classes"]["fixed"], r["classes"]["clock"]
        att = {k: f"{_pct(f[k]['attainment'])} / {_pct(c[k]['attainment'])}" if k in f else "-"
               for k in ("interactive", "batch")}
        ok = r["saving"] is not None and r["saving"] >= TARGET_SAVING and _drop(r) <= 100 * TARGET_POINTS
        e = r["j_per_good_token"]
        lines.append(f"| {r['scenario']} | {r['load']:g}x | {r['requests']} | {e['fixed']:.3f} | {e['clock']:.3f} "
                     f"| {_pct(r['saving'])} | {r['mean_clock_mhz']:.0f} | {r['clock_changes']} | {att['interactive']} "
                     f"| {att['batch']} | {_drop(r):.2f} | {'met' if ok else '**missed**'} |")
    if any(r.get("held") for r in doc["rows"]):
        lines += ["", held_markdown(doc)]
    return "\n".join(lines)


def held_markdown(doc: dict[str, Any]) -> str:
    """Per row: the rule's saving, the best clock held throughout that keeps every class within 1
    point, and each held clock's saving / worst drop."""
    clocks = [h["mhz"] for h in doc["rows"][0]["held"]]
    lines = ["| scenario | load | rule saving % | best held clock (saving %) | "
             + " | ".join(f"{m:.0f} MHz: saving % / drop pt" for m in clocks) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(clocks)]
    for r in doc["rows"]:
        ok = [h for h in r["held"] if h["saving"] is not None and h["drop"] <= 100 * TARGET_POINTS]
        best = max(ok, key=lambda h: h["saving"]) if ok else None
        cells = " | ".join(f"{_pct(h['saving'])} / {h['drop']:.1f}" for h in r["held"])
        top = f"{best['mhz']:.0f} ({_pct(best['saving'])})" if best else "none"
        lines.append(f"| {r['scenario']} | {r['load']:g}x | {_pct(r['saving'])} | {top} | {cells} |")
    return "\n".join(lines)


def main() -> int:
    ap = matrix_parser(__doc__, 60.0, LOADS)
    ap.add_argument("--policy", default="fcfs")
    ap.add_argument("--admission", action="store_true")
    ap.add_argument("--measure", action="store_true", help="bisect each scenario's capacity again")
    ap.add_argument("--fixed-clocks", default="", help="also hold the SM clock at each of these MHz (an oracle)")
    args = ap.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    loads = [float(x) for x in args.loads.split(",")]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        if args.measure:
            factors = dict(zip(names, (f for f, _ in pool.map(capacity_factor, names, [args.seconds] * len(names)))))
        else:
            factors = {n: CAPACITY[n] for n in names}
        held = tuple(float(m) for m in args.fixed_clocks.split(",") if m)
        jobs = [(n, factors[n], load, args.seconds, args.policy, args.admission, held) for n in names for load in loads]
        rows = []
        for row in pool.map(_row, jobs):
            rows.append(row)
            print(f"{row['scenario']:>18} {row['load']:>4g}x: saving {_pct(row['saving'])} %, worst class drop "
                  f"{_drop(row):.2f} pt, mean clock {row['mean_clock_mhz']:.0f} MHz ({row['wall_s']:.0f} s)",
                  file=sys.stderr)
    doc = {"seconds": args.seconds, "policy": args.policy, "admission": args.admission, "capacity": factors,
           "rows": rows, "wall_s": time.perf_counter() - t0}
    met = sum(1 for r in rows if r["saving"] is not None and r["saving"] >= TARGET_SAVING
              and _drop(r) <= 100 * TARGET_POINTS)
    print(f"frequency: {len(rows)} rows in {doc['wall_s']:.0f} s; target met on {met}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if args.markdown:
        print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
