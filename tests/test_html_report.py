"""HTML reports (replay/html_report.py): the fair share over time, the page's contents, and the page
rendered by a real browser (headless Chromium, where installed)."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

from replay.html_report import FIGURES, ReportRequest, ReportRun, run_from_virtual, share_over_time, write_report
from replay.html_report_figures import figures
from replay.html_report_tables import summary_rows
from replay.loaders import LengthTable, poisson_workload
from replay.outcomes import VirtualResult
from replay.runner import default_policy, run_virtual
from replay.simulate import simulate_main
from replay.workload import merge, write_workload


def _req(tenant: str, arrival: float, status: str = "ok", first: float | None = None, finish: float | None = None,
         out: int = 0, asked: int | None = None) -> ReportRequest:
    return ReportRequest(tenant, "interactive", arrival, status, first_token_s=first, finish_s=finish, input_tokens=0,
                         output_tokens=out, requested_output_tokens=asked)


def test_share_over_time_against_a_hand_computed_water_filling() -> None:
    # service = prompt + 2 x output tokens. Window [0, 10): a is served 100 (50 output tokens over
    # [0, 10]); b is served 20 and refused 100 more, so it asked for 120; 120 was delivered.
    # Weights a:1, b:3: level L with min(100, L) + min(120, 3L) = 120 -> L = 30: a's fair share is
    # 30/120 = 25 %, b's 90/120 = 75 %; a received 100/120, b 20/120.
    # Window [10, 20): only a asked (40 served in [12, 18]): its share and fair share are both 100 %.
    run = ReportRun("r", [
        _req("a", 0.0, first=0.0, finish=10.0, out=50),
        _req("b", 0.0, first=0.0, finish=10.0, out=10),
        _req("b", 0.0, status="rejected", finish=0.0, asked=50),
        _req("a", 12.0, first=12.0, finish=18.0, out=20),
    ], weights={"a": 1.0, "b": 3.0})
    w0, w1 = share_over_time(run, 10.0, end_s=20.0)
    assert (w0.start_s, w0.end_s, w1.start_s, w1.end_s) == (0.0, 10.0, 10.0, 20.0)
    assert w0.delivered == pytest.approx(120.0)
    assert w0.tenants["a"] == pytest.approx((100 / 120, 0.25))
    assert w0.tenants["b"] == pytest.approx((20 / 120, 0.75))
    assert set(w1.tenants) == {"a"} and w1.tenants["a"] == pytest.approx((1.0, 1.0))
    # equal weights: the level is 60, each should have had half
    even = share_over_time(dataclasses.replace(run, weights={}), 10.0, end_s=20.0)[0]
    assert even.tenants["a"][1] == pytest.approx(0.5) and even.tenants["b"][1] == pytest.approx(0.5)


# an overloaded engine with admission on: refusals, deferrals, both classes, two tenants of unequal weight
_LENGTHS = LengthTable.constant(400, 200)
_WORKLOAD = merge(poisson_workload(_LENGTHS, 40.0, duration_s=8, seed=1, tenant="chat"),
                  poisson_workload(_LENGTHS, 30.0, duration_s=8, seed=2, tenant="docs", slo_class="batch"))


@cache
def _results() -> dict[str, VirtualResult]:
    return {p: run_virtual(_WORKLOAD, default_policy(p, admission=True, weights={"chat": 2.0, "docs": 1.0}),
                           torch_expert=False) for p in ("fcfs", "vtc")}


def _runs() -> list[ReportRun]:
    return [run_from_virtual(r, f"{p}+admission") for p, r in _results().items()]


def test_the_run_from_virtual_replay_keeps_the_runner_figures() -> None:
    for policy, res in _results().items():
        run = run_from_virtual(res, policy)
        assert len(run.requests) == len(res.records)
        statuses = {r.status for r in run.requests}
        assert {"ok", "rejected"} <= statuses  # the load exercises refusals
        rows = {row["name"]: row for row in summary_rows(run, "tenant")}
        for tenant, o in res.per_tenant.items():
            row = rows[tenant]
            assert (row["requests"], row["admitted"], row["rejected"], row["expired"], row["completed"]) == (
                o.requests, o.admitted, o.rejected, o.expired, o.completed)
            assert row["slo_attainment"] == pytest.approx(o.slo_attainment)
            assert row["fair_ratio"] == pytest.approx(o.fair_ratio)
            assert row["share"] == pytest.approx(o.share)
            assert row["ttft_p50_ms"] == pytest.approx(o.ttft_p50_s * 1e3)
        classes = {row["name"]: row for row in summary_rows(run, "slo_class")}
        assert set(classes) == {"interactive", "batch", "all"}
        assert classes["batch"]["requests"] == res.per_class["batch"].requests


def test_every_figure_has_a_title_axis_titles_and_names_its_runs() -> None:
    runs = _runs()
    figs = figures(runs)
    assert tuple(figs) == FIGURES
    for key, fig in figs.items():
        layout = fig.layout
        assert layout.title.text, key
        axes = [a for name in dir(layout) if re.fullmatch(r"[xy]axis\d*", name) and (a := getattr(layout, name))]
        assert any(a.title.text for a in axes if a.plotly_name.startswith("x")), key
        assert any(a.title.text for a in axes if a.plotly_name.startswith("y")), key
        assert all(t.name for t in fig.data if t.showlegend is not False), key
        text = json.dumps(fig.to_plotly_json(), default=str)
        for run in runs:  # each run is a legend entry (overlaid) or a panel title (one panel per run)
            assert run.name in text, (key, run.name)
    # the CDFs draw each class's bound (interactive: TTFT 500 ms, TPOT 50 ms; batch has none)
    bounds = [t for t in figs["ttft-cdf"].data if t.legendgroup == "bound"]
    assert [tuple(t.x) for t in bounds] == [(500.0, 500.0)]
    assert any("no TTFT bound" in a.text for a in figs["ttft-cdf"].layout.annotations)


def test_the_page_is_self_contained_with_every_figure_and_table(tmp_path: Path) -> None:
    runs = _runs()
    page = write_report(tmp_path / "rep", "what-if", runs, notes=["a note"])
    assert page == tmp_path / "rep" / "index.html"
    text = page.read_text(encoding="utf-8")
    # nothing fetched from the network: no external script, stylesheet or image
    assert not re.search(r"<(script|link|img)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", text, re.I)
    assert "Plotly.newPlot" in text and len(text) > 1_000_000  # plotly.js itself is inlined
    for key in FIGURES:
        assert text.count(f'id="fig-{key}"') == 1, key
        call = re.split(rf'Plotly\.newPlot\(\s*"fig-{key}"', text, maxsplit=1)
        assert len(call) == 2, key
        for run in runs:
            assert run.name in call[1].split("</script>", 1)[0], (key, run.name)
    for table, names in (("tenant", ("chat", "docs")), ("slo_class", ("interactive", "batch"))):
        block = text.split(f'id="table-{table}"', 1)[1].split("</table>", 1)[0]
        for name in names + tuple(r.name for r in runs):
            assert f">{name}<" in block, (table, name)
    assert "a note" in text
    with pytest.raises(ValueError, match="distinct"):
        write_report(tmp_path / "dup", "x", [runs[0], runs[0]])
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path / "none", "x", [])


def test_simulate_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.jsonl"
    write_workload(path, _WORKLOAD[:120])
    out = tmp_path / "report"
    assert simulate_main(["--workload", str(path), "--policy", "fcfs,wrr", "--no-torch", "--report", str(out)]) == 0
    assert str(out / "index.html") in capsys.readouterr().err
    text = (out / "index.html").read_text(encoding="utf-8")
    assert all(f'id="fig-{key}"' in text for key in FIGURES)
    assert ">fcfs<" in text and ">wrr<" in text


def _chromium() -> str | None:
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "headless_shell"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine (Debian: apt-get install "
                    "chromium-headless-shell); the page's contents are checked without it above")
def test_chromium_renders_every_plot(tmp_path: Path) -> None:
    runs = _runs()
    page = write_report(tmp_path, "rendered", runs)
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           "--virtual-time-budget=20000", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert proc.returncode == 0 and dom, proc.stderr[-2000:]
    # after rendering, each figure's div holds plotly's SVG with drawn traces and its legend
    pieces = re.split(r'<div id="fig-', dom)[1:]
    rendered = {p.split('"', 1)[0]: p for p in pieces}
    assert set(rendered) == set(FIGURES)
    for key, body in rendered.items():
        assert "js-plotly-plot" in body.split(">", 1)[0], key  # plotly ran on this div
        assert 'class="main-svg"' in body, key
        paths = (re.findall(r'<path class="js-line"[^>]*\sd="M[0-9.]', body)  # a drawn line
                 + re.findall(r'<g class="point"><path d="M[0-9.]', body))  # a drawn bar
        assert paths, f"{key}: no line or bar drawn"
        legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', body)
        assert legend, f"{key}: no legend"
    for run in runs:
        assert any(run.name in t for t in re.findall(r'class="legendtext"[^>]*>([^<]+)<', rendered["ttft-cdf"]))
