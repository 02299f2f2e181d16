"""The `sluice` command line: the parser, `main`, and the serving commands (`serve`, `sim-server`,
`demo`, `keys`); the commands over a store are in `sluice.store_commands`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from controlplane.config import ConfigError, load_config
from sluice.store_commands import add_audit_parser, add_export_parser, add_replay_parser, add_snapshot_parser


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
        workers = f", {args.workers} worker processes" if args.workers > 1 else ""
        print(f"sluice: serving on http://{config.server.host}:{config.server.port} "
              f"({len(config.engines)} engine(s): {', '.join(e.name + '/' + e.kind for e in config.engines)}"
              f"{workers})", file=sys.stderr)

    try:
        if args.workers > 1:
            from sluice.workers import serve_workers

            _run(serve_workers(config, args.workers, announce))
        else:
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


def cmd_keys(args: argparse.Namespace) -> int:
    from controlplane.config import hash_key, new_key

    key = new_key()
    print(f"key:            {key}\napi_key_sha256: {hash_key(key)}")
    print("Give the key to the tenant; put only api_key_sha256 in the config.", file=sys.stderr)
    return 0


def _add_serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded simulated engine unless configured)")
    p.add_argument("--config", help="TOML config (default: a local dev setup in --state-dir)")
    p.add_argument("--state-dir", default=".sluice")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="N processes terminate HTTP and stream from the engines, one more decides for all of "
                        "them (docs/architecture.md); default 1: one process does everything")
    p.set_defaults(func=cmd_serve)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return n


def _add_sim_server_parser(sub: Any) -> None:
    p = sub.add_parser("sim-server", help="the simulated engine behind SGLang's own HTTP API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--profile", default="h100-llama3.1-8b", help="a profile name or 'zero-delay'")
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speedup", type=float, default=1.0)
    p.set_defaults(func=cmd_sim_server)


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="serve the simulated engine under a multi-tenant load, with the console")
    p.add_argument("--port", type=int, default=8080, help="the port sluice serves on, on 127.0.0.1 (default 8080)")
    p.add_argument("--state-dir", default=".sluice",
                   help="where the demo keeps its config, keys, admin token and store (default .sluice)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the built-in load's request rates")
    p.add_argument("--headless", type=float, metavar="SECONDS", help="no console: run the load this long, report")
    p.set_defaults(func=cmd_demo)


def _add_console_parser(sub: Any) -> None:
    from tui.cli import add_console_arguments, console_main

    p = sub.add_parser("console", help="the operator console (admin token from $SLUICE_ADMIN_TOKEN or --token-file)")
    add_console_arguments(p)
    p.set_defaults(func=console_main)


def _add_simulate_parser(sub: Any) -> None:
    from replay.simulate import add_arguments as add_simulate_arguments, run as run_simulate

    p = sub.add_parser("simulate", help="replay a workload on a virtual clock under one or more policies")
    add_simulate_arguments(p)
    p.set_defaults(func=run_simulate)


def _add_plan_parser(sub: Any) -> None:
    from sluice import plan_command

    p = sub.add_parser("plan", help="placement advice: which models fit which GPUs or MIG profiles, with how much "
                       "KV room, and whether each pool is over- or under-provisioned (it moves nothing)",
                       description=plan_command.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plan_command.add_arguments(p)
    p.set_defaults(func=plan_command.run)


def _add_keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="generate a tenant API key and its hash for the config")
    p.set_defaults(func=cmd_keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="A control plane for LLM serving on SGLang.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_serve_parser, _add_sim_server_parser, _add_demo_parser, _add_console_parser,
                _add_simulate_parser, add_export_parser, add_audit_parser, add_replay_parser, add_snapshot_parser,
                _add_plan_parser, _add_keys_parser):  # the order `sluice --help` lists them in
        add(sub)
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
