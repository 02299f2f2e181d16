"""`sluice plan`: offline (a model, GPUs, a load from the command line or a store) and against a
running sluice."""
from __future__ import annotations

import json

import pytest

from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import load_profile
from sluice.cli import main
from telemetry.store import Store
from tests.gateway_fixtures import running_gateway
from tests.test_placement import LLAMA_8B
from tests.test_telemetry_store import request_row


def plan(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_known_model_under_a_command_line_load(capsys, tmp_path):
    out_json = tmp_path / "plan.json"
    code, out, _ = plan(capsys, "--model", "Llama-3.1-8B-Instruct", "--concurrency", "30", "--mean-context", "2048",
                        "--replicas", "2", "--on", "H100-80GB", "--json", str(out_json))
    assert code == 0
    assert "weights 16.06 GB (15.0 GiB), KV 131,072 B/token, context 131,072" in out
    assert "load: 30.0 sequences x 2,048 tokens = 61,440 KV tokens (command line)" in out
    assert "H100-80GB 3g.40gb x2" in out and "119,185" in out
    assert "pool: OVER-PROVISIONED: 61,440 KV tokens" in out and "1 hold it within 80%" in out
    doc = json.loads(out_json.read_text())
    assert doc["advice_only"] and doc["models"][0]["pool"]["capacity_tokens"] == 2 * 447_728


def test_a_config_json_little_s_law_and_every_board(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_8B, "_name_or_path": "my-llama"}))
    code, out, _ = plan(capsys, "--model", str(tmp_path), "--rate", "4", "--duration", "12.5", "--mean-context",
                        "1000", "--gpu", "all", "--replicas", "1", "--on", "H100-80GB:1g.10gb")
    assert code == 0 and out.startswith("my-llama: 8.03 B parameters")
    assert "load: 50.0 sequences x 1,000 tokens = 50,000 KV tokens (command line: 4 req/s x 12.5 s)" in out
    assert "A100-40GB 1g.5gb x7 ~" in out and "H200-141GB 7g.141gb ~" in out  # ~: memory estimated
    assert "pool: DOES NOT FIT: my-llama does not fit the device of engine 0" in out


def test_the_load_of_a_recorded_window(capsys, tmp_path):
    db = tmp_path / "s.duckdb"
    store = Store(db)
    # 11 requests one second apart, 5 s each in the engine, 1,000 + 200 tokens: Little's law gives
    # 1 req/s x 5 s = 5 sequences of 1,200
    for i in range(11):
        store.record_request(request_row(i, arrival_ts=1000.0 + i, e2e_ms=5000.0, prompt_tokens=1000,
                                         completion_tokens=200))
    store.record_request(request_row(99, arrival_ts=1005.5, status="rejected", e2e_ms=None))
    store.close()
    code, out, _ = plan(capsys, "--model", "meta-llama/Llama-3.1-8B-Instruct", "--db", str(db))
    assert code == 0
    assert f"load: 5.0 sequences x 1,200 tokens = 6,000 KV tokens (store {db}: 1.00 req/s x 5.00 s over 11 requests)" \
        in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "gpt-9"], "no model 'gpt-9': give its config.json, or one of"),
    (["--model", "Llama-3.1-8B-Instruct", "--rate", "3"], "give --rate with --duration"),
    (["--model", "Llama-3.1-8B-Instruct", "--concurrency", "3"], "give --mean-context"),
    (["--model", "Llama-3.1-8B-Instruct", "--since", "0"], "--since and --until choose the window of --db"),
    (["--model", "Llama-3.1-8B-Instruct", "--replicas", "2"], "give --replicas (>= 1) with --on"),
    (["--model", "Llama-3.1-8B-Instruct", "--replicas", "1", "--on", "H100-80GB 5g.50gb"], "not a board or"),
    (["--model", "Llama-3.1-8B-Instruct", "--params", "8e9"], "--params is for a config.json"),
    (["--url", "http://127.0.0.1:9", "--model", "x"], "--model belong to the offline plan, not to --url"),
    ([], "give --url (a running sluice) or --model (offline)"),
])
def test_usage_errors_say_what_to_give(capsys, argv, message):
    code, _, err = plan(capsys, *argv)
    assert code == 2 and message in err


def test_an_unreadable_store_and_an_unreachable_server(capsys, tmp_path, monkeypatch):
    code, _, err = plan(capsys, "--model", "Llama-3.1-8B-Instruct", "--db", str(tmp_path / "none.duckdb"))
    assert code == 3 and "no such file" in err
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", "t")
    code, _, err = plan(capsys, "--url", "http://127.0.0.1:9", "--timeout", "2")
    assert code == 1 and "cannot ask http://127.0.0.1:9" in err


def test_a_running_sluice_gives_its_own_advice(capsys, tmp_path):
    engines = {"sim-0": SimEngine("sim-0", load_profile())}
    with running_gateway(tmp_path, engines) as (server, _):
        code, out, err = plan(capsys, "--url", f"http://127.0.0.1:{server.port}", "--token-file",
                            str(tmp_path / "admin.token"), "--gpu", "A100-80GB")
    assert code == 0, err
    assert out.startswith("meta-llama/Llama-3.1-8B-Instruct (engines sim-0): 8.03 B parameters")
    assert "A100-80GB 3g.40gb x2 ~" in out and "pool: UNKNOWN: no load observed" in out
