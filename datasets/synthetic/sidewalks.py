"""Walking paths on the sidewalks of an urban network (for pedestrians) and kerb-side points (static objects)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from datasets.synthetic.geometry import resample_spacing
from datasets.synthetic.road_network import DENSE_SPACING, SIDEWALK_OFFSET, ArmGeometry, RoadMap


def pedestrian_path(rng: np.random.Generator, road_map: RoadMap) -> Tuple[np.ndarray, Optional[float]]:
    """A walking path [K, 2] (scene frame, 0.5 m spacing) on sidewalks, maybe across one crosswalk.

    Returns (path, s_cross) where s_cross is the arc length at which the path steps onto a crosswalk (None
    when it does not cross). Paths follow the sidewalk lines of an intersection's arms and cut its corners.
    """
    node = int(rng.integers(len(road_map.nodes)))
    c, arms = road_map.nodes[node]
    count = len(arms)
    k = int(rng.integers(count))

    def side_point(arm: ArmGeometry, t: float, left: bool) -> np.ndarray:
        lat = (arm.half_left + SIDEWALK_OFFSET) if left else -(arm.half_right + SIDEWALK_OFFSET)
        return c + arm.u * t + arm.n * lat

    def far(arm: ArmGeometry) -> float:
        return float(min(arm.reach, arm.cross_dist + rng.uniform(8, 45)))

    mode = rng.random()
    a = arms[k]
    pts: List[np.ndarray] = []
    s_cross = None
    if mode < 0.2 and a.crosswalk >= 0:
        # cross arm a itself and walk back out on its other side
        pts = [side_point(a, far(a), False), side_point(a, a.cross_dist, False)]
        cross_from = len(pts) - 1
        pts += [side_point(a, a.cross_dist, True), side_point(a, far(a), True)]
    else:
        left_side = rng.random() < 0.5
        step = 1 if left_side else -1
        b = arms[(k + step) % count]
        pts = [side_point(a, far(a), left_side), side_point(a, a.cross_dist, left_side),
               side_point(b, b.cross_dist, not left_side)]
        cross_from = None
        if b.crosswalk >= 0 and rng.random() < 0.6 and count > 2:
            cross_from = len(pts) - 1
            nxt = arms[(k + 2 * step) % count]
            pts += [side_point(b, b.cross_dist, left_side), side_point(nxt, nxt.cross_dist, not left_side),
                    side_point(nxt, far(nxt), not left_side)]
        else:
            pts.append(side_point(b, far(b), not left_side))
    if rng.random() < 0.5:
        pts = pts[::-1]
        if cross_from is not None:
            cross_from = len(pts) - 2 - cross_from
    poly = np.array(pts)
    seg = np.hypot(*np.diff(poly, axis=0).T)
    if cross_from is not None:
        s_cross = float(seg[:cross_from].sum())
    dense = resample_spacing(poly, DENSE_SPACING)
    return road_map.warp(dense), s_cross


def sidewalk_point(rng: np.random.Generator, road_map: RoadMap) -> Tuple[np.ndarray, float]:
    """A random point beside a road (for static objects) and the road heading there."""
    line, _ = road_map.curbs[int(rng.integers(len(road_map.curbs)))]
    i = int(rng.integers(len(line) - 1))
    frac = rng.random()
    p = line[i] * (1 - frac) + line[i + 1] * frac
    d = line[i + 1] - line[i]
    return p, math.atan2(d[1], d[0])

