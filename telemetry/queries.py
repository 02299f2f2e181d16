"""Read queries over the store, for the admin API, the console (through it) and replay.

Every function takes ``db``: a ``Store`` (reads go through a fresh cursor of the writer's own
connection, so they run beside the writer) or a DuckDB connection (e.g. ``open_read_only``).
Results are plain dicts/lists, JSON columns decoded.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

_JSON_COLUMNS = {"attributes", "resource", "links", "inputs", "outputs", "before", "after", "config"}


def _cursor(db: Any) -> duckdb.DuckDBPyConnection:
    return db.cursor()  # Store.cursor() and DuckDBPyConnection.cursor() both give a new cursor


def _rows(db: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = _cursor(db)
    try:
        res = cur.execute(sql, params or [])
        names = [d[0] for d in res.description]
        out = []
        for values in res.fetchall():
            row = dict(zip(names, values))
            for k in _JSON_COLUMNS.intersection(row):
                if isinstance(row[k], str):
                    try:
                        row[k] = json.loads(row[k])
                    except ValueError:
                        pass
            out.append(row)
        return out
    finally:
        cur.close()


def tenant_summary(db: Any, since_ts: float, until_ts: float | None = None) -> list[dict[str, Any]]:
    """Per tenant over ``[since_ts, until_ts)`` (by arrival): counts, latency quantiles, attainment, tokens.

    ``attainment`` = requests with ``slo_met`` true / requests with ``slo_met`` known (NULL if none).
    """
    until = until_ts if until_ts is not None else float("inf")
    return _rows(
        db,
        """
        SELECT tenant,
               count(*) AS requests,
               count(*) FILTER (WHERE status = 'ok') AS ok,
               count(*) FILTER (WHERE status = 'rejected') AS rejected,
               count(*) FILTER (WHERE status = 'aborted') AS aborted,
               count(*) FILTER (WHERE status = 'error') AS errors,
               count(*) FILTER (WHERE status = 'expired') AS expired,
               quantile_cont(ttft_ms, 0.5) AS ttft_p50_ms,
               quantile_cont(ttft_ms, 0.99) AS ttft_p99_ms,
               quantile_cont(tpot_ms, 0.5) AS tpot_p50_ms,
               quantile_cont(tpot_ms, 0.99) AS tpot_p99_ms,
               CASE WHEN count(slo_met) = 0 THEN NULL
                    ELSE (count(*) FILTER (WHERE slo_met))::DOUBLE / count(slo_met) END AS attainment,
               coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
               coalesce(sum(cached_tokens), 0) AS cached_tokens,
               coalesce(sum(completion_tokens), 0) AS completion_tokens
        FROM requests
        WHERE arrival_ts >= ? AND arrival_ts < ?
        GROUP BY tenant
        ORDER BY requests DESC, tenant
        """,
        [since_ts, until],
    )


def recent_requests(
    db: Any, limit: int = 100, tenant: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """The newest request rows (all columns), newest arrival first, optionally filtered."""
    where, params = [], []
    if tenant is not None:
        where.append("tenant = ?")
        params.append(tenant)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    params.append(int(limit))
    return _rows(db, f"SELECT * FROM requests {clause} ORDER BY arrival_ts DESC NULLS LAST LIMIT ?", params)


def trace(db: Any, trace_id: str) -> dict[str, Any]:
    """A trace's spans (sluice's and the engine's), ordered by start, each with its ``events`` and
    ``depth`` in the tree (roots 0; a span whose parent is missing counts as a root)."""
    tid = trace_id.lower()
    spans = _rows(db, "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ts NULLS LAST, span_id", [tid])
    events = _rows(db, "SELECT * FROM span_events WHERE trace_id = ? ORDER BY ts", [tid])
    by_span: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_span.setdefault(ev["span_id"], []).append(
            {"name": ev["name"], "ts": ev["ts"], "attributes": ev["attributes"] or {}}
        )
    parents = {s["span_id"]: s["parent_span_id"] for s in spans}
    for s in spans:
        s.pop("trace_id", None)
        s["attributes"] = s["attributes"] or {}
        s["events"] = by_span.get(s["span_id"], [])
        depth, p, seen = 0, s["parent_span_id"], set()
        while p in parents and p not in seen:
            seen.add(p)
            depth += 1
            p = parents[p]
        s["depth"] = depth
    return {"trace_id": tid, "spans": spans}


def trace_for_request(db: Any, rid: str) -> dict[str, Any] | None:
    """The trace of request ``rid`` (None if the request or its trace id is unknown)."""
    rows = _rows(db, "SELECT trace_id FROM requests WHERE rid = ? AND trace_id IS NOT NULL LIMIT 1", [rid])
    if not rows:
        return None
    return trace(db, rows[0]["trace_id"])


def policy_timeline(db: Any, limit: int = 50) -> list[dict[str, Any]]:
    """The audit log, newest first: version, ts, actor, reason, before, after, config."""
    return _rows(db, "SELECT * FROM policy_changes ORDER BY ts DESC, version DESC LIMIT ?", [int(limit)])


def latest_policy_change(db: Any) -> dict[str, Any] | None:
    """The audit-log row of the highest version (the policy in force when the writer stopped), or None."""
    rows = _rows(db, "SELECT * FROM policy_changes ORDER BY version DESC, ts DESC LIMIT 1")
    return rows[0] if rows else None


def requests_for_replay(db: Any, since: float, until: float | None = None) -> list[dict[str, Any]]:
    """Every request row arriving in ``[since, until)``, oldest first (all columns)."""
    until_v = until if until is not None else float("inf")
    return _rows(
        db, "SELECT * FROM requests WHERE arrival_ts >= ? AND arrival_ts < ? ORDER BY arrival_ts, rid",
        [since, until_v],
    )


def decisions_for_audit(db: Any, since: float, until: float | None = None) -> list[dict[str, Any]]:
    """Every decision in ``[since, until)``, in order, ``inputs``/``outputs`` decoded (for re-derivation)."""
    until_v = until if until is not None else float("inf")
    return _rows(db, "SELECT * FROM decisions WHERE ts >= ? AND ts < ? ORDER BY ts", [since, until_v])


def request_record(db: Any, rid: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Request ``rid``'s row (None if not stored) and its decision rows in order (for "why")."""
    rows = _rows(db, "SELECT * FROM requests WHERE rid = ? LIMIT 1", [rid])
    return (rows[0] if rows else None), _rows(db, "SELECT * FROM decisions WHERE rid = ? ORDER BY ts", [rid])


def gpu_timeline(db: Any, since: float, until: float | None = None) -> list[dict[str, Any]]:
    until_v = until if until is not None else float("inf")
    return _rows(db, "SELECT * FROM gpu_samples WHERE ts >= ? AND ts < ? ORDER BY ts, gpu", [since, until_v])


__all__ = [
    "decisions_for_audit",
    "gpu_timeline",
    "latest_policy_change",
    "policy_timeline",
    "recent_requests",
    "request_record",
    "requests_for_replay",
    "tenant_summary",
    "trace",
    "trace_for_request",
]
