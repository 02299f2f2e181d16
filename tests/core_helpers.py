"""Builders for decision-core tests: a core over N engines with the default H100 profile prior."""
from __future__ import annotations

from controlplane.core.core import DecisionCore
from controlplane.core.events import EngineSpec
from controlplane.core.learning import OutputPredictor
from controlplane.core.policy import Policy, SLOClassPolicy, TenantPolicy
from controlplane.predict.errors import ForecastErrors
from controlplane.predict.output_length import OutputLengthPredictor
from controlplane.predict.step_time import StepTimeModel
from engine_adapter.base import StepProfile

PROFILE = StepProfile(prefill_a=0.008, prefill_b=0.00006, decode_c=0.007, decode_d=0.00005, decode_e=2e-8)


def make_policy(**overrides: object) -> Policy:
    base = dict(
        scheduler="fcfs",
        slo_classes={"interactive": SLOClassPolicy(0.5, 0.05), "batch": SLOClassPolicy(None, None, 60.0, "defer")},
        tenants={"a": TenantPolicy(1.0), "b": TenantPolicy(2.0), "bulk": TenantPolicy(1.0, "batch")},
    )
    base.update(overrides)
    return Policy(**base)  # type: ignore[arg-type]


def make_core(policy: Policy | None = None, engines: int = 1, kv: int = 200_000,
              predictor: OutputPredictor | None = None) -> DecisionCore:
    specs = [(EngineSpec(f"e{i}", kv, PROFILE.prefill_a, PROFILE.prefill_b, PROFILE.decode_c, PROFILE.decode_d,
                         PROFILE.decode_e), StepTimeModel(PROFILE)) for i in range(engines)]
    return DecisionCore(policy or make_policy(), specs, predictor or OutputLengthPredictor(torch_expert=False),
                        ForecastErrors())
