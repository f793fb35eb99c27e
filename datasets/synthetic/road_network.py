"""Road network of a synthetic scene: lane segments with Argoverse 2 topology, crossings, drivable areas.

Everything lives in a local *scene frame* (metres, the network centred near the origin); the Argoverse 2 writer
rotates and translates to city coordinates. Lane segments have dense centre lines (0.5 m spacing) and AV2
topology (predecessors/successors/neighbours), plus simulation hints (which connectors need a stop, which are
signalised, which lanes conflict). `grid_roads` and `highway_roads` build the two kinds of network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic.geometry import arc_length
from datasets.synthetic.profiles import weighted_pick

DENSE_SPACING = 0.5        # metres between the internal centre-line points used by the simulator
CENTERLINE_SPACING = 2.0   # AV2 centre lines have <= 2 m between points
BOUNDARY_SPACING = (10.0, 4.0)   # AV2 lane boundaries are sparse: (nearly straight road pieces, curved lanes)
SIDEWALK_OFFSET = 2.5      # sidewalk centre beyond the road edge
CONFLICT_DISTANCE = 2.2    # connector centre lines closer than this cross or merge


@dataclass
class Lane:
    """One AV2 lane segment. `center` is [K, 2] in the scene frame, in driving direction."""
    id: int
    center: np.ndarray
    width: float
    lane_type: str                      # VEHICLE / BIKE
    left_mark: str
    right_mark: str
    is_intersection: bool = False
    predecessors: List[int] = field(default_factory=list)
    successors: List[int] = field(default_factory=list)
    left_neighbor: Optional[int] = None   # as written to the json (may point at the opposite direction)
    right_neighbor: Optional[int] = None
    left_same: Optional[int] = None       # same-direction vehicle neighbour a lane change may go to
    right_same: Optional[int] = None
    kind: str = 'road'                    # road / pocket / connector / ramp / aux
    turn: str = ''                        # connectors: straight / left / right
    node: int = -1                        # connectors: index of their intersection
    needs_stop: bool = False              # connector entered from a stop-controlled arm
    gated: bool = False                   # entering needs the `conflicts` lanes to be clear
    conflicts: List[int] = field(default_factory=list)
    conflict_at: Dict[int, float] = field(default_factory=dict)   # conflicting lane -> arc length on it where
                                                                  # the two paths meet (absent: its whole length)
    crosswalks: List[int] = field(default_factory=list)  # crosswalk indices this lane crosses
    crosswalk_at: Dict[int, float] = field(default_factory=dict)  # crosswalk -> where along its walking
                                                                  # direction the lane crosses it (m)
    signal_group: int = -1                # signalised connectors: the signal phase that lets it go

    @property
    def length(self) -> float:
        return float(arc_length(self.center)[-1])


@dataclass
class Crosswalk:
    """A pedestrian crossing: two parallel edges ([2, 2] each) and a local frame for inside tests."""
    id: int
    edge1: np.ndarray
    edge2: np.ndarray
    origin: np.ndarray      # centre [2]
    along: np.ndarray       # unit vector along the walking direction [2]
    half_length: float      # half of the walking length
    half_width: float       # half of the stripe width (between the edges)


@dataclass
class ArmGeometry:
    """One road leaving an intersection, in the node's frame (pre-warp)."""
    u: np.ndarray           # unit vector pointing away from the node
    n: np.ndarray           # left normal of u
    half_left: float        # road half width on the left of u
    half_right: float
    reach: float            # how far sidewalks extend along u (metres from the node)
    cross_dist: float = 0.0  # crosswalk centre distance from the node along u
    stop_dist: float = 0.0   # where the lanes meet the intersection
    crosswalk: int = -1      # index into RoadMap.crosswalks, -1 when none


@dataclass
class RoadMap:
    lanes: Dict[int, Lane]
    crosswalks: List[Crosswalk]
    drivable_areas: List[Tuple[int, np.ndarray]]
    curbs: List[Tuple[np.ndarray, float]]     # (polyline [K,2], heading offset) along road edges for parked cars
    kind: str
    nodes: List[Tuple[np.ndarray, List[ArmGeometry]]] = field(default_factory=list)
    warp_params: Optional[Tuple[float, float, float, float]] = None  # amplitude, wavelength, phase_x, phase_y
    ground: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # z0, slope_x, slope_y, undulation
    signals: Dict[int, Tuple[float, float, float]] = field(default_factory=dict)  # node -> cycle (s),
    # green time of phase 0 (s), offset (s); phase 1 is green after phase 0 (less the all-red clearance)
    arterial: Optional[np.ndarray] = None     # unit vector of the busier, signal-coordinated road direction (grid)

    def along_arterial(self, points: np.ndarray) -> bool:
        """Whether a lane polyline [K, 2] runs along the arterial direction (False without one)."""
        if self.arterial is None:
            return False
        d = points[-1] - points[0]
        return abs(float(d @ self.arterial)) > 0.7 * float(np.hypot(d[0], d[1]))

    def warp(self, points: np.ndarray) -> np.ndarray:
        """Smooth deformation of the scene (identity when unset); bends straight grid roads into curves."""
        if self.warp_params is None:
            return points
        amp, wavelength, phase_x, phase_y = self.warp_params
        k = 2 * math.pi / wavelength
        out = points.copy()
        out[:, 0] += amp * np.sin(k * points[:, 1] + phase_x)
        out[:, 1] += amp * np.sin(k * points[:, 0] + phase_y)
        return out

    def ground_height(self, points: np.ndarray) -> np.ndarray:
        """Ground elevation [K] under scene-frame points [K, 2] (lane boundaries and areas carry it in AV2)."""
        z0, gx, gy, und = self.ground
        wave = np.sin(points[:, 0] / 37.0) * np.cos(points[:, 1] / 53.0)
        return z0 + gx * points[:, 0] + gy * points[:, 1] + und * wave


class IdAllocator:
    """Map element ids in AV2-like ranges, increasing with small random gaps (unique within a map)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.next = {'lane': int(rng.integers(1e8, 4e8)), 'crosswalk': int(rng.integers(1e7, 2e7)),
                     'area': int(rng.integers(2e7, 3e7))}

    def __call__(self, kind: str) -> int:
        value = self.next[kind]
        self.next[kind] = value + int(self.rng.integers(1, 40))
        return value


def choice(rng: np.random.Generator, weighted):
    return weighted[weighted_pick(rng, [w for _, w in weighted])][0]


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def split_interval(rng, start: float, end: float, low: float = 18.0, high: float = 42.0) -> List[float]:
    """Interior cut positions that split [start, end] into pieces of roughly low..high metres."""
    length = end - start
    if length <= high:
        return []
    count = max(2, int(round(length / rng.uniform(low + 4, high - 4))))
    cuts = np.linspace(start, end, count + 1)[1:-1]
    jitter = (length / count) * 0.2
    return list(cuts + rng.uniform(-jitter, jitter, size=len(cuts)))


def random_ground(rng: np.random.Generator) -> Tuple[float, float, float, float]:
    return (float(rng.uniform(-15, 40)), float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03)),
            float(rng.uniform(0.0, 1.5)))


def link(lanes: Dict[int, Lane], a: int, b: int) -> None:
    if b not in lanes[a].successors:
        lanes[a].successors.append(b)
    if a not in lanes[b].predecessors:
        lanes[b].predecessors.append(a)


def link_lane_grid(lanes: Dict[int, Lane], grid: List[List[int]]) -> None:
    """Topology of one direction of a road: ``grid[k][q]`` is the lane id of lane k (0: leftmost) in piece q along
    the road; each lane links to its next piece, and side by side lanes are each other's same-direction
    neighbours."""
    for k, row in enumerate(grid):
        for q in range(len(row) - 1):
            link(lanes, row[q], row[q + 1])
        if k > 0:
            for q, lane_id in enumerate(row):
                lanes[lane_id].left_neighbor = lanes[lane_id].left_same = grid[k - 1][q]
                lanes[grid[k - 1][q]].right_neighbor = lanes[grid[k - 1][q]].right_same = lane_id
