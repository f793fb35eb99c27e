"""Highway road networks: a divided multi-lane curved road with exit and entry ramps (an auxiliary lane tapering
into the carriageway)."""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np

from datasets.synthetic.geometry import offset, resample_spacing, unit_normals
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import (DENSE_SPACING, Lane, RoadMap, choice, IdAllocator, smoothstep, split_interval,
                                             link, link_lane_grid, random_ground)


def build_highway(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    ids = IdAllocator(rng)
    length = float(rng.uniform(*prof.highway_length))
    s = np.arange(0.0, length + 1e-9, DENSE_SPACING)
    curvature = np.zeros_like(s)
    for _ in range(int(rng.integers(1, 4))):
        amp = rng.uniform(0.3, 1.0) * prof.highway_max_curvature * (1.0 if rng.random() < 0.5 else -1.0)
        curvature += amp * np.exp(-0.5 * ((s - rng.uniform(0, length)) / rng.uniform(40, 140)) ** 2)
    theta = float(rng.uniform(-math.pi, math.pi)) + np.concatenate([[0.0], np.cumsum(curvature[:-1] * DENSE_SPACING)])
    ref = np.stack([np.cumsum(np.cos(theta)), np.cumsum(np.sin(theta))], axis=1) * DENSE_SPACING
    ref -= ref[len(ref) // 2]
    normals = unit_normals(ref)
    n_lanes = choice(rng, prof.highway_lanes)
    w = float(rng.uniform(*prof.highway_lane_width))
    g = float(rng.uniform(*prof.highway_median))

    cuts = [0.0] + split_interval(rng, 0.0, length, *prof.lane_segment_length) + [length]
    idx_cuts = [int(round(c / DENSE_SPACING)) for c in cuts]
    n_pieces = len(cuts) - 1

    def center(i0: int, i1: int, lat) -> np.ndarray:
        lat_arr = lat(s[i0:i1 + 1]) if callable(lat) else lat
        return ref[i0:i1 + 1] + normals[i0:i1 + 1] * np.reshape(lat_arr, (-1, 1))

    lanes: Dict[int, Lane] = {}
    grids = {}
    for forward in (True, False):
        sign = -1.0 if forward else 1.0
        grid: List[List[int]] = [[] for _ in range(n_lanes)]
        order = range(n_pieces) if forward else range(n_pieces - 1, -1, -1)
        # each lane's full-length centre line once; its segments are copies of slices of it (no shared points)
        full = [ref + normals * (sign * (g / 2 + (k + 0.5) * w)) for k in range(n_lanes)]
        for p in order:
            for k in range(n_lanes):
                pts = full[k][idx_cuts[p]:idx_cuts[p + 1] + 1]
                lane = Lane(id=ids('lane'), center=pts.copy() if forward else pts[::-1].copy(), width=w,
                            lane_type='VEHICLE', left_mark='SOLID_YELLOW' if k == 0 else 'DASHED_WHITE',
                            right_mark='DASHED_WHITE' if k < n_lanes - 1 else 'SOLID_WHITE')
                lanes[lane.id] = lane
                grid[k].append(lane.id)
        link_lane_grid(lanes, grid)
        grids[forward] = grid

    areas: List[Tuple[int, np.ndarray]] = []
    curbs: List[Tuple[np.ndarray, float]] = []
    step = int(10 / DENSE_SPACING)
    for forward in (True, False):
        sign = -1.0 if forward else 1.0
        inner = ref[::step] + normals[::step] * sign * (g / 2 - 0.3)
        outer = ref[::step] + normals[::step] * sign * (g / 2 + n_lanes * w + 1.5)
        areas.append((ids('area'), np.concatenate([inner, outer[::-1]])))
        shoulder = ref[::step] + normals[::step] * sign * (g / 2 + n_lanes * w + 1.2)
        curbs.append((shoulder if forward else shoulder[::-1].copy(), 0.0))

    o_right = -(g / 2 + (n_lanes - 0.5) * w)
    rightmost = grids[True][n_lanes - 1]
    # exit ramp: diverges to the right of the forward carriageway
    exit_piece = None
    if rng.random() < prof.exit_ramp_prob and n_pieces >= 6:
        exit_piece = int(rng.integers(n_pieces // 2, n_pieces - 2))
        i0 = idx_cuts[exit_piece]
        radius = float(rng.uniform(160, 280))
        ramp_len = min(130.0, length - cuts[exit_piece] - 1.0)
        i1 = min(len(s) - 1, i0 + int(ramp_len / DENSE_SPACING))
        lat = (lambda x, x0=s[i0], r=radius: o_right - (x - x0) ** 2 / (2 * r))
        pts = center(i0, i1, lat)
        pts = resample_spacing(pts, DENSE_SPACING)
        prev = rightmost[exit_piece - 1]
        ramp_ids = _chain_lanes(ids, lanes, pts, w, 'ramp', pieces=2)
        link(lanes, prev, ramp_ids[0])
        areas.append((ids('area'), _corridor(pts, w / 2 + 1.0)))
    # entry ramp: joins an auxiliary lane that tapers into the rightmost lane
    if rng.random() < prof.entry_ramp_prob and n_pieces >= 6:
        hi = (exit_piece - 3) if exit_piece is not None else n_pieces - 3
        if hi > 2:
            merge_piece = int(rng.integers(2, hi))
            radius = float(rng.uniform(160, 280))
            i_start = idx_cuts[merge_piece]
            i_from = max(0, i_start - int(120 / DENSE_SPACING))
            lat = (lambda x, x0=s[i_start], r=radius: o_right - w - (x0 - x) ** 2 / (2 * r))
            ramp_pts = center(i_from, i_start, lat)
            ramp_ids = _chain_lanes(ids, lanes, ramp_pts, w, 'ramp', pieces=2)
            aux_a = Lane(id=ids('lane'), center=center(idx_cuts[merge_piece], idx_cuts[merge_piece + 1], o_right - w),
                         width=w, lane_type='VEHICLE', left_mark='DASHED_WHITE', right_mark='SOLID_WHITE', kind='aux')
            x0, x1 = s[idx_cuts[merge_piece + 1]], s[idx_cuts[merge_piece + 2]]
            taper = (lambda x, x0=x0, x1=x1: o_right - w + w * smoothstep((x - x0) / (x1 - x0)))
            aux_b = Lane(id=ids('lane'), center=center(idx_cuts[merge_piece + 1], idx_cuts[merge_piece + 2], taper),
                         width=w, lane_type='VEHICLE', left_mark='DASHED_WHITE', right_mark='SOLID_WHITE', kind='aux',
                         gated=True, conflicts=[rightmost[merge_piece + 1]])
            for aux, q in ((aux_a, merge_piece), (aux_b, merge_piece + 1)):
                lanes[aux.id] = aux
                aux.left_neighbor = aux.left_same = rightmost[q]
                lanes[rightmost[q]].right_neighbor = aux.id
            link(lanes, ramp_ids[-1], aux_a.id)
            link(lanes, aux_a.id, aux_b.id)
            link(lanes, aux_b.id, rightmost[merge_piece + 2])
            areas.append((ids('area'), _corridor(ramp_pts, w / 2 + 1.0)))
    road_map = RoadMap(lanes=lanes, crosswalks=[], drivable_areas=areas, curbs=curbs, kind='highway')
    road_map.ground = random_ground(rng)
    return road_map


def _chain_lanes(ids, lanes: Dict[int, Lane], pts: np.ndarray, width: float, kind: str, pieces: int) -> List[int]:
    """Split a dense centre line into `pieces` consecutive linked lane segments."""
    bounds = np.linspace(0, len(pts) - 1, pieces + 1).round().astype(int)
    out = []
    for i0, i1 in zip(bounds[:-1], bounds[1:]):
        lane = Lane(id=ids('lane'), center=pts[i0:i1 + 1].copy(), width=width, lane_type='VEHICLE',
                    left_mark='SOLID_WHITE', right_mark='SOLID_WHITE', kind=kind)
        lanes[lane.id] = lane
        if out:
            link(lanes, out[-1], lane.id)
        out.append(lane.id)
    return out


def _corridor(pts: np.ndarray, half_width: float) -> np.ndarray:
    sparse = resample_spacing(pts, 10.0)
    return np.concatenate([offset(sparse, half_width), offset(sparse, -half_width)[::-1]])

