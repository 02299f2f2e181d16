"""Tenant accounting and scheduling policies. Pure: imports nothing of ours, no I/O, no clock."""
from fairness.base import Outcome, Scheduler, Work
from fairness.fcfs import FCFS

POLICIES: dict[str, type[Scheduler]] = {FCFS.name: FCFS}


def make_scheduler(policy: str, weights: dict[str, float] | None = None, **params: float) -> Scheduler:
    try:
        cls = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}") from None
    return cls(weights, **params) if params else cls(weights)


__all__ = ["FCFS", "POLICIES", "Outcome", "Scheduler", "Work", "make_scheduler"]
