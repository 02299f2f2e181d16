"""Pure helpers of the console: number formatting, text sparklines and bars, policy diffs and
request filtering (the trace waterfall is in tui.waterfall). No Textual here, so they are cheap
to test."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.text import Text

SPARK_CHARS = "▁▂▃▄▅▆▇█"
IN_FLIGHT = frozenset({"queued", "running"})
STATUS_STYLE = {
    "queued": "yellow",
    "running": "bold cyan",
    "ok": "green",
    "rejected": "bold red",
    "aborted": "magenta",
    "error": "red",
    "expired": "dark_orange",
}


# -- numbers ---------------------------------------------------------------------------------------

def num(value: Any, digits: int = 1, dash: str = "–") -> str:
    """A float with `digits` decimals, an int as is, None as a dash."""
    if value is None:
        return dash
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return str(value)


def si(value: Any, digits: int = 1) -> str:
    """Large numbers with k/M/G suffixes: 12345 -> '12.3k'."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}f}{unit}"
    return f"{v:.{digits}f}" if v != int(v) else f"{int(v)}"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def pct(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value) * 100:.{digits}f}%"
    except (TypeError, ValueError):
        return str(value)


def ms(value: Any) -> str:
    if value is None:
        return "–"
    v = float(value)
    if v >= 10_000:
        return f"{v / 1000:.1f}s"
    if v >= 100:
        return f"{v:.0f}ms"
    return f"{v:.1f}ms"


def utc_time(ts: Any, with_date: bool = False) -> str:
    """Epoch seconds to 'HH:MM:SS' (UTC, so that every operator reads the same thing)."""
    if ts is None:
        return "–"
    t = time.gmtime(float(ts))
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", t)


def gib(n: Any) -> str:
    if n is None:
        return "–"
    return f"{float(n) / 2**30:.0f}"


# -- bars and sparklines ---------------------------------------------------------------------------

def bar(fraction: Any, width: int = 10) -> str:
    """A horizontal bar of `width` cells for a fraction in [0, 1] (eighth-block resolution)."""
    if fraction is None:
        return " " * width
    f = min(max(float(fraction), 0.0), 1.0)
    eighths = round(f * width * 8)
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    return ("█" * full + partial).ljust(width)


def spark(values: Iterable[float], width: int = 20, lo: float = 0.0, hi: float | None = None) -> str:
    """A one-line text sparkline of the last `width` values on a fixed scale: `lo` (default 0) to
    `hi` (default the largest value shown, so a rate reads against its own peak). Values outside
    are clipped; an all-zero series draws on the floor, a constant maximum draws full."""
    vals = list(values)[-width:]
    if not vals:
        return " " * width
    high = peak(vals) if hi is None else hi
    span = high - lo
    top = len(SPARK_CHARS) - 1
    if span <= 0:
        return (SPARK_CHARS[0] * len(vals)).rjust(width)
    return "".join(
        SPARK_CHARS[min(top, max(0, int((v - lo) / span * top + 0.5)))] for v in vals
    ).rjust(width)


def peak(values: Iterable[float]) -> float:
    return max((float(v) for v in values), default=0.0)


def chart(values: Sequence[float], width: int, height: int, hi: float) -> list[str]:
    """A `height`-row bar chart of the last `width` values on the scale 0..`hi` (eighth blocks),
    top row first. The scale is fixed by the caller so equal values draw equal bars everywhere."""
    vals = list(values)[-width:]
    rows = [[" "] * width for _ in range(height)]
    if hi <= 0:
        return ["".join(r) for r in rows]
    offset = width - len(vals)
    for i, v in enumerate(vals):
        eighths = round(min(max(float(v) / hi, 0.0), 1.0) * height * 8)
        for level in range(height):  # level 0 is the bottom row
            fill = min(8, max(0, eighths - 8 * level))
            if fill:
                rows[height - 1 - level][offset + i] = SPARK_CHARS[fill - 1]
    return ["".join(r) for r in rows]


# -- policy diffs ----------------------------------------------------------------------------------

def merge_patch_diff(before: Any, after: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `before` into `after` (objects only).

    Keys removed in `after` map to None (deletion); nested objects are diffed recursively; any
    other changed value (numbers, lists, strings) is replaced whole. Returns {} when equal.
    """
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return after
    patch: dict[str, Any] = {}
    for key, new in after.items():
        if key not in before:
            patch[key] = new
            continue
        old = before[key]
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            sub = merge_patch_diff(old, new)
            if sub:
                patch[key] = sub
        elif old != new or isinstance(old, bool) != isinstance(new, bool):
            patch[key] = new  # 1 == 1.0 is no change in JSON, but true -> 1 is
    for key in before:
        if key not in after:
            patch[key] = None
    return patch


def changed_paths(patch: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a merge patch: {'a': {'b': 1}} -> ['a.b']."""
    if not isinstance(patch, Mapping) or not patch:
        return [prefix] if prefix else []
    out: list[str] = []
    for key, value in patch.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.extend(changed_paths(value, path))
        else:
            out.append(path)
    return out


def policy_document(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The editable part of a policy: everything but its version."""
    return {k: v for k, v in policy.items() if k != "version"}


def dump_json(doc: Any) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False)


def unified_diff(before: Any, after: Any, context: int = 2, labels: tuple[str, str] = ("current", "proposed")
                 ) -> list[str]:
    """A unified diff of two JSON documents, pretty-printed with sorted keys."""
    a = json.dumps(before, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    b = json.dumps(after, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return list(difflib.unified_diff(a, b, labels[0], labels[1], n=context, lineterm=""))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, Mapping) else "a list" if isinstance(value, list) else "null"


def entry_fields(entries: Mapping[str, Any]) -> dict[str, Any]:
    """Every field any entry of a named map has (e.g. all SLO classes), with a non-null example."""
    out: dict[str, Any] = {}
    for entry in entries.values():
        if isinstance(entry, Mapping):
            for key, value in entry.items():
                if out.get(key) is None:
                    out[key] = value
    return out


def policy_problems(edited: Mapping[str, Any], current: Mapping[str, Any],
                    choices: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """What the server would refuse in `edited`, judged against the shape of the `current`
    policy (its keys and the kinds of their values; the entries of a named map such as
    `tenants` share the fields of the existing ones) and the server's `choices` for enumerated
    fields (`scheduler`, `on_miss`). The server validates again on apply; this only spares the
    round trip while typing."""
    choices = choices or {}
    problems: list[str] = []

    def check(path: str, key: str, value: Any, example: Any) -> None:
        allowed = choices.get(key)
        if allowed and value is not None and value not in allowed:
            problems.append(f"{path}: must be one of {', '.join(allowed)}")
        elif value is not None and example is not None and _kind(value) != _kind(example):
            problems.append(f"{path}: must be {_kind(example)}")

    for key, value in edited.items():
        if key not in current:
            problems.append(f"{key}: unknown field (fields: {', '.join(sorted(current))})")
            continue
        example = current[key]
        if isinstance(example, Mapping) and isinstance(value, Mapping) and example and all(
                isinstance(v, Mapping) for v in example.values()):
            fields = entry_fields(example)
            for name, entry in value.items():
                if not isinstance(entry, Mapping):
                    problems.append(f"{key}.{name}: must be an object")
                    continue
                for field, v in entry.items():
                    if field not in fields:
                        problems.append(f"{key}.{name}.{field}: unknown field "
                                        f"(fields: {', '.join(sorted(fields))})")
                    else:
                        check(f"{key}.{name}.{field}", field, v, fields[field])
        else:
            check(key, key, value, example)
    return problems


def diff_text(lines: Sequence[str]) -> Text:
    """Colour a unified diff for display."""
    text = Text()
    for line in lines:
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        else:
            style = "dim"
        text.append(line + "\n", style=style)
    if not lines:
        text.append("(no differences)", style="dim")
    return text


# -- requests --------------------------------------------------------------------------------------

REQUEST_FILTER_FIELDS = ("rid", "tenant", "status", "engine", "slo_class", "decision", "trace_id")


def request_matches(req: Mapping[str, Any], terms: Sequence[str]) -> bool:
    """Every term must match: `key:value` matches that field exactly (status:running, tenant:acme);
    a bare term is a substring of rid, tenant, status, engine, class or decision."""
    for term in terms:
        key, sep, value = term.partition(":")
        if sep and key in REQUEST_FILTER_FIELDS:
            if key == "status" and value in ("inflight", "in-flight", "live"):
                if req.get("status") not in IN_FLIGHT:
                    return False
                continue
            if str(req.get(key) or "").lower() != value:
                return False
        elif not any(term in str(req.get(f) or "").lower() for f in REQUEST_FILTER_FIELDS[:6]):
            return False
    return True


def filter_terms(text: str) -> list[str]:
    return [t for t in text.lower().split() if t]
