"""The DuckDB schema: one definition per table, used for DDL, Arrow batches and row coercion.

Timestamps are epoch seconds (DOUBLE). JSON columns are VARCHAR holding JSON text (query them with
DuckDB's ``json_extract``/``->>``). Ids are lowercase hex (trace 32 chars, span 16 chars).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

# column type names: DOUBLE, BIGINT, BOOLEAN, VARCHAR, JSON (stored as VARCHAR)
Columns = tuple[tuple[str, str], ...]

TABLES: dict[str, Columns] = {
    "requests": (
        ("rid", "VARCHAR"),
        ("trace_id", "VARCHAR"),
        ("tenant", "VARCHAR"),
        ("slo_class", "VARCHAR"),
        ("model", "VARCHAR"),
        ("engine", "VARCHAR"),
        ("stream", "BOOLEAN"),
        ("status", "VARCHAR"),  # ok | rejected | aborted | error | expired
        ("http_status", "BIGINT"),
        ("decision", "VARCHAR"),
        ("reason", "VARCHAR"),
        ("finish_reason", "VARCHAR"),
        ("error", "VARCHAR"),  # the detail, for operators (engine addresses, exception text)
        ("error_code", "VARCHAR"),  # the OpenAI error code the client received (in-band too); NULL if none
        ("arrival_ts", "DOUBLE"),
        ("dispatch_ts", "DOUBLE"),
        ("first_token_ts", "DOUBLE"),
        ("finish_ts", "DOUBLE"),
        ("queue_ms", "DOUBLE"),
        ("ttft_ms", "DOUBLE"),
        ("tpot_ms", "DOUBLE"),
        ("e2e_ms", "DOUBLE"),
        ("prompt_tokens", "BIGINT"),
        ("cached_tokens", "BIGINT"),
        ("completion_tokens", "BIGINT"),
        ("max_tokens", "BIGINT"),
        ("predicted_output_tokens", "DOUBLE"),
        ("predicted_ttft_ms", "DOUBLE"),
        ("predicted_tpot_ms", "DOUBLE"),
        ("policy_version", "BIGINT"),
        ("slo_met", "BOOLEAN"),
        ("end_user", "VARCHAR"),  # the OpenAI `user` field: the tenant's own end-user id, if it sent one
        # GPU joules attributed to the request: its share (by tokens computed) of the energy of each
        # engine step it was in (docs/telemetry.md); NULL where the engine does not report it
        ("energy_j", "DOUBLE"),
        ("pool", "VARCHAR"),  # the model pool that served it (the model its engines serve; `model` is as sent)
        ("adapter", "VARCHAR"),  # the LoRA adapter it ran with (SGLang's lora_path); NULL: the base model
    ),
    "decisions": (
        ("ts", "DOUBLE"),
        ("rid", "VARCHAR"),
        ("tenant", "VARCHAR"),
        ("kind", "VARCHAR"),  # admit | reject | defer | dispatch | expire | abort | clock (an engine's SM clock)
        ("reason", "VARCHAR"),
        ("engine", "VARCHAR"),
        ("policy_version", "BIGINT"),
        ("inputs", "JSON"),
        ("outputs", "JSON"),
        ("pool", "VARCHAR"),  # the model pool whose core decided (NULL in rows written before pools)
    ),
    "policy_changes": (
        ("version", "BIGINT"),
        ("ts", "DOUBLE"),
        ("actor", "VARCHAR"),
        ("reason", "VARCHAR"),
        ("before", "JSON"),
        ("after", "JSON"),
        # the policy the config file gave when this change was made: start-up reconciliation diffs
        # the next start's config against it (docs/admin-api.md, "The policy across restarts")
        ("config", "JSON"),
    ),
    "gpu_samples": (
        ("ts", "DOUBLE"),
        ("gpu", "BIGINT"),
        ("name", "VARCHAR"),
        ("simulated", "BOOLEAN"),
        ("power_w", "DOUBLE"),
        ("energy_j", "DOUBLE"),
        ("sm_clock_mhz", "DOUBLE"),
        ("utilization", "DOUBLE"),  # fraction 0..1
        ("memory_used_bytes", "BIGINT"),
        ("memory_total_bytes", "BIGINT"),
        ("power_limit_w", "DOUBLE"),  # the enforced power limit (W)
        # MIG (telemetry/nvml.py): on a whole GPU's row, whether MIG is enabled (NULL: no MIG on it);
        # one more row per MIG instance, `gpu` its parent's index, `mig` its UUID (NULL on whole GPUs)
        ("mig_mode", "BOOLEAN"),
        ("mig", "VARCHAR"),
        ("mig_profile", "VARCHAR"),  # e.g. 3g.40gb
        ("gpu_instance_id", "BIGINT"),
        ("compute_instance_id", "BIGINT"),
    ),
    "spans": (
        ("trace_id", "VARCHAR"),
        ("span_id", "VARCHAR"),
        ("parent_span_id", "VARCHAR"),  # NULL for a root span
        ("name", "VARCHAR"),
        ("kind", "VARCHAR"),  # INTERNAL | SERVER | CLIENT | PRODUCER | CONSUMER | UNSPECIFIED
        ("service", "VARCHAR"),
        ("scope", "VARCHAR"),
        ("start_ts", "DOUBLE"),
        ("end_ts", "DOUBLE"),
        ("status_code", "VARCHAR"),  # UNSET | OK | ERROR
        ("status_message", "VARCHAR"),
        ("attributes", "JSON"),
        ("resource", "JSON"),
        ("links", "JSON"),  # [{"trace_id", "span_id", "attributes"}] or NULL
    ),
    "span_events": (
        ("trace_id", "VARCHAR"),
        ("span_id", "VARCHAR"),
        ("ts", "DOUBLE"),
        ("name", "VARCHAR"),
        ("attributes", "JSON"),
    ),
}

# the column each table is pruned by (policy_changes is the audit log: never pruned)
TIME_COLUMN: dict[str, str] = {
    "requests": "arrival_ts",
    "decisions": "ts",
    "gpu_samples": "ts",
    "spans": "start_ts",
    "span_events": "ts",
}

# No ART index on spans/span_events: it costs a third of span ingest, and a trace lookup is a
# columnar scan of one VARCHAR column (fast enough for an operator's click).
INDEXES: tuple[str, ...] = ("CREATE INDEX IF NOT EXISTS idx_requests_rid ON requests (rid)",)

_ARROW = {
    "DOUBLE": pa.float64(),
    "BIGINT": pa.int64(),
    "BOOLEAN": pa.bool_(),
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
}
_SQL = {"JSON": "VARCHAR"}

ARROW_SCHEMAS: dict[str, pa.Schema] = {
    table: pa.schema([(name, _ARROW[kind]) for name, kind in cols]) for table, cols in TABLES.items()
}
COLUMN_NAMES: dict[str, tuple[str, ...]] = {t: tuple(c for c, _ in cols) for t, cols in TABLES.items()}
_TYPES: dict[str, dict[str, str]] = {t: dict(cols) for t, cols in TABLES.items()}


def ddl() -> list[str]:
    """CREATE TABLE statements for every table (idempotent)."""
    out = []
    for table, cols in TABLES.items():
        body = ", ".join(f'"{name}" {_SQL.get(kind, kind)}' for name, kind in cols)
        out.append(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
    return out


def add_missing_columns(existing: Mapping[str, set[str]]) -> list[str]:
    """ALTER TABLE statements adding the columns a file written by an older sluice lacks.

    ``existing`` maps each table to the column names it has (tables absent from it are skipped:
    ``ddl()`` creates them whole). New columns are NULL in old rows.
    """
    out = []
    for table, cols in TABLES.items():
        have = existing.get(table)
        if have is None:
            continue
        for name, kind in cols:
            if name not in have:
                out.append(f'ALTER TABLE {table} ADD COLUMN "{name}" {_SQL.get(kind, kind)}')
    return out


def to_json(value: Any) -> str:
    """JSON text for a JSON column (non-JSON values become strings, NaN becomes null)."""
    return json.dumps(_json_safe(value), separators=(",", ":"), default=str)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _coerce(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "DOUBLE":
        f = float(value)
        return f if math.isfinite(f) else None
    if kind == "BIGINT":
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            return int(round(value))
        return int(value)
    if kind == "BOOLEAN":
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no", ""):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        return bool(value)
    if kind == "JSON":
        return value if isinstance(value, str) else to_json(value)
    return value if isinstance(value, str) else str(value)


def coerce_row(table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``row`` with every value converted to its column's type.

    Raises ``ValueError`` for an unknown column or a value that cannot be converted, so that a
    caller's mistake shows at the call site instead of as a failed batch on the writer thread.
    """
    types = _TYPES[table]
    out: dict[str, Any] = {}
    for key, value in row.items():
        kind = types.get(key)
        if kind is None:
            raise ValueError(f"{table}: unknown column {key!r} (columns: {', '.join(types)})")
        try:
            out[key] = _coerce(kind, value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{table}.{key}: cannot store {value!r} as {kind}: {exc}") from None
    return out


def rows_to_arrow(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """One Arrow table for a batch of (already coerced) rows; missing keys become NULL."""
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMAS[table])
