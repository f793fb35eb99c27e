"""Traffic signals: a hidden two-phase plan per signalised node, shared by all agents of an approach.

Phase 0 (the arms along the node's first axis) is green from the start of the cycle for its green time, then
after an all-red clearance phase 1 is green until the next clearance. Amber is not modelled as a phase: a
driver who cannot stop comfortably when the light turns red drives on (see `car_following`).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from datasets.synthetic.lane_graph import LaneTable
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.trajectory import DT

ALL_RED = 2.0   # seconds between one phase's red and the other's green


def red_lights(road_map: RoadMap, table: LaneTable, steps: int) -> Optional[np.ndarray]:
    """red [steps, lanes]: the signal of that connector lane shows red at that step; None without signals."""
    if not road_map.signals:
        return None
    t = np.arange(steps) * DT
    red = np.zeros((steps, table.total), dtype=bool)
    for lane_id, lane in road_map.lanes.items():
        if lane.signal_group < 0:
            continue
        cycle, green0, offset = road_map.signals[lane.node]
        x = (t + offset) % cycle
        if lane.signal_group == 0:
            green = x < green0
        else:
            green = (x >= green0 + ALL_RED) & (x < cycle - ALL_RED)
        red[:, table.index[lane_id]] = ~green
    return red
