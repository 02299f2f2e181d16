"""Predictors for the decision core: output length (mixture of experts), step times (online RLS per
engine) and forecast-error accounting.

Pure and deterministic for a seed: no clock reads, no I/O, no asyncio; time is passed in. Importing
this package does not import torch: only the MLP expert's trainer does, lazily.
"""
from controlplane.predict.errors import KINDS, ErrorStats, ForecastErrors
from controlplane.predict.output_length import EXPERTS, OutputLengthPredictor, Prediction
from controlplane.predict.step_time import StepTimeModel

__all__ = [
    "EXPERTS",
    "KINDS",
    "ErrorStats",
    "ForecastErrors",
    "OutputLengthPredictor",
    "Prediction",
    "StepTimeModel",
]
