"""The calibrated simulated engine: a pure model (`SimCore`) and its asyncio `Engine` (`SimEngine`)."""
from engine_adapter.sim.core import SimCore, SimEvent, SimRequest
from engine_adapter.sim.engine import SimEngine
from engine_adapter.sim.profile import DEFAULT_PROFILE, SimProfile, load_profile, zero_delay

__all__ = ["DEFAULT_PROFILE", "SimCore", "SimEngine", "SimEvent", "SimProfile", "SimRequest", "load_profile",
           "zero_delay"]
