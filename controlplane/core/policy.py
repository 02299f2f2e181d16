"""The policy document: everything an operator can change live, validated as a whole.

A `Policy` is immutable; a change produces a new one with a new version (see `apply_patch`), so
the core swaps policies atomically and every decision names the version it was made under.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from controlplane.core.dispatch import DEFAULT_WEIGHTS, check_weights

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    _D = TypeVar("_D", bound=DataclassInstance)

SCHEDULERS = ("fcfs", "vtc", "equinox", "wrr")
ON_MISS = ("reject", "defer")
# where dispatch's expected cached prompt tokens come from: the tenant's recent hit share (the
# same on every engine) or each engine's prefix index (core/prefix_index.py)
CACHE_ESTIMATES = ("tenant", "prefix")


class PolicyError(ValueError):
    """An invalid policy or patch; the message names the offending field."""


@dataclass(frozen=True, slots=True)
class SLOClassPolicy:
    """An SLO class. Its times are seconds, like every time in the core; the policy's JSON and the
    TOML config say milliseconds (`ttft_ms`, `tpot_ms`, `ttft_ms_per_ktok`), converted at that edge
    (`policy_from_dict`, `Policy.to_dict`). `deadline_s` is seconds everywhere."""

    ttft_s: float | None = 0.5  # time to first token target
    tpot_s: float | None = 0.05  # time per output token target
    deadline_s: float | None = None  # end-to-end deadline (deferrable classes)
    on_miss: str = "reject"  # "reject" (refused now) or "defer" (queued until the deadline)
    priority: int | None = None  # SGLang priority passed through with `pass_priority`
    # TTFT allowance per 1,000 prompt tokens: a long prompt's prefill alone takes longer than a
    # flat target (a 30k-token prompt needs ~0.6 s on an H100), so long-context classes scale it
    ttft_s_per_ktok: float = 0.0

    def ttft_budget_s(self, prompt_tokens: float) -> float | None:
        """The TTFT target of a request with this many prompt tokens."""
        if self.ttft_s is None:
            return None
        return self.ttft_s + self.ttft_s_per_ktok * prompt_tokens / 1e3

    def latency_factor(self, prompt_tokens: float, ttft_s: float | None, tpot_s: float | None) -> float:
        """How far a finished request's TTFT (from arrival) and TPOT fell short of this class's
        targets for its prompt, as the product of target / actual (1.0: met both); latency-aware
        fairness counters use it."""
        factor = 1.0
        budget = self.ttft_budget_s(prompt_tokens)
        if budget is not None and ttft_s is not None and ttft_s > 0:
            factor *= min(1.0, budget / ttft_s)
        if self.tpot_s is not None and tpot_s is not None and tpot_s > 0:
            factor *= min(1.0, self.tpot_s / tpot_s)
        return factor


# The built-in classes, defined here only: a config or a policy document that names one of them
# changes only the keys it gives (controlplane/config.py).
DEFAULT_SLO_CLASSES: Mapping[str, SLOClassPolicy] = MappingProxyType({
    "interactive": SLOClassPolicy(ttft_s=0.5, tpot_s=0.05, on_miss="reject"),
    "batch": SLOClassPolicy(ttft_s=None, tpot_s=None, deadline_s=600.0, on_miss="defer"),
})

# The SLO class fields that JSON and TOML give in milliseconds: JSON key -> field (seconds)
_MS_FIELDS = {"ttft_ms": "ttft_s", "tpot_ms": "tpot_s", "ttft_ms_per_ktok": "ttft_s_per_ktok"}
_MS_DIGITS = 9  # an ms value survives ms -> s -> ms unchanged (x / 1e3 * 1e3 may be off in the last bit)


def slo_class_to_json(cls: SLOClassPolicy) -> dict[str, Any]:
    """The class as its JSON object (times in ms, as documented)."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        value = getattr(cls, f.name)
        key = _JSON_KEY.get(f.name, f.name)
        out[key] = round(value * 1e3, _MS_DIGITS) if key in _MS_FIELDS and value is not None else value
    return out


_JSON_KEY = {field_name: key for key, field_name in _MS_FIELDS.items()}
_JSON_KEYS = tuple(_JSON_KEY.get(f.name, f.name) for f in fields(SLOClassPolicy))


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    weight: float = 1.0
    slo_class: str = "interactive"
    paused: bool = False
    rate_limit_rps: float | None = None
    rate_limit_tpm: float | None = None
    # the weight in a model pool, where it differs from `weight`: pool (its name or an alias) -> weight
    # (docs/configuration.md); the runtime checks that each key names a pool
    weights: dict[str, float] = field(default_factory=dict)


_UNLISTED = TenantPolicy()  # what an unlisted tenant gets (asked per request: built once; never mutated)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    """How dispatch weighs the free engines (controlplane/core/dispatch.py, docs/dispatch.md)."""

    scorers: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))  # scorer -> weight
    cache_estimate: str = "tenant"  # "tenant" | "prefix"


@dataclass(frozen=True, slots=True)
class Policy:
    version: int = 1
    scheduler: str = "fcfs"
    holistic_alpha: float = 0.5
    admission: bool = False
    admission_margin: float = 0.8
    pass_priority: bool = False
    window: int = 0  # per-engine in-flight window; 0 = sized from KV capacity and the SLO
    slo_classes: dict[str, SLOClassPolicy] = field(default_factory=lambda: dict(DEFAULT_SLO_CLASSES))
    tenants: dict[str, TenantPolicy] = field(default_factory=dict)
    dispatch: DispatchPolicy = field(default_factory=DispatchPolicy)

    def to_dict(self) -> dict[str, Any]:
        """The policy document as JSON (SLO times in ms): the admin API's and the audit log's form."""
        out = asdict(self)
        out["slo_classes"] = {name: slo_class_to_json(c) for name, c in self.slo_classes.items()}
        for t in out["tenants"].values():
            if not t["weights"]:  # none set: the document stays as it was before model pools
                del t["weights"]
        return out

    def for_pool(self, names: Collection[str]) -> Policy:
        """The policy one model pool's core decides by (same version): each tenant's weight is its
        `weights` entry for the pool (named by any of `names`: its name and aliases), else `weight`."""
        if not any(t.weights for t in self.tenants.values()):
            return self
        tenants = {}
        for name, t in self.tenants.items():
            w = next((t.weights[n] for n in names if n in t.weights), t.weight)
            tenants[name] = t if w == t.weight else replace(t, weight=w)
        return replace(self, tenants=tenants)

    def tenant(self, name: str) -> TenantPolicy:
        return self.tenants.get(name) or _UNLISTED

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
            # named and bounded as the JSON gives them: the ms fields in ms
            for attr, lo, hi in (("ttft_s", 1e-6, 1e6), ("tpot_s", 1e-6, 1e6), ("deadline_s", 1e-3, 1e9)):
                value = getattr(c, attr)
                if value is not None:
                    _check_range(f"{where}.{_JSON_KEY.get(attr, attr)}", value, lo, hi, _JSON_KEY.get(attr))
            _check_range(f"{where}.ttft_ms_per_ktok", c.ttft_s_per_ktok, 0.0, 1e6, "ttft_ms_per_ktok")
            if c.on_miss not in ON_MISS:
                raise PolicyError(f"{where}.on_miss: must be one of {list(ON_MISS)}")
            if c.on_miss == "defer" and c.deadline_s is None:
                raise PolicyError(f"{where}: a deferring class needs deadline_s")
            if c.priority is not None and (not isinstance(c.priority, int) or isinstance(c.priority, bool)):
                raise PolicyError(f"{where}.priority: must be an integer or null")
        problem = check_weights(self.dispatch.scorers)
        if problem:
            raise PolicyError(f"dispatch.scorers: {problem}")
        if self.dispatch.cache_estimate not in CACHE_ESTIMATES:
            raise PolicyError(f"dispatch.cache_estimate: must be one of {list(CACHE_ESTIMATES)}, "
                              f"got {self.dispatch.cache_estimate!r}")
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
            if not isinstance(t.weights, dict):
                raise PolicyError(f"{where}.weights: must be an object of model pool -> weight")
            for pool, w in t.weights.items():
                _check_range(f"{where}.weights.{pool}", w, 1e-6, 1e6)
        return self


def _check_range(name: str, value: Any, lo: float, hi: float, ms: str | None = None) -> None:
    """`value` within [lo, hi]; with `ms` (its JSON key), a seconds field reported in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{name}: must be a number, got {value!r}")
    if not lo <= value <= hi:
        k = 1e3 if ms else 1.0
        raise PolicyError(f"{name}: must be in [{lo * k:g}, {hi * k:g}], got {round(value * k, _MS_DIGITS)!r}")


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
    dispatch = raw.pop("dispatch", {})
    if not isinstance(classes, dict) or not isinstance(tenants, dict):
        raise PolicyError("slo_classes and tenants must be objects")
    policy = _build(Policy, raw, "policy")
    dispatch = _build(DispatchPolicy, dispatch, "dispatch")
    if isinstance(dispatch.scorers, dict):  # a copy; null removes a scorer (a merge patch's null removes a key)
        dispatch = replace(dispatch, scorers={k: w for k, w in dispatch.scorers.items() if w is not None})
    return replace(
        policy,
        slo_classes={k: _slo_class_from_json(v, f"slo_classes.{k}") for k, v in classes.items()},
        tenants={k: _tenant_from_json(v, f"tenants.{k}") for k, v in tenants.items()},
        dispatch=dispatch,
    ).validate()


def _tenant_from_json(raw: Any, where: str) -> TenantPolicy:
    t = _build(TenantPolicy, raw, where)
    if isinstance(t.weights, dict):  # a copy; null removes a pool's weight (as a merge patch's null removes a key)
        t = replace(t, weights={k: w for k, w in t.weights.items() if w is not None})
    return t


def _slo_class_from_json(raw: Any, where: str) -> SLOClassPolicy:
    """A class from its JSON object (times in ms); unknown keys are an error."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: must be an object")
    unknown = set(raw) - set(_JSON_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_JSON_KEYS)}")
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _MS_FIELDS:
            # a value that is not a number goes through as it is: validate() names it in the JSON's terms
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            kw[_MS_FIELDS[key]] = value / 1e3 if is_number else value
        else:
            kw[key] = value
    return SLOClassPolicy(**kw)


def apply_patch(policy: Policy, changes: Any) -> Policy:
    """The new policy (version + 1) with `changes` merged in, validated whole, or PolicyError."""
    if not isinstance(changes, dict):
        raise PolicyError("changes: must be an object")
    if "version" in changes:
        raise PolicyError("version: set by the server, not by a patch")
    merged = _merge(policy.to_dict(), changes)
    merged["version"] = policy.version + 1
    return policy_from_dict(merged)
