"""The console's trace view as text: the span waterfall (tree order, bars on the time axis), the
request's phases as extra spans, and `/why` in words. Pure, like the rest of tui.format."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from .format import ms

SERVICE_STYLE = {"sluice": "dodger_blue2", "sglang": "dark_orange", "engine": "dark_orange", "phase": "green"}


# -- trace waterfall -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WaterfallRow:
    span: Mapping[str, Any]
    depth: int
    offset_ms: float
    duration_ms: float


def waterfall_rows(spans: Sequence[Mapping[str, Any]]) -> tuple[list[WaterfallRow], float, float]:
    """Order spans as a tree (parents before children, siblings by start) with their depth.

    Returns (rows, trace start ts, trace duration in seconds). Spans whose parent is not in the
    trace (for example an engine span whose parent was sampled out) become roots.
    """
    if not spans:
        return [], 0.0, 0.0
    by_id = {s.get("span_id"): s for s in spans}
    children: dict[Any, list[Mapping[str, Any]]] = {}
    roots: list[Mapping[str, Any]] = []
    for s in spans:
        parent = s.get("parent_span_id")
        if parent and parent in by_id and parent != s.get("span_id"):
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)

    def start(s: Mapping[str, Any]) -> float:
        return float(s.get("start_ts") or 0.0)

    t0 = min(start(s) for s in spans)
    t1 = max(float(s.get("end_ts") or s.get("start_ts") or 0.0) for s in spans)
    rows: list[WaterfallRow] = []
    seen: set[Any] = set()
    # pushed latest first so that they pop earliest first; ties keep their given order
    stack = [(r, 0) for r in reversed(sorted(roots, key=start))]
    while stack:
        s, depth = stack.pop()
        sid = s.get("span_id")
        if sid in seen:
            continue
        seen.add(sid)
        end = float(s.get("end_ts") or s.get("start_ts") or 0.0)
        rows.append(WaterfallRow(s, depth, (start(s) - t0) * 1000.0, max(0.0, end - start(s)) * 1000.0))
        for c in reversed(sorted(children.get(sid, []), key=start)):
            stack.append((c, depth + 1))
    return rows, t0, max(t1 - t0, 0.0)


def waterfall_line(row: WaterfallRow, total_ms: float, bar_width: int, name_width: int = 32) -> Text:
    """One line of the waterfall: indented name, service, a bar placed on the time axis, duration."""
    span = row.span
    service = str(span.get("service") or "?")
    style = SERVICE_STYLE.get(service, "magenta")
    name = ("  " * row.depth + str(span.get("name") or "?"))
    if len(name) > name_width:
        name = name[: name_width - 1] + "…"
    text = Text(no_wrap=True, overflow="crop")
    text.append(name.ljust(name_width) + " ")
    text.append(service[:8].ljust(8) + " ", style=style)
    width = max(bar_width, 1)
    if total_ms <= 0:
        lo, hi = 0, width
    else:
        lo = min(width - 1, int(row.offset_ms / total_ms * width))
        hi = max(lo + 1, min(width, round((row.offset_ms + row.duration_ms) / total_ms * width)))
    cells = [" "] * width
    for i in range(lo, hi):
        cells[i] = "█"
    for ev in span.get("events") or []:
        ts = ev.get("ts")
        if ts is None or total_ms <= 0:
            continue
        start = float(span.get("start_ts") or 0.0)
        pos = int((row.offset_ms + (float(ts) - start) * 1000.0) / total_ms * width)
        if 0 <= pos < width:
            cells[pos] = "◆"
    text.append("".join(cells[:lo]))
    bar_part = "".join(cells[lo:hi])
    text.append(bar_part, style=style)
    text.append("".join(cells[hi:]))
    text.append(" " + ms(row.duration_ms).rjust(8))
    return text


def axis_line(total_ms: float, bar_width: int, name_width: int = 32) -> Text:
    """The time axis above the bars: 0 on the left, the trace duration on the right."""
    text = Text(no_wrap=True, overflow="crop", style="dim")
    text.append("span".ljust(name_width) + " " + "service".ljust(8) + " ")
    left = "0"
    mid = ms(total_ms / 2)
    right = ms(total_ms)
    width = max(bar_width, len(left) + len(mid) + len(right) + 2)
    axis = [" "] * width
    for i, ch in enumerate(left):
        axis[i] = ch
    m = width // 2 - len(mid) // 2
    for i, ch in enumerate(mid):
        axis[m + i] = ch
    for i, ch in enumerate(right):
        axis[width - len(right) + i] = ch
    text.append("".join(axis))
    text.append(" " + "duration".rjust(8))
    return text


# -- why -------------------------------------------------------------------------------------------

def why_text(why: Mapping[str, Any]) -> Text:
    """`/why` for reading: each decision in words, the SLO, the outcome, what would have let it in."""
    text = Text()
    slo = why.get("slo") or {}
    head = [f"policy v{why.get('policy_version')}"]
    if slo:
        bounds = [f"{label} ≤ {ms(slo[key])}" for key, label in
                  (("ttft_budget_ms", "TTFT"), ("tpot_budget_ms", "TPOT"), ("deadline_ms", "end")) if slo.get(key)]
        head.append(f"class {slo.get('class')}: " + (", ".join(bounds) or "no latency bound"))
    actual = why.get("actual") or {}
    if actual:
        met = actual.get("slo_met")
        head.append(f"actual TTFT {ms(actual.get('ttft_ms'))}, TPOT {ms(actual.get('tpot_ms'))}"
                    + ("" if met is None else (" (SLO met)" if met else " (SLO missed)")))
    text.append("Why  ", style="bold")
    text.append(" · ".join(head) + "\n", style="dim")
    for d in why.get("decisions") or []:
        kind = str(d.get("kind"))
        text.append(f"{kind:>8}  ", style="bold red" if kind == "reject" else "bold cyan")
        words = str(d.get("text") or d.get("reason") or "")
        text.append((words[len(kind):].lstrip() if words.startswith(kind + " ") else words) + "\n")
    would = why.get("would_admit")
    if would:
        text.append(" let in  ", style="bold yellow")
        text.append(f"would have been let in with {would.get('text')}\n")
    if not why.get("decisions"):
        text.append(str(why.get("summary") or "no decision recorded"), style="dim")
    return text


def phase_spans(why: Mapping[str, Any] | None, spans: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The request's phases (admission, queue, prefill, decode) as spans under the trace's root,
    so the waterfall shows where its time went, not just the two spans sluice emits."""
    if not why:
        return []
    ids = {s.get("span_id") for s in spans}
    root = next((s.get("span_id") for s in spans if s.get("parent_span_id") not in ids), None)
    return [{"span_id": f"phase-{p['name']}", "parent_span_id": root, "name": f"phase: {p['name']}",
             "service": "phase", "start_ts": p["start_ts"], "end_ts": p["end_ts"],
             "attributes": {"duration_ms": round((float(p["end_ts"]) - float(p["start_ts"])) * 1e3, 3)}, "events": []}
            for p in why.get("phases") or [] if p.get("start_ts") is not None and p.get("end_ts") is not None]
