"""Entry points of the console for the `sluice console` command (and `python -m tui`).

The token is never a command-line argument (it would show in `ps` and shell history): it comes
from the environment variable SLUICE_ADMIN_TOKEN or from a file given with --token-file.

The CLI wires it like this::

    from tui.cli import add_console_arguments, console_main
    p = subparsers.add_parser("console", help="the operator console")
    add_console_arguments(p)
    p.set_defaults(func=console_main)          # console_main(args) -> int
"""

from __future__ import annotations

import argparse
import getpass
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

TOKEN_ENV = "SLUICE_ADMIN_TOKEN"
URL_ENV = "SLUICE_URL"
DEFAULT_URL = "http://127.0.0.1:8080"


class TokenError(Exception):
    """No usable admin token."""


def load_token(token_file: str | os.PathLike[str] | None = None) -> str:
    """The admin token: the first line of `token_file` if given, else $SLUICE_ADMIN_TOKEN.

    Raises TokenError with a message fit for the operator when there is none.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {path}: {exc.strerror or exc}") from exc
        if not token or not token[0].strip():
            raise TokenError(f"the token file {path} is empty")
        return token[0].strip()
    token_env = os.environ.get(TOKEN_ENV, "").strip()
    if not token_env:
        raise TokenError(f"no admin token: set {TOKEN_ENV} or pass --token-file FILE")
    return token_env


def default_actor() -> str:
    try:
        return f"{getpass.getuser()}@console"
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "console"


def add_console_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the console's options to `parser` (a `sluice console` subparser)."""
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                        help=f"base URL of the sluice server (default ${URL_ENV} or {DEFAULT_URL})")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help=f"read the admin token from FILE (default: ${TOKEN_ENV})")
    parser.add_argument("--actor", default=None,
                        help="name recorded in the audit log for changes made here (default user@console)")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between state reads (default 1)")
    parser.add_argument("--max-requests", type=int, default=500, metavar="N",
                        help="rows shown in the requests table (default 500)")
    parser.add_argument("--web", action="store_true",
                        help="serve the console to a browser (textual-serve) instead of this terminal")
    parser.add_argument("--host", default="127.0.0.1",
                        help="with --web: the address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="with --web: the port (default 8000)")
    return parser


def web_command(args: argparse.Namespace) -> str:
    """The command textual-serve runs for each browser session: this console, same options, in
    its own process. The token travels in the environment (never on a command line)."""
    parts = [sys.executable, "-m", "tui", "--url", args.url, "--refresh", str(args.refresh),
             "--max-requests", str(args.max_requests)]
    if args.actor:
        parts += ["--actor", args.actor]
    return shlex.join(parts)


def serve_web(args: argparse.Namespace, token: str) -> None:
    """Serve the console at http://HOST:PORT until interrupted; each page runs its own console."""
    from textual_serve.server import Server

    os.environ[TOKEN_ENV] = token  # inherited by the console processes textual-serve starts
    print(f"sluice console: serving on http://{args.host}:{args.port} (ctrl+c stops); whoever reaches this "
          "page steers sluice with the admin token", file=sys.stderr)
    Server(web_command(args), host=args.host, port=args.port, title="sluice console").serve()


def run_console(
    url: str,
    token: str | None,
    *,
    actor: str | None = None,
    refresh_interval: float = 1.0,
    max_requests: int = 500,
    starting: Callable[[], str | None] | None = None,
) -> None:
    """Run the console in this terminal until the operator quits (`starting`: see SluiceConsole)."""
    from .app import SluiceConsole

    SluiceConsole(url, token, actor=actor or default_actor(), refresh_interval=refresh_interval,
                  max_requests=max_requests, starting=starting).run()


def console_main(args: argparse.Namespace) -> int:
    """Run the console from parsed arguments (see `add_console_arguments`); returns an exit code."""
    try:
        token = load_token(args.token_file)
    except TokenError as exc:
        print(f"sluice console: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "web", False):
        serve_web(args, token)
        return 0
    run_console(args.url, token, actor=args.actor, refresh_interval=args.refresh,
                max_requests=args.max_requests)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice console", description="sluice operator console")
    add_console_arguments(parser)
    return console_main(parser.parse_args(argv))
