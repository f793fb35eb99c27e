"""Pedestrians: on sidewalks and crosswalks, walking, waiting at the kerb, or standing (alone or in pairs)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic.geometry import arc_length, headings
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.sidewalks import pedestrian_path
from datasets.synthetic.trajectory import DT, Trajectory

CROSSING_LENGTH = 14.0   # metres a pedestrian wants of walk time ahead when stepping off the kerb
PATH_MARGIN = 4.5        # metres along a crosswalk either side of a vehicle's path within which it waits for a
                         # pedestrian (its own lane and the next one): not for someone on the far side of the road


def spawn_pedestrians(rng, road_map: RoadMap, prof: SyntheticProfile, steps: int,
                      walk: Optional[Dict[int, np.ndarray]] = None) -> List[Trajectory]:
    """Pedestrians over `steps` steps; at signalised crosswalks (walk[crosswalk] [steps]) they wait at the kerb
    for their walk phase."""
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
        if standing and s_cross is not None:   # people stand on the sidewalk, not on the crossing
            s0 = min(s0, max(s_cross - 2.0, 0.0))
        if s_cross is not None and speed[0] > 0 and s0 < s_cross:
            signal = _walk_signal(road_map, path, ps, s_cross, walk)
            travelled = s0 + np.cumsum(speed) * DT
            k = int(np.searchsorted(travelled, s_cross - 0.3))
            if signal is not None:
                speed = _wait_for_walk(speed, k, signal, CROSSING_LENGTH / float(speed.mean()))
            elif rng.random() < 0.4:   # wait at the kerb for a gap in traffic
                speed = speed.copy()
                speed[k:k + int(rng.integers(10, 60))] = 0.0
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


def _walk_signal(road_map: RoadMap, path: np.ndarray, ps: np.ndarray, s_cross: float,
                 walk: Optional[Dict[int, np.ndarray]]) -> Optional[np.ndarray]:
    """walk [steps] of the signalised crosswalk the path steps onto at s_cross (None: not signalised)."""
    if not walk:
        return None
    on = np.array([np.interp(s_cross + 2.0, ps, path[:, 0]), np.interp(s_cross + 2.0, ps, path[:, 1])])
    for c in walk:
        cw = road_map.crosswalks[c]
        rel = on - cw.origin
        if (abs(float(rel @ cw.along)) < cw.half_length + 1.0
                and abs(float(rel[1] * cw.along[0] - rel[0] * cw.along[1])) < cw.half_width + 1.5):
            return walk[c]
    return None


def _wait_for_walk(speed: np.ndarray, k: int, walk: np.ndarray, crossing_s: float) -> np.ndarray:
    """speed [T] with a stop at the kerb from step k until the walk phase leaves time to cross (crossing_s)."""
    steps = len(speed)
    if k >= steps:
        return speed
    need = min(int(math.ceil(crossing_s / DT)), steps)
    closed = np.concatenate([[0], np.cumsum(~walk)])
    # start at t when the signal shows walk for the next `need` steps (or until the end of the scene)
    ends = np.minimum(np.arange(steps) + need, steps)
    ok = np.flatnonzero((closed[ends] - closed[:steps] == 0)[k:])
    start = k + int(ok[0]) if len(ok) else steps
    if start > k:
        speed = speed.copy()
        speed[k:start] = 0.0
    return speed


def crosswalk_occupancy(road_map: RoadMap, pedestrians: List[Trajectory], steps: int,
                        crossings: Optional[List[Tuple[int, float]]] = None) -> np.ndarray:
    """busy [steps, crossings]: a pedestrian is on the crossing, or walks within 0.5 m of it, within
    PATH_MARGIN of where a lane crosses it (crossings: (crosswalk, position along it), see LaneTable.crossings;
    None: each whole crosswalk). Someone standing at the kerb (waiting for the signal or a gap, or just standing)
    does not hold traffic, and a driver does not wait for someone on the far side of the road."""
    if crossings is None:
        crossings = [(c, None) for c in range(len(road_map.crosswalks))]
    busy = np.zeros((steps, len(crossings)), dtype=bool)
    if not crossings or not pedestrians:
        return busy
    on_crosswalk: Dict[int, List[Tuple[int, Optional[float]]]] = {}
    for k, (c, at) in enumerate(crossings):
        on_crosswalk.setdefault(c, []).append((k, at))
    pos = np.stack([p.position for p in pedestrians], 1)   # [T, P, 2]
    walking = np.stack([np.abs(p.velocity).sum(1) > 0.0 for p in pedestrians], 1)   # [T, P]
    for c, lanes in on_crosswalk.items():
        cw = road_map.crosswalks[c]
        rel = pos - cw.origin
        signed = rel[..., 0] * cw.along[0] + rel[..., 1] * cw.along[1]
        along = np.abs(signed)
        across = np.abs(rel[..., 1] * cw.along[0] - rel[..., 0] * cw.along[1])
        near = (along < cw.half_length + 0.5) & (across < cw.half_width + 0.5)
        on_road = (along < cw.half_length - 1.5) & (across < cw.half_width)
        holding = (near & walking) | on_road                 # [T, P]
        if not holding.any():
            continue
        ks = [k for k, _ in lanes]
        if lanes[0][1] is None:
            busy[:, ks] = holding.any(1)[:, None]
        else:
            at = np.array([a for _, a in lanes])
            busy[:, ks] = (holding[..., None] & (np.abs(signed[..., None] - at) < PATH_MARGIN)).any(1)
    return busy
