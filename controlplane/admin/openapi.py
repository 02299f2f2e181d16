"""The admin API's OpenAPI 3.0 document: every operation with its parameters, bodies and every
status code it can answer (tests/test_admin_openapi.py holds it to the running server with
schemathesis).

Every operation can answer 401 (no or unknown admin token) and 403 (a tenant key); one that reads
a JSON body also 400 (not a JSON object) and 413 (over 256 KiB); one that changes the policy also
409 (stale `expected_version`), 422 (invalid change, nothing applied) and 503 (the audit log
could not be written, nothing applied). Errors have OpenAI's shape.
"""
from __future__ import annotations

from typing import Any

_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = _object({"error": _object({"message": _STR, "type": _STR, "param": _nullable(_STR),
                                    "code": _nullable(_STR)})})
_TENANT_POLICY = _object({"weight": _NUM, "slo_class": _STR, "paused": _BOOL},
                         {"rate_limit_rps": _nullable(_NUM), "rate_limit_tpm": _nullable(_NUM),
                          # the weight in a model pool where it differs: pool (name or alias) -> weight
                          "weights": {"type": "object", "additionalProperties": _NUM}})
_POLICY = _object({"version": _INT, "scheduler": _STR, "slo_classes": {"type": "object", "additionalProperties": _OBJ},
                   "tenants": {"type": "object", "additionalProperties": _TENANT_POLICY}},
                  {"holistic_alpha": _NUM, "admission": _BOOL, "admission_margin": _NUM, "pass_priority": _BOOL,
                   "window": _INT,
                   "dispatch": _object({"scorers": {"type": "object", "additionalProperties": _NUM},
                                        "cache_estimate": _STR})})
_GPU = _object({"gpu": _INT, "name": _STR, "simulated": _BOOL},
               {"ts": _nullable(_NUM), "power_w": _nullable(_NUM), "energy_j": _nullable(_NUM),
                "sm_clock_mhz": _nullable(_NUM), "utilization": _nullable(_NUM),
                "memory_used_bytes": _nullable(_NUM), "memory_total_bytes": _nullable(_NUM),
                "power_limit_w": _nullable(_NUM),
                # MIG (docs/telemetry.md): a whole GPU's mode; an instance's row (`mig` its UUID)
                "mig_mode": _nullable(_BOOL), "mig": _nullable(_STR), "mig_profile": _nullable(_STR),
                "gpu_instance_id": _nullable(_INT), "compute_instance_id": _nullable(_INT)})
_GPUS = {"gpus": {"type": "array", "items": _GPU}, "gpu_status": _STR}
_MS = _nullable(_NUM)
# `GET /state` (controlplane/admin/state.py: the core's snapshot with the runtime's statistics); the
# console's fake admin in tests is validated against it (tests/test_admin_state.py)
_TOTALS = _object({"request_rate": _NUM, "goodput": _NUM, "attainment": _NUM, "rejections_per_s": _NUM,
                   "output_tokens_per_s": _NUM, "queued": _INT, "in_flight": _INT})
_TENANT_STATE = _object(
    {"name": _STR, "weight": _NUM, "slo_class": _STR, "paused": _BOOL, "share": _NUM, "fair_share": _NUM,
     "counters": {"type": "object", "required": ["user", "resource", "holistic"], "additionalProperties": _NUM,
                  "properties": {"user": _NUM, "resource": _NUM, "holistic": _NUM}},
     "queued": _INT, "in_flight": _INT, "ttft_p50_ms": _MS, "ttft_p99_ms": _MS, "tpot_p50_ms": _MS,
     "attainment": _nullable(_NUM), "admitted": _INT, "rejected": _INT, "finished": _INT,
     "rejected_by_reason": {"type": "object", "additionalProperties": _INT}},
    {"energy_j": _NUM})  # GPU joules attributed to the tenant's requests since start (engines that report it)
_ENGINE_STATE = _object(
    {"name": _STR, "kind": _nullable(_STR), "simulated": _BOOL, "healthy": _BOOL, "url": _nullable(_STR),
     "running": _nullable(_INT), "waiting": _nullable(_INT), "kv_usage": _nullable(_NUM),
     "gen_throughput": _nullable(_NUM), "window": _INT, "in_flight": _INT,
     "forecast": _nullable(_object({"ttft_ms": _NUM, "tpot_ms": _NUM}))},
    {"pool": _STR,  # the model pool it serves in
     # its GPU's SM clock now and the frequency rule's last evaluation (admin/state.py engine_clocks)
     "clock": _nullable(_object({"sm_clock_mhz": _MS, "control": _BOOL, "target_mhz": _MS, "wanted_mhz": _MS,
                                 "slo_floor_mhz": _MS, "energy_floor_mhz": _MS, "reason": _nullable(_STR),
                                 "ts": _MS, "status": _nullable(_STR)}))})
# one model pool (controlplane/model_pools.py): its engines, and each tenant's weight and share there
_POOL_STATE = _object(
    {"name": _STR, "aliases": {"type": "array", "items": _STR}, "engines": {"type": "array", "items": _STR},
     "queued": _INT, "in_flight": _INT,
     "tenants": {"type": "array", "items": _object({"name": _STR, "weight": _NUM, "fair_share": _NUM,
                                                     "queued": _INT, "in_flight": _INT, "counters": _OBJ})}})
STATE = _object({"now": _NUM, "policy_version": _INT, "scheduler": _STR, "totals": _TOTALS,
                 "tenants": {"type": "array", "items": _TENANT_STATE},
                 "engines": {"type": "array", "items": _ENGINE_STATE}, **_GPUS,
                 "policy_choices": _object({"scheduler": {"type": "array", "items": _STR},
                                            "on_miss": {"type": "array", "items": _STR}}),
                 "forecast_errors": _OBJ},
                {"pools": {"type": "array", "items": _POOL_STATE}})
_REQUEST_ROW = _object({"rid": _STR, "tenant": _STR, "status": _STR},
                       {"trace_id": _nullable(_STR), "slo_class": _nullable(_STR), "engine": _nullable(_STR),
                        "arrival_ts": _NUM, "ttft_ms": _nullable(_NUM), "tpot_ms": _nullable(_NUM),
                        "e2e_ms": _nullable(_NUM), "prompt_tokens": _nullable(_INT),
                        "completion_tokens": _nullable(_INT), "decision": _nullable(_STR),
                        "reason": _nullable(_STR), "model": _nullable(_STR), "pool": _nullable(_STR),
                        "adapter": _nullable(_STR)})
_CHANGE = _object({"version": _INT, "ts": _NUM, "actor": _STR, "reason": _STR},
                  {"before": _nullable(_OBJ), "after": _nullable(_OBJ)})
_SPAN = _object({"span_id": _STR, "name": _STR, "attributes": _OBJ, "events": {"type": "array", "items": _OBJ}},
                {"parent_span_id": _nullable(_STR), "start_ts": _nullable(_NUM), "end_ts": _nullable(_NUM)})
_TRACE = _object({"trace_id": _STR, "spans": {"type": "array", "items": _SPAN}})

# `GET /plan` (controlplane/admin/plan.py, controlplane/core/placement.py; docs/placement.md)
_STRS = {"type": "array", "items": _STR}
_FIT = _object({"target": _STR, "memory_bytes": _INT, "fits": _BOOL, "kv_tokens": _INT},
               {"board": _nullable(_STR), "profile": _nullable(_STR), "per_board": _INT, "memory_measured": _BOOL,
                "reserve_bytes": _INT, "kv_pool_bytes": _INT, "sequences": _nullable(_INT), "holds_context": _BOOL})
_POOL = _object({"replicas": _INT, "verdict": _STR, "reason": _STR},
                {"capacity_tokens": _nullable(_INT), "demand_tokens": _nullable(_NUM), "utilisation": _nullable(_NUM),
                 "needed": _nullable(_INT), "smallest_fit": _nullable(_STR)})
_PLAN_MODEL = _object({"model": _STR}, {
    "engines": _STRS, "error": _STR, "params": _INT, "weight_bytes_per_param": _NUM, "weights_bytes": _INT,
    "kv_bytes_per_token": _INT, "context_length": _INT,
    "demand": _nullable(_object({"sequences": _NUM, "mean_context": _NUM, "tokens": _NUM, "source": _STR})),
    "fits": {"type": "array", "items": _FIT}, "pool": _nullable(_POOL), "notes": _STRS})
_PLAN = _object({"advice_only": _BOOL, "assumptions": _OBJ, "models": {"type": "array", "items": _PLAN_MODEL},
                 "notes": _STRS})

_REASON = {"reason": _STR}
_POLICY_PATCH = {"type": "object", "required": ["reason", "changes"], "additionalProperties": False,
                 "properties": {"reason": _STR, "changes": _OBJ, "expected_version": _INT}}
_TENANT_PATCH = {"type": "object", "required": ["reason"],
                 "properties": {**_REASON, "weight": _NUM, "slo_class": _STR, "paused": _BOOL,
                                "rate_limit_rps": _nullable(_NUM), "rate_limit_tpm": _nullable(_NUM)}}

_ERRORS = {400: "The body is not a JSON object, or a query parameter is out of range.",
           401: "No admin token, or an unknown one.", 403: "A tenant key: tenants cannot use the admin API.",
           404: "Not found.", 409: "expected_version is stale; nothing applied.",
           413: "The body is over 256 KiB.", 422: "An invalid change; nothing applied.",
           503: "The audit log could not be written; nothing applied."}
_CHANGES = (400, 409, 413, 422, 503)


def _path(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": what, "schema": _STR}


def _query(name: str, what: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": what, "schema": schema}


def _limit(default: int, maximum: int) -> dict[str, Any]:
    return _query("limit", "How many, newest first.", {"type": "integer", "minimum": 1, "maximum": maximum,
                                                       "default": default})


def _op(summary: str, ok: dict[str, Any] | None, *errors: int, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if ok is not None:
        responses["200"]["content"] = {media: {"schema": ok}}
    for status in sorted({401, 403, *errors}):
        responses[str(status)] = {"description": _ERRORS[status],
                                  "content": {"application/json": {"schema": _ref("Error")}}}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": body}}}
    return op


_TENANT = [_path("name", "The tenant's name.")]
_RID = [_path("rid", "The request id (x-request-id on the gateway's responses).")]
_POLICY_REF = _ref("Policy")

PATHS: dict[str, dict[str, Any]] = {
    "/admin/v1/state": {"get": _op("Tenants, engines, totals, GPUs and forecasts now.", _ref("State"))},
    "/admin/v1/gpus": {"get": _op("GPU readings (NVML or simulated).", _object(_GPUS))},
    "/admin/v1/capacity": {"get": _op(
        "Engine replicas each pool needs to meet its SLOs (desired) and serving now (actual), with the "
        "capacity rule's inputs (docs/capacity.md).",
        _object({"every_s": _NUM, "pools": {"type": "array", "items": _object(
            {"pool": _STR, "ts": _NUM, "desired": _INT, "actual": _INT, "need": _INT, "capacity_rps": _NUM,
             "load": _OBJ}, {"prefill": _nullable(_INT), "decode": _nullable(_INT)})}},
                {"params": _OBJ, "behaviour": _OBJ}))},
    "/admin/v1/plan": {"get": _op(
        "Placement advice (it moves nothing): each served model's fit, KV tokens and sequences on every GPU "
        "or MIG profile, and its pool's verdict (docs/placement.md).", _PLAN, 400,
        params=[_query("boards", "Comma-separated boards whose MIG profiles to consider (A100-40GB, A100-80GB, "
                       "H100-80GB, H200-141GB; default: the boards of the GPUs seen, else H100-80GB).", _STR)])},
    "/admin/v1/policy": {
        "get": _op("The whole policy document.", _POLICY_REF),
        "patch": _op("Merge a change into the policy, validated whole, audited, applied atomically.", _POLICY_REF,
                     *_CHANGES, body=_POLICY_PATCH),
    },
    "/admin/v1/policy/history": {"get": _op(
        "The audit log of policy changes, newest first (across restarts).",
        _object({"changes": {"type": "array", "items": _CHANGE}}), 400, params=[_limit(50, 1000)])},
    "/admin/v1/tenants/{name}": {"patch": _op(
        "Change a tenant's weight (or other tenant policy fields) with a reason.", _POLICY_REF, 404, *_CHANGES,
        params=_TENANT, body=_TENANT_PATCH)},
    "/admin/v1/tenants/{name}/pause": {"post": _op(
        "Pause a tenant; its new requests get 429 tenant_paused.", _POLICY_REF, 404, *_CHANGES, params=_TENANT,
        body=_object({}, _REASON))},
    "/admin/v1/tenants/{name}/resume": {"post": _op(
        "Resume a paused tenant.", _POLICY_REF, 404, *_CHANGES, params=_TENANT, body=_object({}, _REASON))},
    "/admin/v1/requests": {"get": _op(
        "Recent and in-flight requests, newest first, filtered by tenant and status.",
        _object({"requests": {"type": "array", "items": _REQUEST_ROW}}), 400,
        params=[_query("tenant", "Only this tenant's.", _STR),
                _query("status", "Only this status (queued, running, ok, rejected, aborted, error, expired).", _STR),
                _limit(100, 10_000)])},
    "/admin/v1/requests/{rid}/trace": {"get": _op(
        "A request's trace, sluice's spans and the engine's.", _TRACE, 404, params=_RID)},
    "/admin/v1/requests/{rid}/abort": {"post": _op(
        "Abort a queued or running request (an optional reason, told to its client).",
        _object({"rid": _STR, "aborted": _BOOL}), 400, 404, 413, params=_RID, body=_object({}, _REASON))},
    "/admin/v1/requests/{rid}/why": {"get": _op(
        "Why a request was admitted, deferred, refused or sent where it went.",
        _object({"rid": _STR, "decisions": {"type": "array", "items": _OBJ}, "summary": _STR},
                {"tenant": _nullable(_STR), "status": _nullable(_STR), "slo_class": _nullable(_STR),
                 "policy_version": _nullable(_INT), "actual": _OBJ, "phases": {}}), 404, params=_RID)},
    "/admin/v1/store/snapshot": {"get": _op(
        "A consistent copy of the telemetry store as a DuckDB file (404 when sluice runs without a store).",
        {"type": "string", "format": "binary"}, 400, 404, media="application/octet-stream",
        params=[_query("tables", "Comma-separated table names (default: the durable tables).", _STR)])},
    "/admin/v1/events": {"get": _op("Server-Sent Events (request, policy, state) for the console.",
                                    _STR, media="text/event-stream")},
    "/admin/v1/openapi.json": {"get": _op("This document.", _OBJ)},
}


def openapi_document() -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": "sluice admin API", "version": "1"},
            "paths": PATHS,
            "components": {"schemas": {"Error": _ERROR, "Policy": _POLICY, "State": STATE},
                           "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
            "security": [{"admin": []}]}
