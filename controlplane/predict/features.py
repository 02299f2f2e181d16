"""What the output-length experts see of a request, and the interface every expert implements.

`sanitized_features` turns the predictor's loose arguments into `Features` (inputs are sanitised,
never rejected: a negative or non-finite prompt length reads as 0, a max_tokens below 1 as 1).
"""
from __future__ import annotations

import math
from typing import Any, Protocol

from fairness.value import value


@value
class Features:
    tenant: str
    prompt_tokens: int
    max_tokens: int
    slo_class: str | None = None
    hint: str | None = None


class Expert(Protocol):
    name: str

    def predict(self, f: Features) -> float | None: ...

    def observe(self, f: Features, actual: float) -> None: ...

    def state(self) -> dict[str, Any]: ...


def log2_bucket(prompt_tokens: int) -> int:
    return int(prompt_tokens + 1).bit_length() - 1  # floor(log2(prompt_tokens + 1))


def sanitized_features(
    tenant: str, prompt_tokens: int, max_tokens: int, slo_class: str | None, hint: str | None
) -> Features:
    p = int(prompt_tokens) if math.isfinite(prompt_tokens) else 0
    m = int(max_tokens) if math.isfinite(max_tokens) else 1
    return Features(str(tenant), max(0, p), max(1, m), slo_class, hint)
