"""`sluice replay --live` (replay/live_command.py) end to end on loopback: against the simulated engine
behind SGLang's HTTP API (the baseline) and through a real sluice gateway in front of it."""
from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from engine_adapter.sglang_server import make_sglang_app
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile, zero_delay
from replay.html_report import FIGURES
from replay.live_command import add_arguments, run
from replay.workload import WorkloadRequest, write_workload
from tests.gateway_fixtures import ADMIN, KEYS, running_gateway
from tests.servers import ServerThread, free_port
from tests.test_gateway import raw

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# SGLang bench_serving's result fields (python/sglang/bench_serving.py) that the JSON must carry
BENCH_SERVING_FIELDS = {
    "duration", "completed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "input_throughput", "output_throughput", "total_throughput", "concurrency",
    *(f"{s}_{m}_ms" for s in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl", "e2e_latency")),
    "p95_itl_ms",
}


def parse(argv: list[str]) -> argparse.Namespace:
    """The `sluice replay` parser as the CLI builds it: the shared flags, then the live ones."""
    p = argparse.ArgumentParser(prog="sluice replay")
    for flag in ("--live", "--json", "--report", "--config", "--db", "--window", "--since", "--until", "--policy"):
        p.add_argument(flag)
    add_arguments(p.add_argument_group("live replay"))
    return p.parse_args(argv)


class Counting:
    """ASGI middleware counting the completion requests that reach the app."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app, self.posts = app, 0

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"].endswith("completions"):
            self.posts += 1
        await self.app(scope, receive, send)


@pytest.fixture
def sim_server():
    """`sluice sim-server` in-process: the H100 profile 20x faster, so tokens stream in several chunks."""
    app = Counting(make_sglang_app(SimEngine("sim", load_profile("h100-llama3.1-8b"), seed=1, speedup=20.0),
                                   model_name=MODEL))
    with ServerThread(app) as server:
        yield server.url, app


def workload_file(tmp_path: Path, reqs: list[WorkloadRequest]) -> str:
    path = tmp_path / "w.jsonl"
    write_workload(path, reqs)
    return str(path)


def two_tenants(n: int = 6, gap_ms: float = 20.0) -> list[WorkloadRequest]:
    return [WorkloadRequest(i * gap_ms, 40 + i, 6 + i % 3, ("acme", "globex")[i % 2],
                            slo_class=("interactive", "batch")[i % 2]) for i in range(n)]


def test_against_the_simulated_engine_with_ignore_eos(sim_server, tmp_path, capsys):
    url, app = sim_server
    wl = two_tenants()
    out = tmp_path / "r.json"
    rc = run(parse(["--live", url, "--workload", workload_file(tmp_path, wl), "--ignore-eos", "--speedup", "4",
                    "--json", str(out), "--slo", "interactive=ttft:60000,tpot:60000"]))
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= BENCH_SERVING_FIELDS
    assert doc["model"] == MODEL and doc["server"] == "sglang" and doc["request_rate"] == "trace"
    assert doc["speedup"] == 4.0
    assert doc["completed"] == 6 and doc["failed"] == doc["rejected"] == doc["cancelled"] == 0
    assert app.posts == 6
    # ignore_eos: the engine generates exactly each request's output_length
    assert doc["total_output_tokens"] == sum(r.output_length for r in wl)
    assert [r["output_tokens"] for r in doc["requests"]] == [r.output_length for r in wl]
    assert all(r["input_tokens"] > 0 and r["http_status"] == 200 for r in doc["requests"])
    assert set(doc["per_tenant"]) == {"acme", "globex"} and set(doc["per_class"]) == {"interactive", "batch"}
    assert doc["per_tenant"]["acme"]["completed"] == 3 and doc["per_class"]["batch"]["completed"] == 3
    assert doc["per_tenant"]["acme"]["total_output_tokens"] + doc["per_tenant"]["globex"]["total_output_tokens"] \
        == doc["total_output_tokens"]
    # every request met its class's SLO (60 s bounds; batch: the default 600 s deadline)
    assert doc["slo"]["interactive"]["ttft_ms"] == 60000 and doc["slo"]["batch"]["e2e_ms"] == 600_000
    assert doc["request_goodput"] == pytest.approx(doc["request_throughput"]) and doc["slo_attainment"] == 1.0
    assert doc["mean_tpot_ms"] is not None and doc["p99_e2e_latency_ms"] >= doc["median_e2e_latency_ms"]
    assert doc["send_lag_ms"]["median"] <= doc["send_lag_ms"]["p99"] <= doc["send_lag_ms"]["max"]
    text = capsys.readouterr().out
    assert "Serving Benchmark Result" in text and "[interactive]" in text and "[batch]" in text
    assert "interactive: TTFT <= 60000 ms, TPOT <= 60000 ms" in text


def test_max_requests_chat_and_html_report(sim_server, tmp_path):
    url, app = sim_server
    out = tmp_path / "r.json"
    rc = run(parse(["--live", url, "--workload", "vtc-overload", "--speedup", "inf", "--max-requests", "5",
                    "--chat", "--json", str(out), "--report", str(tmp_path / "html")]))
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["completed"] == 5 and app.posts == 5 and doc["endpoint"] == "chat"
    assert set(doc["per_tenant"]) <= {"client0", "client1"} and doc["not_sent"] == 0
    page = (tmp_path / "html" / "index.html").read_text()
    assert all(f'id="{fig}"' in page for fig in FIGURES) and "client0" in page


def test_duration_bounds_the_run(tmp_path, capsys):
    # real-time H100 steps: a 5,000-token answer streams for ~40 s, far past the 1-s duration
    app = Counting(make_sglang_app(SimEngine("sim", load_profile("h100-llama3.1-8b"), seed=1), model_name=MODEL))
    wl = [WorkloadRequest(0, 10, 5000, "acme"), WorkloadRequest(600_000, 10, 4, "acme"),
          WorkloadRequest(900_000, 10, 4, "globex")]
    out = tmp_path / "r.json"
    with ServerThread(app) as server:
        rc = run(parse(["--live", server.url, "--workload", workload_file(tmp_path, wl), "--duration", "1",
                        "--ignore-eos", "--json", str(out)]))
    assert rc == 0
    doc = json.loads(out.read_text())
    # the requests due after the duration are not part of the run; the one in flight is cancelled
    assert app.posts == 1 and len(doc["requests"]) == 1
    assert doc["stopped"] and doc["stop_reason"] == "--duration 1 s reached"
    assert doc["cancelled"] == 1 and doc["completed"] == 0
    assert "stopped early (--duration 1 s reached): 1 cancelled in flight" in capsys.readouterr().out


def test_ctrl_c_gives_a_partial_report(sim_server, tmp_path, capsys):
    url, app = sim_server
    wl = [WorkloadRequest(0, 10, 4, "acme"), WorkloadRequest(600_000, 10, 4, "globex")]
    out = tmp_path / "r.json"

    def interrupt() -> None:  # once the first request has reached the server, the run is under way
        deadline = time.monotonic() + 60
        while app.posts == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    rc = run(parse(["--live", url, "--workload", workload_file(tmp_path, wl), "--json", str(out)]))
    t.join()
    assert rc == 130
    doc = json.loads(out.read_text())
    assert doc["stopped"] and doc["stop_reason"] == "interrupted" and doc["not_sent"] == 1
    assert doc["completed"] + doc["cancelled"] == 1
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_through_sluice_with_tenant_keys(tmp_path, capsys):
    engine = SimEngine("sim", zero_delay(), seed=1)
    with running_gateway(tmp_path, {"sim": engine}) as (server, _sluice):
        keys = tmp_path / "keys.toml"
        keys.write_text("".join(f'{t} = "{k}"\n' for t, k in KEYS.items()))
        wl = two_tenants(8, gap_ms=5.0) + [WorkloadRequest(50, 10, 4, "stranger")]
        out = tmp_path / "r.json"
        rc = run(parse(["--live", server.url, "--workload", workload_file(tmp_path, wl), "--keys", str(keys),
                        "--speedup", "2", "--json", str(out)]))
        assert rc == 0
        doc = json.loads(out.read_text())
        assert doc["model"] == MODEL and doc["server"] == "sluice"  # the first of GET /v1/models
        assert doc["per_tenant"]["acme"]["completed"] == 4 and doc["per_tenant"]["globex"]["completed"] == 4
        # a tenant without a key is sent without one: sluice answers 401, recorded as a failure
        stranger = [r for r in doc["requests"] if r["tenant"] == "stranger"]
        assert stranger[0]["status"] == "error" and stranger[0]["http_status"] == 401
        assert doc["failed"] == 1 and doc["completed"] == 8
        ok = [r for r in doc["requests"] if r["status"] == "ok"]
        assert all(1 <= r["output_tokens"] <= r["requested_output_tokens"] for r in ok)
        assert doc["total_output_tokens"] == sum(r["output_tokens"] for r in ok)
        captured = capsys.readouterr()
        assert "no key for tenant(s) stranger" in captured.err and "HTTP 401" in captured.out

        # a paused tenant's requests are refused (429 tenant_paused): rejections, per tenant and class
        assert raw(server, "POST", "/admin/v1/tenants/globex/pause", {"reason": "test"},
                   {"Authorization": f"Bearer {ADMIN}"})[0] == 200
        rc = run(parse(["--live", server.url, "--workload", workload_file(tmp_path, two_tenants(8, 5.0)),
                        "--keys", str(keys), "--speedup", "2", "--json", str(out)]))
        assert rc == 0
        doc = json.loads(out.read_text())
        globex, batch = doc["per_tenant"]["globex"], doc["per_class"]["batch"]
        assert (globex["rejected"], globex["completed"], doc["per_tenant"]["acme"]["completed"]) == (4, 0, 4)
        assert batch["rejected"] == 4 and batch["slo_attainment"] == 0.0 and globex["mean_retry_after_s"] > 0
        assert {r["error_code"] for r in doc["requests"] if r["status"] == "rejected"} == {"tenant_paused"}
        assert "4 rejected [tenant_paused]: HTTP 429" in capsys.readouterr().out

        # sluice forwards ignore_eos to its engine: every request generates exactly its output_length
        assert raw(server, "POST", "/admin/v1/tenants/globex/resume", {"reason": "test"},
                   {"Authorization": f"Bearer {ADMIN}"})[0] == 200
        known = [r for r in wl if r.tenant != "stranger"]
        rc = run(parse(["--live", server.url, "--workload", workload_file(tmp_path, known), "--keys", str(keys),
                        "--ignore-eos", "--speedup", "4", "--json", str(out)]))
        assert rc == 0
        doc = json.loads(out.read_text())
        assert doc["completed"] == len(known)
        assert [r["output_tokens"] for r in doc["requests"]] == [r.output_length for r in known]


def test_unreachable_url_is_one_line_and_exit_1(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    rc = run(parse(["--live", url, "--workload", workload_file(tmp_path, two_tenants(2))]))
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sluice replay: cannot reach {url}")


@pytest.mark.parametrize(("extra", "message"), [
    (["--db", "x.duckdb"], "--db belong to the what-if replay"),
    (["--speedup", "0"], "--speedup must be > 0"),
    (["--max-requests", "0"], "--max-requests must be at least 1"),
    (["--slo", "itl:3"], "unknown SLO key"),
    (["--keys", "/nonexistent/keys.toml"], "--keys /nonexistent/keys.toml"),
    (["--workload", "no-such-file.jsonl"], "no workload file"),
    (["--workload-seed", "3"], "--workload-seed: "),
    (["--max-concurrency", "0"], "--max-concurrency must be at least 1"),
    (["--duration", "-1"], "--duration must be > 0 seconds"),
])
def test_usage_errors_exit_2(tmp_path, capsys, extra, message):
    argv = ["--live", "http://127.0.0.1:9", "--workload", workload_file(tmp_path, two_tenants(2)), *extra]
    assert run(parse(argv)) == 2
    assert message in capsys.readouterr().err


def test_a_class_without_targets_is_an_error(tmp_path, capsys):
    wl = [WorkloadRequest(0, 10, 4, "acme", slo_class="gold")]
    assert run(parse(["--live", "http://127.0.0.1:9", "--workload", workload_file(tmp_path, wl)])) == 2
    assert "gold" in capsys.readouterr().err


def test_wired_into_the_cli(sim_server, tmp_path, capsys):
    from sluice.cli import main

    url, app = sim_server
    out = tmp_path / "r.json"
    assert main(["replay", "--live", url, "--workload", workload_file(tmp_path, two_tenants(4)), "--speedup", "inf",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["completed"] == 4 and app.posts == 4
    assert main(["replay", "--live", f"http://127.0.0.1:{free_port()}", "--workload", "vtc-overload"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("sluice replay: cannot reach")
