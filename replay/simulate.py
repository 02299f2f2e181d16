"""`sluice simulate`: replay a workload through the decision core and simulated engines in virtual
time, under one or several policies, and print per-tenant outcomes side by side (seconds).

    sluice simulate --workload vtc-overload --policy all --duration 120 --json out.json
    sluice simulate --workload azure-conv --policy equinox --admission --scale-rate 2
    sluice simulate --workload servegen:m-small --policy vtc --duration 600 --engines 2
    sluice simulate --workload trace.jsonl --policy fcfs --config sluice.toml
    sluice simulate --workload scenario:mooncake --policy all --admission --duration 120 --report /tmp/r
    sluice simulate --workload scenario:azure-conv --policy fcfs --duration 60 --clock-control

Workloads: a canonical JSONL file, or one of the public traces in shared/traces
(`azure-conv`, `azure-code`, `mooncake`, `servegen:<group>` = the busiest hour of a ServeGen
language group) or VTC's synthetic suites (`vtc-overload`, `vtc-weighted`, weights 1:2:3:4), or
`scenario:<name>`, a multi-tenant scenario of the matrix (replay/scenarios.py: tenants, weights and
each request's SLO class; the classes are the policy's, e.g. from `--config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane.core.policy import Policy, TenantPolicy
from replay.outcomes import VirtualResult
from replay.runner import default_policy, run_virtual
from replay.tables import format_result
from replay.workload import WorkloadRequest, read_workload, scale_rate, window

POLICIES = ("fcfs", "vtc", "equinox", "wrr")
NAMED = ("azure-conv", "azure-code", "mooncake", "servegen:m-small", "servegen:m-mid", "servegen:m-large",
         "vtc-overload", "vtc-weighted")


def load_named_workload(name: str, *, duration_s: float | None = None, seed: int = 0, scale: float = 1.0
                        ) -> tuple[list[WorkloadRequest], dict[str, float]]:
    """(workload, tenant weights it implies) for a file path or a named public/synthetic workload,
    its request rate multiplied by `scale` and cut to its first `duration_s` seconds."""
    if not scale > 0:
        raise ValueError("--scale-rate must be > 0")
    from replay.loaders import load_azure, load_length_table, load_mooncake, shared_trace, vtc_overload, vtc_weighted

    weights: dict[str, float] = {}
    if name.startswith("scenario:"):
        from replay.scenarios import build_scenario

        span = (duration_s or 600.0) * scale + 1.0
        sc = build_scenario(name.split(":", 1)[1], seed=seed, span_s=span)
        reqs = [dataclasses.replace(r, slo_class=sc.tenants[r.tenant].slo_class, extra=dict(r.extra))
                for r in sc.requests]
        weights = {t: spec.weight for t, spec in sc.tenants.items()}
    elif name == "azure-conv":
        reqs = load_azure(shared_trace("AzureLLMInferenceTrace_conv.csv"), "conv")
    elif name == "azure-code":
        reqs = load_azure(shared_trace("AzureLLMInferenceTrace_code.csv"), "code")
    elif name == "mooncake":
        reqs = load_mooncake(shared_trace("synthetic_trace.jsonl"))
    elif name.startswith("servegen:"):
        from replay.servegen import busiest_hour, load_servegen, sample_servegen

        group = name.split(":", 1)[1] or "m-small"
        profile = load_servegen(group=group)
        fallback: Any = "pooled"
        if not any(c.has_lengths for c in profile.clients.values()):
            fallback = load_length_table(shared_trace("AzureLLMInferenceTrace_conv.csv"), "ContextTokens",
                                         "GeneratedTokens")
        start = busiest_hour(profile)
        return sample_servegen(profile, start_s=start, duration_s=duration_s or 3600.0, seed=seed,
                               fallback_lengths=fallback, rate_scale=scale), weights
    elif name == "vtc-overload":  # generated long enough to span `duration_s` once scaled
        reqs = vtc_overload((duration_s or 360.0) * scale, seed=42 + seed)
    elif name == "vtc-weighted":
        reqs, weights = vtc_weighted((duration_s or 360.0) * scale, seed=42 + seed)
    else:
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"no workload file {name!r}; named workloads: {', '.join(NAMED)}, scenario:<name>")
        reqs = read_workload(path)
    if scale != 1.0:
        reqs = scale_rate(reqs, scale)
    if duration_s:
        reqs = window(reqs, 0, duration_s * 1e3)
    return reqs, weights


def build_policy(scheduler: str, *, admission: bool | None, config: str | None, weights: dict[str, float]) -> Policy:
    """The policy a `sluice serve` with this config would start with, with the scheduler (and, if
    given, the admission switch) overridden; tenants the config does not name get `weights`."""
    if config:
        from controlplane.config import load_config

        base = load_config(config).policy
        tenants = dict(base.tenants)
        for t, w in weights.items():
            tenants.setdefault(t, TenantPolicy(w))
        return dataclasses.replace(base, scheduler=scheduler, tenants=tenants,
                                   admission=base.admission if admission is None else admission).validate()
    return default_policy(scheduler, admission=bool(admission), weights=weights)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workload", required=True,
                        help=f"a canonical JSONL file or one of: {', '.join(NAMED)}")
    parser.add_argument("--policy", default="all", help=f"{'|'.join(POLICIES)}|all, or a comma-separated list")
    parser.add_argument("--admission", action="store_true", default=None,
                        help="SLO-aware admission on (default: the config's setting, else off)")
    parser.add_argument("--config", help="sluice.toml: tenants, weights, SLO classes, scheduler settings")
    parser.add_argument("--scale-rate", type=float, default=1.0, help="multiply the request rate (timestamps / X)")
    parser.add_argument("--duration", type=float, help="seconds of workload to replay (from its start; for "
                        "servegen: of its busiest hour; for vtc-*: the generated duration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", type=int, default=1, help="simulated engines (default 1)")
    parser.add_argument("--profile", default="h100-llama3.1-8b", help="simulator profile")
    parser.add_argument("--no-torch", action="store_true", help="output-length predictor without its MLP expert")
    parser.add_argument("--json", dest="json_out", help="write every run's outcome to this JSON file")
    parser.add_argument("--requests", action="store_true", help="include per-request records in the JSON")
    parser.add_argument("--report", metavar="DIR", help="write DIR/index.html: plots and tables of every run of "
                        "the call, one self-contained page (docs/replay.md, Reports)")
    parser.add_argument("--clock-control", action="store_true",
                        help="also run each policy with the SLO-aware frequency rule (controlplane/core/frequency.py) "
                             "and compare energy per SLO-meeting output token with the fixed maximum clock")
    from replay.autoscale import add_arguments as autoscale_arguments

    autoscale_arguments(parser)


def _policies(spec: str) -> list[str]:
    names = list(POLICIES) if spec == "all" else [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in names if p not in POLICIES]
    if bad or not names:
        raise ValueError(f"unknown policy {bad or spec!r}; use {'|'.join(POLICIES)}|all")
    return names


def run(args: argparse.Namespace) -> int:
    try:
        names = _policies(args.policy)
        workload, weights = load_named_workload(args.workload, duration_s=args.duration, seed=args.seed,
                                                scale=args.scale_rate)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"sluice simulate: {exc}", file=sys.stderr)
        return 2
    if not workload:
        print("sluice simulate: the workload is empty", file=sys.stderr)
        return 2
    results: dict[str, VirtualResult] = {}
    fleets: dict[str, Any] = {}
    for name in names:
        policy = build_policy(name, admission=args.admission, config=args.config, weights=weights)
        label = name + ("+admission" if policy.admission else "")
        if args.autoscale:  # one run per controller (docs/capacity.md)
            from replay.autoscale import run_from_args

            for mode, (res, fleet) in run_from_args(args, workload, policy, label).items():
                results[f"{label}/{mode}"], fleets[f"{label}/{mode}"] = res, fleet
            continue
        print(f"sluice simulate: {label}: {len(workload)} requests on {args.engines} simulated engine(s)...",
              file=sys.stderr)
        results[label] = run_virtual(workload, policy, engines=args.engines, profile=args.profile, seed=args.seed,
                                     torch_expert=not args.no_torch)
        if getattr(args, "clock_control", False):
            from controlplane.core.frequency import FrequencyParams

            results[f"{label}/clock"] = run_virtual(workload, policy, engines=args.engines, profile=args.profile,
                                                    seed=args.seed, torch_expert=not args.no_torch,
                                                    clock_control=FrequencyParams())
    print(format_side_by_side(results))
    if getattr(args, "clock_control", False):
        print(format_energy(results))
    if fleets:
        from replay.autoscale import format_fleets

        print(format_fleets(results, fleets))
    if len(results) == 1:
        print()
        print(format_result(next(iter(results.values()))))
    if args.json_out:
        doc = {"workload": args.workload, "requests": len(workload), "scale_rate": args.scale_rate,
               "duration": args.duration, "seed": args.seed, "engines": args.engines, "profile": args.profile,
               "runs": {k: r.to_dict(requests=args.requests) for k, r in results.items()}}
        Path(args.json_out).write_text(json.dumps(doc, indent=1))
        print(f"sluice simulate: wrote {args.json_out}", file=sys.stderr)
    if args.report:
        from replay.html_report import run_from_virtual, write_report

        notes = [f"workload {args.workload}: {len(workload)} requests, rate x{args.scale_rate:g}"
                 + (f", first {args.duration:g} s" if args.duration else ""),
                 f"virtual-time replay on {args.engines} simulated engine(s), profile {args.profile}, seed {args.seed}"]
        page = write_report(args.report, f"sluice simulate: {args.workload}",
                            [run_from_virtual(r, label) for label, r in results.items()], notes=notes)
        print(f"sluice simulate: wrote {page}", file=sys.stderr)
    return 0


def simulate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sluice simulate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def energy_per_good_token(r: VirtualResult, end_s: float | None = None) -> float | None:
    """GPU joules (every engine, idle included, up to `end_s` or the run's last event) per output
    token of the requests that met their SLO."""
    end = r.makespan_s if end_s is None else max(end_s, r.makespan_s)
    joules = sum(e["energy_j"] + e["idle_w"] * (end - r.makespan_s) for e in r.engines.values())
    good = sum(x.output_tokens for x in r.records if x.slo_met)
    return joules / good if good else None


def format_energy(results: dict[str, VirtualResult]) -> str:
    """Energy per good output token, mean clock and clock changes per run, every run measured up to
    the latest end among them (the same GPUs over the same time)."""
    end = max(r.makespan_s for r in results.values())
    out = ["energy (GPU J per output token of requests that met their SLO; all runs to the same end):"]
    for label, r in results.items():
        clocks = [e.get("mean_clock_mhz") or 0.0 for e in r.engines.values()]
        changes = sum(e.get("clock_changes", 0) for e in r.engines.values())
        out.append(f"{label:>28}: {_f(energy_per_good_token(r, end), 4)} J/token  SLO% "
                   f"{_f(r.overall.slo_attainment, 1, 100)}  mean clock {sum(clocks) / len(clocks):.0f} MHz  "
                   f"{changes} clock changes")
    return "\n".join(out)


def _f(x: float | None, d: int = 3, scale: float = 1.0) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x * scale:.{d}f}"


# the column group of each run: (header, figure of a TenantOutcome)
_SIDE_COLUMNS: list[tuple[str, Callable[[Any], str]]] = [
    ("adm%", lambda o: _f(o.admitted / o.requests if o.requests else None, 1, 100)),
    ("ref%", lambda o: _f(o.refused, 1, 100)),
    ("good/s", lambda o: _f(o.goodput_rps, 2)),
    ("goodtok/s", lambda o: _f(o.goodput_tps, 0)),
    ("SLO%", lambda o: _f(o.slo_attainment_admitted, 1, 100)),
    ("TTFT50", lambda o: _f(o.ttft_p50_s)),
    ("TTFT99", lambda o: _f(o.ttft_p99_s)),
    ("fair", lambda o: _f(o.fair_ratio, 2))]


def format_side_by_side(results: dict[str, VirtualResult]) -> str:
    """One row per tenant, then one per SLO class and one for all; one column group per policy:
    admitted %, refused % (at arrival or expired in the queue), goodput (req/s and prompt + output
    tokens/s of requests that met every SLO), SLO attainment of admitted requests (%), TTFT p50 / p99
    (s), and for tenants their SLO-met service over their max-min fair share of what they asked for
    (refusals included)."""
    cols = _SIDE_COLUMNS
    keys, n_tenants = _side_row_keys(results)
    head1 = ["", ""]
    head2 = ["tenant / class", "req"]
    first = next(iter(results.values()))
    rows = []
    for key in keys:
        o0 = _side_group(first, key)
        name = key.partition(":")[2]
        rows.append([name if key.startswith("tenant:") else (f"[{name}]" if name else "all"),
                     str(o0.requests if o0 else "-")])
    for label, r in results.items():
        for k, (name, fn) in enumerate(cols):
            head1.append(label if k == 0 else "")
            head2.append(name)
            for row, key in zip(rows, keys):
                o = _side_group(r, key)
                row.append(fn(o) if o is not None else "-")
    widths = [max(len(h1), len(h2), *(len(r[k]) for r in rows)) for k, (h1, h2) in enumerate(zip(head1, head2))]
    sep = lambda k: " | " if k >= 2 and (k - 2) % len(cols) == 0 else "  "  # noqa: E731

    def line(vals: list[str]) -> str:
        out = ""
        for k, (v, w) in enumerate(zip(vals, widths)):
            out += (sep(k) if k else "") + (v.ljust(w) if k == 0 else v.rjust(w))
        return out

    rule = line(["-" * w for w in widths])
    out = ["times in seconds; SLO% = SLO attainment of admitted requests; fair = service that met its "
           "SLO over the tenant's max-min fair share of what it asked for (refusals included)",
           line(head1), line(head2), rule]
    out += [line(r) for r in rows[:n_tenants]] + [rule]
    out += [line(r) for r in rows[n_tenants:-1]] + [rule, line(rows[-1]), ""]
    out += [_side_run_line(label, r) for label, r in results.items()]
    return "\n".join(out)


def _side_group(r: VirtualResult, key: str) -> Any:
    """The outcome of a row key: "tenant:<name>", "class:<name>" or "all:"; None if the run has none."""
    kind, _, name = key.partition(":")
    return r.overall if kind == "all" else (r.per_class if kind == "class" else r.per_tenant).get(name)


def _side_row_keys(results: dict[str, VirtualResult]) -> tuple[list[str], int]:
    """The rows' keys, every run's tenants then every run's classes then all; and how many are tenants."""
    keys: list[str] = []
    for r in results.values():
        keys += [f"tenant:{t}" for t in r.per_tenant if f"tenant:{t}" not in keys]
    n_tenants = len(keys)
    for r in results.values():
        keys += [f"class:{c}" for c in r.per_class if f"class:{c}" not in keys]
    keys.append("all:")
    return keys, n_tenants


def _side_run_line(label: str, r: VirtualResult) -> str:
    """A run's fairness, forecast accuracy and speed, under the table."""
    fz = r.fairness
    apes = "  ".join(f"{c} {_f(o.ttft_ape_p50, 1, 100)}%" for c, o in r.per_class.items()
                     if o.ttft_ape_p50 is not None)
    worst = (f" (worst {fz['min_fair_tenant']} at {_f(fz['min_fair_ratio'], 2)})"
             if fz.get("min_fair_tenant") is not None else "")
    return (f"{label:>20}: Jain over fair shares of demand {_f(fz['jain_demand'])}{worst}"
            f"  max service diff {_f(fz['service_difference'], 0)}"
            f"  TTFT forecast MdAPE {apes or '-'}"
            f"  {r.makespan_s:.0f} virtual s in {r.wall_s:.1f} s ({r.virtual_per_wall:.0f}x)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(simulate_main(sys.argv[1:]))
