"""The `sluice` commands over a sluice store: `export` (Parquet), `audit` (re-derive every recorded
decision), `replay` (a recorded window under another policy, or a workload sent live) and `snapshot`
(a consistent copy of a running server's store)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controlplane.config import load_config
from sluice.store_window import EXIT_MISMATCH, EXIT_USAGE, window_and_store, window_arguments


def cmd_export(args: argparse.Namespace) -> int:
    from telemetry.store import Store, StoreLockedError

    try:
        store = Store(args.db, autostart=False)
    except StoreLockedError as exc:
        print(f"sluice export: {exc}. Stop `sluice serve` first (DuckDB allows one writer).", file=sys.stderr)
        return 1
    try:
        for table, path in store.export_parquet(args.parquet).items():
            print(f"{table}: {path}")
    finally:
        store.close()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from replay.audit import audit_db

    opened = window_and_store("sluice audit", args)
    if isinstance(opened, int):
        return opened
    since, until, con = opened
    try:
        report = audit_db(con, since, until)
        if args.report:
            _audit_report(con, args.report, since, until)
    finally:
        con.close()
    print(f"sluice audit: {args.db}, decisions in [{since}, {until if until is not None else 'end'})")
    print(report.format(limit=args.show))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
        print(f"sluice audit: wrote {args.json}", file=sys.stderr)
    return 0 if report.ok else EXIT_MISMATCH



DEFAULT_PROFILE = "h100-llama3.1-8b"


def _given(args: argparse.Namespace, flags: dict[str, Any]) -> list[str]:
    """The flags of `flags` (dest -> default) that were given: those of the other mode are refused, not ignored."""
    return [f"--{dest.replace('_', '-')}" for dest, default in flags.items() if getattr(args, dest) != default]


def cmd_replay(args: argparse.Namespace) -> int:
    from replay.whatif import format_whatif, what_if

    if args.live:
        given = _given(args, args.whatif_flags)
        if given:
            print(f"sluice replay: {', '.join(given)} belong to the what-if replay (--db), not to --live",
                  file=sys.stderr)
            return EXIT_USAGE
        from replay.live_command import run as run_live_command

        return run_live_command(args)
    given = _given(args, args.live_flags)
    try:
        base = _config_policy(args.config)
    except OSError as exc:
        print(f"sluice replay: cannot read --config: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def check() -> None:
        if given:
            raise ValueError(f"{', '.join(given)} belong to the live replay (--live), not to --db")
        if args.policy is None and args.admission is None and base is None:
            raise ValueError("nothing to change: give --policy, --admission or --config")

    opened = window_and_store("sluice replay", args, check)
    if isinstance(opened, int):
        return opened
    since, until, con = opened
    try:
        admission = None if args.admission is None else args.admission == "on"
        w = what_if(con, since, until, scheduler=args.policy, admission=admission, config_policy=base,
                    engines=args.engines, profile=args.profile or DEFAULT_PROFILE, seed=args.seed or 0,
                    torch_expert=not args.no_torch)
        if args.report:
            _whatif_report(w, args.report)
    except (ValueError, FileNotFoundError) as exc:  # FileNotFoundError: an unknown --profile
        print(f"sluice replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        con.close()
    print(format_whatif(w))
    if args.json:
        Path(args.json).write_text(json.dumps(w.to_dict(requests=args.requests), indent=1))
        print(f"sluice replay: wrote {args.json}", file=sys.stderr)
    return 0


def _audit_report(con: Any, out_dir: str, since: float, until: float | None) -> None:
    from replay.html_report import run_from_virtual, write_report
    from replay.whatif import recorded_run

    recorded, note = recorded_run(con, since, until)
    page = write_report(out_dir, "sluice audit: the recorded window", [run_from_virtual(recorded, "recorded")],
                        notes=[note])
    print(f"sluice audit: wrote {page}", file=sys.stderr)


def _whatif_report(w: Any, out_dir: str) -> None:
    from replay.html_report import run_from_virtual, write_report

    page = write_report(out_dir, "sluice replay: recorded vs what-if",
                        [run_from_virtual(r, name) for name, r in w.runs().items()], notes=w.notes)
    print(f"sluice replay: wrote {page}", file=sys.stderr)


def _config_policy(path: str | None) -> Any:
    if not path:
        return None
    return load_config(path).policy



def cmd_snapshot(args: argparse.Namespace) -> int:
    """Fetch a consistent copy of a running sluice's store (GET /admin/v1/store/snapshot)."""
    import os
    import shutil
    import urllib.error
    import urllib.parse
    import urllib.request

    from tui.cli import TokenError, load_token

    out = Path(args.out)
    if out.exists():
        print(f"sluice snapshot: {out} exists; choose a new file", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = load_token(args.token_file)
    except TokenError as exc:
        print(f"sluice snapshot: {exc}", file=sys.stderr)
        return EXIT_USAGE
    query = f"?{urllib.parse.urlencode({'tables': args.tables})}" if args.tables else ""
    req = urllib.request.Request(f"{args.url.rstrip('/')}/admin/v1/store/snapshot{query}",
                                 headers={"Authorization": f"Bearer {token}"})
    partial = out.with_name(out.name + ".part")
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp, open(partial, "wb") as f:
            shutil.copyfileobj(resp, f, 1 << 20)
            rows = json.loads(resp.headers.get("X-Sluice-Snapshot-Rows") or "{}")
        os.replace(partial, out)
    except urllib.error.HTTPError as exc:
        partial.unlink(missing_ok=True)
        print(f"sluice snapshot: {args.url} answered {exc.code}: {exc.read().decode(errors='replace')[:300]}",
              file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        print(f"sluice snapshot: cannot fetch from {args.url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(f"sluice snapshot: {out}: " + ", ".join(f"{t} {n} rows" for t, n in rows.items()))
    return 0


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="DIR", help="write an HTML report (DIR/index.html)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")


def add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export the DuckDB store as Parquet (one file per table)")
    p.add_argument("--db", default=".sluice/sluice.duckdb")
    p.add_argument("--parquet", required=True, metavar="DIR")
    p.set_defaults(func=cmd_export)


def add_audit_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="re-derive every recorded decision from its inputs and policy version",
                       description="Re-derive every recorded admission and dispatch decision from its recorded "
                       "inputs and policy version. Exit status: 0 every decision matches, 1 a mismatch, 2 a usage "
                       "error, 3 the store cannot be read (missing, not a sluice store, or held by a running "
                       "server: audit a `sluice snapshot` of it).")
    p.add_argument("--db", required=True, help="the DuckDB store (a stopped server's, or a snapshot)")
    window_arguments(p, window=False)
    p.add_argument("--show", type=int, default=20, metavar="N", help="mismatches listed (all are counted)")
    _output_arguments(p)
    p.set_defaults(func=cmd_audit)


def add_replay_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="a recorded window under another policy (--db), or a workload sent to a "
                       "server (--live)",
                       description="--db: the requests of a recorded window replayed on the virtual clock under "
                       "the recorded policy (fidelity) and under another policy or config, beside what was "
                       "recorded (exit status: 0 done, 2 a usage error, 3 the store cannot be read). --live: a "
                       "workload sent over HTTP to any OpenAI-compatible endpoint, measured as a client sees it "
                       "(--fidelity: beside the same requests on a simulator profile).")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--db", help="what-if on this DuckDB store (a stopped server's, or a snapshot)")
    mode.add_argument("--live", metavar="URL", help="live replay against this OpenAI-compatible endpoint")
    _output_arguments(p)
    p.add_argument("--config", help="sluice.toml. --db: the what-if's policy (tenants, weights, SLO classes, "
                   "scheduler settings; --policy/--admission override it), and the recorded one when the audit "
                   "log lacks it. --live: the SLO classes' targets")
    _add_replay_modes(p)


def _add_replay_modes(p: argparse.ArgumentParser) -> None:
    """The what-if's flags and the live replay's, each in its group; each mode refuses the other's."""
    from replay.live_command import add_arguments as add_live_arguments
    from replay.simulate import POLICIES

    g = p.add_argument_group("what-if (--db)")
    whatif_only = [
        *window_arguments(g, window=True),
        g.add_argument("--policy", choices=POLICIES, help="the what-if's scheduler"),
        g.add_argument("--admission", choices=("on", "off"), help="the what-if's SLO-aware admission switch"),
        g.add_argument("--engines", type=int, help="simulated engines (default: as many as served the window)"),
        g.add_argument("--profile", help=f"simulator profile (default {DEFAULT_PROFILE})"),
        g.add_argument("--seed", type=int, help="the replays' seed (default 0)"),
        g.add_argument("--no-torch", action="store_true", help="output-length predictor without its MLP expert"),
        g.add_argument("--requests", action="store_true", help="include per-request records in the JSON"),
    ]
    live_flags = add_live_arguments(p.add_argument_group("live replay (--live)"))
    p.set_defaults(func=cmd_replay, live_flags=live_flags,
                   whatif_flags={a.dest: a.default for a in whatif_only})


def add_snapshot_parser(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="a consistent copy of a running sluice's store, to audit or replay",
                       description="Copies the store of a running sluice through its admin API (one point of "
                       "its history; the server keeps serving) into a new DuckDB file that `sluice audit` and "
                       "`sluice replay --db` read. The admin token comes from $SLUICE_ADMIN_TOKEN or --token-file.")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--out", required=True, metavar="FILE", help="the new DuckDB file (must not exist)")
    p.add_argument("--token-file", metavar="FILE", help="read the admin token from FILE (default: "
                   "$SLUICE_ADMIN_TOKEN)")
    p.add_argument("--tables", help="comma-separated (default: policy_changes, requests, decisions, gpu_samples)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the copy (default 600)")
    p.set_defaults(func=cmd_snapshot)
