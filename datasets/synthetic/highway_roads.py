"""Highway road networks: a divided multi-lane curved road with exit and entry ramps (an auxiliary lane tapering
into the carriageway)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from datasets.synthetic.geometry import offset, resample_spacing, unit_normals
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import (DENSE_SPACING, Lane, RoadMap, choice, IdAllocator, smoothstep, split_interval,
                                             link, link_lane_grid, random_ground)


@dataclass
class _Alignment:
    """The highway's reference line (median centre), sampled every DENSE_SPACING metres: arc length s [N], points
    ref [N, 2] and left unit normals [N, 2] in the scene frame; lane segment cuts (metres and sample indices)."""
    s: np.ndarray
    ref: np.ndarray
    normals: np.ndarray
    cuts: List[float]
    idx_cuts: List[int]

    @property
    def n_pieces(self) -> int:
        return len(self.cuts) - 1

    def center(self, i0: int, i1: int, lat) -> np.ndarray:
        """Points i0..i1 of the line at lateral offset ``lat`` (metres, left positive; a number or a function of s)."""
        lat_arr = lat(self.s[i0:i1 + 1]) if callable(lat) else lat
        return self.ref[i0:i1 + 1] + self.normals[i0:i1 + 1] * np.reshape(lat_arr, (-1, 1))


def build_highway(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    ids = IdAllocator(rng)
    length = float(rng.uniform(*prof.highway_length))
    s, ref, normals = _curved_reference(rng, prof, length)
    n_lanes = choice(rng, prof.highway_lanes)
    w = float(rng.uniform(*prof.highway_lane_width))
    g = float(rng.uniform(*prof.highway_median))
    cuts = [0.0] + split_interval(rng, 0.0, length, *prof.lane_segment_length) + [length]
    line = _Alignment(s, ref, normals, cuts, [int(round(c / DENSE_SPACING)) for c in cuts])

    lanes: Dict[int, Lane] = {}
    grids = {forward: _carriageway(ids, lanes, line, forward, n_lanes, w, g) for forward in (True, False)}
    areas, curbs = _carriageway_areas(ids, line, n_lanes, w, g)
    o_right = -(g / 2 + (n_lanes - 0.5) * w)       # lateral offset of the forward carriageway's rightmost lane
    rightmost = grids[True][n_lanes - 1]
    exit_piece = None
    if rng.random() < prof.exit_ramp_prob and line.n_pieces >= 6:
        exit_piece = int(rng.integers(line.n_pieces // 2, line.n_pieces - 2))
        areas.append(_exit_ramp(rng, ids, lanes, line, length, exit_piece, rightmost, o_right, w))
    if rng.random() < prof.entry_ramp_prob and line.n_pieces >= 6:
        hi = (exit_piece - 3) if exit_piece is not None else line.n_pieces - 3
        if hi > 2:
            merge_piece = int(rng.integers(2, hi))
            areas.append(_entry_ramp(rng, ids, lanes, line, merge_piece, rightmost, o_right, w))
    road_map = RoadMap(lanes=lanes, crosswalks=[], drivable_areas=areas, curbs=curbs, kind='highway')
    road_map.ground = random_ground(rng)
    return road_map


def _curved_reference(rng, prof: SyntheticProfile, length: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reference line of ``length`` metres whose curvature is a sum of 1-3 Gaussian bends, centred on the origin:
    arc length [N], points [N, 2], left unit normals [N, 2]."""
    s = np.arange(0.0, length + 1e-9, DENSE_SPACING)
    curvature = np.zeros_like(s)
    for _ in range(int(rng.integers(1, 4))):
        amp = rng.uniform(0.3, 1.0) * prof.highway_max_curvature * (1.0 if rng.random() < 0.5 else -1.0)
        curvature += amp * np.exp(-0.5 * ((s - rng.uniform(0, length)) / rng.uniform(40, 140)) ** 2)
    theta = float(rng.uniform(-math.pi, math.pi)) + np.concatenate([[0.0], np.cumsum(curvature[:-1] * DENSE_SPACING)])
    ref = np.stack([np.cumsum(np.cos(theta)), np.cumsum(np.sin(theta))], axis=1) * DENSE_SPACING
    ref -= ref[len(ref) // 2]
    return s, ref, unit_normals(ref)


def _carriageway(ids, lanes: Dict[int, Lane], line: _Alignment, forward: bool, n_lanes: int, w: float,
                 g: float) -> List[List[int]]:
    """The lane segments of one direction (forward: right of the reference line), added to ``lanes`` and linked;
    returns the grid of their ids, [lane k from the median][piece along the direction of travel]."""
    sign = -1.0 if forward else 1.0
    grid: List[List[int]] = [[] for _ in range(n_lanes)]
    order = range(line.n_pieces) if forward else range(line.n_pieces - 1, -1, -1)
    # each lane's full-length centre line once; its segments are copies of slices of it (no shared points)
    full = [line.ref + line.normals * (sign * (g / 2 + (k + 0.5) * w)) for k in range(n_lanes)]
    for p in order:
        for k in range(n_lanes):
            pts = full[k][line.idx_cuts[p]:line.idx_cuts[p + 1] + 1]
            lane = Lane(id=ids('lane'), center=pts.copy() if forward else pts[::-1].copy(), width=w,
                        lane_type='VEHICLE', left_mark='SOLID_YELLOW' if k == 0 else 'DASHED_WHITE',
                        right_mark='DASHED_WHITE' if k < n_lanes - 1 else 'SOLID_WHITE')
            lanes[lane.id] = lane
            grid[k].append(lane.id)
    link_lane_grid(lanes, grid)
    return grid


def _carriageway_areas(ids, line: _Alignment, n_lanes: int, w: float,
                       g: float) -> Tuple[List[Tuple[int, np.ndarray]], List[Tuple[np.ndarray, float]]]:
    """Drivable area and shoulder curb of both carriageways (points every 10 m)."""
    areas: List[Tuple[int, np.ndarray]] = []
    curbs: List[Tuple[np.ndarray, float]] = []
    step = int(10 / DENSE_SPACING)
    ref, normals = line.ref[::step], line.normals[::step]
    for forward in (True, False):
        sign = -1.0 if forward else 1.0
        inner = ref + normals * sign * (g / 2 - 0.3)
        outer = ref + normals * sign * (g / 2 + n_lanes * w + 1.5)
        areas.append((ids('area'), np.concatenate([inner, outer[::-1]])))
        shoulder = ref + normals * sign * (g / 2 + n_lanes * w + 1.2)
        curbs.append((shoulder if forward else shoulder[::-1].copy(), 0.0))
    return areas, curbs


def _exit_ramp(rng, ids, lanes: Dict[int, Lane], line: _Alignment, length: float, exit_piece: int,
               rightmost: List[int], o_right: float, w: float) -> Tuple[int, np.ndarray]:
    """An exit ramp diverging to the right of the forward carriageway at ``exit_piece``; returns its area."""
    i0 = line.idx_cuts[exit_piece]
    radius = float(rng.uniform(160, 280))
    ramp_len = min(130.0, length - line.cuts[exit_piece] - 1.0)
    i1 = min(len(line.s) - 1, i0 + int(ramp_len / DENSE_SPACING))
    lat = (lambda x, x0=line.s[i0], r=radius: o_right - (x - x0) ** 2 / (2 * r))
    pts = resample_spacing(line.center(i0, i1, lat), DENSE_SPACING)
    ramp_ids = _chain_lanes(ids, lanes, pts, w, 'ramp', pieces=2)
    link(lanes, rightmost[exit_piece - 1], ramp_ids[0])
    return ids('area'), _corridor(pts, w / 2 + 1.0)


def _entry_ramp(rng, ids, lanes: Dict[int, Lane], line: _Alignment, merge_piece: int, rightmost: List[int],
                o_right: float, w: float) -> Tuple[int, np.ndarray]:
    """An entry ramp joining an auxiliary lane along pieces ``merge_piece`` and ``merge_piece + 1`` that tapers into
    the rightmost lane (gated: merging vehicles wait for a gap); returns the ramp's area."""
    radius = float(rng.uniform(160, 280))
    cut = line.idx_cuts
    i_start = cut[merge_piece]
    i_from = max(0, i_start - int(120 / DENSE_SPACING))
    lat = (lambda x, x0=line.s[i_start], r=radius: o_right - w - (x0 - x) ** 2 / (2 * r))
    ramp_pts = line.center(i_from, i_start, lat)
    ramp_ids = _chain_lanes(ids, lanes, ramp_pts, w, 'ramp', pieces=2)
    aux_a = Lane(id=ids('lane'), center=line.center(cut[merge_piece], cut[merge_piece + 1], o_right - w),
                 width=w, lane_type='VEHICLE', left_mark='DASHED_WHITE', right_mark='SOLID_WHITE', kind='aux')
    x0, x1 = line.s[cut[merge_piece + 1]], line.s[cut[merge_piece + 2]]
    taper = (lambda x, x0=x0, x1=x1: o_right - w + w * smoothstep((x - x0) / (x1 - x0)))
    aux_b = Lane(id=ids('lane'), center=line.center(cut[merge_piece + 1], cut[merge_piece + 2], taper),
                 width=w, lane_type='VEHICLE', left_mark='DASHED_WHITE', right_mark='SOLID_WHITE', kind='aux',
                 gated=True, conflicts=[rightmost[merge_piece + 1]])
    for aux, q in ((aux_a, merge_piece), (aux_b, merge_piece + 1)):
        lanes[aux.id] = aux
        aux.left_neighbor = aux.left_same = rightmost[q]
        lanes[rightmost[q]].right_neighbor = aux.id
    link(lanes, ramp_ids[-1], aux_a.id)
    link(lanes, aux_a.id, aux_b.id)
    link(lanes, aux_b.id, rightmost[merge_piece + 2])
    return ids('area'), _corridor(ramp_pts, w / 2 + 1.0)


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

