"""Dispatch: which free engine a dequeued request goes to, as filters -> scorers -> picker (the
shape of llm-d's endpoint picker; docs/dispatch.md).

- **Filters** drop the engines that cannot take the request: unhealthy ones and ones without a free
  window slot. (Every candidate serves the request's model: each model pool has a core of its own.)
- **Scorers** rate each remaining engine, higher is better, each in its own unit:
  `ttft`: minus the forecast TTFT (s) with that engine's expected cached prompt tokens (the old
  rule: the lowest forecast TTFT); `prefix`: the prefill seconds that engine's expected prefix-cache
  hit saves (Mooncake / SGLang prefix locality); `load`: minus the share of its window in flight
  (least-load); `adapter`: the seconds of LoRA adapter load the choice saves: the load where the
  engine holds the request's adapter, minus one where loading it there pushes another adapter out
  (its reload), 0 otherwise (core/adapters.py). The forecast of an engine that must load the
  adapter counts the load (`ttft` sees it too). The policy's weights (`policy.dispatch.scorers`) turn them into one total:
  sum(weight x score), in the units of the weights (a `load` weight of 0.5 makes a full window cost
  half a second of TTFT).
- **The picker** takes the highest total; ties go to the engine with fewer requests in flight,
  then to the first in the core's engine order. With the default weights (`ttft` alone, weight 1)
  the total is exactly minus the TTFT, so the choice is the old `choose_engine`'s bit for bit.

Pure: the core calls `choose` with views and expected cached tokens it computed, records them, and
the audit calls it again on the record (replay/audit.py).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from controlplane.core.admission import EngineView, Forecast, forecast
from fairness.value import value


@value
class Candidate:
    """One engine as dispatch weighs it."""

    view: EngineView
    cached_tokens: float  # of the prompt, expected from this engine's prefix cache
    healthy: bool = True
    adapter_cost_s: float = 0.0  # what loading the request's LoRA adapter takes here (0: no adapter)
    adapter_held: bool = False  # this engine holds the adapter already: no load
    adapter_evicts: bool = False  # loading it here pushes another adapter out (the engine's slots are full)


@value
class DispatchRequest:
    prompt_tokens: float
    output_tokens: float  # predicted


@value
class Scored:
    """A candidate's forecast, its score from each scorer (unweighted) and the weighted total."""

    forecast: Forecast
    scores: dict[str, float]
    total: float

    def record(self) -> dict[str, float]:
        """As a decision row keeps it (why.py and the audit read it)."""
        return {**self.scores, "total": self.total}


@value
class Choice:
    index: int  # of the chosen candidate
    chosen: Scored
    scored: list[Scored | None]  # every candidate's, None where a filter dropped it


Filter = Callable[[Candidate, DispatchRequest], bool]
Scorer = Callable[[Candidate, DispatchRequest, Forecast], float]

FILTERS: tuple[tuple[str, Filter], ...] = (
    ("healthy", lambda c, r: c.healthy),
    ("free_slot", lambda c, r: c.view.free_slots > 0),
)


def own_prefill(view: EngineView, prompt: float, output: float, cached: float) -> float:
    """Seconds of the request's own prefill on `view` with `cached` prompt tokens from the prefix
    cache: the `own` term of admission's forecast (admission.forecast)."""
    batch = min(view.in_flight + 1, max(view.window, 1))
    kv = view.kv_tokens + prompt + output / 2
    computed = max(1.0, prompt - cached)
    return view.prefill_through(computed, batch, kv, view.attention(computed, cached))


def _ttft(c: Candidate, r: DispatchRequest, fc: Forecast) -> float:
    return -fc.ttft_s


def _prefix(c: Candidate, r: DispatchRequest, fc: Forecast) -> float:
    if c.cached_tokens <= 0:
        return 0.0
    return (own_prefill(c.view, r.prompt_tokens, r.output_tokens, 0.0)
            - own_prefill(c.view, r.prompt_tokens, r.output_tokens, c.cached_tokens))


def _load(c: Candidate, r: DispatchRequest, fc: Forecast) -> float:
    return -c.view.in_flight / max(c.view.window, 1)


def _adapter(c: Candidate, r: DispatchRequest, fc: Forecast) -> float:
    if c.adapter_held:
        return c.adapter_cost_s
    return -c.adapter_cost_s if c.adapter_evicts else 0.0


SCORERS: Mapping[str, Scorer] = MappingProxyType({"ttft": _ttft, "prefix": _prefix, "load": _load,
                                                  "adapter": _adapter})
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType({"ttft": 1.0})


def check_weights(weights: object) -> str | None:
    """What is wrong with a scorer -> weight table, or None."""
    if not isinstance(weights, Mapping) or not weights:
        return "must be a table of scorer name -> weight, e.g. {ttft = 1.0}"
    for name, w in weights.items():
        if name not in SCORERS:
            return f"unknown scorer {name!r}; known: {sorted(SCORERS)}"
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1e6:
            return f"{name}: the weight must be a number in [0, 1e6], got {w!r}"
    if not any(w > 0 for w in weights.values()):
        return "at least one scorer needs a positive weight"
    return None


def score(c: Candidate, r: DispatchRequest, weights: Mapping[str, float]) -> Scored:
    fc = forecast(c.view, 0, 0, r.prompt_tokens, r.output_tokens, c.cached_tokens)
    if c.adapter_cost_s and not c.adapter_held:  # the adapter is loaded before the request runs
        fc = replace(fc, ttft_s=fc.ttft_s + c.adapter_cost_s, e2e_s=fc.e2e_s + c.adapter_cost_s)
    scores = {name: SCORERS[name](c, r, fc) for name in weights}
    total = 0.0
    for name, w in weights.items():  # 0.0 + 1.0 * x == x: the default total is exactly -TTFT
        total += w * scores[name]
    return Scored(fc, scores, total)


def choose(candidates: Sequence[Candidate], request: DispatchRequest,
           weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> Choice:
    """Where the request goes, with every candidate's scores. ValueError when every candidate is
    filtered out."""
    scored: list[Scored | None] = [
        score(c, request, weights) if all(f(c, request) for _, f in FILTERS) else None for c in candidates]
    kept = [(k, s) for k, s in enumerate(scored) if s is not None]
    if not kept:
        raise ValueError("no engine passes the dispatch filters (healthy, a free slot)")
    best, chosen = min(kept, key=lambda ks: (-ks[1].total, candidates[ks[0]].view.in_flight))
    return Choice(best, chosen, scored)


def rechoose(views: Sequence[EngineView], inputs: Mapping[str, object]) -> Choice:
    """`choose` re-run on a dispatch decision row's inputs (the audit and the "why" read), with the
    recorded `views`. Rows recorded before dispatch had scorers carry no weights (then: the default,
    the lowest forecast TTFT) and one cached-token estimate (`cached_tokens`) for every engine; a
    LoRA request's row has each engine's adapter cost, whether it held it and whether loading it
    would push another out (`engine_adapter`)."""
    cached = inputs.get("engine_cached")
    if cached is None:
        cached = [inputs.get("cached_tokens", 0.0)] * len(views)
    if not isinstance(cached, list) or len(cached) != len(views):
        raise ValueError(f"engine_cached {cached!r} does not match the {len(views)} engine views")
    weights = inputs.get("weights", DEFAULT_WEIGHTS)
    if not isinstance(weights, Mapping) or check_weights(weights):
        raise ValueError(f"bad scorer weights {weights!r}: {check_weights(weights)}")
    prompt, output = inputs["prompt_tokens"], inputs["output_tokens"]
    if not isinstance(prompt, (int, float)) or not isinstance(output, (int, float)):
        raise ValueError(f"bad request sizes {prompt!r}, {output!r}")
    adapter = inputs.get("engine_adapter") or [(0.0, False, False)] * len(views)
    if not isinstance(adapter, list) or len(adapter) != len(views) or any(len(a) != 3 for a in adapter):
        raise ValueError(f"engine_adapter {adapter!r} does not match the {len(views)} engine views")
    return choose([Candidate(v, float(c), True, float(a[0]), bool(a[1]), bool(a[2]))
                   for v, c, a in zip(views, cached, adapter)], DispatchRequest(prompt, output), weights)
