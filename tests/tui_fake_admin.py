"""A fake sluice admin API for the console's tests (docs/admin-api.md, frozen data).

Its `/state` bodies are held to the real one's schema (`STATE` in controlplane/admin/openapi.py,
tests/test_admin_state.py), so the console is tested against what the server sends.

A small Starlette app served by uvicorn on 127.0.0.1 in a background thread, so it works both for
async Pilot tests and for the synchronous `snap_compare` fixture (which runs its own event loop).

Everything it serves is deterministic: the server clock is frozen at `NOW`, the tenants, engines,
GPUs, requests, traces and policy history are fixed, and `state_at(i)` gives a deterministic
series of states (for sparklines) with `now = NOW + i`. Mutating calls (PATCH/POST) are applied
to the fake's policy and recorded in `FakeAdmin.calls` with their JSON body and actor.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

NOW = 1763800000.0  # frozen server wall time (2025-11-22 08:26:40 UTC)
TOKEN = "test-admin-token"
TENANT_KEY = "sk-tenant-acme"  # a tenant key: the admin API answers 403

SCHEDULERS = ("fcfs", "vtc", "equinox", "wrr")

_TENANTS: list[tuple[str, float, str]] = [
    ("acme", 2.0, "interactive"),
    ("globex", 1.0, "interactive"),
    ("initech", 1.0, "batch"),
    ("umbrella", 0.5, "batch"),
    ("hooli", 1.0, "interactive"),
    ("stark", 3.0, "interactive"),
]


def initial_policy() -> dict[str, Any]:
    return {
        "version": 3,
        "scheduler": "equinox",
        "holistic_alpha": 0.5,
        "admission": True,
        "admission_margin": 0.8,
        "pass_priority": False,
        "slo_classes": {
            "interactive": {
                "ttft_ms": 500, "tpot_ms": 50, "deadline_s": None, "on_miss": "reject", "priority": None,
            },
            "batch": {
                "ttft_ms": None, "tpot_ms": None, "deadline_s": 600, "on_miss": "defer", "priority": None,
            },
        },
        "tenants": {
            name: {
                "weight": weight, "slo_class": slo, "paused": False,
                "rate_limit_rps": 50.0 if name == "acme" else None, "rate_limit_tpm": None,
            }
            for name, weight, slo in _TENANTS
        },
    }


def initial_history() -> list[dict[str, Any]]:
    """Three earlier changes, newest first (versions 3, 2, 1)."""
    v1 = initial_policy()
    v1["version"] = 1
    v1["scheduler"] = "fcfs"
    v1["holistic_alpha"] = 0.5
    v2 = copy.deepcopy(v1)
    v2["version"] = 2
    v2["scheduler"] = "vtc"
    v3 = initial_policy()
    v0 = copy.deepcopy(v1)
    v0["version"] = 0
    return [
        {"version": 3, "ts": NOW - 600.0, "actor": "alice", "reason": "holistic fairness for the launch",
         "before": v2, "after": v3},
        {"version": 2, "ts": NOW - 3600.0, "actor": "bob", "reason": "fair share between tenants",
         "before": v1, "after": v2},
        {"version": 1, "ts": NOW - 86400.0, "actor": "admin", "reason": "initial policy",
         "before": v0, "after": v1},
    ]


def _tenant_state(i: int, name: str, weight: float, slo: str, paused: bool, k: int) -> dict[str, Any]:
    wave = math.sin((i + 3 * k) / 5.0)
    return {
        "name": name,
        "weight": weight,
        "slo_class": slo,
        "paused": paused,
        "share": round(0.08 + 0.05 * k + 0.01 * wave, 4),
        "fair_share": round(weight / 8.5, 4),
        "counters": {
            "user": round(1000.0 + 137.5 * k + 10 * i, 1),
            "resource": round(10.0 + 1.7 * k + 0.1 * i, 2),
            "holistic": round(0.85 + 0.05 * k, 3),
        },
        "queued": (k * 3) % 7,
        "in_flight": (k * 5) % 9,
        "ttft_p50_ms": round(70.0 + 12.0 * k + 5 * wave, 1),
        "ttft_p99_ms": round(280.0 + 40.0 * k + 15 * wave, 1),
        "tpot_p50_ms": round(20.0 + k, 1),
        "attainment": round(0.999 - 0.012 * k, 3),
        "admitted": 1200 - 90 * k + i,
        "rejected": 3 * k,
        "rejected_by_reason": {"ttft_unattainable": 3 * k} if k else {},
        "finished": 1180 - 90 * k + i,
        "energy_j": round(52000.0 + 9000.0 * k + 310.0 * i, 1),
    }


def _clock(i: int, now: float | None, target: float, slo: float, energy: float, action: str,
           status: str = "simulated") -> dict[str, Any]:
    """An engine's `clock` (controlplane/admin/state.py engine_clocks): the GPU's SM clock now and
    the frequency rule's last evaluation, with a reason in the rule's words."""
    if slo >= energy:
        why = f"SLO: below {slo:.0f} MHz the forecast TTFT or TPOT leaves the margin"
    else:
        why = f"energy: below {energy:.0f} MHz this mix costs more energy per unit of work"
    return {"sm_clock_mhz": now, "control": True, "target_mhz": target, "wanted_mhz": target,
            "slo_floor_mhz": slo, "energy_floor_mhz": energy, "reason": f"{action}: {why}", "ts": NOW + i - 0.5,
            "status": status}


def state_at(i: int = 0, policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `/state` body at tick `i` (now = NOW + i): deterministic, smoothly varying."""
    policy = policy or initial_policy()
    wave = math.sin(i / 6.0)
    tenants = [
        _tenant_state(i, name, float(t["weight"]), str(t["slo_class"]), bool(t["paused"]), k)
        for k, (name, t) in enumerate(policy["tenants"].items())
    ]
    engines = [
        {"name": "sim-0", "kind": "sim", "simulated": True, "healthy": True, "url": None,
         "running": 12, "waiting": 1, "kv_usage": round(0.43 + 0.1 * wave, 3),
         "gen_throughput": round(2300.0 + 300 * wave, 1), "window": 16, "in_flight": 12,
         "forecast": {"ttft_ms": 95.0, "tpot_ms": 22.0}, "clock": _clock(i, 990.0, 990.0, 840.0, 990.0, "hold")},
        {"name": "sim-1", "kind": "sim", "simulated": True, "healthy": True, "url": None,
         "running": 9, "waiting": 0, "kv_usage": round(0.31 + 0.05 * wave, 3),
         "gen_throughput": round(1800.0 - 200 * wave, 1), "window": 16, "in_flight": 9,
         "forecast": {"ttft_ms": 80.0, "tpot_ms": 20.0},
         "clock": _clock(i, 1410.0, 1680.0, 1680.0, 1050.0, "raise")},
        {"name": "h100-a", "kind": "sglang", "simulated": False, "healthy": False,
         "url": "http://10.0.0.5:30000", "running": 0, "waiting": 0, "kv_usage": 0.0,
         "gen_throughput": 0.0, "window": 16, "in_flight": 0, "forecast": None,
         "clock": _clock(i, None, 1980.0, 1980.0, 1050.0, "hold",
                         "dry run: not permitted (setting GPU clocks needs root: NVMLError_NoPermission)")},
    ]
    gpus = [
        {"gpu": g, "name": "H100 (simulated)", "simulated": True,
         "power_w": round(410.0 + 60 * math.sin((i + 4 * g) / 4.0), 1),
         "energy_j": round(123456.0 + 410.0 * i + 5000 * g, 1), "sm_clock_mhz": (990, 1410)[g],
         "utilization": round(0.93 - 0.2 * g, 2),
         "memory_used_bytes": 70_000_000_000 - 10_000_000_000 * g, "memory_total_bytes": 80_000_000_000}
        for g in range(2)
    ]
    return {
        "now": NOW + i,
        "policy_version": policy["version"],
        "scheduler": policy["scheduler"],
        "totals": {
            "request_rate": round(12.5 + 3.0 * wave, 2),
            "goodput": round(11.9 + 2.5 * wave, 2),
            "attainment": round(0.97 + 0.02 * math.cos(i / 4.0), 3),
            "rejections_per_s": round(0.4 + 0.3 * math.sin(i / 3.0), 2),
            "queued": 7 + (i % 3),
            "in_flight": 21,
            "output_tokens_per_s": round(4100.0 + 500 * wave, 1),
        },
        "tenants": tenants,
        "engines": engines,
        "gpus": gpus,
        "gpu_status": "ok",
        "policy_choices": {"scheduler": list(SCHEDULERS), "on_miss": ["reject", "defer"]},
        "forecast_errors": {"window": 1000, "dropped": 0,
                            "ttft": {"count": 400, "total": 1200, "median_ape": 0.12, "bias": 0.03, "mae": 0.011}},
    }


_STATUSES = ["running", "queued", "ok", "ok", "rejected", "ok", "running", "aborted", "ok", "error",
             "ok", "expired", "ok", "ok"]


def initial_requests() -> list[dict[str, Any]]:
    """Fourteen requests, newest first."""
    out = []
    for n, status in enumerate(_STATUSES):
        name, _, slo = _TENANTS[n % len(_TENANTS)]
        done = status in ("ok", "error", "aborted")
        started = status in ("running", "ok", "error", "aborted")
        out.append({
            "rid": f"req-{1000 - n:04d}",
            "trace_id": f"{n + 1:032x}",
            "tenant": name,
            "slo_class": slo,
            "engine": None if status in ("queued", "rejected", "expired") else f"sim-{n % 2}",
            "status": status,
            "arrival_ts": NOW - 1.5 * n - 0.25,
            "ttft_ms": round(80.0 + 7.0 * n, 1) if started else None,
            "tpot_ms": round(20.0 + 0.5 * n, 1) if done else None,
            "e2e_ms": round(1500.0 + 100.0 * n, 1) if done else None,
            "prompt_tokens": 500 + 37 * n,
            "completion_tokens": (120 + 9 * n) if done else (40 if status == "running" else 0),
            "decision": {"rejected": "reject", "expired": "defer"}.get(status, "admit"),
            "reason": {"rejected": "forecast TTFT 820 ms > 500 ms x 0.8",
                       "expired": "deadline passed in queue"}.get(status, ""),
        })
    return out


def trace_for(req: dict[str, Any]) -> dict[str, Any]:
    """A deterministic trace: sluice's gateway/admission/queue/dispatch spans and SGLang's spans."""
    t0 = float(req["arrival_ts"])
    ttft = (req.get("ttft_ms") or 120.0) / 1000.0
    e2e = (req.get("e2e_ms") or 1500.0) / 1000.0
    tid = req["trace_id"]
    n = int(tid, 16)

    def sid(k: int) -> str:
        return f"{n:08x}{k:08x}"

    queue_end = t0 + 0.004 + ttft * 0.4
    spans = [
        {"span_id": sid(1), "parent_span_id": None, "name": "POST /v1/chat/completions",
         "service": "sluice", "start_ts": t0, "end_ts": t0 + e2e,
         "attributes": {"gen_ai.operation.name": "chat", "sluice.tenant": req["tenant"],
                        "gen_ai.usage.input_tokens": req["prompt_tokens"],
                        "gen_ai.usage.output_tokens": req["completion_tokens"]},
         "events": []},
        {"span_id": sid(2), "parent_span_id": sid(1), "name": "sluice.admission", "service": "sluice",
         "start_ts": t0 + 0.001, "end_ts": t0 + 0.004,
         "attributes": {"sluice.decision": req["decision"], "sluice.forecast.ttft_ms": 95.0},
         "events": []},
        {"span_id": sid(3), "parent_span_id": sid(1), "name": "sluice.queue", "service": "sluice",
         "start_ts": t0 + 0.004, "end_ts": queue_end,
         "attributes": {"sluice.policy_version": 3}, "events": []},
        {"span_id": sid(4), "parent_span_id": sid(1), "name": "sluice.dispatch", "service": "sluice",
         "start_ts": queue_end, "end_ts": t0 + e2e - 0.002,
         "attributes": {"sluice.engine": req.get("engine") or "sim-0"},
         "events": [{"name": "first_token", "ts": t0 + ttft, "attributes": {}}]},
        {"span_id": sid(5), "parent_span_id": sid(4), "name": "sglang.request", "service": "sglang",
         "start_ts": queue_end + 0.001, "end_ts": t0 + e2e - 0.003,
         "attributes": {"rid": req["rid"]}, "events": []},
        {"span_id": sid(6), "parent_span_id": sid(5), "name": "prefill", "service": "sglang",
         "start_ts": queue_end + 0.002, "end_ts": t0 + ttft,
         "attributes": {"input_tokens": req["prompt_tokens"], "cached_tokens": 256}, "events": []},
        {"span_id": sid(7), "parent_span_id": sid(5), "name": "decode", "service": "sglang",
         "start_ts": t0 + ttft, "end_ts": t0 + e2e - 0.004,
         "attributes": {"output_tokens": req["completion_tokens"]}, "events": []},
    ]
    return {"trace_id": tid, "spans": spans}


def why_for(req: dict[str, Any]) -> dict[str, Any]:
    """A deterministic `/why` in the server's shape (controlplane/admin/why.py), its phases on
    trace_for's clock."""
    t0 = float(req["arrival_ts"])
    ttft = (req.get("ttft_ms") or 120.0) / 1000.0
    e2e = (req.get("e2e_ms") or 1500.0) / 1000.0
    queue_end = t0 + 0.004 + ttft * 0.4
    refused = req["status"] == "rejected"
    admission = {"kind": "reject" if refused else "admit", "reason": "ttft_unattainable" if refused else "within_slo",
                 "ts": t0 + 0.004, "engine": req.get("engine"), "policy_version": 3,
                 "text": f"{'reject (ttft_unattainable)' if refused else 'admit (within_slo)'}; forecast TTFT "
                         f"{'820' if refused else '95'} ms x 1.00 (recent forecast error) = "
                         f"{'820' if refused else '95'} ms, {'over' if refused else 'within'} 80% of the 500 ms budget; "
                         "TTFT parts: 40 ms waiting for a slot, 30 ms of prefill ahead, 25 ms own prefill"}
    why: dict[str, Any] = {
        "rid": req["rid"], "tenant": req["tenant"], "status": req["status"], "slo_class": req["slo_class"],
        "policy_version": 3, "slo": {"class": req["slo_class"], "ttft_budget_ms": 500.0, "tpot_budget_ms": 50.0,
                                     "margin": 0.8},
        "decisions": [admission], "summary": admission["text"],
        "phases": [{"name": "admission", "start_ts": t0, "end_ts": t0 + 0.004, "ms": 4.0}],
    }
    if refused:
        why["would_admit"] = {"reason": "ttft_unattainable", "limit_ms": 400.0, "need_ms": 420.0,
                              "budget_needed_ms": 1025.0,
                              "text": "a forecast TTFT within 400 ms (margin x budget): 420 ms less queue or "
                                      "prefill ahead, a TTFT budget of at least 1025 ms, or on_miss = defer"}
        return why
    why["decisions"].append({"kind": "dispatch", "reason": "equinox", "ts": queue_end, "engine": req.get("engine"),
                             "policy_version": 3,
                             "text": f"dispatched by equinox to {req.get('engine')} after {(queue_end - t0) * 1e3:.0f} "
                                     "ms in sluice's queue; runners-up: sim-1 140 ms (9 in flight); the tenant was "
                                     "behind its fair share at dispatch (H = 0.85, 1.00 = fair)"})
    why["phases"] += [{"name": "queue", "start_ts": t0 + 0.004, "end_ts": queue_end},
                      {"name": "prefill", "start_ts": queue_end, "end_ts": t0 + ttft},
                      {"name": "decode", "start_ts": t0 + ttft, "end_ts": t0 + e2e}]
    return why


def _merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _validate(policy: dict[str, Any]) -> str | None:
    if policy.get("scheduler") not in SCHEDULERS:
        return f"scheduler must be one of {', '.join(SCHEDULERS)}"
    alpha = policy.get("holistic_alpha")
    if not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        return "holistic_alpha must be a number in [0, 1]"
    margin = policy.get("admission_margin")
    if not isinstance(margin, (int, float)) or not 0.0 < float(margin) <= 1.0:
        return "admission_margin must be in (0, 1]"
    for name, t in policy.get("tenants", {}).items():
        w = t.get("weight")
        if not isinstance(w, (int, float)) or w <= 0:
            return f"tenants.{name}.weight must be > 0"
    return None


def _error(status: int, message: str, type_: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": code}},
                        status_code=status)


@dataclass
class Call:
    method: str
    path: str
    body: Any
    actor: str | None


@dataclass
class FakeAdmin:
    """The fake's mutable world, and the record of what the console asked it to do."""

    token: str = TOKEN
    refuse_all: int | None = None  # set to 401/403 to refuse every request
    policy: dict[str, Any] = field(default_factory=initial_policy)
    history: list[dict[str, Any]] = field(default_factory=initial_history)
    reqs: list[dict[str, Any]] = field(default_factory=initial_requests)
    calls: list[Call] = field(default_factory=list)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _subscribers: list[asyncio.Queue[tuple[str, Any] | None]] = field(default_factory=list)
    _closing: bool = False

    # -- test helpers -----------------------------------------------------------------------------

    def mutations(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("PATCH", "POST")]

    def push_event(self, kind: str, data: Any) -> None:
        """Send an SSE event to every connected console (thread-safe)."""
        loop = self._loop
        if loop is None:
            return
        for q in list(self._subscribers):
            loop.call_soon_threadsafe(q.put_nowait, (kind, data))

    def state(self) -> dict[str, Any]:
        return state_at(0, self.policy)

    # -- the app ----------------------------------------------------------------------------------

    def _auth(self, request: Request) -> Response | None:
        if self.refuse_all:
            return _error(self.refuse_all, "invalid admin token", "authentication_error", "invalid_api_key")
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if token == self.token:
            return None
        if token == TENANT_KEY:
            return _error(403, "tenant keys cannot use the admin API", "permission_error")
        return _error(401, "missing or unknown admin token", "authentication_error", "invalid_api_key")

    async def _record(self, request: Request) -> Any:
        body: Any = None
        raw = await request.body()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        self.calls.append(Call(request.method, request.url.path, body, request.headers.get("x-sluice-actor")))
        return body

    def _apply(self, changes: dict[str, Any], reason: str, actor: str | None) -> dict[str, Any] | str:
        before = copy.deepcopy(self.policy)
        changes = {k: v for k, v in changes.items() if k != "version"}
        after = _merge_patch(before, changes)
        problem = _validate(after)
        if problem:
            return problem
        after["version"] = before["version"] + 1
        self.history.insert(0, {"version": after["version"], "ts": NOW + after["version"],
                                "actor": actor or "admin", "reason": reason,
                                "before": before, "after": after})
        self.policy = after
        self.push_event("policy", after)
        return after

    def build_app(self) -> Starlette:
        async def guarded(request: Request, handler: Any) -> Response:
            body = await self._record(request)
            refused = self._auth(request)
            if refused is not None:
                return refused
            result: Response = await handler(request, body)
            return result

        def route(path: str, methods: list[str]) -> Any:
            def deco(fn: Any) -> Route:
                async def endpoint(request: Request) -> Response:
                    return await guarded(request, fn)
                return Route(path, endpoint, methods=methods)
            return deco

        routes: list[Route] = []

        @route("/admin/v1/state", ["GET"])
        async def get_state(request: Request, body: Any) -> Response:
            return JSONResponse(self.state())

        @route("/admin/v1/gpus", ["GET"])
        async def get_gpus(request: Request, body: Any) -> Response:
            s = self.state()
            return JSONResponse({"gpus": s["gpus"], "gpu_status": s["gpu_status"]})

        @route("/admin/v1/policy", ["GET", "PATCH"])
        async def policy(request: Request, body: Any) -> Response:
            if request.method == "GET":
                return JSONResponse(self.policy)
            if not isinstance(body, dict) or not str(body.get("reason") or "").strip():
                return _error(422, "reason is required", "invalid_request_error", "missing_reason")
            ev = body.get("expected_version")
            if ev is not None and ev != self.policy["version"]:
                return _error(409, f"policy is at version {self.policy['version']}, not {ev}",
                              "conflict_error", "stale_version")
            result = self._apply(dict(body.get("changes") or {}), body["reason"],
                                 request.headers.get("x-sluice-actor"))
            if isinstance(result, str):
                return _error(422, result, "invalid_request_error", "invalid_policy")
            return JSONResponse(result)

        @route("/admin/v1/policy/history", ["GET"])
        async def history(request: Request, body: Any) -> Response:
            limit = int(request.query_params.get("limit", "50"))
            return JSONResponse({"changes": self.history[:limit]})

        @route("/admin/v1/tenants/{name}", ["PATCH"])
        async def tenant(request: Request, body: Any) -> Response:
            name = request.path_params["name"]
            if name not in self.policy["tenants"]:
                return _error(404, f"unknown tenant {name!r}", "not_found_error")
            if not isinstance(body, dict) or not str(body.get("reason") or "").strip():
                return _error(422, "reason is required", "invalid_request_error", "missing_reason")
            changes = {k: v for k, v in body.items() if k != "reason"}
            result = self._apply({"tenants": {name: changes}}, body["reason"],
                                 request.headers.get("x-sluice-actor"))
            if isinstance(result, str):
                return _error(422, result, "invalid_request_error", "invalid_policy")
            return JSONResponse(result)

        async def pause_resume(request: Request, body: Any, paused: bool) -> Response:
            name = request.path_params["name"]
            if name not in self.policy["tenants"]:
                return _error(404, f"unknown tenant {name!r}", "not_found_error")
            reason = (body or {}).get("reason") or ("paused" if paused else "resumed")
            result = self._apply({"tenants": {name: {"paused": paused}}}, reason,
                                 request.headers.get("x-sluice-actor"))
            return JSONResponse(result)

        @route("/admin/v1/tenants/{name}/pause", ["POST"])
        async def pause(request: Request, body: Any) -> Response:
            return await pause_resume(request, body, True)

        @route("/admin/v1/tenants/{name}/resume", ["POST"])
        async def resume(request: Request, body: Any) -> Response:
            return await pause_resume(request, body, False)

        @route("/admin/v1/requests", ["GET"])
        async def requests(request: Request, body: Any) -> Response:
            q = request.query_params
            rows = [r for r in self.reqs
                    if (not q.get("tenant") or r["tenant"] == q["tenant"])
                    and (not q.get("status") or r["status"] == q["status"])]
            return JSONResponse({"requests": rows[: int(q.get("limit", "100"))]})

        def per_request(path: str, render: Any) -> Route:
            @route(path, ["GET"])
            async def read(request: Request, body: Any) -> Response:
                rid = request.path_params["rid"]
                for r in self.reqs:
                    if r["rid"] == rid:
                        return JSONResponse(render(r))
                return _error(404, f"no request {rid!r}", "not_found_error")
            return read

        trace = per_request("/admin/v1/requests/{rid}/trace", trace_for)
        why = per_request("/admin/v1/requests/{rid}/why", why_for)

        @route("/admin/v1/requests/{rid}/abort", ["POST"])
        async def abort(request: Request, body: Any) -> Response:
            rid = request.path_params["rid"]
            for r in self.reqs:
                if r["rid"] == rid and r["status"] in ("queued", "running"):
                    r["status"] = "aborted"
                    self.push_event("request", r)
                    return JSONResponse({"rid": rid, "status": "aborted"})
            return _error(404, f"request {rid!r} is unknown or already done", "not_found_error")

        @route("/admin/v1/events", ["GET"])
        async def events(request: Request, body: Any) -> Response:
            q: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
            self._subscribers.append(q)

            async def stream() -> AsyncIterator[bytes]:
                try:
                    yield f"event: state\ndata: {json.dumps(self.state())}\n\n".encode()
                    idle = 0.0
                    while not self._closing:
                        try:
                            item = await asyncio.wait_for(q.get(), timeout=0.25)
                        except TimeoutError:
                            idle += 0.25
                            if idle >= 15.0:
                                idle = 0.0
                                yield b": keepalive\n\n"
                            continue
                        if item is None:
                            break
                        kind, data = item
                        yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                finally:
                    if q in self._subscribers:
                        self._subscribers.remove(q)

            return StreamingResponse(stream(), media_type="text/event-stream")

        routes.extend([get_state, get_gpus, policy, history, tenant, pause, resume, requests, trace, why,
                       abort, events])
        return Starlette(routes=routes)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # pragma: no cover - older uvicorn
        pass


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (for the unreachable-server test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_fake(fake: FakeAdmin) -> Iterator[FakeAdmin]:
    """Run `fake` on 127.0.0.1 (a free port) in a thread; a generator for pytest fixtures."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(fake.build_app(), log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1, access_log=False)
    server = _Server(config)

    def run() -> None:
        async def main() -> None:
            fake._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])
        asyncio.run(main())

    thread = threading.Thread(target=run, name="fake-admin", daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake._closing = True
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


# -- pytest helpers ------------------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - the module is also usable from scripts and benchmarks
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def fake_admin() -> Iterator[FakeAdmin]:
        """A running fake admin API (fresh, deterministic data for each test)."""
        yield from serve_fake(FakeAdmin())


async def wait_until(pilot: Any, predicate: Any, what: str = "condition", steps: int = 500) -> None:
    """Let the app run until `predicate()` holds (bounded number of steps, no timing assertion)."""
    for _ in range(steps):
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - widgets may not exist yet
            pass
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")
