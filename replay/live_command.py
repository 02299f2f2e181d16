"""`sluice replay --live URL --workload W`: send a workload to any OpenAI-compatible endpoint (sluice,
SGLang, vLLM, `sluice sim-server`) with its own timing or a speed-up, and report what a client saw
in SGLang `bench_serving`'s vocabulary, per tenant and per SLO class.

    sluice replay --live http://127.0.0.1:8080 --workload scenario:azure-mix --keys .sluice/keys.toml
    sluice replay --live http://127.0.0.1:30000 --workload trace.jsonl --speedup 4 --max-requests 500 --ignore-eos
    sluice replay --live http://127.0.0.1:30000 --workload azure-conv --max-requests 300 --fidelity h100-llama3.1-8b

The caller (sluice/cli.py) owns `--live` (the URL), `--json` (a file) and `--report` (a folder)
and `--config` (read here for the SLO classes' targets); this module adds only the live flags.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine_adapter.sim.profile import SimProfile
from replay.live import LiveReport, run_live
from replay.live_inputs import (
    Unreachable,
    UsageError,
    fidelity_profile,
    judging_policy,
    load_workload,
    probe_models,
    read_keys,
    slo_targets,
)
from replay.report import SLO, RequestResult, clean_json
from replay.workload import WorkloadRequest

__all__ = ["add_arguments", "run"]

PROG = "sluice replay"
# owners in GET /v1/models whose OpenAI endpoints take SGLang's `ignore_eos` (sluice forwards it to
# its SGLang engines); others may drop an unknown field, and output lengths would silently differ
IGNORE_EOS_OWNERS = ("sglang", "vllm", "sluice")
# options of the other `sluice replay` modes: given with --live they would be ignored, so they are refused
_OTHER_MODES = ("db", "window", "since", "until", "policy")


def add_arguments(group: argparse._ActionsContainer) -> dict[str, Any]:
    """Add the live-only flags; returns each one's dest and default (so a caller can tell which were given)."""
    flags = [
        group.add_argument("--workload", metavar="W",
                           help="live: a canonical JSONL file or any `sluice simulate --workload` name "
                                "(azure-conv, mooncake, servegen:m-small, vtc-overload, scenario:NAME, ...)"),
        group.add_argument("--speedup", type=float, default=1.0,
                           help="live: divide the workload's timestamps by this (default 1 = its own timing; inf = all at once)"),
        group.add_argument("--max-requests", type=int, metavar="N", help="live: send at most the first N requests"),
        group.add_argument("--duration", type=float, metavar="S",
                           help="live: stop after S seconds of wall time (requests still in flight are cancelled "
                                "and counted as such)"),
        group.add_argument("--api-key", help="live: the API key of every tenant without one in --keys"),
        group.add_argument("--keys", metavar="FILE",
                           help='live: TOML file of tenant = "key" lines (as .sluice/keys.toml); "*" = any other tenant'),
        group.add_argument("--chat", action="store_true", help="live: /v1/chat/completions instead of /v1/completions"),
        group.add_argument("--ignore-eos", action="store_true",
                           help="live: ask the server to generate exactly each request's output_length (SGLang, vLLM "
                                "and sluice; refused for servers that would drop it)"),
        group.add_argument("--model", help="live: model name (default: the first of GET /v1/models)"),
        group.add_argument("--max-concurrency", type=int, metavar="N",
                           help="live: at most N requests in flight (later ones wait client-side)"),
        group.add_argument("--slo", action="append", metavar="[NAME=]ttft:MS,tpot:MS,e2el:MS",
                           help="live: goodput bounds (vLLM --goodput keys); NAME= an SLO class or tenant, none = "
                                "every request (default: the classes of --config, else sluice's default classes)"),
        group.add_argument("--request-timeout", type=float, metavar="S", help="live: give up on a request after S seconds"),
        group.add_argument("--workload-seed", type=int, default=0, help="live: seed of generated workloads (default 0)"),
        group.add_argument("--fidelity", metavar="PROFILE",
                           help="live: then simulate the completed requests (send times, prompt and output lengths) "
                                "on this simulator profile (name or JSON file) and print real vs simulated TTFT, "
                                "TPOT and E2E; exit status 1 if a figure is off by more than 10 %%. Implies "
                                "--ignore-eos where the server takes it"),
        group.add_argument("--requests-out", metavar="FILE",
                           help="live: write each completed request's send, first- and last-token times and token "
                                "counts as LLMServingSim's requests.jsonl (bench/bench_calibration.py --run reads it)"),
    ]
    return {a.dest: a.default for a in flags}


@dataclass(slots=True)
class _Plan:
    workload: list[WorkloadRequest]
    keys: dict[str, str]
    slo: dict[str, SLO]
    model: str
    server: str | None  # owned_by of the served model in GET /v1/models (sluice, sglang, vllm), if it said
    extra_body: dict[str, Any] | None
    weights: dict[str, float]
    profile: SimProfile | None  # --fidelity's


def run(args: argparse.Namespace) -> int:
    try:
        plan = _prepare(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Unreachable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    n = len(plan.workload)
    tenants = sorted({r.tenant for r in plan.workload})
    print(f"{PROG}: {n} requests of {args.workload} ({len(tenants)} tenant(s)) to {args.live} "
          f"({plan.server or 'server unknown'}) as {plan.model!r} (speedup {args.speedup:g})...", file=sys.stderr)
    try:
        report, interrupted, reason = asyncio.run(_replay(args, plan))
    except KeyboardInterrupt:
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130
    print(format_report(report, plan.slo, workload=args.workload, stop_reason=reason))
    if args.json:
        doc = {"workload": args.workload, "server": plan.server, "stop_reason": reason,
               **report.to_dict(per_request=True)}
        Path(args.json).write_text(json.dumps(clean_json(doc), indent=1))
        print(f"{PROG}: wrote {args.json}", file=sys.stderr)
    if args.report:
        _write_html(args, plan, report)
    checked = _fidelity(args, plan, report) if plan.profile is not None or args.requests_out else 0
    if interrupted:
        return 130
    o = report.summary.overall
    return 1 if o.completed == 0 and o.failed > 0 else checked


def _prepare(args: argparse.Namespace) -> _Plan:
    given = [f"--{k}" for k in _OTHER_MODES if getattr(args, k, None) not in (None, False)]
    if given:
        raise UsageError(f"{', '.join(given)} belong to the what-if replay, not to --live")
    if not args.workload:
        raise UsageError("--live needs --workload (a JSONL file or a named workload)")
    if not args.speedup > 0:
        raise UsageError(f"--speedup must be > 0, got {args.speedup}")
    for flag, value in (("--max-requests", args.max_requests), ("--max-concurrency", args.max_concurrency)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("--duration", args.duration), ("--request-timeout", args.request_timeout)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be > 0 seconds, got {value}")
    keys = read_keys(args.keys, args.api_key)
    profile = fidelity_profile(args.fidelity)
    if args.requests_out and not Path(args.requests_out).parent.is_dir():  # before the run, not after it
        raise UsageError(f"--requests-out {args.requests_out}: no folder {Path(args.requests_out).parent}")
    workload, weights = load_workload(args)
    policy = judging_policy(getattr(args, "config", None), weights)
    workload = [dataclasses.replace(r, slo_class=r.slo_class or policy.tenant(r.tenant).slo_class, extra=dict(r.extra))
                for r in workload]
    slo = slo_targets(policy.to_dict()["slo_classes"], args.slo or [], {r.slo_class for r in workload if r.slo_class})
    missing = sorted({r.tenant for r in workload} - set(keys)) if keys and "*" not in keys else []
    if missing:
        print(f"{PROG}: no key for tenant(s) {', '.join(missing)}: sent without Authorization "
              f"(add them to --keys or give --api-key)", file=sys.stderr)
    probe_key = next((keys[t] for t in (*(r.tenant for r in workload[:50]), "*") if t in keys), None)
    model, owner = asyncio.run(probe_models(args.live, probe_key, args.model))
    if args.ignore_eos and owner not in IGNORE_EOS_OWNERS:
        said = f"a server whose models are owned by {owner!r}" if owner else "a server that did not say what it is"
        raise UsageError(f"--ignore-eos: {args.live} is {said}; only SGLang, vLLM and sluice accept ignore_eos "
                         "(others drop it, and output lengths would silently differ)")
    # --fidelity: the workload's output lengths where the server can be made to keep them; elsewhere
    # the simulation is given the lengths the engine produced, so both sides still run the same requests
    force = args.ignore_eos or (profile is not None and owner in IGNORE_EOS_OWNERS)
    return _Plan(workload, keys, slo, model, owner, {"ignore_eos": True} if force else None, weights, profile)


async def _replay(args: argparse.Namespace, plan: _Plan) -> tuple[LiveReport, bool, str | None]:
    """Run it; Ctrl-C (the first) and --duration stop it with a partial report."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    why: list[str] = []

    def halt(reason: str) -> None:
        if reason == "interrupted" and handled:
            loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C aborts (KeyboardInterrupt)
        if not stop.is_set():
            why.append(reason)
            print(f"\n{PROG}: {reason}: stopping, in-flight requests cancelled", file=sys.stderr)
            stop.set()

    handled = False
    try:
        loop.add_signal_handler(signal.SIGINT, halt, "interrupted")
        handled = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread: no signal handler
        pass
    timer = loop.call_later(args.duration, halt, f"--duration {args.duration:g} s reached") if args.duration else None
    done = Counter[str]()

    def progress(r: RequestResult) -> None:
        done[r.status] += 1

    ticker = asyncio.create_task(_progress(done, len(plan.workload)))
    try:
        report = await run_live(args.live, plan.workload, plan.keys, speedup=args.speedup, model=plan.model,
                                slo=plan.slo, max_concurrency=args.max_concurrency, on_result=progress,
                                endpoint="chat" if args.chat else "completions", extra_body=plan.extra_body,
                                request_timeout_s=args.request_timeout, stop=stop)
    finally:
        ticker.cancel()
        if timer is not None:
            timer.cancel()
        if handled:
            loop.remove_signal_handler(signal.SIGINT)  # False if already removed
    reason = why[0] if why else None
    return report, reason == "interrupted", reason


async def _progress(done: Counter[str], total: int, every_s: float = 10.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        print(f"{PROG}: {sum(done.values())}/{total} finished ({', '.join(f'{k} {v}' for k, v in sorted(done.items()))})",
              file=sys.stderr)


def format_report(report: LiveReport, slo: Mapping[str, SLO], *, workload: str, stop_reason: str | None) -> str:
    """The bench_serving block for all requests, the per-tenant / per-class table, the SLOs that
    judged goodput, the most frequent errors and why the run stopped early, if it did."""
    lines = [f"live replay of {workload} against {report.base_url} (model {report.model}, "
             f"speedup {report.speedup:g}, {report.meta.get('endpoint')})", "",
             report.format_text(), ""]
    lines.append("SLO (goodput): " + "; ".join(f"{name}: {_slo_text(s)}" for name, s in sorted(slo.items())))
    # grouped by status and code (sluice's refusal reason), one message shown per group
    failures = [r for r in report.results if r.status in ("error", "rejected") and r.error]
    groups = Counter((r.status, r.http_status, r.error_code or r.error) for r in failures)
    example = {(r.status, r.http_status, r.error_code or r.error): r.error for r in failures}
    for key, count in groups.most_common(5):
        lines.append(f"{count:>6} {key[0]}" + (f" [{key[2]}]" if key[2] != example[key] else "") + f": {example[key]}")
    lag = report.meta.get("send_lag_ms")
    if lag:
        lines.append(f"client send lag (sent - due): median {lag['median']:.1f} ms, p99 {lag['p99']:.1f} ms, "
                     f"max {lag['max']:.1f} ms")
    if report.stopped:
        lines.append(f"stopped early ({stop_reason or 'stop'}): {report.summary.overall.cancelled} cancelled in "
                     f"flight, {report.not_sent} never sent")
    return "\n".join(lines)


def _fidelity(args: argparse.Namespace, plan: _Plan, report: LiveReport) -> int:
    """--requests-out and --fidelity after the run: 0 every figure within the tolerance (or only
    --requests-out), 1 one is not or nothing to compare, 2 the file cannot be written."""
    from replay.fidelity import from_live, live_comparison, write_run

    if args.requests_out:
        real = from_live(report.results)
        try:
            write_run(Path(args.requests_out), real, report.meta.get("started_unix"))
        except OSError as exc:
            print(f"{PROG}: --requests-out {args.requests_out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"{PROG}: wrote {args.requests_out} ({len(real)} completed requests)", file=sys.stderr)
    if plan.profile is None:
        return 0
    try:
        lines, good = live_comparison(report.results, plan.profile, not_sent=report.not_sent)
    except ValueError as exc:  # nothing completed, or the profile cannot serve a request of the run
        print(f"{PROG}: --fidelity: {exc}", file=sys.stderr)
        return 1
    print("\n" + "\n".join(lines))
    return 0 if good else 1


def _slo_text(s: SLO) -> str:
    parts = []
    if s.ttft_ms is not None:
        parts.append(f"TTFT <= {s.ttft_ms:g} ms" + (f" + {s.ttft_ms_per_ktok:g}/ktok" if s.ttft_ms_per_ktok else ""))
    if s.tpot_ms is not None:
        parts.append(f"TPOT <= {s.tpot_ms:g} ms")
    if s.e2e_ms is not None:
        parts.append(f"E2E <= {s.e2e_ms / 1e3:g} s")
    return ", ".join(parts) or "none"


def _write_html(args: argparse.Namespace, plan: _Plan, report: LiveReport) -> None:
    from replay.html_report import ReportRequest, ReportRun, SLOBound, write_report

    def s(ms: float | None) -> float | None:
        return None if ms is None else ms / 1e3

    reqs = []
    for r in report.results:
        start = r.sent_s if r.sent_s is not None else (r.scheduled_s or 0.0)
        # a client cannot tell queueing in the gateway from prefill: the request is at the
        # endpoint ("dispatched") from its send, waiting until its first token
        reqs.append(ReportRequest(
            tenant=r.tenant, slo_class=r.slo_class, arrival_s=start, status=r.status,
            reason=r.error_code or r.error, engine="endpoint", dispatch_s=start,
            first_token_s=None if r.ttft_s is None else start + r.ttft_s,
            finish_s=None if r.e2e_s is None else start + r.e2e_s, input_tokens=r.input_tokens,
            output_tokens=r.output_tokens, requested_output_tokens=r.requested_output_tokens, slo_met=r.slo_met))
    bounds = {name: SLOBound(s(t.ttft_ms), s(t.tpot_ms), t.ttft_ms_per_ktok / 1e3, s(t.e2e_ms))
              for name, t in plan.slo.items()}
    run_ = ReportRun(f"live {plan.model}", reqs, weights=plan.weights, slo=bounds, duration_s=report.duration_s,
                     notes=[f"client-side measurements against {args.live}; times from each request's send",
                            "engine load: 'endpoint' = requests sent and unfinished, 'waiting' = no token yet "
                            "(queued in a gateway or in prefill: a client cannot tell which)"])
    path = write_report(args.report, f"Live replay of {args.workload} against {args.live}", [run_])
    print(f"{PROG}: wrote {path}", file=sys.stderr)
