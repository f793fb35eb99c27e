"""Pedestrians: on sidewalks and crosswalks, walking, waiting at the kerb, or standing (alone or in pairs)."""
from __future__ import annotations

import math
from typing import List

import numpy as np

from datasets.synthetic.geometry import arc_length, headings
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.sidewalks import pedestrian_path
from datasets.synthetic.trajectory import DT, Trajectory


def spawn_pedestrians(rng, road_map: RoadMap, prof: SyntheticProfile, steps: int) -> List[Trajectory]:
    if not road_map.nodes:
        return []
    count = int(rng.integers(prof.pedestrians[0], prof.pedestrians[1] + 1))
    out: List[Trajectory] = []
    for _ in range(count):
        path, s_cross = pedestrian_path(rng, road_map)
        ps = arc_length(path)
        heading_path = headings(path)
        standing = rng.random() < prof.pedestrian_standing_prob
        if standing:             # waiting, talking, at a shop window
            speed = np.zeros(steps)
        else:
            jogger = rng.random() < 0.03
            base = float(rng.uniform(2.4, 3.2)) if jogger else float(np.clip(rng.normal(1.35, 0.2), 0.7, 2.0))
            wobble = 1.0 + 0.08 * np.sin(2 * math.pi * np.arange(steps) / rng.uniform(15, 40) + rng.uniform(0, 6.3))
            speed = base * wobble
        s0 = float(rng.uniform(0.0, 0.6 * ps[-1]))
        if s_cross is not None and speed[0] > 0 and rng.random() < 0.4 and s0 < s_cross:
            # wait at the kerb before crossing
            travelled = s0 + np.cumsum(speed) * DT
            k = int(np.searchsorted(travelled, s_cross - 0.3))
            dwell = int(rng.integers(10, 60))
            speed = speed.copy()
            speed[k:k + dwell] = 0.0
        s = np.minimum(s0 + np.concatenate([[0.0], np.cumsum(speed[:-1]) * DT]), ps[-1])
        speed = np.where(s >= ps[-1] - 1e-9, 0.0, speed)   # the path ends: stand there
        x = np.interp(s, ps, path[:, 0])
        y = np.interp(s, ps, path[:, 1])
        h = np.interp(s, ps, heading_path)
        if standing:
            h = np.full(steps, float(rng.uniform(-math.pi, math.pi)))
        vel = np.stack([speed * np.cos(h), speed * np.sin(h)], 1)
        members = [np.stack([x, y], 1)]
        if rng.random() < 0.2:   # a companion walking beside
            side = np.stack([-np.sin(h), np.cos(h)], 1) * rng.uniform(0.6, 0.9) * (1.0 if rng.random() < 0.5 else -1.0)
            members.append(members[0] + side)
        for pos in members:
            out.append(Trajectory(object_type='pedestrian', position=pos, heading=h.copy(), velocity=vel.copy(),
                                  dynamic=bool(speed.max() > 0)))
    return out


def crosswalk_occupancy(road_map: RoadMap, pedestrians: List[Trajectory], steps: int) -> np.ndarray:
    """busy [steps, n_crosswalks]: a pedestrian stands on (or within 0.5 m of) the crossing."""
    n_cw = len(road_map.crosswalks)
    if n_cw == 0 or not pedestrians:
        return np.zeros((steps, n_cw), dtype=bool)
    pos = np.stack([p.position for p in pedestrians], 1)   # [T, P, 2]
    busy = np.zeros((steps, n_cw), dtype=bool)
    for c, cw in enumerate(road_map.crosswalks):
        rel = pos - cw.origin
        along = rel[..., 0] * cw.along[0] + rel[..., 1] * cw.along[1]
        across = rel[..., 1] * cw.along[0] - rel[..., 0] * cw.along[1]
        busy[:, c] = ((np.abs(along) < cw.half_length + 0.5) & (np.abs(across) < cw.half_width + 0.5)).any(1)
    return busy

