"""Set for the whole suite (and the processes it starts) before anything of sluice is imported."""
import os

# every @value record a real frozen dataclass: an assignment to one raises (fairness/value.py)
os.environ["SLUICE_FROZEN_VALUES"] = "1"
