"""Tenant accounting and scheduling policies. Pure: imports nothing of ours, no I/O, no clock."""
from fairness.base import Outcome, Scheduler, TenantState, Work
from fairness.equinox import Equinox
from fairness.fcfs import FCFS
from fairness.lazy_heap import LazyHeap
from fairness.vtc import VTC
from fairness.wrr import WRR

POLICIES: dict[str, type[Scheduler]] = {cls.name: cls for cls in (FCFS, VTC, Equinox, WRR)}


def make_scheduler(policy: str, weights: dict[str, float] | None = None, **params: float | str) -> Scheduler:
    """Build a policy by name. `params` are the policy's keywords (e.g. alpha for equinox, quantum
    for wrr) and the accounting keywords every policy accepts (w_p, w_q, resource, ...)."""
    try:
        cls = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}") from None
    try:
        return cls(weights, **params)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"bad parameters for policy {policy!r}: {exc}") from None


__all__ = ["FCFS", "POLICIES", "VTC", "WRR", "Equinox", "LazyHeap", "Outcome", "Scheduler", "TenantState",
           "Work", "make_scheduler"]
