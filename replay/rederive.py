"""Re-running the decision core's pure functions on a recorded `decisions` row's inputs: `decide()`
for an admission, `dispatch.choose` for a dispatch (controlplane/core). replay/audit.py compares
what they give with what was recorded.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any

from controlplane.core.admission import AdmissionInputs, AdmissionResult, EngineView, decide
from controlplane.core.dispatch import Choice, rechoose

__all__ = ["rederive", "rederive_choice", "rederive_dispatch"]

_INPUT_FIELDS = tuple(f.name for f in fields(AdmissionInputs))
_REQUIRED_INPUTS = tuple(f.name for f in fields(AdmissionInputs) if f.default is MISSING)
_VIEW_FIELDS = tuple(f.name for f in fields(EngineView))
_RESULT_FIELDS = tuple(f.name for f in fields(AdmissionResult))


def _views(engines: Any) -> tuple[EngineView, ...]:
    if not isinstance(engines, list):
        raise ValueError(f"engines is not a list: {engines!r}")
    try:  # a recorded view holds exactly EngineView's fields, in order (the core's _shallow)
        return tuple(EngineView(*e.values()) if tuple(e) == _VIEW_FIELDS else _view(e) for e in engines)
    except (AttributeError, TypeError, KeyError):
        raise ValueError(f"bad engine views {engines!r}") from None


def _view(e: Mapping[str, Any]) -> EngineView:
    return EngineView(**{k: e[k] for k in _VIEW_FIELDS})  # KeyError when a field is missing


def rederive(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Run `decide()` on a recorded admission inputs record; returns the AdmissionResult as a dict.
    Raises ValueError if the record is not a complete AdmissionInputs."""
    missing = [k for k in _REQUIRED_INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"inputs lack {missing}")
    kw = {k: inputs[k] for k in _INPUT_FIELDS if k in inputs}  # later fields have defaults: older rows lack them
    kw["engines"] = _views(kw["engines"])
    result = decide(AdmissionInputs(**kw))
    return {f: getattr(result, f) for f in _RESULT_FIELDS}


def rederive_choice(inputs: Mapping[str, Any]) -> tuple[tuple[EngineView, ...], Choice]:
    """`dispatch.choose` re-run on a recorded dispatch's inputs: the engine views and the choice."""
    views = _views(inputs.get("engines"))
    if not views:
        raise ValueError("no engine views")
    return views, rechoose(views, inputs)


def rederive_dispatch(inputs: Mapping[str, Any]) -> str:
    """The engine `dispatch.choose` picks from a recorded dispatch's inputs."""
    views, choice = rederive_choice(inputs)
    return views[choice.index].name
