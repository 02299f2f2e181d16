"""What the core says about its refusals: the reasons' messages, and the admission inputs as a
decision record (the `decisions` table's `inputs`, from which replay/audit.py re-derives each
decision)."""
from __future__ import annotations

from controlplane.core.admission import AdmissionInputs
from controlplane.core.events import shallow_dict

# the refusals that say the engines are loaded (not that the request could never meet its SLO)
LOAD_REASONS = ("ttft_unattainable", "tpot_unattainable", "protects_running")

REJECT_MESSAGES = {
    "over_share": "the tenant's SLO tier is above its fair share while another tier waits",
    "ttft_unattainable": "the time-to-first-token SLO cannot be met at the current load",
    "tpot_unattainable": "the time-per-output-token SLO cannot be met at the current load",
    "protects_running": "admitting the request would push running requests past their SLO",
    "deadline_unattainable": "the request's deadline cannot be met at the current load",
    "no_healthy_engine": "no healthy engine is available",
}


def admission_record(inputs: AdmissionInputs, cls_name: str) -> dict[str, object]:
    """The inputs of an admission decision as its record's `inputs` (what the audit re-derives it from)."""
    record = shallow_dict(inputs)
    record["engines"] = [shallow_dict(e) for e in inputs.engines]
    record["slo_class"] = cls_name
    return record
