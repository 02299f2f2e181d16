"""The policy document: everything an operator can change live, validated as a whole.

A `Policy` is immutable; a change produces a new one with a new version (see `apply_patch`), so
the core swaps policies atomically and every decision names the version it was made under.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _D = TypeVar("_D", bound=DataclassInstance)

SCHEDULERS = ("fcfs", "vtc", "equinox", "wrr")
ON_MISS = ("reject", "defer")


class PolicyError(ValueError):
    """An invalid policy or patch; the message names the offending field."""


@dataclass(frozen=True, slots=True)
class SLOClassPolicy:
    ttft_ms: float | None = 500.0
    tpot_ms: float | None = 50.0
    deadline_s: float | None = None
    on_miss: str = "reject"
    priority: int | None = None
    # TTFT allowance per 1,000 prompt tokens: a long prompt's prefill alone takes longer than a
    # flat target (a 30k-token prompt needs ~0.6 s on an H100), so long-context classes scale it
    ttft_ms_per_ktok: float = 0.0

    def ttft_budget_ms(self, prompt_tokens: float) -> float | None:
        """The TTFT target of a request with this many prompt tokens."""
        if self.ttft_ms is None:
            return None
        return self.ttft_ms + self.ttft_ms_per_ktok * prompt_tokens / 1e3


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    weight: float = 1.0
    slo_class: str = "interactive"
    paused: bool = False
    rate_limit_rps: float | None = None
    rate_limit_tpm: float | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    version: int = 1
    scheduler: str = "fcfs"
    holistic_alpha: float = 0.5
    admission: bool = False
    admission_margin: float = 0.8
    pass_priority: bool = False
    window: int = 0  # per-engine in-flight window; 0 = sized from KV capacity and the SLO
    slo_classes: dict[str, SLOClassPolicy] = field(default_factory=dict)
    tenants: dict[str, TenantPolicy] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tenant(self, name: str) -> TenantPolicy:
        return self.tenants.get(name) or TenantPolicy()

    def slo(self, name: str) -> SLOClassPolicy:
        """The class named `name`; an unknown name is an error (never silently interactive)."""
        cls = self.slo_classes.get(name)
        if cls is None:
            raise PolicyError(f"unknown SLO class {name!r}; the policy's classes are {sorted(self.slo_classes)}")
        return cls

    def validate(self) -> Policy:
        if self.scheduler not in SCHEDULERS:
            raise PolicyError(f"scheduler: must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        _check_range("holistic_alpha", self.holistic_alpha, 0.0, 1.0)
        _check_range("admission_margin", self.admission_margin, 0.05, 1.0)
        if not isinstance(self.window, int) or isinstance(self.window, bool) or not 0 <= self.window <= 4096:
            raise PolicyError("window: must be an integer in [0, 4096]")
        for flag in ("admission", "pass_priority"):
            if not isinstance(getattr(self, flag), bool):
                raise PolicyError(f"{flag}: must be true or false")
        if not self.slo_classes:
            raise PolicyError("slo_classes: at least one class is required")
        for name, c in self.slo_classes.items():
            where = f"slo_classes.{name}"
            for attr in ("ttft_ms", "tpot_ms", "deadline_s"):
                value = getattr(c, attr)
                if value is not None:
                    _check_range(f"{where}.{attr}", value, 1e-3, 1e9)
            _check_range(f"{where}.ttft_ms_per_ktok", c.ttft_ms_per_ktok, 0.0, 1e9)
            if c.on_miss not in ON_MISS:
                raise PolicyError(f"{where}.on_miss: must be one of {list(ON_MISS)}")
            if c.on_miss == "defer" and c.deadline_s is None:
                raise PolicyError(f"{where}: a deferring class needs deadline_s")
            if c.priority is not None and (not isinstance(c.priority, int) or isinstance(c.priority, bool)):
                raise PolicyError(f"{where}.priority: must be an integer or null")
        for name, t in self.tenants.items():
            where = f"tenants.{name}"
            _check_range(f"{where}.weight", t.weight, 1e-6, 1e6)
            if t.slo_class not in self.slo_classes:
                raise PolicyError(f"{where}.slo_class: unknown class {t.slo_class!r}")
            if not isinstance(t.paused, bool):
                raise PolicyError(f"{where}.paused: must be true or false")
            for attr in ("rate_limit_rps", "rate_limit_tpm"):
                value = getattr(t, attr)
                if value is not None:
                    _check_range(f"{where}.{attr}", value, 1e-6, 1e12)
        return self


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{name}: must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise PolicyError(f"{name}: must be in [{lo}, {hi}], got {value!r}")


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): nested objects merge, null deletes a key."""
    out = dict(base)
    for key, value in patch.items():
        if value is None and isinstance(out.get(key), dict):
            del out[key]  # removes a tenant or an SLO class; a null scalar stays a null value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type[_D], raw: Any, where: str) -> _D:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be an object")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    return cls(**raw)


def policy_from_dict(raw: Any) -> Policy:
    if not isinstance(raw, dict):
        raise PolicyError("policy: must be an object")
    raw = dict(raw)
    classes = raw.pop("slo_classes", {})
    tenants = raw.pop("tenants", {})
    if not isinstance(classes, dict) or not isinstance(tenants, dict):
        raise PolicyError("slo_classes and tenants must be objects")
    policy = _build(Policy, raw, "policy")
    return replace(
        policy,
        slo_classes={k: _build(SLOClassPolicy, v, f"slo_classes.{k}") for k, v in classes.items()},
        tenants={k: _build(TenantPolicy, v, f"tenants.{k}") for k, v in tenants.items()},
    ).validate()


def apply_patch(policy: Policy, changes: Any) -> Policy:
    """The new policy (version + 1) with `changes` merged in, validated whole, or PolicyError."""
    if not isinstance(changes, dict):
        raise PolicyError("changes: must be an object")
    if "version" in changes:
        raise PolicyError("version: set by the server, not by a patch")
    merged = _merge(policy.to_dict(), changes)
    merged["version"] = policy.version + 1
    return policy_from_dict(merged)
