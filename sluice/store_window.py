"""A recorded window of a sluice store, for the commands that read one (`audit`, `replay --db`,
`plan --db`): the window's bounds from the command line and a read-only connection to the store."""
from __future__ import annotations

import argparse
import sys
from typing import Any

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


def window_of(args: argparse.Namespace) -> tuple[float, float | None]:
    """(since, until) from --since/--until or --window; ValueError for a usage error."""
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if getattr(args, "window", None):
        if since is not None or until is not None:
            raise ValueError("give --window or --since/--until, not both")
        since, until = parse_window(args.window)
    if since is not None and until is not None and until <= since:
        raise ValueError(f"the window ends ({until}) before it starts ({since})")
    return since or 0.0, until


def open_store(path: str) -> Any:
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


def window_and_store(prog: str, args: argparse.Namespace, check: Any = None) -> tuple[float, float | None, Any] | int:
    """(since, until, a read-only connection to --db), or the exit status after saying why not."""
    try:
        if check is not None:
            check()
        since, until = window_of(args)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return since, until, open_store(args.db)
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE


def window_arguments(p: argparse._ActionsContainer, window: bool) -> list[argparse.Action]:
    """--since/--until (and --window when `window`): the actions, so a caller can tell them apart."""
    when = "epoch seconds or an ISO 8601 date-time (UTC unless an offset is given)"
    actions = [p.add_argument("--window", metavar="SINCE:UNTIL", help=f"the window, each side {when}, either may be empty")
               ] if window else []
    return [*actions,
            p.add_argument("--since", help=f"from this time ({when}); default: the first record"),
            p.add_argument("--until", help=f"before this time ({when}); default: the last record")]
