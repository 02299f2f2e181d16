"""`sluice plan`: placement advice, CARMA-style (docs/placement.md). It advises; it never moves an
engine.

    sluice plan --url http://127.0.0.1:8080          a running sluice's own advice (GET /admin/v1/plan)
    sluice plan --model NAME|config.json [...]        offline: the model(s) on the GPUs' and MIG
        profiles' memory, under a load given on the command line (--concurrency, or --rate x
        --duration by Little's law, with --mean-context) or read from a store (--db), and, with
        --replicas/--on, the verdict on the pool that serves it now.

Exit status: 0 done, 1 a running sluice could not be asked, 2 a usage error, 3 the store cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controlplane.core.placement import Demand, Replica, document, plan_model
from controlplane.core.placement_catalog import (
    BOARDS, GIB, KNOWN_MODELS, ModelConfigError, ModelSpec, board_targets, known_model, model_from_config,
)

EXIT_UNREACHABLE, EXIT_USAGE, EXIT_UNREADABLE = 1, 2, 3
OFFLINE = ("model", "params", "dtype", "kv_dtype", "concurrency", "rate", "duration", "mean_context", "db",
           "replicas", "on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    live = p.add_argument_group("a running sluice")
    live.add_argument("--url", help="ask this sluice (its admin API) for its advice")
    live.add_argument("--token-file", metavar="FILE", help="the admin token (default: $SLUICE_ADMIN_TOKEN)")
    live.add_argument("--timeout", type=float, default=30.0)
    m = p.add_argument_group("offline: the model")
    m.add_argument("--model", action="append", metavar="NAME|CONFIG",
                   help=f"a known model ({', '.join(KNOWN_MODELS)}) or a Hugging Face config.json (or its "
                   "folder); repeatable")
    m.add_argument("--params", type=float, help="its parameter count (models the config cannot count: MoE...)")
    m.add_argument("--dtype", help="the weights' dtype (bf16, fp8, int4, ...; default: the config's)")
    m.add_argument("--kv-dtype", help="the KV cache's dtype (default: the weights', BF16 under 2 bytes)")
    g = p.add_argument_group("offline: GPUs and load")
    g.add_argument("--gpu", action="append", choices=[*BOARDS, "all"], help="boards to consider (default H100-80GB)")
    g.add_argument("--no-mig", action="store_true", help="whole GPUs only")
    g.add_argument("--concurrency", type=float, help="concurrent sequences")
    g.add_argument("--rate", type=float, help="requests/s (with --duration: concurrency = rate x duration)")
    g.add_argument("--duration", type=float, help="seconds a request stays in the engine (end to end)")
    g.add_argument("--mean-context", type=float, help="tokens a sequence holds in the KV cache (prompt + output)")
    g.add_argument("--db", help="read the load from a store instead (a stopped server's, or a snapshot)")
    g.add_argument("--since", help="with --db: from this time (epoch seconds or ISO 8601)")
    g.add_argument("--until", help="with --db: before this time")
    g.add_argument("--replicas", type=int, help="engines serving the model now (for a verdict)")
    g.add_argument("--on", metavar="TARGET", help="where they run: a board or 'BOARD PROFILE' (H100-80GB 3g.40gb)")
    p.add_argument("--json", metavar="FILE", help="also write the plan as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        doc = _live(args) if args.url else _offline(args)
    except (ModelConfigError, ValueError) as exc:
        print(f"sluice plan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"sluice plan: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if args.url else EXIT_UNREADABLE
    print(format_plan(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"sluice plan: wrote {args.json}", file=sys.stderr)
    return 0


def _live(args: argparse.Namespace) -> dict[str, Any]:
    import urllib.error
    import urllib.parse
    import urllib.request

    from tui.cli import TokenError, load_token

    given = [f"--{k.replace('_', '-')}" for k in OFFLINE if getattr(args, k) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} belong to the offline plan, not to --url")
    try:
        token = load_token(args.token_file)
    except TokenError as exc:
        raise ValueError(str(exc)) from None
    query = f"?{urllib.parse.urlencode({'boards': ','.join(args.gpu)})}" if args.gpu and "all" not in args.gpu else ""
    req = urllib.request.Request(f"{args.url.rstrip('/')}/admin/v1/plan{query}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise OSError(f"{args.url} answered {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
    except urllib.error.URLError as exc:
        raise OSError(f"cannot ask {args.url}: {exc.reason}") from None


def load_model(arg: str, *, params: float | None = None, dtype: str | None = None,
               kv_dtype: str | None = None) -> ModelSpec:
    """A known model's name, or a config.json (or the folder holding one)."""
    path = Path(arg)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"{path}: not a readable config.json ({exc})") from None
        if not isinstance(cfg, dict):
            raise ModelConfigError(f"{path}: not a config.json (a JSON object)")
        name = str(cfg.get("_name_or_path") or path.parent.name or arg)
        return model_from_config(name, cfg, params=None if params is None else int(params), dtype=dtype,
                                 kv_dtype=kv_dtype)
    spec = known_model(arg, dtype=dtype, kv_dtype=kv_dtype)
    if spec is None:
        raise ModelConfigError(f"no model {arg!r}: give its config.json, or one of {', '.join(KNOWN_MODELS)}")
    if params is not None:
        raise ModelConfigError("--params is for a config.json, not a known model")
    return spec


def _offline(args: argparse.Namespace) -> dict[str, Any]:
    if not args.model:
        raise ValueError("give --url (a running sluice) or --model (offline)")
    if (args.since or args.until) and not args.db:
        raise ValueError("--since and --until choose the window of --db")
    if args.params is not None and len(args.model) > 1:
        raise ValueError("--params sizes one model: give one --model with it")
    specs = [load_model(m, params=args.params, dtype=args.dtype, kv_dtype=args.kv_dtype) for m in args.model]
    boards = list(BOARDS) if args.gpu and "all" in args.gpu else (args.gpu or ["H100-80GB"])
    targets = [t for b in dict.fromkeys(boards) for t in board_targets(b, mig=not args.no_mig)]
    demand = _demand(args, specs)
    replicas = _replicas(args)
    return document([plan_model(s, demand, targets, replicas).to_dict() for s in specs])


def _demand(args: argparse.Namespace, specs: list[ModelSpec]) -> Demand | None:
    if args.db:
        if args.concurrency is not None or args.rate is not None:
            raise ValueError("the load comes from --db or from the command line, not both")
        if len(specs) > 1:
            raise ValueError("--db reads one model's load (the store's rows name the client's model alias, not "
                             "a checkpoint): give one --model")
        return store_demand(args.db, args.since, args.until)
    if args.rate is not None or args.duration is not None:
        if args.rate is None or args.duration is None or args.concurrency is not None:
            raise ValueError("give --rate with --duration (Little's law), or --concurrency")
        sequences, source = args.rate * args.duration, f"command line: {args.rate:g} req/s x {args.duration:g} s"
    elif args.concurrency is not None:
        sequences, source = args.concurrency, "command line"
    else:
        if args.mean_context is not None:
            raise ValueError("--mean-context needs --concurrency or --rate and --duration")
        return None
    if args.mean_context is None or args.mean_context <= 0 or sequences < 0:
        raise ValueError("give --mean-context (tokens per sequence, > 0) with the load")
    return Demand(sequences, args.mean_context, source)


def store_demand(db: str, since: str | None, until: str | None) -> Demand | None:
    """The load of a recorded window by Little's law: arrivals/s x mean seconds in the engine
    sequences in flight, holding the mean prompt + output tokens of the requests served."""
    from sluice.store_window import open_store, parse_time

    lo = parse_time(since) if since else 0.0
    hi = parse_time(until) if until else float("inf")
    con = open_store(db)
    try:
        n, first, last, e2e_ms, context = con.execute(
            "SELECT count(*), min(arrival_ts), max(arrival_ts), avg(e2e_ms) FILTER (WHERE status = 'ok'), "
            "avg(prompt_tokens + completion_tokens) FILTER (WHERE status = 'ok') FROM requests "
            "WHERE arrival_ts >= ? AND arrival_ts < ? AND status <> 'rejected'", [lo, hi]).fetchone()
    finally:
        con.close()
    if not n or n < 2 or not context or e2e_ms is None or last <= first:
        return None
    rate = (n - 1) / (last - first)
    return Demand(rate * e2e_ms / 1000.0, float(context),
                  f"store {db}: {rate:.2f} req/s x {e2e_ms / 1000.0:.2f} s over {n} requests")


def _replicas(args: argparse.Namespace) -> list[Replica] | None:
    if args.replicas is None and args.on is None:
        return None
    if args.replicas is None or args.on is None or args.replicas < 1:
        raise ValueError("give --replicas (>= 1) with --on")
    name = args.on.replace(":", " ").strip()
    board = name.split()[0]
    found = next((t for t in board_targets(board) if t.name == name), None)
    if found is None:
        raise ValueError(f"--on {args.on!r}: not a board or 'BOARD PROFILE' ({', '.join(BOARDS)})")
    return [Replica(f"engine {i}", found) for i in range(args.replicas)]


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.1f}"


def _target_table(fits: list[dict[str, Any]]) -> list[str]:
    lines = [f"  {'target':<34} {'memory':>7} {'reserve':>7} {'KV room':>7} {'KV tokens':>10} {'seqs':>6}  fits",
             f"  {'':<34} {'GiB':>7} {'GiB':>7} {'GiB':>7}"]
    for f in fits:
        name = f["target"] + (f" x{f['per_board']}" if f.get("profile") and f.get("per_board", 1) > 1 else "")
        name += "" if f.get("memory_measured", True) else " ~"
        fits_word = ("yes" if f["holds_context"] else "yes (not a full context)") if f["fits"] else "no"
        lines.append(f"  {name:<34} {_gib(f['memory_bytes']):>7} {_gib(f['reserve_bytes']):>7} "
                     f"{_gib(max(0, f['kv_pool_bytes'])):>7} {f['kv_tokens']:>10,} "
                     f"{'-' if f['sequences'] is None else format(f['sequences'], ','):>6}  {fits_word}")
    return lines


def format_plan(doc: dict[str, Any]) -> str:
    """The plan document (offline or from a running sluice) as text."""
    out = []
    for m in doc["models"]:
        if "error" in m:
            out += [f"{m['model']}: {m['error']}", ""]
            continue
        engines = f" (engines {', '.join(m['engines'])})" if m.get("engines") else ""
        out.append(f"{m['model']}{engines}: {m['params'] / 1e9:.2f} B parameters, weights "
                   f"{m['weights_bytes'] / 1e9:.2f} GB ({_gib(m['weights_bytes'])} GiB), KV {m['kv_bytes_per_token']:,} "
                   f"B/token, context {m['context_length']:,}")
        d = m.get("demand")
        out.append(f"  load: {d['sequences']:,.1f} sequences x {d['mean_context']:,.0f} tokens = {d['tokens']:,.0f} "
                   f"KV tokens ({d['source']})" if d else "  load: none given (fits and KV room only)")
        out += _target_table(m["fits"])
        p = m.get("pool")
        if p:
            smallest = p.get("smallest_fit")
            out.append(f"  pool: {p['verdict'].upper()}: {p['reason']}"
                       + (f"; smallest fit for its share: {smallest}" if smallest and smallest not in p["reason"] else ""))
        out.append("")
    a = doc["assumptions"]
    out.append(f"memory = weights + reserve (SGLang's: {', '.join(f'{v:g} GiB {k}' for k, v in a['reserve_gib'].items())})"
               f" + KV pool; a pool may fill {a['high_water']:.0%} of its KV. ~: MIG memory estimated from the "
               "profile's name. Advice only: nothing is moved.")
    out += [f"note: {n}" for n in doc.get("notes", [])]
    return "\n".join(out)
