"""The time base of a synthetic scene and the simulated object handed from the traffic model to the observer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DT = 0.1                   # seconds per step (10 Hz, as Argoverse 2)
NUM_STEPS = 110            # 11 s recorded per scenario
NUM_HISTORICAL_STEPS = 50  # the first 5 s are the observed history
WARMUP_STEPS = 40          # simulated before the recording starts, so spawned traffic has settled


@dataclass
class Trajectory:
    """One simulated object over all steps: position [T, 2], heading [T], velocity [T, 2] (scene frame)."""
    object_type: str
    position: np.ndarray
    heading: np.ndarray
    velocity: np.ndarray
    dynamic: bool = True          # False for parked cars and static objects
    is_av: bool = False
    turns: int = 0                # intersection turns on its route (makes a focal agent interesting)

