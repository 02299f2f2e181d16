"""The `sluice` command line."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

from controlplane.config import ConfigError, load_config


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sluice.devsetup import dev_config

    if args.config:
        config = load_config(args.config)
    else:
        config, _ = dev_config(args.state_dir)
        print(f"sluice: no --config given; using the local dev setup in {args.state_dir}/ "
              f"(tenant keys in {args.state_dir}/keys.toml, admin token in {args.state_dir}/admin.token)",
              file=sys.stderr)
    if getattr(args, "host", None):
        config.server.host = args.host
    if getattr(args, "port", None):
        config.server.port = args.port
    return config


def _run(main: Any) -> None:
    """Run a server coroutine on uvloop (what SGLang uses too) when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    from sluice.server import StartupError, serve

    try:
        config = _config(args)
    except OSError as exc:  # the dev setup writes its keys into --state-dir
        print(f"sluice: cannot use the state directory {args.state_dir}/: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def announce() -> None:  # once the socket is bound and start-up is complete, never before
        print(f"sluice: serving on http://{config.server.host}:{config.server.port} "
              f"({len(config.engines)} engine(s): {', '.join(e.name + '/' + e.kind for e in config.engines)})",
              file=sys.stderr)

    try:
        _run(serve(config, announce))
    except StartupError as exc:
        print(f"sluice: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_sim_server(args: argparse.Namespace) -> int:
    from engine_adapter.sglang_server import serve_sglang
    from engine_adapter.sim.engine import SimEngine
    from engine_adapter.sim.profile import load_profile, zero_delay

    profile = zero_delay() if args.profile == "zero-delay" else load_profile(args.profile)
    engine = SimEngine("sim", profile, seed=args.seed, speedup=args.speedup)
    print(f"sluice sim-server: SGLang API on http://{args.host}:{args.port} (simulated {profile.name})",
          file=sys.stderr)
    _run(serve_sglang(engine, host=args.host, port=args.port, model_name=args.model))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from sluice.demo import run_demo

    return run_demo(args.port, args.state_dir, headless_s=args.headless, scale=args.scale)


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


# exit statuses of `audit` and `replay --db` (docs/replay.md): 0 all well, 1 a recorded decision
# differs from its re-derivation, 2 a usage error, 3 the store cannot be read
EXIT_MISMATCH, EXIT_USAGE, EXIT_UNREADABLE = 1, 2, 3


def parse_time(text: str) -> float:
    """Epoch seconds or an ISO 8601 date-time (UTC unless it carries an offset)."""
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch seconds nor an ISO 8601 date-time") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def parse_window(text: str) -> tuple[float | None, float | None]:
    """SINCE:UNTIL (or SINCE..UNTIL), either side empty for open; each side as `parse_time`.
    ISO times hold colons too: the one split at which both sides parse is taken."""
    def side(part: str) -> float | None:
        return parse_time(part) if part.strip() else None

    splits = [text.split("..", 1)] if ".." in text else [
        [text[:i], text[i + 1:]] for i, ch in enumerate(text) if ch == ":"]
    found = []
    for a, b in splits:
        try:
            found.append((side(a), side(b)))
        except ValueError:
            continue
    if len(found) != 1:
        raise ValueError(f"window {text!r}: expected SINCE:UNTIL (epoch seconds or ISO 8601 date-times)")
    return found[0]


def _window(args: argparse.Namespace) -> tuple[float, float | None]:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if getattr(args, "window", None):
        if since is not None or until is not None:
            raise ValueError("give --window or --since/--until, not both")
        since, until = parse_window(args.window)
    if since is not None and until is not None and until <= since:
        raise ValueError(f"the window ends ({until}) before it starts ({since})")
    return since or 0.0, until


def _open_store(path: str) -> Any:
    """A read-only connection to a sluice store, or an error for the operator (exit 3)."""
    import os

    import duckdb

    from telemetry.store import StoreLockedError, open_read_only

    if not os.path.exists(path):
        raise OSError(f"no such file: {path}")
    try:
        con = open_read_only(path)
        con.execute("SELECT 1 FROM decisions LIMIT 0; SELECT 1 FROM requests LIMIT 0")
    except StoreLockedError:
        raise OSError(f"{path} is held by a running sluice (DuckDB allows one writer): take a consistent "
                      "snapshot with `sluice snapshot --url URL --out FILE` and read that") from None
    except duckdb.Error as exc:
        raise OSError(f"{path} is not a readable sluice store: {str(exc).splitlines()[0]}") from None
    return con


def _window_and_store(prog: str, args: argparse.Namespace, check: Any = None) -> tuple[float, float | None, Any] | int:
    """(since, until, a read-only connection to --db), or the exit status after saying why not."""
    try:
        if check is not None:
            check()
        since, until = _window(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return since, until, _open_store(args.db)
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE


def cmd_audit(args: argparse.Namespace) -> int:
    from replay.audit import audit_db

    opened = _window_and_store("sluice audit", args)
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

    opened = _window_and_store("sluice replay", args, check)
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


def cmd_keys(args: argparse.Namespace) -> int:
    from controlplane.config import hash_key, new_key

    key = new_key()
    print(f"key:            {key}\napi_key_sha256: {hash_key(key)}")
    print("Give the key to the tenant; put only api_key_sha256 in the config.", file=sys.stderr)
    return 0


def _window_arguments(p: argparse._ActionsContainer, window: bool) -> list[argparse.Action]:
    when = "epoch seconds or an ISO 8601 date-time (UTC unless an offset is given)"
    actions = [p.add_argument("--window", metavar="SINCE:UNTIL", help=f"the window, each side {when}, either may be empty")
               ] if window else []
    return [*actions,
            p.add_argument("--since", help=f"from this time ({when}); default: the first record"),
            p.add_argument("--until", help=f"before this time ({when}); default: the last record")]


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="DIR", help="write an HTML report (DIR/index.html)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A control plane for LLM serving on SGLang.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (embedded simulated engine unless configured)")
    p.add_argument("--config", help="TOML config (default: a local dev setup in --state-dir)")
    p.add_argument("--state-dir", default=".sluice")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("sim-server", help="the simulated engine behind SGLang's own HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--profile", default="h100-llama3.1-8b", help="a profile name or 'zero-delay'")
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speedup", type=float, default=1.0)
    p.set_defaults(func=cmd_sim_server)

    p = sub.add_parser("demo", help="serve the simulated engine under a multi-tenant load, with the console")
    p.add_argument("--port", type=int, default=8080, help="the port sluice serves on, on 127.0.0.1 (default 8080)")
    p.add_argument("--state-dir", default=".sluice",
                   help="where the demo keeps its config, keys, admin token and store (default .sluice)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the built-in load's request rates")
    p.add_argument("--headless", type=float, metavar="SECONDS", help="no console: run the load this long, report")
    p.set_defaults(func=cmd_demo)

    from tui.cli import add_console_arguments, console_main

    p = sub.add_parser("console", help="the operator console (admin token from $SLUICE_ADMIN_TOKEN or --token-file)")
    add_console_arguments(p)
    p.set_defaults(func=console_main)

    from replay.simulate import add_arguments as add_simulate_arguments, run as run_simulate

    p = sub.add_parser("simulate", help="replay a workload on a virtual clock under one or more policies")
    add_simulate_arguments(p)
    p.set_defaults(func=run_simulate)

    p = sub.add_parser("export", help="export the DuckDB store as Parquet (one file per table)")
    p.add_argument("--db", default=".sluice/sluice.duckdb")
    p.add_argument("--parquet", required=True, metavar="DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("audit", help="re-derive every recorded decision from its inputs and policy version",
                       description="Re-derive every recorded admission and dispatch decision from its recorded "
                       "inputs and policy version. Exit status: 0 every decision matches, 1 a mismatch, 2 a usage "
                       "error, 3 the store cannot be read (missing, not a sluice store, or held by a running "
                       "server: audit a `sluice snapshot` of it).")
    p.add_argument("--db", required=True, help="the DuckDB store (a stopped server's, or a snapshot)")
    _window_arguments(p, window=False)
    p.add_argument("--show", type=int, default=20, metavar="N", help="mismatches listed (all are counted)")
    _output_arguments(p)
    p.set_defaults(func=cmd_audit)

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
    from replay.live_command import add_arguments as add_live_arguments
    from replay.simulate import POLICIES

    g = p.add_argument_group("what-if (--db)")
    whatif_only = [
        *_window_arguments(g, window=True),
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

    from sluice import plan_command

    p = sub.add_parser("plan", help="placement advice: which models fit which GPUs or MIG profiles, with how much "
                       "KV room, and whether each pool is over- or under-provisioned (it moves nothing)",
                       description=plan_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan_command.add_arguments(p)
    p.set_defaults(func=plan_command.run)

    p = sub.add_parser("keys", help="generate a tenant API key and its hash for the config")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"sluice: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
