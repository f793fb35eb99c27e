"""Objects that do not move: cars parked along the kerb, and static objects beside the road."""
from __future__ import annotations

import math
from typing import List

import numpy as np

from datasets.synthetic.geometry import arc_length
from datasets.synthetic.profiles import SyntheticProfile, weighted_pick
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.sidewalks import sidewalk_point
from datasets.synthetic.trajectory import Trajectory

STATIC_TYPES = (('static', 0.35), ('background', 0.2), ('construction', 0.15), ('riderless_bicycle', 0.25),
                 ('unknown', 0.05))


def place_static_objects(rng, road_map: RoadMap, prof: SyntheticProfile, steps: int) -> List[Trajectory]:
    out: List[Trajectory] = []

    def still(object_type: str, p: np.ndarray, h: float) -> Trajectory:
        return Trajectory(object_type=object_type, position=np.tile(p, (steps, 1)), heading=np.full(steps, h),
                          velocity=np.zeros((steps, 2)), dynamic=False)

    for line, _ in road_map.curbs:
        if rng.random() >= prof.parked_side_prob:
            continue
        s = arc_length(line)
        spot = float(rng.uniform(0.0, max(s[-1] - 30.0, 1.0)))
        for _ in range(int(rng.integers(1, 5))):
            if spot > s[-1]:
                break
            p = np.array([np.interp(spot, s, line[:, 0]), np.interp(spot, s, line[:, 1])])
            i = min(int(np.searchsorted(s, spot)), len(line) - 1)
            d = line[i] - line[max(i - 1, 0)] if i > 0 else line[1] - line[0]
            out.append(still('vehicle', p, math.atan2(d[1], d[0]) + float(rng.normal(0, 0.03))))
            spot += float(rng.uniform(6.0, 8.5))
    types = [t for t, _ in STATIC_TYPES]
    weights = [w for _, w in STATIC_TYPES]
    for _ in range(int(rng.integers(prof.static_objects[0], prof.static_objects[1] + 1))):
        p, h = sidewalk_point(rng, road_map)
        outward = np.array([math.sin(h), -math.cos(h)])   # right of the kerb line points away from the road
        p = p + outward * rng.uniform(0.0, 3.0)
        kind = types[weighted_pick(rng, weights)]
        out.append(still(kind, p, float(rng.uniform(-math.pi, math.pi))))
    return out

