"""Overview: totals with sparklines, engines and GPUs."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Grid, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Label, Static

from .format import bar, chart, gib, ms, num, peak, pct, si, spark
from .paint import show
from .tables import KeyedTable

HISTORY = 300  # samples kept per series (one a second: the last five minutes)
TABLE_SPARK = 24  # points in the per-engine / per-GPU text sparklines


def _gpu_power(state: dict[str, Any]) -> float:
    return float(sum(float(g.get("power_w") or 0.0) for g in state.get("gpus") or []))


def power_limit(gpus: list[dict[str, Any]]) -> float | None:
    """The sum of the GPUs' power limits, when every reading carries one (a MIG instance's row has
    none of its own: its GPU's row carries it)."""
    limits = [g.get("power_limit_w") for g in gpus if not g.get("mig")]
    if not limits or any(not v for v in limits):
        return None
    return float(sum(limits))


# Every chart has a fixed, labelled scale: ratios 0-100%, watts 0 to the power limit, rates 0 to
# the peak of the history shown (so a line sinks only when the rate does).
def _scale(key: str, history: list[float], state: dict[str, Any]) -> tuple[float, str]:
    if key == "attainment":
        return 1.0, "0–100%"
    if key == "gpu_power":
        limit = power_limit(state.get("gpus") or [])
        if limit is not None:
            return limit, f"0–{limit:.0f} W limit"
        return peak(history), f"0–{peak(history):.0f} W peak"
    if peak(history) <= 0:
        return 0.0, "all 0"
    return peak(history), f"0–{si(peak(history))} peak"


# (id, title, extractor, formatter)
CARDS: list[tuple[str, str, Callable[[dict[str, Any]], float | None], Callable[[Any], str]]] = [
    ("request_rate", "Requests/s", lambda s: s["totals"].get("request_rate"), lambda v: num(v, 1)),
    ("goodput", "Goodput/s", lambda s: s["totals"].get("goodput"), lambda v: num(v, 1)),
    ("attainment", "SLO attainment", lambda s: s["totals"].get("attainment"), lambda v: pct(v, 1)),
    ("rejections_per_s", "Rejections/s", lambda s: s["totals"].get("rejections_per_s"), lambda v: num(v, 2)),
    ("output_tokens_per_s", "Output tok/s", lambda s: s["totals"].get("output_tokens_per_s"), si),
    ("gpu_power", "GPU power W", _gpu_power, lambda v: num(v, 0)),
]


class Chart(Widget):
    """Bars of the recent history on a fixed scale 0..hi (Textual's Sparkline scales min..max)."""

    DEFAULT_CSS = "Chart { height: 3; }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.values: list[float] = []
        self.hi = 0.0

    def show(self, values: list[float], hi: float) -> None:
        self.values, self.hi = values, hi
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width or 1, self.size.height or 1
        return Text("\n".join(chart(self.values, width, height, self.hi)), style="cyan", no_wrap=True)


class StatCard(Vertical):
    """A titled number with a chart of its recent history; the subtitle names the chart's scale."""

    def __init__(self, key: str, title: str) -> None:
        super().__init__(id=f"card-{key}", classes="card")
        self.border_title = title

    def compose(self) -> ComposeResult:
        yield Static("–", classes="card-value")
        yield Chart(classes="card-spark")

    def show(self, value: str, history: list[float], hi: float, scale: str) -> None:
        show(self.query_one(".card-value", Static), value)
        self.query_one(Chart).show(history, hi)
        self.border_subtitle = scale


ENGINE_COLUMNS = [
    ("name", "Engine", 12), ("kind", "Type", 12), ("health", "Health", 7), ("running", "Run", 4),
    ("waiting", "Wait", 4), ("window", "Win", 4), ("kv", "KV cache", 16), ("tput", "Gen tok/s", 9),
    ("trend", "Gen tok/s, 0→peak", TABLE_SPARK), ("fc_ttft", "Fc TTFT", 8), ("fc_tpot", "Fc TPOT", 8),
    ("clock", "SM MHz, rule", 16),
]

GPU_COLUMNS = [
    ("idx", "GPU", 3), ("name", "Name", 18), ("power", "Power W", 7), ("ptrend", "Power W, 0→limit|peak", TABLE_SPARK),
    ("energy", "Energy kJ", 9), ("clock", "SM MHz", 6), ("util", "Util", 16), ("mem", "Mem GiB", 9),
]


class OverviewPane(Vertical):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.series: dict[str, deque[float]] = {key: deque(maxlen=HISTORY) for key, *_ in CARDS}
        self.engine_tput: dict[str, deque[float]] = {}
        self.gpu_power: dict[str, deque[float]] = {}
        self.clocks: dict[str, dict[str, Any]] = {}  # each engine's `clock` in the last state

    def compose(self) -> ComposeResult:
        with Grid(id="cards"):
            for key, title, *_ in CARDS:
                yield StatCard(key, title)
        yield Static("", id="overview-status")
        yield Label("Engines", classes="section-title")
        yield KeyedTable(ENGINE_COLUMNS, id="engines", cursor_type="row", zebra_stripes=True)
        yield Static("", id="engine-clock")
        yield Label("GPUs", classes="section-title")
        yield Static("", id="gpu-status")
        yield KeyedTable(GPU_COLUMNS, id="gpus", cursor_type="row", zebra_stripes=True)

    def update_state(self, state: dict[str, Any], new_sample: bool) -> None:
        totals = state.get("totals") or {}
        state = {**state, "totals": totals}
        for key, _title, extract, fmt in CARDS:
            value = extract(state)
            series = self.series[key]
            if new_sample and value is not None:
                series.append(float(value))
            history = list(series)
            hi, scale = _scale(key, history, state)
            self.query_one(f"#card-{key}", StatCard).show(fmt(value), history, hi, scale)
        status = Text()
        status.append(f"queued {num(totals.get('queued'))}   in flight {num(totals.get('in_flight'))}   ")
        status.append(f"scheduler {state.get('scheduler', '?')}   policy v{state.get('policy_version', '?')}")
        show(self.query_one("#overview-status", Static), status)
        self._engines(state.get("engines") or [], new_sample)
        self._gpus(state, new_sample)

    def _engines(self, engines: list[dict[str, Any]], new_sample: bool) -> None:
        rows: dict[str, tuple[Any, ...]] = {}
        several = len({e.get("pool") for e in engines}) > 1  # model pools: each engine's beside its name
        for e in engines:
            name = str(e.get("name"))
            label = f"{name} · {e.get('pool')}" if several else name
            hist = self.engine_tput.setdefault(name, deque(maxlen=HISTORY))
            if new_sample:
                hist.append(float(e.get("gen_throughput") or 0.0))
            simulated = bool(e.get("simulated"))
            kind = Text("simulated" if simulated else f"real {e.get('kind') or ''}".strip(),
                        style="italic" if simulated else "bold")
            healthy = e.get("healthy")
            health = Text("● up", style="green") if healthy else Text("● down", style="bold red")
            kv = e.get("kv_usage")
            fc = e.get("forecast") or {}
            rows[name] = (
                Text(label), kind, health, num(e.get("running")), num(e.get("waiting")), num(e.get("window")),
                Text(bar(kv, 10) + " " + pct(kv, 0).rjust(4), style=_load_style(kv)),
                si(e.get("gen_throughput")), Text(spark(hist, TABLE_SPARK, hi=peak(hist)), style="cyan"),
                ms(fc.get("ttft_ms")), ms(fc.get("tpot_ms")), clock_cell(e.get("clock")),
            )
        self.clocks = {str(e.get("name")): e["clock"] for e in engines if e.get("clock")}
        self.query_one("#engines", KeyedTable).sync(rows)
        self._show_clock()

    @on(DataTable.RowHighlighted, "#engines")
    def _show_clock(self) -> None:
        """Under the engines, the selected engine's clock in words: now, the target, the floors and
        why (the frequency rule's last evaluation, docs/frequency.md). Hidden without clock control."""
        line = self.query_one("#engine-clock", Static)
        line.display = any(c.get("control") for c in self.clocks.values())
        if line.display:
            name = self.query_one("#engines", KeyedTable).cursor_key()
            show(line, clock_text(name or "", self.clocks.get(name or "")))

    def _gpus(self, state: dict[str, Any], new_sample: bool) -> None:
        gpus = state.get("gpus") or []
        gpu_status = str(state.get("gpu_status") or "")
        show(self.query_one("#gpu-status", Static),
             "" if gpu_status in ("", "ok") else Text(gpu_status, style="dim italic"))
        rows: dict[str, tuple[Any, ...]] = {}
        for g in gpus:
            index = g.get("gpu", g.get("index"))  # the admin API's readings name it "gpu"
            key = "–" if index is None else str(index)
            if g.get("mig"):  # a MIG instance, under its GPU: its memory (NVML gives it no power or clock)
                rows[f"{key}/{g['mig']}"] = _mig_row(key, g)
                continue
            hist = self.gpu_power.setdefault(key, deque(maxlen=HISTORY))
            if new_sample:
                hist.append(float(g.get("power_w") or 0.0))
            util = g.get("utilization")
            energy = g.get("energy_j")
            mem = f"{gib(g.get('memory_used_bytes'))}/{gib(g.get('memory_total_bytes'))}"
            name = str(g.get("name") or "")
            rows[key] = (
                key, Text(name, style="italic" if g.get("simulated") else ""), num(g.get("power_w"), 0),
                Text(spark(hist, TABLE_SPARK, hi=g.get("power_limit_w") or peak(hist)), style="yellow"),
                num(None if energy is None else float(energy) / 1000.0, 1), num(g.get("sm_clock_mhz")),
                Text(bar(util, 10) + " " + pct(util, 0).rjust(4), style=_load_style(util)), mem,
            )
        self.query_one("#gpus", KeyedTable).sync(rows)


def _mhz(value: Any) -> str:
    return "–" if value is None else f"{float(value):.0f}"


def _clock_tag(reason: str) -> str:
    """Which floor the rule's clock sits on, from its reason ("hold: energy: below ...")."""
    why = reason.split(": ", 1)[-1]
    if why.startswith("SLO"):
        return "SLO"
    if why.startswith("energy"):
        return "energy"
    return "min" if "minimum clock" in why else ""


def clock_cell(c: dict[str, Any] | None) -> Text:
    """An engine's SM clock now and the rule's target ("1410→1680 SLO": raising to meet the SLO;
    "990 energy": held at the energy floor); a dry run in yellow; without the rule, the clock only."""
    if not c:
        return Text("–", style="dim")
    now, target = c.get("sm_clock_mhz"), c.get("target_mhz")
    if not c.get("control") or target is None:
        return Text(f"{_mhz(now)} fixed", style="dim")
    text = _mhz(target) if now is None or round(float(now)) == round(float(target)) else f"{_mhz(now)}→{_mhz(target)}"
    tag = _clock_tag(str(c.get("reason") or ""))
    dry = str(c.get("status") or "").startswith("dry run")
    return Text(f"{text} {tag}".strip() + (" dry" if dry else ""), style="yellow" if dry else "")


def clock_text(name: str, c: dict[str, Any] | None) -> Text:
    text = Text(f"{name}: ", style="bold")
    if not c or not c.get("control"):
        text.append(f"SM {_mhz((c or {}).get('sm_clock_mhz'))} MHz, not steered (clock_control off)", style="dim")
        return text
    text.append(f"SM {_mhz(c.get('sm_clock_mhz'))} MHz now, target {_mhz(c.get('target_mhz'))}")
    if c.get("wanted_mhz") is not None:
        text.append(f" (wants {_mhz(c.get('wanted_mhz'))}; floors: SLO {_mhz(c.get('slo_floor_mhz'))}, "
                    f"energy {_mhz(c.get('energy_floor_mhz'))})")
    if c.get("reason"):
        text.append(f" · {c['reason']}")
    status = str(c.get("status") or "")
    if status:
        text.append(f" · {status}", style="yellow" if status.startswith("dry run") else "dim")
    return text


def _mig_row(index: str, g: dict[str, Any]) -> tuple[Any, ...]:
    ids = f" GI {g['gpu_instance_id']}" if g.get("gpu_instance_id") is not None else ""
    name = Text(f"└ MIG {g.get('mig_profile') or '?'}{ids}", style="dim")
    mem = f"{gib(g.get('memory_used_bytes'))}/{gib(g.get('memory_total_bytes'))}"
    return (index, name, "", "", "", "", Text("n/a under MIG", style="dim"), mem)


def _load_style(fraction: Any) -> str:
    if fraction is None:
        return "dim"
    f = float(fraction)
    if f >= 0.9:
        return "red"
    if f >= 0.7:
        return "yellow"
    return "green"


