"""Why a request was admitted, deferred, refused or sent where it went, from its recorded rows.

`GET /admin/v1/requests/{rid}/why` (docs/admin-api.md) and the console's request view read this.
Everything comes from what was recorded at the time: the request's row and its `decisions` rows
(the admission row carries the admission inputs, the engines as admission saw them and the
result; the dispatch row the candidates with their expected cached tokens and scores, the
tenant's fairness counters and the time queued). Forecasts, their parts and the candidates' order
are re-derived from the recorded engine views with the same `forecast` and `dispatch.choose` the
core ran, so the numbers are the ones the decision saw, not today's.

Three steps, so that the admin API never blocks its event loop: `live_record` (on the loop: an
in-flight request's row and decisions from memory), `stored_record` (blocking: flush the store,
read the rows; run it in a thread) and `explain` (pure).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from controlplane.core.admission import EngineView, forecast
from controlplane.core.dispatch import own_prefill, rechoose
from controlplane.core.events import ADMISSION_KINDS
from telemetry import queries

_VIEW_FIELDS = {f.name for f in dataclasses.fields(EngineView)}

# what each refusal needed; {placeholders} come from the numbers of the refusal
_LET_IN = {
    "tenant_paused": "the tenant to be resumed (it was paused by an operator)",
    "rate_limited_requests": "a request rate within the tenant's rate_limit_rps, or a higher limit",
    "rate_limited_tokens": "a token rate within the tenant's rate_limit_tpm, or a higher limit",
    "over_share": "its tier to be under its share of the engines (the other tier was waiting)",
    "no_healthy_engine": "a healthy engine",
    "ttft_unattainable": ("a forecast TTFT within {limit_ms:.3g} ms (margin x budget): {need_ms:.3g} ms less "
                          "queue or prefill ahead, a TTFT budget of at least {budget_needed_ms:.3g} ms, or "
                          "on_miss = defer for its class"),
    "deadline_unattainable": ("a forecast end within {limit_ms:.3g} ms (margin x deadline): a deadline of at "
                              "least {budget_needed_ms:.3g} ms or a shorter queue"),
    "tpot_unattainable": ("a forecast TPOT within {limit_ms:.3g} ms (margin x its TPOT budget): a smaller batch "
                          "on the engine, or on_miss = defer"),
    "protects_running": ("a forecast TPOT within {limit_ms:.3g} ms, the tightest budget of the requests already "
                         "running (admitting it would have slowed them past theirs)"),
}


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else float(seconds) * 1e3


def _t(ms: float) -> str:
    """Milliseconds for reading: whole above 10 ms, else with the digits that matter."""
    return f"{ms:.0f} ms" if abs(ms) >= 10 else f"{ms:.2g} ms"


def _view(d: dict[str, Any]) -> EngineView:
    kw = {k: v for k, v in d.items() if k in _VIEW_FIELDS}
    kw["departures"] = tuple(kw.get("departures") or ())
    return EngineView(**kw)


def live_record(sluice: Any, rid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """An in-flight request's row and decisions, from memory (call on the event loop)."""
    ticket = sluice.tickets.get(rid)
    if ticket is None:
        return None
    row = ticket.live_row()
    row.setdefault("dispatch_ts", ticket.dispatched_at)
    row.setdefault("first_token_ts", ticket.first_token_at)
    return row, [{"ts": d.ts, "kind": d.kind, "reason": d.reason, "engine": d.engine,
                  "policy_version": d.policy_version, "inputs": d.inputs, "outputs": d.outputs}
                 for d in ticket.decisions]


def stored_record(store: Any, rid: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A finished request's row and decisions from the store. Blocking: run it off the event loop."""
    store.flush(timeout_s=5)
    return queries.request_record(store, rid)


def _forecasts(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each engine's forecast for this request as admission computed it, with its parts."""
    out = []
    ahead_r, ahead_t = float(inputs.get("ahead_requests") or 0), float(inputs.get("ahead_tokens") or 0)
    prompt, output = float(inputs.get("prompt_tokens") or 0), float(inputs.get("output_tokens") or 0)
    cached = float(inputs.get("cached_tokens") or 0)
    for d in inputs.get("engines") or []:
        try:
            view = _view(d)
            fc = forecast(view, ahead_r, ahead_t, prompt, output, cached)
            own = own_prefill(view, prompt, output, cached)
        except (TypeError, ValueError):
            continue  # a row recorded by another version of the core: show what can be read
        out.append({
            "engine": view.name, "ttft_ms": _ms(fc.ttft_s), "tpot_ms": _ms(fc.tpot_s), "e2e_ms": _ms(fc.e2e_s),
            "in_flight": view.in_flight, "window": view.window,
            # the TTFT in three parts that add up to it
            "parts": {"wait_for_slot_ms": _ms(fc.slot_wait_s), "own_prefill_ms": _ms(own),
                      "prefill_ahead_ms": _ms(max(0.0, fc.ttft_s - fc.slot_wait_s - own))}})
    return sorted(out, key=lambda f: (f["ttft_ms"], f["e2e_ms"]))


def _admission(d: dict[str, Any], why: dict[str, Any]) -> str:
    x, out = d.get("inputs") or {}, d.get("outputs") or {}
    margin = float(x.get("margin") or 1.0)
    error = float(x.get("ttft_error") or 1.0)
    slo = {"class": x.get("slo_class"), "ttft_budget_ms": _ms(x.get("ttft_slo_s")),
           "tpot_budget_ms": _ms(x.get("tpot_slo_s")), "deadline_ms": _ms(x.get("deadline_s")),
           "on_miss": x.get("on_miss"), "margin": x.get("margin"), "ttft_error": x.get("ttft_error"),
           "running_tpot_budget_ms": _ms(x.get("inflight_tpot_slo_s"))}
    why["slo"] = {k: v for k, v in slo.items() if v is not None}
    forecasts = _forecasts(x)
    why["engines"] = forecasts
    chosen = next((f for f in forecasts if f["engine"] == d.get("engine")), forecasts[0] if forecasts else None)
    if chosen is None and not x:
        return f"{d['kind']} ({d.get('reason')}) before any forecast: nothing else was weighed"
    fc = {"engine": d.get("engine"), "ttft_ms": _ms(out.get("ttft_s")), "tpot_ms": _ms(out.get("tpot_s")),
          "e2e_ms": _ms(out.get("e2e_s"))}
    if chosen is not None:
        fc["parts"] = chosen["parts"]
    fc["queue_ahead"] = {"requests": x.get("ahead_requests"), "prompt_tokens": x.get("ahead_tokens")}
    why["forecast"] = fc
    words = [f"{d['kind']} ({d.get('reason')})"]
    if x.get("admission") is False:
        words.append("admission control is off: nothing was checked against the SLO")
    ttft, budget = fc["ttft_ms"], slo["ttft_budget_ms"]
    if ttft is not None and budget is not None:
        verdict = "within" if ttft * error <= margin * budget else "over"
        words.append(f"forecast TTFT {_t(ttft)} x {error:.2f} (recent forecast error) = {_t(ttft * error)}, "
                     f"{verdict} {margin:.0%} of the {_t(budget)} budget")
    tpot, tbudget = fc["tpot_ms"], slo.get("tpot_budget_ms")
    if tpot is not None and tbudget is not None:
        words.append(f"forecast TPOT {_t(tpot)} against {margin:.0%} of {_t(tbudget)}")
    if chosen is not None:
        p = chosen["parts"]
        words.append(f"TTFT parts: {_t(p['wait_for_slot_ms'])} waiting for a slot, {_t(p['prefill_ahead_ms'])} "
                     f"of prefill ahead, {_t(p['own_prefill_ms'])} own prefill")
    return "; ".join(words)


def _let_in(d: dict[str, Any], why: dict[str, Any]) -> str:
    """For a refusal: what would have let it in, in words and numbers."""
    reason = str(d.get("reason") or "")
    x, out = d.get("inputs") or {}, d.get("outputs") or {}
    margin = float(x.get("margin") or 1.0)
    error = float(x.get("ttft_error") or 1.0)
    numbers: dict[str, float] = {}
    if reason == "ttft_unattainable" and x.get("ttft_slo_s") is not None and out.get("ttft_s") is not None:
        forecast_ms, limit_ms = _ms(out["ttft_s"]) * error, margin * _ms(x["ttft_slo_s"])
        numbers = {"limit_ms": limit_ms, "need_ms": forecast_ms - limit_ms, "budget_needed_ms": forecast_ms / margin}
    elif reason == "deadline_unattainable" and x.get("deadline_s") is not None and out.get("e2e_s") is not None:
        limit_ms = margin * _ms(x["deadline_s"])
        numbers = {"limit_ms": limit_ms, "budget_needed_ms": _ms(out["e2e_s"]) / margin}
    elif reason in ("tpot_unattainable", "protects_running"):
        budgets = [v for v in (x.get("tpot_slo_s"), x.get("inflight_tpot_slo_s")) if v is not None]
        if budgets:
            numbers = {"limit_ms": margin * _ms(min(budgets))}
    template = _LET_IN.get(reason)
    try:
        text = template.format(**numbers) if template else f"the condition behind {reason!r} to clear"
    except KeyError:
        text = template.split(":")[0] if template else reason
    retry = out.get("retry_after_s")
    if retry is not None:
        text += f"; it was told to retry after {float(retry):.0f} s"
    why["would_admit"] = {"reason": reason, "text": text, **numbers}
    return "would have been let in with " + text


def _candidates(x: dict[str, Any], engine: Any) -> list[dict[str, Any]]:
    """The dispatch's candidates in the picker's order (best first), each with its forecast, its
    expected cached tokens and its scores, re-derived through `dispatch.choose`."""
    try:
        views = [_view(v) for v in x.get("engines") or []]
        choice = rechoose(views, x) if views else None
    except (TypeError, ValueError, KeyError):
        return []  # a row recorded by another version of the core
    if choice is None:
        return []
    cached = x.get("engine_cached") or [x.get("cached_tokens") or 0.0] * len(views)
    out = []
    for view, c, s in zip(views, cached, choice.scored):
        if s is None:
            continue
        out.append({"engine": view.name, "ttft_ms": _ms(s.forecast.ttft_s), "tpot_ms": _ms(s.forecast.tpot_s),
                    "in_flight": view.in_flight, "cached_tokens": c, "scores": s.scores, "score": s.total,
                    "chosen": view.name == engine})
    return sorted(out, key=lambda r: (-r["score"], r["in_flight"]))  # the picker's order


def _dispatch(d: dict[str, Any], why: dict[str, Any]) -> str:
    x = d.get("inputs") or {}
    engine = d.get("engine")
    ranked = _candidates(x, engine)
    counters = x.get("counters") or {}
    weights = x.get("weights") or {"ttft": 1.0}
    why["dispatch"] = {"engine": engine, "scheduler": d.get("reason"), "queued_ms": _ms(x.get("queued_s")),
                       "tier": x.get("tier"), "weights": weights, "candidates": ranked, "counters": counters}
    words = [f"dispatched by {d.get('reason')} to {engine} after {_t(_ms(x.get('queued_s')) or 0.0)} in "
             f"sluice's queue"]
    others = [r for r in ranked if not r["chosen"]]
    mine = next((r for r in ranked if r["chosen"]), None)
    if mine is not None:
        words.append(f"{engine}: {_scored(mine, weights)}")
    if others:
        words.append("runners-up: " + ", ".join(f"{r['engine']} {_scored(r, weights)}" for r in others[:3]))
    h = counters.get("holistic")
    if h is not None:
        why["fairness"] = {"holistic": h, "user": counters.get("user"), "resource": counters.get("resource"),
                           "weight": counters.get("weight"),
                           "text": "H is the tenant's service per unit of weight against the mean of the tenants "
                                   "with work queued: 1.00 is its fair share, below 1 it is behind (served sooner)"}
        detail = f"U {float(counters.get('user') or 0):.0f} tok/w, weight {counters.get('weight')}"
        if h <= 0:
            words.append(f"no other tenant's work was queued: no fair share to weigh (H = 0; {detail})")
        else:
            position = "behind" if h < 0.995 else "ahead of" if h > 1.005 else "at"
            words.append(f"the tenant was {position} its fair share at dispatch (H = {h:.2f}, 1.00 = fair; {detail})")
    return "; ".join(words)


def _scored(r: dict[str, Any], weights: dict[str, Any]) -> str:
    """A candidate in words: its forecast TTFT, in flight, expected cached tokens and, with more than
    the default scorer, its total and each weighted score."""
    text = f"forecast TTFT {_t(r['ttft_ms'])} with {r['in_flight']} in flight"
    if r["cached_tokens"]:
        text += f", {r['cached_tokens']:.0f} prompt tokens expected cached"
    if set(weights) != {"ttft"}:
        parts = " + ".join(f"{float(weights[name]):g} x {name} {v:.3g}" for name, v in r["scores"].items())
        text += f" (score {r['score']:.3g} = {parts})"
    return text


def explain(rid: str, row: dict[str, Any] | None, decisions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The explanation of request `rid` from its row and decision rows; None if neither is known."""
    if row is None and not decisions:
        return None
    row = row or {}
    why: dict[str, Any] = {"rid": rid, "tenant": row.get("tenant") or (decisions[0].get("tenant") if decisions else None),
                           "status": row.get("status"), "slo_class": row.get("slo_class")}
    versions = sorted({int(d["policy_version"]) for d in decisions if d.get("policy_version") is not None})
    why["policy_version"] = versions[-1] if versions else row.get("policy_version")
    steps = []
    for d in decisions:
        kind = d.get("kind")
        if kind in ADMISSION_KINDS:
            text = _admission(d, why)
            if kind == "reject":
                text += "; " + _let_in(d, why)
        elif kind == "dispatch":
            text = _dispatch(d, why)
        elif kind == "expire":
            text = "expired in the queue: its deadline passed before an engine was free"
        else:
            text = f"{kind}: {d.get('reason')}"
        steps.append({"ts": d.get("ts"), "kind": kind, "reason": d.get("reason"), "engine": d.get("engine"),
                      "policy_version": d.get("policy_version"), "text": text})
    why["decisions"] = steps
    actual = {k: row.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms", "slo_met", "completion_tokens")
              if row.get(k) is not None}
    if actual:
        why["actual"] = actual
    why["phases"] = _phases(row, decisions)
    why["summary"] = steps[0]["text"] if steps else f"no decision recorded for {rid} (status {row.get('status')})"
    return why


def _phases(row: dict[str, Any], decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's time in parts: admission, queueing in sluice, prefill, decode."""
    arrival = row.get("arrival_ts")
    admitted = next((d.get("ts") for d in decisions if d.get("kind") in ADMISSION_KINDS), None)
    dispatched = row.get("dispatch_ts") or next((d.get("ts") for d in decisions if d.get("kind") == "dispatch"), None)
    first, end = row.get("first_token_ts"), row.get("finish_ts")
    marks = [("admission", arrival, admitted), ("queue", admitted, dispatched),
             ("prefill", dispatched, first), ("decode", first, end)]
    return [{"name": n, "start_ts": a, "end_ts": b, "ms": _ms(float(b) - float(a))}
            for n, a, b in marks if a is not None and b is not None and float(b) >= float(a)]
