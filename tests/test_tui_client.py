"""The console's admin API client, its pure helpers and its command-line helpers."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.tui_fake_admin import TENANT_KEY, FakeAdmin, fake_admin, free_port  # noqa: F401 - fixture
from tui.cli import TokenError, add_console_arguments, load_token
from tui.client import AdminClient, ApiError, Unauthorized, Unreachable, parse_sse_lines
from tui.format import (
    bar,
    changed_paths,
    merge_patch_diff,
    request_matches,
    spark,
)
from tui.waterfall import waterfall_line, waterfall_rows


async def test_reads_state_policy_history_requests_trace(fake_admin: FakeAdmin) -> None:
    async with AdminClient(fake_admin.url + "/", fake_admin.token) as client:
        state = await client.get_state()
        assert state["policy_version"] == 3 and len(state["tenants"]) == 6
        assert (await client.get_gpus())["gpu_status"] == "ok"
        assert (await client.get_policy())["scheduler"] == "equinox"
        assert [c["version"] for c in await client.policy_history(limit=2)] == [3, 2]
        running = await client.requests(status="running", limit=10)
        assert {r["rid"] for r in running} == {"req-1000", "req-0994"}
        trace = await client.trace("req-0998")
        assert {s["service"] for s in trace["spans"]} == {"sluice", "sglang"}
    assert [c.method for c in fake_admin.calls] == ["GET"] * 6


async def test_steering_calls_and_typed_errors(fake_admin: FakeAdmin) -> None:
    async with AdminClient(fake_admin.url, fake_admin.token, actor="ops") as client:
        policy = await client.patch_policy({"scheduler": "vtc"}, "compare with vtc", expected_version=3)
        assert policy["version"] == 4
        with pytest.raises(ApiError) as stale:
            await client.patch_policy({"scheduler": "fcfs"}, "again", expected_version=3)
        assert stale.value.status == 409 and "version 4" in stale.value.message
        with pytest.raises(ApiError) as invalid:
            await client.patch_policy({"holistic_alpha": 2}, "bad")
        assert invalid.value.status == 422 and "holistic_alpha" in invalid.value.message
        assert invalid.value.code == "invalid_policy"
        with pytest.raises(ValueError):
            await client.patch_policy({"scheduler": "vtc"}, "  ")
        await client.set_weight("acme", 4.0, "more")
        await client.pause_tenant("hooli", "noisy")
        await client.resume_tenant("hooli")
        await client.abort("req-0999")
        with pytest.raises(ApiError) as gone:
            await client.abort("req-0999")
        assert gone.value.status == 404
    bodies = [(c.method, c.path, c.body, c.actor) for c in fake_admin.mutations()]
    assert bodies[0] == ("PATCH", "/admin/v1/policy",
                         {"reason": "compare with vtc", "changes": {"scheduler": "vtc"}, "expected_version": 3},
                         "ops")
    assert ("PATCH", "/admin/v1/tenants/acme", {"weight": 4.0, "reason": "more"}, "ops") in bodies
    assert ("POST", "/admin/v1/tenants/hooli/pause", {"reason": "noisy"}, "ops") in bodies
    assert fake_admin.history[0]["actor"] == "ops"


async def test_unauthorized_and_unreachable(fake_admin: FakeAdmin) -> None:
    async with AdminClient(fake_admin.url, "nope") as client:
        with pytest.raises(Unauthorized) as e401:
            await client.get_state()
        assert e401.value.status == 401
    async with AdminClient(fake_admin.url, TENANT_KEY) as client:
        with pytest.raises(Unauthorized) as e403:
            await client.get_policy()
        assert e403.value.status == 403 and "tenant" in e403.value.message
    async with AdminClient(f"http://127.0.0.1:{free_port()}", "t", timeout=2.0) as client:
        with pytest.raises(Unreachable):
            await client.get_state()
        with pytest.raises(Unreachable):
            async for _ in client.events():
                pass


async def test_event_stream(fake_admin: FakeAdmin) -> None:
    async with AdminClient(fake_admin.url, fake_admin.token) as client:
        events = client.events()
        first = await events.__anext__()
        assert first.kind == "state" and first.data["policy_version"] == 3
        fake_admin.push_event("request", {"rid": "r-1", "status": "ok"})
        second = await events.__anext__()
        assert second.kind == "request" and second.data == {"rid": "r-1", "status": "ok"}
        await events.aclose()


def test_parse_sse_lines() -> None:
    assert parse_sse_lines([": keepalive"]) is None
    ev = parse_sse_lines(["event: policy", 'data: {"a":', "data: 1}", "id: 7"])
    assert ev is not None and ev.kind == "policy" and ev.data == {"a": 1}
    plain = parse_sse_lines(["data:hello"])
    assert plain is not None and plain.kind == "message" and plain.data == "hello"


def test_merge_patch_diff() -> None:
    before = {"scheduler": "equinox", "holistic_alpha": 0.5, "admission": True,
              "tenants": {"a": {"weight": 1.0, "paused": False}, "b": {"weight": 2}}}
    after = {"scheduler": "vtc", "holistic_alpha": 0.5, "admission": 1,
             "tenants": {"a": {"weight": 1, "paused": True}}, "new": [1]}
    patch = merge_patch_diff(before, after)
    assert patch == {"scheduler": "vtc", "admission": 1, "tenants": {"a": {"paused": True}, "b": None},
                     "new": [1]}
    assert merge_patch_diff(before, before) == {}
    assert changed_paths(patch) == ["scheduler", "admission", "tenants.a.paused", "tenants.b", "new"]


def test_waterfall_layout() -> None:
    spans = [
        {"span_id": "c", "parent_span_id": "a", "name": "child2", "service": "sglang", "start_ts": 10.5,
         "end_ts": 11.0},
        {"span_id": "a", "parent_span_id": None, "name": "root", "service": "sluice", "start_ts": 10.0,
         "end_ts": 11.0, "events": [{"name": "first_token", "ts": 10.5}]},
        {"span_id": "b", "parent_span_id": "a", "name": "child1", "service": "sluice", "start_ts": 10.1,
         "end_ts": 10.2},
        {"span_id": "x", "parent_span_id": "missing", "name": "orphan", "service": "sglang", "start_ts": 10.9,
         "end_ts": 10.95},
    ]
    rows, t0, total = waterfall_rows(spans)
    assert [(r.span["name"], r.depth) for r in rows] == [("root", 0), ("child1", 1), ("child2", 1),
                                                          ("orphan", 0)]
    assert t0 == 10.0 and total == pytest.approx(1.0)
    line = waterfall_line(rows[2], total * 1000, bar_width=20, name_width=10).plain
    assert line.startswith("  child2   sglang   ")
    assert "          ██████████" in line  # second half of the axis
    root = waterfall_line(rows[0], total * 1000, bar_width=20, name_width=10).plain
    assert "◆" in root and root.endswith("1000ms")


def test_text_helpers_and_request_filter() -> None:
    assert bar(0.5, 4) == "██  " and bar(None, 3) == "   " and bar(2.0, 2) == "██"
    assert spark([0, 1, 2, 3], width=4) == "▁▃▆█" and len(spark([], width=5)) == 5
    req = {"rid": "req-1", "tenant": "acme", "status": "running", "engine": "sim-0"}
    assert request_matches(req, ["acme"]) and request_matches(req, ["status:inflight", "sim"])
    assert not request_matches(req, ["status:ok"]) and not request_matches(req, ["tenant:acm"])


def test_load_token(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SLUICE_ADMIN_TOKEN", " from-env \n")
    assert load_token() == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert load_token(f) == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        load_token(tmp_path / "empty")
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing")
    monkeypatch.delenv("SLUICE_ADMIN_TOKEN")
    with pytest.raises(TokenError, match="SLUICE_ADMIN_TOKEN"):
        load_token()


def test_arguments_never_take_a_token() -> None:
    parser = add_console_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--url", "http://h:1", "--token-file", "/t"])
    assert (args.url, args.token_file, args.refresh) == ("http://h:1", "/t", 1.0)
    assert not any(a.dest == "token" for a in parser._actions)


def test_console_imports_nothing_of_ours() -> None:
    code = ("import sys, tui, tui.app, tui.client, tui.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('controlplane', 'engine_adapter', 'telemetry', 'fairness', 'replay', 'duckdb')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
