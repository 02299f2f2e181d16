"""One workload request's outcome in virtual time: what the core decided and what the simulated
engine did, in seconds from the workload's start.

A `RequestRecord` is a `replay.report.Outcome` (the tables' vocabulary, shared with the live
runner's `RequestResult`); its statuses are report.py's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["RequestRecord"]


@dataclass(slots=True)
class RequestRecord:
    """One workload request's outcome in virtual time (seconds from the workload start)."""

    index: int
    rid: str
    tenant: str
    slo_class: str | None
    arrival_s: float
    input_tokens: int
    requested_output_tokens: int  # the true output length (the engine stops there); never shown to the core
    max_tokens: int = 0  # the client's cap: what the core sees
    status: str | None = None  # ok | rejected | expired | error | cancelled (replay.report.STATUSES)
    reason: str | None = None  # the core's decision reason or reject code
    decision: str | None = None  # admit | defer | reject
    engine: str | None = None
    dispatch_s: float | None = None
    first_token_s: float | None = None
    finish_s: float | None = None
    cached_tokens: int = 0
    output_tokens: int = 0
    predicted_ttft_s: float | None = None
    predicted_tpot_s: float | None = None
    predicted_output_tokens: float | None = None
    retry_after_s: float | None = None
    slo_met: bool | None = None
    energy_j: float = 0.0  # the simulator's attribution: its share of each step's energy (docs/simulator.md)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def queue_s(self) -> float | None:
        return None if self.dispatch_s is None else self.dispatch_s - self.arrival_s

    @property
    def itl_s(self) -> Sequence[float]:
        return ()  # the simulator's steps are not streamed chunks

    @property
    def admitted(self) -> bool:
        """Admitted or deferred by the core (not refused at arrival)."""
        return self.decision in ("admit", "defer")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ttft_s=self.ttft_s, tpot_s=self.tpot_s, e2e_s=self.e2e_s, queue_s=self.queue_s)
        return out
