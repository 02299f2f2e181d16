"""The inputs of `sluice replay --live`, read and checked before anything is sent: the --keys file,
the --fidelity profile, the workload, the policy whose SLO classes judge it, the --slo targets, and
GET /v1/models (is the endpoint there, which model, who serves it). Bad input is a UsageError.
"""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from engine_adapter.sim.profile import SimProfile, load_profile
from replay.report import SLO
from replay.workload import WorkloadRequest

__all__ = ["GENERATED", "Unreachable", "UsageError", "fidelity_profile", "judging_policy", "load_workload",
           "probe_models", "read_keys", "slo_targets"]

# workload names whose requests are drawn from a seed (the others are fixed traces or files)
GENERATED = ("scenario:", "servegen:", "vtc-")


class UsageError(Exception):
    """Bad flags or inputs: reported as one line, exit status 2."""


class Unreachable(Exception):
    """The endpoint did not answer at all: one line, exit status 1."""


def fidelity_profile(name: str | None) -> SimProfile | None:
    """--fidelity's simulator profile (a name or a JSON file), if given."""
    if name is None:
        return None
    try:
        return load_profile(name)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unknown name, unreadable or malformed JSON
        raise UsageError(f"--fidelity {name}: {exc}") from None


def read_keys(path: str | None, api_key: str | None) -> dict[str, str]:
    """Tenant -> API key from --keys (TOML), with --api-key as every other tenant's ("*")."""
    keys: dict[str, str] = {}
    if path:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise UsageError(f"--keys {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"--keys {path}: not TOML: {exc}") from None
        bad = [t for t, k in doc.items() if not isinstance(k, str) or not k]
        if bad:
            raise UsageError(f'--keys {path}: expected tenant = "key" lines; {bad[0]!r} is not a key string')
        keys.update(doc)
    if api_key:
        keys.setdefault("*", api_key)
    return keys


def load_workload(args: argparse.Namespace) -> tuple[list[WorkloadRequest], dict[str, float]]:
    """--workload's requests in time order (the first --max-requests) and its tenants' weights."""
    from replay.simulate import load_named_workload

    if args.workload_seed != 0 and not args.workload.startswith(GENERATED):
        raise UsageError(f"--workload-seed: {args.workload} is not generated (only {', '.join(GENERATED)}* are)")
    # with --duration, only the part of the workload due before it is needed (workload time)
    span = args.duration * args.speedup if args.duration and math.isfinite(args.speedup) else None
    try:
        reqs, weights = load_named_workload(args.workload, duration_s=span, seed=args.workload_seed)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise UsageError(f"--workload {args.workload}: {exc}") from None
    reqs = sorted(reqs, key=lambda r: r.timestamp_ms)
    if args.max_requests:
        reqs = reqs[:args.max_requests]
    if not reqs:
        raise UsageError(f"--workload {args.workload}: no requests to send")
    return reqs, weights


def judging_policy(config: str | None, weights: dict[str, float]) -> Any:
    """The policy whose tenants' classes and classes' targets judge the requests: --config's (what
    the sluice under test would run with), else sluice's defaults."""
    from replay.simulate import build_policy

    try:
        return build_policy("fcfs", admission=None, config=config, weights=weights)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--config {config}: {exc}") from None


def slo_targets(classes: Mapping[str, Mapping[str, Any]], flags: Sequence[str], used: set[str]) -> dict[str, SLO]:
    """Per class (or tenant, or "*") SLO: the policy's classes' targets, replaced by `--slo` flags.
    A bare `--slo SPEC` is every request's; every class a request names must end up with a target."""
    targets: dict[str, SLO] = {}
    for name, c in classes.items():  # the policy's JSON form: ttft_ms, tpot_ms, ttft_ms_per_ktok, deadline_s
        deadline = c.get("deadline_s")
        targets[name] = SLO(c.get("ttft_ms"), c.get("tpot_ms"), None if deadline is None else deadline * 1e3,
                            c.get("ttft_ms_per_ktok") or 0.0)
    named: dict[str, SLO] = {}
    for flag in flags:
        name, sep, spec = flag.partition("=")
        if not sep:
            name, spec = "*", flag
        try:
            named[name.strip()] = SLO.parse(spec)
        except ValueError as exc:
            raise UsageError(f"--slo {flag!r}: {exc}") from None
    if "*" in named:
        targets = {}
    targets.update(named)
    unjudged = sorted(c for c in used if c not in targets and "*" not in targets)
    if unjudged:
        raise UsageError(f"SLO class(es) {', '.join(unjudged)} of the workload have no targets: give "
                         f"--slo {unjudged[0]}=ttft:MS,tpot:MS or a --config that defines them")
    return targets


async def probe_models(url: str, key: str | None, model: str | None) -> tuple[str, str | None]:
    """GET /v1/models: is the endpoint there, which model to ask for, and who serves it."""
    base = url.rstrip("/")
    models_url = (base if base.endswith("/v1") else base + "/v1") + "/models"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=15, sock_connect=5)
    try:
        async with (aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
                    session.get(models_url, headers=headers) as resp):
            status, text = resp.status, await resp.text(errors="replace")
    except aiohttp.InvalidURL:
        raise UsageError(f"--live {url!r} is not a URL (e.g. http://127.0.0.1:8080)") from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unreachable(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    data: list[dict[str, Any]] = []
    if status == 200:
        try:
            data = [m for m in json.loads(text).get("data", []) if isinstance(m, dict) and m.get("id")]
        except (ValueError, AttributeError):
            data = []
    ids = [str(m["id"]) for m in data]
    if model is None:
        if not ids:
            raise UsageError(f"give --model: GET {models_url} answered {status} without a model list")
        model = ids[0]
    elif ids and model not in ids:
        raise UsageError(f"--model {model!r} is not served at {url} (it serves {', '.join(ids)})")
    owner = next((str(m.get("owned_by")) for m in data if m["id"] == model and m.get("owned_by")), None)
    return model, owner
