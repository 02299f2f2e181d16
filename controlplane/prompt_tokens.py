"""Prompt-token counts before the engine has counted: the 4-characters-per-token estimate
(`engine_adapter.tokens`), corrected per model by what the engine then reports.

Admission needs a prompt length before dispatch (prefill forecast, the tenant's charge, the context
check), but the chat template that turns messages into tokens is the engine's, so sluice cannot count
exactly. The estimate is scaled by a per-model ratio, the running mean of the engine's
`prompt_tokens` over the raw estimate (an exponentially weighted mean, so a new template or
tokenizer is learned within tens of requests); the corrected estimate's error against the engine's
count is recorded like every forecast (the `prompt_tokens` kind of the forecast-error metric).
"""
from __future__ import annotations

ALPHA = 0.1  # weight of each new observation in the running ratio


class PromptTokenEstimator:
    def __init__(self) -> None:
        self.ratio: dict[str, float] = {}  # model -> engine count / raw estimate

    def correct(self, model: str, estimate: int) -> int:
        return max(1, round(estimate * self.ratio.get(model, 1.0)))

    def observe(self, model: str, estimate: int, actual: int) -> None:
        """One engine-reported count for a request whose raw estimate was `estimate`."""
        if estimate <= 0 or actual <= 0:
            return
        r = actual / estimate
        old = self.ratio.get(model)
        self.ratio[model] = r if old is None else old + ALPHA * (r - old)
