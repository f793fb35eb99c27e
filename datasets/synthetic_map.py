"""Road networks for the synthetic scenario generator, and their Argoverse 2 map json.

Everything here lives in a local *scene frame* (metres, the network centred near the origin); the writer in
`datasets.synthetic` rotates and translates to city coordinates. A network is a set of lane segments with
dense centre lines (0.5 m spacing) and AV2 topology (predecessors/successors/neighbours), plus pedestrian
crossings, drivable areas, and simulation hints (which connector lanes need a stop, which lanes conflict).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic_geometry import (arc_length, batch_normals, batch_resample, line_intersection, offset,
                                         resample_spacing, smooth_connector, unit_normals)
from datasets.synthetic_profiles import SyntheticProfile, weighted_pick

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


class _Ids:
    """Map element ids in AV2-like ranges, increasing with small random gaps (unique within a map)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.next = {'lane': int(rng.integers(1e8, 4e8)), 'crosswalk': int(rng.integers(1e7, 2e7)),
                     'area': int(rng.integers(2e7, 3e7))}

    def __call__(self, kind: str) -> int:
        value = self.next[kind]
        self.next[kind] = value + int(self.rng.integers(1, 40))
        return value


def _choice(rng: np.random.Generator, weighted):
    return weighted[weighted_pick(rng, [w for _, w in weighted])][0]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _split_interval(rng, start: float, end: float, low: float = 18.0, high: float = 42.0) -> List[float]:
    """Interior cut positions that split [start, end] into pieces of roughly low..high metres."""
    length = end - start
    if length <= high:
        return []
    count = max(2, int(round(length / rng.uniform(low + 4, high - 4))))
    cuts = np.linspace(start, end, count + 1)[1:-1]
    jitter = (length / count) * 0.2
    return list(cuts + rng.uniform(-jitter, jitter, size=len(cuts)))


# ----------------------------------------------------------------------------------------------------------
# Urban grid
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Road:
    a: int                       # node index at s = 0
    b: int                       # node index at s = length, -1 for a road leaving the scene
    start: np.ndarray
    d: np.ndarray                # unit direction a -> b
    length: float
    n_fwd: int                   # lanes travelling a -> b
    n_bwd: int
    width: float
    median: float
    bike_width: float            # 0 when no bike lanes
    edge_mark: str
    lanes_fwd: List[List[int]] = field(default_factory=list)   # [lane k][piece]; pocket/bike separately
    lanes_bwd: List[List[int]] = field(default_factory=list)
    bike_fwd: List[int] = field(default_factory=list)
    bike_bwd: List[int] = field(default_factory=list)
    pocket_fwd: Optional[int] = None   # pocket before node b
    pocket_bwd: Optional[int] = None   # pocket before node a

    @property
    def n(self) -> np.ndarray:
        return np.array([-self.d[1], self.d[0]])

    def half_width(self, forward: bool) -> float:
        count = self.n_fwd if forward else self.n_bwd
        return self.median / 2 + count * self.width + self.bike_width


def _arm_of(road: _Road, node: int) -> Tuple[np.ndarray, float, float]:
    """(u, half_left, half_right) of `road` seen from `node` looking outward."""
    if node == road.a:
        return road.d.copy(), road.half_width(False), road.half_width(True)
    return -road.d, road.half_width(True), road.half_width(False)


def build_grid(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    ids = _Ids(rng)
    nx, ny = _choice(rng, prof.grid_shapes)
    if rng.random() < 0.5:
        nx, ny = ny, nx
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*prof.block_length, size=nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(*prof.block_length, size=ny - 1))])
    node_pos = np.array([[x, y] for x in xs for y in ys])
    node_pos += rng.uniform(-prof.node_jitter, prof.node_jitter, (nx * ny, 2))
    node_pos -= node_pos.mean(0)

    def node_index(i, j):
        return i * ny + j

    # --- roads: internal edges, then roads leaving the scene ---
    road_ends: List[Tuple[int, int, np.ndarray]] = []  # (a, b, direction-or-None)
    for i in range(nx):
        for j in range(ny):
            if i + 1 < nx:
                road_ends.append((node_index(i, j), node_index(i + 1, j), None))
            if j + 1 < ny:
                road_ends.append((node_index(i, j), node_index(i, j + 1), None))
    degree = np.zeros(nx * ny, dtype=int)
    for a, b, _ in road_ends:
        degree[a] += 1
        degree[b] += 1
    for i in range(nx):
        for j in range(ny):
            k = node_index(i, j)
            outward = []
            if i == 0:
                outward.append(math.pi)
            if i == nx - 1:
                outward.append(0.0)
            if j == 0:
                outward.append(-math.pi / 2)
            if j == ny - 1:
                outward.append(math.pi / 2)
            rng.shuffle(outward)
            if outward and degree[k] + len(outward) >= 4 and rng.random() < prof.dangling_drop_prob:
                outward = outward[1:]          # a missing arm makes a T-junction; nodes keep >= 3 arms
            for angle in outward:
                jitter = math.radians(rng.uniform(-prof.arm_angle_jitter_deg, prof.arm_angle_jitter_deg))
                road_ends.append((k, -1, np.array([math.cos(angle + jitter), math.sin(angle + jitter)])))

    roads: List[_Road] = []
    lanes_per_dir = prof.lanes_per_direction
    for a, b, direction in road_ends:
        start = node_pos[a]
        if direction is None:
            vec = node_pos[b] - start
            length = float(np.hypot(*vec))
            d = vec / length
        else:
            d = direction
            length = float(rng.uniform(*prof.dangling_length))
        n_fwd = _choice(rng, lanes_per_dir)
        n_bwd = n_fwd if rng.random() < 0.8 else _choice(rng, lanes_per_dir)
        width = float(rng.uniform(*prof.lane_width))
        divided = rng.random() < prof.divided_prob
        median = float(rng.uniform(width + 0.2, width + 1.5)) if divided else 0.0
        bike = float(rng.uniform(*prof.bike_lane_width)) if rng.random() < prof.bike_lane_prob else 0.0
        roads.append(_Road(a=a, b=b, start=start, d=d, length=length, n_fwd=n_fwd, n_bwd=n_bwd, width=width,
                           median=median, bike_width=bike,
                           edge_mark='SOLID_WHITE' if rng.random() < 0.5 else 'NONE'))

    # --- intersection geometry: arms, corners, crosswalk and stop distances ---
    crosswalks: List[Crosswalk] = []
    node_arms: List[List[Tuple[int, ArmGeometry]]] = [[] for _ in range(nx * ny)]
    for r_idx, road in enumerate(roads):
        for node in (road.a, road.b):
            if node < 0:
                continue
            u, hl, hr = _arm_of(road, node)
            reach = road.length / 2 if road.b >= 0 else road.length
            node_arms[node].append((r_idx, ArmGeometry(u=u, n=np.array([-u[1], u[0]]), half_left=hl,
                                                       half_right=hr, reach=reach)))
    for node, arms in enumerate(node_arms):
        arms.sort(key=lambda item: math.atan2(item[1].u[1], item[1].u[0]))
        count = len(arms)
        corner_t = np.zeros((count, 2))  # per arm: corner distance on its right side, on its left side
        for k in range(count):
            arm_a, arm_b = arms[k][1], arms[(k + 1) % count][1]
            gap = (math.atan2(arm_b.u[1], arm_b.u[0]) - math.atan2(arm_a.u[1], arm_a.u[0])) % (2 * math.pi)
            pa = arm_a.n * (arm_a.half_left + SIDEWALK_OFFSET)
            pb = -arm_b.n * (arm_b.half_right + SIDEWALK_OFFSET)
            hit = line_intersection(pa, arm_a.u, pb, arm_b.u) if gap < math.radians(150) else None
            if hit is None or hit[0] < 0 or hit[1] < 0:
                ta = arm_b.half_right + SIDEWALK_OFFSET
                tb = arm_a.half_left + SIDEWALK_OFFSET
            else:
                ta, tb = hit
            corner_t[k, 1] = ta
            corner_t[(k + 1) % count, 0] = tb
        cw_width = float(rng.uniform(3.0, 4.5))
        for k, (r_idx, arm) in enumerate(arms):
            arm.cross_dist = max(float(corner_t[k].max()), arm.half_left, arm.half_right, 5.0) + cw_width / 2 + 0.3
            arm.stop_dist = arm.cross_dist + cw_width / 2 + 1.0
            if rng.random() < prof.crosswalk_prob:
                c = node_pos[node]
                lat_right, lat_left = -(arm.half_right + 1.0), arm.half_left + 1.0
                t0, t1 = arm.cross_dist - cw_width / 2, arm.cross_dist + cw_width / 2
                edge1 = np.stack([c + arm.u * t0 + arm.n * lat_right, c + arm.u * t0 + arm.n * lat_left])
                edge2 = np.stack([c + arm.u * t1 + arm.n * lat_right, c + arm.u * t1 + arm.n * lat_left])
                arm.crosswalk = len(crosswalks)
                crosswalks.append(Crosswalk(id=ids('crosswalk'), edge1=edge1, edge2=edge2,
                                            origin=c + arm.u * arm.cross_dist + arm.n * (lat_left + lat_right) / 2,
                                            along=arm.n.copy(), half_length=(lat_left - lat_right) / 2,
                                            half_width=cw_width / 2))

    # --- lanes along roads ---
    lanes: Dict[int, Lane] = {}
    curbs: List[Tuple[np.ndarray, float]] = []
    stop_dist = {}
    for node, arms in enumerate(node_arms):
        for r_idx, arm in arms:
            stop_dist[(r_idx, node)] = arm.stop_dist
    for r_idx, road in enumerate(roads):
        s0 = stop_dist[(r_idx, road.a)]
        s1 = road.length - (stop_dist[(r_idx, road.b)] if road.b >= 0 else 0.0)
        if s1 - s0 < 12.0:
            raise RuntimeError('synthetic grid: road too short between intersections')
        _build_road_lanes(rng, prof, ids, road, s0, s1, lanes)
        for forward in (True, False):
            side = -1.0 if forward else 1.0
            edge = road.half_width(forward) + 1.0
            ts = np.linspace(s0, s1, max(2, int((s1 - s0) / 5) + 1))
            if not forward:
                ts = ts[::-1]
            curbs.append((road.start + np.outer(ts, road.d) + road.n * side * edge, 0.0))

    # --- intersections: connector lanes with conflicts ---
    controls = [_choice(rng, prof.node_control_weights) for _ in range(nx * ny)]
    for node, arms in enumerate(node_arms):
        _build_connectors(rng, prof, ids, node, node_pos[node], arms, roads, lanes, crosswalks, controls[node])

    # --- drivable areas ---
    areas: List[Tuple[int, np.ndarray]] = []
    for r_idx, road in enumerate(roads):
        s0 = stop_dist[(r_idx, road.a)] - 0.5
        s1 = road.length - (stop_dist[(r_idx, road.b)] - 0.5 if road.b >= 0 else 0.0)
        ts = np.linspace(s0, s1, max(2, int((s1 - s0) / 10) + 1))
        right = road.start + np.outer(ts, road.d) - road.n * road.half_width(True)
        left = road.start + np.outer(ts[::-1], road.d) + road.n * road.half_width(False)
        areas.append((ids('area'), np.concatenate([right, left])))
    for node, arms in enumerate(node_arms):
        c = node_pos[node]
        ring = []
        for _, arm in arms:
            ring.append(c + arm.u * arm.stop_dist - arm.n * arm.half_right)
            ring.append(c + arm.u * arm.stop_dist + arm.n * arm.half_left)
        areas.append((ids('area'), np.array(ring)))

    amp = float(rng.uniform(*prof.warp_amplitude))
    road_map = RoadMap(lanes=lanes, crosswalks=crosswalks, drivable_areas=areas, curbs=curbs, kind='grid',
                       nodes=[(node_pos[k], [arm for _, arm in node_arms[k]]) for k in range(nx * ny)],
                       warp_params=(amp, float(rng.uniform(*prof.warp_wavelength)),
                                    float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))))
    road_map.ground = _random_ground(rng)
    _apply_warp(road_map)
    return road_map


def _random_ground(rng) -> Tuple[float, float, float, float]:
    return (float(rng.uniform(-15, 40)), float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03)),
            float(rng.uniform(0.0, 1.5)))


def _apply_warp(road_map: RoadMap) -> None:
    """Warp every geometric element once, after all topology has been built on the straight grid."""
    if road_map.warp_params is None or road_map.warp_params[0] == 0.0:
        return
    warp = road_map.warp
    lanes = list(road_map.lanes.values())
    counts = np.cumsum([len(lane.center) for lane in lanes])[:-1]
    for lane, center in zip(lanes, np.split(warp(np.concatenate([lane.center for lane in lanes])), counts)):
        lane.center = center
    for cw in road_map.crosswalks:
        cw.edge1, cw.edge2 = warp(cw.edge1), warp(cw.edge2)
        corners = np.concatenate([cw.edge1, cw.edge2])
        cw.origin = corners.mean(0)
        along = (cw.edge1[1] + cw.edge2[1]) / 2 - (cw.edge1[0] + cw.edge2[0]) / 2
        cw.half_length = float(np.hypot(*along)) / 2
        cw.along = along / (2 * cw.half_length)
    road_map.drivable_areas = [(i, warp(poly)) for i, poly in road_map.drivable_areas]
    road_map.curbs = [(warp(line), h) for line, h in road_map.curbs]


def _lane_piece(road: _Road, s_a: float, s_b: float, lateral, reverse: bool) -> np.ndarray:
    """Dense centre line of a straight road piece between s_a and s_b at `lateral` (scalar or callable of s)."""
    count = max(2, int(math.ceil((s_b - s_a) / DENSE_SPACING)) + 1)
    s = s_a + (s_b - s_a) / (count - 1) * np.arange(count)
    base = road.start + road.n * (0.0 if callable(lateral) else lateral)
    pts = base + s[:, None] * road.d
    if callable(lateral):
        pts += lateral(s)[:, None] * road.n
    return pts[::-1].copy() if reverse else pts


def _build_road_lanes(rng, prof, ids, road: _Road, s0: float, s1: float, lanes: Dict[int, Lane]) -> None:
    """Lane segments of both directions of one road between s0 and s1 (same cuts for all lanes)."""
    w, g = road.width, road.median
    usable = s1 - s0
    pocket_len = float(rng.uniform(22.0, 32.0))
    want_fwd = road.b >= 0 and g > 0 and rng.random() < prof.turn_pocket_prob
    want_bwd = g > 0 and rng.random() < prof.turn_pocket_prob
    if want_fwd and want_bwd and usable < 2 * pocket_len + 20:
        want_bwd = False
    if usable < pocket_len + 16:
        want_fwd = want_bwd = False
    cuts = [s0, s1]
    if want_fwd:
        cuts.append(s1 - pocket_len)
    if want_bwd:
        cuts.append(s0 + pocket_len)
    cuts = sorted(cuts)
    fine = [cuts[0]]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        fine.extend(_split_interval(rng, lo, hi, 24.0, 52.0))
        fine.append(hi)
    cuts = fine
    pieces = list(zip(cuts[:-1], cuts[1:]))
    n_pieces = len(pieces)
    undivided = g == 0
    inner_mark = 'DOUBLE_SOLID_YELLOW' if undivided else 'SOLID_YELLOW'

    def make_direction(forward: bool):
        count = road.n_fwd if forward else road.n_bwd
        sign = -1.0 if forward else 1.0
        order = range(n_pieces) if forward else range(n_pieces - 1, -1, -1)
        grid: List[List[int]] = [[] for _ in range(count)]
        bikes: List[int] = []
        for p in order:
            s_a, s_b = pieces[p]
            approach = (p == n_pieces - 1) if forward else (p == 0)
            dash = 'SOLID_WHITE' if approach else 'DASHED_WHITE'
            for k in range(count):
                lat = sign * (g / 2 + (k + 0.5) * w)
                left_mark = inner_mark if k == 0 else dash
                right_mark = dash if k < count - 1 else ('SOLID_WHITE' if road.bike_width else road.edge_mark)
                lane = Lane(id=ids('lane'), center=_lane_piece(road, s_a, s_b, lat, not forward), width=w,
                            lane_type='VEHICLE', left_mark=left_mark, right_mark=right_mark)
                lanes[lane.id] = lane
                grid[k].append(lane.id)
            if road.bike_width:
                lat = sign * (g / 2 + count * w + road.bike_width / 2)
                lane = Lane(id=ids('lane'), center=_lane_piece(road, s_a, s_b, lat, not forward),
                            width=road.bike_width, lane_type='BIKE', left_mark='SOLID_WHITE', right_mark='NONE')
                lanes[lane.id] = lane
                bikes.append(lane.id)
        # topology along and across
        for k in range(count):
            for q in range(n_pieces - 1):
                _link(lanes, grid[k][q], grid[k][q + 1])
            for q in range(n_pieces):
                if k > 0:
                    lanes[grid[k][q]].left_neighbor = lanes[grid[k][q]].left_same = grid[k - 1][q]
                    lanes[grid[k - 1][q]].right_neighbor = lanes[grid[k - 1][q]].right_same = grid[k][q]
        for q in range(len(bikes)):
            if q + 1 < len(bikes):
                _link(lanes, bikes[q], bikes[q + 1])
            lanes[bikes[q]].left_neighbor = grid[count - 1][q]
            lanes[grid[count - 1][q]].right_neighbor = bikes[q]
        return grid, bikes

    road.lanes_fwd, road.bike_fwd = make_direction(True)
    road.lanes_bwd, road.bike_bwd = make_direction(False)
    if undivided:  # AV2 links the two inner lanes of an undivided road as (opposite-direction) neighbours
        for q in range(n_pieces):
            fwd, bwd = road.lanes_fwd[0][q], road.lanes_bwd[0][n_pieces - 1 - q]
            lanes[fwd].left_neighbor = bwd
            lanes[bwd].left_neighbor = fwd

    taper = min(12.0, pocket_len * 0.5)
    if want_fwd:
        s_a, s_b = pieces[-1]
        base = -(g / 2 + 0.5 * w)
        lat = (lambda s, s_a=s_a, base=base: base + w * _smoothstep((s - s_a) / taper))
        road.pocket_fwd = _add_pocket(ids, lanes, _lane_piece(road, s_a, s_b, lat, False), w,
                                      road.lanes_fwd[0][-2], road.lanes_fwd[0][-1])
    if want_bwd:
        s_a, s_b = pieces[0]
        base = g / 2 + 0.5 * w
        lat = (lambda s, s_b=s_b, base=base: base - w * _smoothstep((s_b - s) / taper))
        road.pocket_bwd = _add_pocket(ids, lanes, _lane_piece(road, s_a, s_b, lat, True), w,
                                      road.lanes_bwd[0][-2], road.lanes_bwd[0][-1])


def _add_pocket(ids, lanes, center, width, upstream: int, beside: int) -> int:
    """A left-turn pocket branching off `upstream` and running left of `beside` up to the node."""
    pocket = Lane(id=ids('lane'), center=center, width=width, lane_type='VEHICLE', left_mark='SOLID_YELLOW',
                  right_mark='DASH_SOLID_WHITE', kind='pocket', right_neighbor=beside)
    lanes[pocket.id] = pocket
    _link(lanes, upstream, pocket.id)
    lanes[beside].left_neighbor = pocket.id
    lanes[beside].left_mark = 'DASH_SOLID_WHITE'
    return pocket.id


def _link(lanes: Dict[int, Lane], a: int, b: int) -> None:
    if b not in lanes[a].successors:
        lanes[a].successors.append(b)
    if a not in lanes[b].predecessors:
        lanes[b].predecessors.append(a)


def _arm_lanes(road: _Road, node: int, incoming: bool) -> List[Tuple[int, str]]:
    """Lanes (id, kind) of `road` that enter (incoming) or leave `node`, ordered left to right."""
    at_a = node == road.a
    travel_fwd = (not at_a) if incoming else at_a   # incoming at b travels forward
    grid = road.lanes_fwd if travel_fwd else road.lanes_bwd
    bikes = road.bike_fwd if travel_fwd else road.bike_bwd
    pick = -1 if incoming else 0
    out: List[Tuple[int, str]] = []
    if incoming:
        pocket = road.pocket_fwd if travel_fwd else road.pocket_bwd
        if pocket is not None:
            out.append((pocket, 'pocket'))
    out.extend((lane_ids[pick], 'lane') for lane_ids in grid)
    if bikes:
        out.append((bikes[pick], 'bike'))
    return out


def _build_connectors(rng, prof, ids, node: int, center: np.ndarray, arms, roads: List[_Road],
                      lanes: Dict[int, Lane], crosswalks: List[Crosswalk], control: str) -> None:
    """Lanes through one intersection: straight, left and right turns (bike lanes straight and right)."""
    if control == 'minor_stop':
        widths = [roads[r].n_fwd + roads[r].n_bwd for r, _ in arms]
        major = max(widths)
        stop_arm = [w < major or (all(x == major for x in widths) and k % 2 == 1) for k, w in enumerate(widths)]
    else:
        stop_arm = [control == 'all_stop'] * len(arms)
    connectors: List[int] = []
    all_pairs: List[Tuple[int, int, str, int]] = []
    for k_in, (r_in, arm_in) in enumerate(arms):
        incoming = _arm_lanes(roads[r_in], node, incoming=True)
        if not incoming:
            continue
        travel = -arm_in.u
        in_heading = math.atan2(travel[1], travel[0])
        regular_in = [lid for lid, kind in incoming if kind == 'lane']
        pocket_in = [lid for lid, kind in incoming if kind == 'pocket']
        bike_in = [lid for lid, kind in incoming if kind == 'bike']
        exits = {}   # turn -> (regular out lanes, bike out lanes)
        for k_out, (r_out, arm_out) in enumerate(arms):
            if k_out == k_in:
                continue
            rel = (math.atan2(arm_out.u[1], arm_out.u[0]) - in_heading + math.pi) % (2 * math.pi) - math.pi
            turn = 'straight' if abs(rel) < math.radians(45) else ('left' if rel > 0 else 'right')
            if turn in exits:     # two arms in the same sector: keep the sharper one as that turn
                continue
            outgoing = _arm_lanes(roads[r_out], node, incoming=False)
            exits[turn] = ([lid for lid, kind in outgoing if kind == 'lane'],
                           [lid for lid, kind in outgoing if kind == 'bike'])
        pairs: List[Tuple[int, int, str]] = []
        if 'straight' in exits:
            out = exits['straight'][0]
            pairs += [(lid, out[min(k, len(out) - 1)], 'straight') for k, lid in enumerate(regular_in)]
        if 'left' in exits:
            pairs.append(((pocket_in or regular_in)[0], exits['left'][0][0], 'left'))
        if 'right' in exits:
            pairs.append((regular_in[-1], exits['right'][0][-1], 'right'))
        if pocket_in and 'left' not in exits:   # no left exit after all: the pocket joins the next best one
            turn = 'straight' if 'straight' in exits else 'right'
            pairs.append((pocket_in[0], exits[turn][0][0], turn))
        # without a straight exit (stem of a T), inner lanes turn too: left half left, right half right
        served = {src for src, _, _ in pairs}
        for k, lid in enumerate(regular_in):
            if lid in served:
                continue
            turn = 'left' if ('left' in exits and (k < len(regular_in) / 2 or 'right' not in exits)) else 'right'
            out = exits[turn][0]
            # left turns fill exit lanes from the left, right turns from the right
            target = out[min(k, len(out) - 1)] if turn == 'left' else out[max(0, len(out) - len(regular_in) + k)]
            pairs.append((lid, target, turn))
        for turn in ('straight', 'right'):
            if bike_in and turn in exits:
                out_regular, out_bike = exits[turn]
                # a bike lane that ends at the node feeds the kerb-side traffic lane
                pairs.append((bike_in[0], (out_bike or out_regular[-1:])[0], turn))
        all_pairs.extend((src, dst, turn, k_in) for src, dst, turn in pairs)
    # every lane leaving the node must be reachable (else traffic would appear from nowhere inside the map):
    # an unserved exit lane is fed by a copy of the connector into its nearest served neighbour
    for r_out, arm_out in arms:
        out = [lid for lid, kind in _arm_lanes(roads[r_out], node, incoming=False) if kind == 'lane']
        served = {dst: (src, turn, k_in) for src, dst, turn, k_in in all_pairs}
        for k, lid in enumerate(out):
            if lid in served:
                continue
            near = sorted((abs(j - k), j) for j, other in enumerate(out) if other in served)
            if near:
                src, turn, k_in = served[out[near[0][1]]]
                all_pairs.append((src, lid, turn, k_in))
    for src, dst, turn, k_in in all_pairs:
        a, b = lanes[src], lanes[dst]
        pa, pb = a.center[-1], b.center[0]
        ha = math.atan2(*(a.center[-1] - a.center[-2])[::-1])
        hb = math.atan2(*(b.center[1] - b.center[0])[::-1])
        conn = Lane(id=ids('lane'), center=smooth_connector(pa, ha, pb, hb, DENSE_SPACING),
                    width=(a.width + b.width) / 2, lane_type=a.lane_type, left_mark='NONE',
                    right_mark='NONE', is_intersection=True, kind='connector', turn=turn, node=node,
                    needs_stop=stop_arm[k_in], gated=True)
        lanes[conn.id] = conn
        _link(lanes, src, conn.id)
        _link(lanes, conn.id, dst)
        connectors.append(conn.id)
    _mark_conflicts(lanes, connectors, crosswalks)


def _mark_conflicts(lanes: Dict[int, Lane], connectors: List[int], crosswalks: List[Crosswalk]) -> None:
    """Connector pairs whose centre lines come close (cross or merge) conflict, unless they share their entry
    lane (then one simply follows the other); connectors also record the crosswalks they pass over."""
    if not connectors:
        return
    # 3 m sampling still finds every crossing: at worst both samples lie 1.5 m from it, 2.1 m apart
    sampled = [lanes[c].center[::6] for c in connectors]
    owner = np.repeat(np.arange(len(connectors)), [len(p) for p in sampled])
    pts = np.concatenate(sampled)
    dx = pts[:, None, 0] - pts[None, :, 0]
    dy = pts[:, None, 1] - pts[None, :, 1]
    d2 = dx * dx + dy * dy
    rows, cols = np.nonzero(d2 < CONFLICT_DISTANCE ** 2)
    n = len(connectors)
    # arc length of every sampled point along its own connector (points are 6 dense steps apart)
    sizes = np.array([len(p) for p in sampled])
    along = (np.arange(len(pts)) - np.repeat(np.cumsum(sizes) - sizes, sizes)) * (6 * DENSE_SPACING)
    # per connector pair (i, j): the first and last close point along j
    key = owner[rows] * n + owner[cols]
    order = np.argsort(key, kind='stable')
    key, at = key[order], along[cols][order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1])
    first_at = np.minimum.reduceat(at, starts)
    last_at = np.maximum.reduceat(at, starts)
    for code, first, last in zip(key[starts].tolist(), first_at.tolist(), last_at.tolist()):
        i, j = divmod(code, n)
        ci, cj = connectors[i], connectors[j]
        if i != j and lanes[ci].predecessors != lanes[cj].predecessors:
            lanes[ci].conflicts.append(cj)
            # where on cj the paths meet: a vehicle on cj is clear once its rear has passed the last close
            # point of a crossing; merging paths (same exit lane) converge till their end, there it is enough
            # that the other vehicle is past the first close point, after that it is simply followed
            merging = lanes[ci].successors == lanes[cj].successors
            lanes[ci].conflict_at[cj] = first + 3.0 if merging else last
    for idx, cw in enumerate(crosswalks):
        rel = pts - cw.origin
        along = rel[:, 0] * cw.along[0] + rel[:, 1] * cw.along[1]
        across = rel[:, 1] * cw.along[0] - rel[:, 0] * cw.along[1]
        inside = (np.abs(along) < cw.half_length) & (np.abs(across) < cw.half_width + 1.0)
        for i in np.unique(owner[inside]):
            lanes[connectors[i]].crosswalks.append(idx)


# ----------------------------------------------------------------------------------------------------------
# Highway
# ----------------------------------------------------------------------------------------------------------

def build_highway(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    ids = _Ids(rng)
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
    n_lanes = _choice(rng, prof.highway_lanes)
    w = float(rng.uniform(*prof.highway_lane_width))
    g = float(rng.uniform(*prof.highway_median))

    cuts = [0.0] + _split_interval(rng, 0.0, length, 26.0, 48.0) + [length]
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
        for p in order:
            for k in range(n_lanes):
                pts = center(idx_cuts[p], idx_cuts[p + 1], sign * (g / 2 + (k + 0.5) * w))
                lane = Lane(id=ids('lane'), center=pts if forward else pts[::-1].copy(), width=w,
                            lane_type='VEHICLE', left_mark='SOLID_YELLOW' if k == 0 else 'DASHED_WHITE',
                            right_mark='DASHED_WHITE' if k < n_lanes - 1 else 'SOLID_WHITE')
                lanes[lane.id] = lane
                grid[k].append(lane.id)
        for k in range(n_lanes):
            for q in range(n_pieces - 1):
                _link(lanes, grid[k][q], grid[k][q + 1])
            for q in range(n_pieces):
                if k > 0:
                    lanes[grid[k][q]].left_neighbor = lanes[grid[k][q]].left_same = grid[k - 1][q]
                    lanes[grid[k - 1][q]].right_neighbor = lanes[grid[k - 1][q]].right_same = grid[k][q]
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
        _link(lanes, prev, ramp_ids[0])
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
            taper = (lambda x, x0=x0, x1=x1: o_right - w + w * _smoothstep((x - x0) / (x1 - x0)))
            aux_b = Lane(id=ids('lane'), center=center(idx_cuts[merge_piece + 1], idx_cuts[merge_piece + 2], taper),
                         width=w, lane_type='VEHICLE', left_mark='DASHED_WHITE', right_mark='SOLID_WHITE', kind='aux',
                         gated=True, conflicts=[rightmost[merge_piece + 1]])
            for aux, q in ((aux_a, merge_piece), (aux_b, merge_piece + 1)):
                lanes[aux.id] = aux
                aux.left_neighbor = aux.left_same = rightmost[q]
                lanes[rightmost[q]].right_neighbor = aux.id
            _link(lanes, ramp_ids[-1], aux_a.id)
            _link(lanes, aux_a.id, aux_b.id)
            _link(lanes, aux_b.id, rightmost[merge_piece + 2])
            areas.append((ids('area'), _corridor(ramp_pts, w / 2 + 1.0)))
    road_map = RoadMap(lanes=lanes, crosswalks=[], drivable_areas=areas, curbs=curbs, kind='highway')
    road_map.ground = _random_ground(rng)
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
            _link(lanes, out[-1], lane.id)
        out.append(lane.id)
    return out


def _corridor(pts: np.ndarray, half_width: float) -> np.ndarray:
    sparse = resample_spacing(pts, 10.0)
    return np.concatenate([offset(sparse, half_width), offset(sparse, -half_width)[::-1]])


# ----------------------------------------------------------------------------------------------------------
# Pedestrian paths (urban only)
# ----------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------
# AV2 json
# ----------------------------------------------------------------------------------------------------------

def _points_json(points_xy: np.ndarray, z: np.ndarray) -> List[dict]:
    xyz = np.round(np.column_stack([points_xy, z]), 2).tolist()
    return [{'x': x, 'y': y, 'z': zz} for x, y, zz in xyz]


def _split_points_json(points_xy: np.ndarray, z: np.ndarray, counts: np.ndarray) -> List[List[dict]]:
    rows = _points_json(points_xy, z)
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def map_to_av2_json(road_map: RoadMap, to_city) -> dict:
    """The log_map_archive dict (AV2 schema, keys in AV2 order) with coordinates mapped by `to_city`.

    to_city: function [K, 2] scene -> [K, 2] city coordinates. Ground heights are taken in the scene frame.
    Centre lines get <= 2 m point spacing and z = 0 (as in the AV2 files), boundaries 4-10 m and ground z.
    """
    areas = {}
    for area_id, poly in sorted(road_map.drivable_areas, key=lambda item: item[0]):
        areas[str(area_id)] = {'area_boundary': _points_json(to_city(poly), road_map.ground_height(poly)),
                               'id': area_id}
    lane_ids = sorted(road_map.lanes)
    lane_list = [road_map.lanes[i] for i in lane_ids]
    centers = [lane.center for lane in lane_list]
    c_pts, c_counts = batch_resample(centers, CENTERLINE_SPACING)
    # road pieces curve gently (radius >= ~250 m: < 5 cm chord error at 10 m); connectors, tapers, ramps do not
    spacing = [BOUNDARY_SPACING[0] if lane.kind == 'road' else BOUNDARY_SPACING[1] for lane in lane_list]
    b_pts, b_counts = batch_resample(centers, spacing)
    half = np.repeat([lane.width / 2 for lane in lane_list], b_counts)[:, None] * batch_normals(b_pts, b_counts)
    left, right = b_pts + half, b_pts - half
    c_json = _split_points_json(to_city(c_pts), np.zeros(len(c_pts)), c_counts)
    l_json = _split_points_json(to_city(left), road_map.ground_height(left), b_counts)
    r_json = _split_points_json(to_city(right), road_map.ground_height(right), b_counts)
    lanes = {}
    for k, (lane_id, lane) in enumerate(zip(lane_ids, lane_list)):
        lanes[str(lane_id)] = {
            'centerline': c_json[k],
            'id': lane_id,
            'is_intersection': lane.is_intersection,
            'lane_type': lane.lane_type,
            'left_lane_boundary': l_json[k],
            'left_lane_mark_type': lane.left_mark,
            'left_neighbor_id': lane.left_neighbor,
            'predecessors': list(lane.predecessors),
            'right_lane_boundary': r_json[k],
            'right_lane_mark_type': lane.right_mark,
            'right_neighbor_id': lane.right_neighbor,
            'successors': list(lane.successors),
        }
    crossings = {}
    for cw in sorted(road_map.crosswalks, key=lambda c: c.id):
        crossings[str(cw.id)] = {'edge1': _points_json(to_city(cw.edge1), road_map.ground_height(cw.edge1)),
                                 'edge2': _points_json(to_city(cw.edge2), road_map.ground_height(cw.edge2)),
                                 'id': cw.id}
    return {'drivable_areas': areas, 'lane_segments': lanes, 'pedestrian_crossings': crossings}


def build_road_map(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    """Road network of the profile's kind."""
    if prof.road_kind == 'grid':
        return build_grid(rng, prof)
    if prof.road_kind == 'highway':
        return build_highway(rng, prof)
    raise ValueError(f'profile {prof.name!r}: unknown road_kind {prof.road_kind!r} (expected grid or highway)')

