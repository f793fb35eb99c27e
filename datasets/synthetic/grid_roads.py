"""Urban grid road networks: 1-6 intersections (4-way and T), 1-3 lanes per direction, left-turn pockets, bike
lanes, crosswalks, stop-controlled, signalised and uncontrolled nodes; roads bent by a smooth warp."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic.geometry import line_intersection, smooth_connectors
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import (CONFLICT_DISTANCE, DENSE_SPACING, SIDEWALK_OFFSET, ArmGeometry, Crosswalk,
                                             Lane, RoadMap, choice, IdAllocator, smoothstep, split_interval, link,
                                             link_lane_grid, random_ground)


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
    ids = IdAllocator(rng)
    node_pos, road_ends = _grid_layout(rng, prof)
    roads = [_make_road(rng, prof, node_pos, a, b, direction) for a, b, direction in road_ends]
    crosswalks: List[Crosswalk] = []
    node_arms = _intersection_arms(rng, prof, ids, node_pos, roads, crosswalks)
    stop_dist = {(r_idx, node): arm.stop_dist for node, arms in enumerate(node_arms) for r_idx, arm in arms}
    lanes: Dict[int, Lane] = {}
    curbs = _road_lanes_and_curbs(rng, prof, ids, roads, stop_dist, lanes)
    controls = [choice(rng, prof.node_control_weights) for _ in range(len(node_pos))]
    major = _major_axis(rng, node_pos)
    for node, arms in enumerate(node_arms):
        _build_connectors(rng, prof, ids, node, node_pos[node], arms, roads, lanes, crosswalks, controls[node],
                          major)
    signals = _coordinated_signals(rng, prof, node_pos, major, controls)
    amp = float(rng.uniform(*prof.warp_amplitude))
    road_map = RoadMap(lanes=lanes, crosswalks=crosswalks, drivable_areas=_drivable_areas(ids, roads, node_arms,
                                                                                         node_pos, stop_dist),
                       curbs=curbs, kind='grid',
                       nodes=[(node_pos[k], [arm for _, arm in node_arms[k]]) for k in range(len(node_pos))],
                       warp_params=(amp, float(rng.uniform(*prof.warp_wavelength)),
                                    float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
                       signals=signals, arterial=major)
    road_map.ground = random_ground(rng)
    _apply_warp(road_map)
    return road_map


def _major_axis(rng, node_pos: np.ndarray) -> np.ndarray:
    """Unit vector of the arterial direction: the grid axis along which the nodes spread furthest."""
    extent = node_pos.max(0) - node_pos.min(0) if len(node_pos) > 1 else np.zeros(2)
    if abs(extent[0] - extent[1]) < 1.0:
        return np.array([1.0, 0.0]) if rng.random() < 0.5 else np.array([0.0, 1.0])
    return np.array([1.0, 0.0]) if extent[0] > extent[1] else np.array([0.0, 1.0])


def _coordinated_signals(rng, prof: SyntheticProfile, node_pos: np.ndarray, major: np.ndarray,
                         controls: List[str]) -> Dict[int, Tuple[float, float, float]]:
    """Signal plans of one coordinated corridor: a common cycle, the larger share of green for the arterial (phase
    0), and offsets that give a green wave to arterial traffic in one direction at the progression speed."""
    cycle = float(rng.uniform(*prof.signal_cycle))
    green0 = cycle * float(rng.uniform(*prof.arterial_green_share))
    progression = float(rng.uniform(*prof.progression_speed)) * (1.0 if rng.random() < 0.5 else -1.0)
    start = float(rng.uniform(0.0, cycle))
    return {node: (cycle, green0, (start - float(node_pos[node] @ major) / progression) % cycle)
            for node in range(len(node_pos)) if controls[node] == 'signal'}


def _grid_layout(rng, prof: SyntheticProfile):
    """Node positions [nx * ny, 2] and road ends (a, b, outward direction or None): internal edges between
    neighbouring nodes, then roads leaving the scene from the border nodes (b = -1)."""
    nx, ny = choice(rng, prof.grid_shapes)
    if rng.random() < 0.5:
        nx, ny = ny, nx
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*prof.block_length, size=nx - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(*prof.block_length, size=ny - 1))])
    node_pos = np.array([[x, y] for x in xs for y in ys])
    node_pos += rng.uniform(-prof.node_jitter, prof.node_jitter, (nx * ny, 2))
    node_pos -= node_pos.mean(0)
    road_ends: List[Tuple[int, int, Optional[np.ndarray]]] = []
    for i in range(nx):
        for j in range(ny):
            if i + 1 < nx:
                road_ends.append((i * ny + j, (i + 1) * ny + j, None))
            if j + 1 < ny:
                road_ends.append((i * ny + j, i * ny + j + 1, None))
    degree = np.zeros(nx * ny, dtype=int)
    for a, b, _ in road_ends:
        degree[a] += 1
        degree[b] += 1
    for i in range(nx):
        for j in range(ny):
            outward = ([math.pi] if i == 0 else []) + ([0.0] if i == nx - 1 else []) \
                + ([-math.pi / 2] if j == 0 else []) + ([math.pi / 2] if j == ny - 1 else [])
            rng.shuffle(outward)
            k = i * ny + j
            if outward and degree[k] + len(outward) >= 4 and rng.random() < prof.dangling_drop_prob:
                outward = outward[1:]          # a missing arm makes a T-junction; nodes keep >= 3 arms
            for angle in outward:
                jitter = math.radians(rng.uniform(-prof.arm_angle_jitter_deg, prof.arm_angle_jitter_deg))
                road_ends.append((k, -1, np.array([math.cos(angle + jitter), math.sin(angle + jitter)])))
    return node_pos, road_ends


def _make_road(rng, prof: SyntheticProfile, node_pos: np.ndarray, a: int, b: int, direction) -> _Road:
    """Cross-section of one road: lanes per direction, lane width, median, bike lanes."""
    start = node_pos[a]
    if direction is None:
        vec = node_pos[b] - start
        length = float(np.hypot(*vec))
        d = vec / length
    else:
        d = direction
        length = float(rng.uniform(*prof.dangling_length))
    n_fwd = choice(rng, prof.lanes_per_direction)
    n_bwd = n_fwd if rng.random() < 0.8 else choice(rng, prof.lanes_per_direction)
    width = float(rng.uniform(*prof.lane_width))
    divided = rng.random() < prof.divided_prob
    median = float(rng.uniform(width + 0.2, width + 1.5)) if divided else 0.0
    bike = float(rng.uniform(*prof.bike_lane_width)) if rng.random() < prof.bike_lane_prob else 0.0
    return _Road(a=a, b=b, start=start, d=d, length=length, n_fwd=n_fwd, n_bwd=n_bwd, width=width,
                 median=median, bike_width=bike, edge_mark='SOLID_WHITE' if rng.random() < 0.5 else 'NONE')


def _intersection_arms(rng, prof, ids, node_pos, roads: List[_Road], crosswalks: List[Crosswalk]):
    """Per node: its arms (road index, geometry) sorted by angle, with corner, crosswalk and stop distances."""
    node_arms: List[List[Tuple[int, ArmGeometry]]] = [[] for _ in range(len(node_pos))]
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
        corner_t = _corner_distances(arms)
        cw_width = float(rng.uniform(3.0, 4.5))
        for k, (r_idx, arm) in enumerate(arms):
            arm.cross_dist = max(float(corner_t[k].max()), arm.half_left, arm.half_right, 5.0) + cw_width / 2 + 0.3
            arm.stop_dist = arm.cross_dist + cw_width / 2 + 1.0
            if rng.random() < prof.crosswalk_prob:
                arm.crosswalk = len(crosswalks)
                crosswalks.append(_crosswalk(ids, node_pos[node], arm, cw_width))
    return node_arms


def _corner_distances(arms) -> np.ndarray:
    """[arms, 2]: per arm, the distance from the node of the kerb corner on its right side and on its left side."""
    count = len(arms)
    corner_t = np.zeros((count, 2))
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
    return corner_t


def _crosswalk(ids, c: np.ndarray, arm: ArmGeometry, cw_width: float) -> Crosswalk:
    lat_right, lat_left = -(arm.half_right + 1.0), arm.half_left + 1.0
    t0, t1 = arm.cross_dist - cw_width / 2, arm.cross_dist + cw_width / 2
    edge1 = np.stack([c + arm.u * t0 + arm.n * lat_right, c + arm.u * t0 + arm.n * lat_left])
    edge2 = np.stack([c + arm.u * t1 + arm.n * lat_right, c + arm.u * t1 + arm.n * lat_left])
    return Crosswalk(id=ids('crosswalk'), edge1=edge1, edge2=edge2,
                     origin=c + arm.u * arm.cross_dist + arm.n * (lat_left + lat_right) / 2,
                     along=arm.n.copy(), half_length=(lat_left - lat_right) / 2, half_width=cw_width / 2)


def _road_lanes_and_curbs(rng, prof, ids, roads: List[_Road], stop_dist, lanes: Dict[int, Lane]):
    """Lane segments along every road (between its intersections); returns the kerb lines for parked cars."""
    curbs: List[Tuple[np.ndarray, float]] = []
    pending: List[Tuple[Lane, Tuple]] = []     # straight lane segments whose centre lines are computed below
    for r_idx, road in enumerate(roads):
        s0 = stop_dist[(r_idx, road.a)]
        s1 = road.length - (stop_dist[(r_idx, road.b)] if road.b >= 0 else 0.0)
        if s1 - s0 < 12.0:
            raise RuntimeError('synthetic grid: road too short between intersections')
        _build_road_lanes(rng, prof, ids, road, s0, s1, lanes, pending)
        for forward in (True, False):
            side = -1.0 if forward else 1.0
            edge = road.half_width(forward) + 1.0
            ts = np.linspace(s0, s1, max(2, int((s1 - s0) / 5) + 1))
            if not forward:
                ts = ts[::-1]
            curbs.append((road.start + np.outer(ts, road.d) + road.n * side * edge, 0.0))
    for (lane, _), center in zip(pending, _lane_pieces([request for _, request in pending])):
        lane.center = center
    return curbs


def _drivable_areas(ids, roads: List[_Road], node_arms, node_pos, stop_dist) -> List[Tuple[int, np.ndarray]]:
    """One polygon per road between its intersections and one per intersection."""
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
    return areas


def _apply_warp(road_map: RoadMap) -> None:
    """Warp every geometric element once, after all topology has been built on the straight grid."""
    if road_map.warp_params is None or road_map.warp_params[0] == 0.0:
        return
    # every polyline of the map in one call of the (point-wise) warp
    lanes = list(road_map.lanes.values())
    polylines = ([lane.center for lane in lanes]
                 + [edge for cw in road_map.crosswalks for edge in (cw.edge1, cw.edge2)]
                 + [poly for _, poly in road_map.drivable_areas] + [line for line, _ in road_map.curbs])
    ends = np.cumsum([len(line) for line in polylines]).tolist()
    warped = road_map.warp(np.concatenate(polylines))
    pieces = iter([warped[a:b] for a, b in zip([0] + ends[:-1], ends)])   # plain slices: np.split costs more
    for lane in lanes:
        lane.center = next(pieces)
    for cw in road_map.crosswalks:
        cw.edge1, cw.edge2 = next(pieces), next(pieces)
        corners = np.concatenate([cw.edge1, cw.edge2])
        cw.origin = corners.mean(0)
        along = (cw.edge1[1] + cw.edge2[1]) / 2 - (cw.edge1[0] + cw.edge2[0]) / 2
        cw.half_length = float(np.hypot(*along)) / 2
        cw.along = along / (2 * cw.half_length)
    road_map.drivable_areas = [(i, next(pieces)) for i, _ in road_map.drivable_areas]
    road_map.curbs = [(next(pieces), h) for _, h in road_map.curbs]


def _lane_piece(road: _Road, s_a: float, s_b: float, lateral, reverse: bool) -> np.ndarray:
    """Dense centre line of a straight road piece between s_a and s_b at `lateral` (scalar or callable of s)."""
    count = max(2, int(math.ceil((s_b - s_a) / DENSE_SPACING)) + 1)
    s = s_a + (s_b - s_a) / (count - 1) * np.arange(count)
    base = road.start + road.n * (0.0 if callable(lateral) else lateral)
    pts = base + s[:, None] * road.d
    if callable(lateral):
        pts += lateral(s)[:, None] * road.n
    return pts[::-1].copy() if reverse else pts


def _lane_pieces(requests: List[Tuple[_Road, float, float, float, bool]]) -> List[np.ndarray]:
    """`_lane_piece` with a constant lateral offset for many (road, s_a, s_b, lateral, reverse) requests at once
    (the same points)."""
    s_a = np.array([r[1] for r in requests])
    s_b = np.array([r[2] for r in requests])
    counts = np.maximum(2, np.ceil((s_b - s_a) / DENSE_SPACING).astype(int) + 1)
    offsets = np.cumsum(counts) - counts
    within = np.arange(counts.sum()) - np.repeat(offsets, counts)
    reverse = np.repeat(np.array([r[4] for r in requests]), counts)
    within = np.where(reverse, np.repeat(counts - 1, counts) - within, within)
    s = np.repeat(s_a, counts) + np.repeat((s_b - s_a) / (counts - 1), counts) * within
    roads = [r[0] for r in requests]
    start = np.array([road.start for road in roads])
    normal = np.array([road.n for road in roads])
    direction = np.repeat(np.array([road.d for road in roads]), counts, axis=0)
    base = start + normal * np.array([r[3] for r in requests])[:, None]
    pts = np.repeat(base, counts, axis=0) + s[:, None] * direction
    return [pts[a:a + c] for a, c in zip(offsets.tolist(), counts.tolist())]


def _build_road_lanes(rng, prof, ids, road: _Road, s0: float, s1: float, lanes: Dict[int, Lane],
                      pending: List[Tuple[Lane, Tuple]]) -> None:
    """Lane segments of both directions of one road between s0 and s1 (same cuts for all lanes).

    The straight segments are appended to `pending` with their (road, s_a, s_b, lateral, reverse) and get their
    centre lines there, all roads at once (`_lane_pieces`); turn pockets get theirs here."""
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
        fine.extend(split_interval(rng, lo, hi, *prof.lane_segment_length))
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
                lane = Lane(id=ids('lane'), center=None, width=w,
                            lane_type='VEHICLE', left_mark=left_mark, right_mark=right_mark)
                pending.append((lane, (road, s_a, s_b, lat, not forward)))
                lanes[lane.id] = lane
                grid[k].append(lane.id)
            if road.bike_width:
                lat = sign * (g / 2 + count * w + road.bike_width / 2)
                lane = Lane(id=ids('lane'), center=None,
                            width=road.bike_width, lane_type='BIKE', left_mark='SOLID_WHITE', right_mark='NONE')
                pending.append((lane, (road, s_a, s_b, lat, not forward)))
                lanes[lane.id] = lane
                bikes.append(lane.id)
        link_lane_grid(lanes, grid)
        for q in range(len(bikes)):
            if q + 1 < len(bikes):
                link(lanes, bikes[q], bikes[q + 1])
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
        lat = (lambda s, s_a=s_a, base=base: base + w * smoothstep((s - s_a) / taper))
        road.pocket_fwd = _add_pocket(ids, lanes, _lane_piece(road, s_a, s_b, lat, False), w,
                                      road.lanes_fwd[0][-2], road.lanes_fwd[0][-1])
    if want_bwd:
        s_a, s_b = pieces[0]
        base = g / 2 + 0.5 * w
        lat = (lambda s, s_b=s_b, base=base: base - w * smoothstep((s_b - s) / taper))
        road.pocket_bwd = _add_pocket(ids, lanes, _lane_piece(road, s_a, s_b, lat, True), w,
                                      road.lanes_bwd[0][-2], road.lanes_bwd[0][-1])


def _add_pocket(ids, lanes, center, width, upstream: int, beside: int) -> int:
    """A left-turn pocket branching off `upstream` and running left of `beside` up to the node."""
    pocket = Lane(id=ids('lane'), center=center, width=width, lane_type='VEHICLE', left_mark='SOLID_YELLOW',
                  right_mark='DASH_SOLID_WHITE', kind='pocket', right_neighbor=beside)
    lanes[pocket.id] = pocket
    link(lanes, upstream, pocket.id)
    lanes[beside].left_neighbor = pocket.id
    lanes[beside].left_mark = 'DASH_SOLID_WHITE'
    return pocket.id


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
                      lanes: Dict[int, Lane], crosswalks: List[Crosswalk], control: str, arterial: np.ndarray
                      ) -> None:
    """Lanes through one intersection: straight, left and right turns (bike lanes straight and right)."""
    # a signal serves two phases: the arms along the arterial (major) axis, and the arms across it
    phase_of_arm = [0 if abs(float(arm.u @ arterial)) > 0.5 else 1 for _, arm in arms]
    if control == 'minor_stop':     # the cross street stops, the arterial runs through
        stop_arm = [phase == 1 for phase in phase_of_arm]
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
    if not all_pairs:
        return
    # the curves of all connectors of the node in one pass
    ends_in = np.array([lanes[src].center[-2:] for src, _, _, _ in all_pairs])      # [n, 2 points, 2]
    starts_out = np.array([lanes[dst].center[:2] for _, dst, _, _ in all_pairs])
    d_in, d_out = ends_in[:, 1] - ends_in[:, 0], starts_out[:, 1] - starts_out[:, 0]
    centers = smooth_connectors(ends_in[:, 1], [math.atan2(y, x) for x, y in d_in.tolist()], starts_out[:, 0],
                                [math.atan2(y, x) for x, y in d_out.tolist()], DENSE_SPACING)
    for (src, dst, turn, k_in), center in zip(all_pairs, centers):
        a, b = lanes[src], lanes[dst]
        conn = Lane(id=ids('lane'), center=center,
                    width=(a.width + b.width) / 2, lane_type=a.lane_type, left_mark='NONE',
                    right_mark='NONE', is_intersection=True, kind='connector', turn=turn, node=node,
                    needs_stop=stop_arm[k_in], gated=True,
                    signal_group=phase_of_arm[k_in] if control == 'signal' else -1)
        lanes[conn.id] = conn
        link(lanes, src, conn.id)
        link(lanes, conn.id, dst)
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
    # squared distances of all point pairs, built in place from contiguous coordinate columns
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    d2 = np.subtract.outer(x, x)
    dy = np.subtract.outer(y, y)
    d2 *= d2
    dy *= dy
    d2 += dy
    rows, cols = np.nonzero(d2 < CONFLICT_DISTANCE ** 2)
    between = owner[rows] != owner[cols]          # a connector does not conflict with itself
    rows, cols = rows[between], cols[between]
    if len(rows):
        _record_conflicts(lanes, connectors, owner, rows, cols, [len(p) for p in sampled])
    if crosswalks:
        _record_crosswalks(lanes, connectors, owner, x, y, crosswalks)


def _record_conflicts(lanes: Dict[int, Lane], connectors: List[int], owner: np.ndarray, rows: np.ndarray,
                      cols: np.ndarray, sizes: List[int]) -> None:
    """Conflicts of connector pairs with close sampled points (rows, cols index the points, owner their connector)."""
    n = len(connectors)
    # arc length of every sampled point along its own connector (points are 6 dense steps apart)
    sizes = np.array(sizes)
    along = (np.arange(len(owner)) - np.repeat(np.cumsum(sizes) - sizes, sizes)) * (6 * DENSE_SPACING)
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
        if lanes[ci].predecessors != lanes[cj].predecessors:
            lanes[ci].conflicts.append(cj)
            # where on cj the paths meet: a vehicle on cj is clear once its rear has passed the last close
            # point of a crossing; merging paths (same exit lane) converge till their end, there it is enough
            # that the other vehicle is past the first close point, after that it is simply followed
            merging = lanes[ci].successors == lanes[cj].successors
            lanes[ci].conflict_at[cj] = first + 3.0 if merging else last


def _record_crosswalks(lanes: Dict[int, Lane], connectors: List[int], owner: np.ndarray, x: np.ndarray,
                       y: np.ndarray, crosswalks: List[Crosswalk]) -> None:
    """The crosswalks each connector passes over, from its sampled points (x, y [P], owner [P])."""
    n = len(connectors)
    # all crosswalks at once: [crosswalk, point] in each crosswalk's own frame
    origin = np.array([cw.origin for cw in crosswalks])
    direction = np.array([cw.along for cw in crosswalks])
    rel_x = x[None, :] - origin[:, 0, None]
    rel_y = y[None, :] - origin[:, 1, None]
    along = rel_x * direction[:, 0, None] + rel_y * direction[:, 1, None]
    across = rel_y * direction[:, 0, None] - rel_x * direction[:, 1, None]
    inside = ((np.abs(along) < np.array([cw.half_length for cw in crosswalks])[:, None])
              & (np.abs(across) < np.array([cw.half_width for cw in crosswalks])[:, None] + 1.0))
    cw_idx, point = np.nonzero(inside)
    # (crosswalk, connector) pairs in crosswalk order, so each connector lists its crosswalks in index order
    codes, pair = np.unique(cw_idx * n + owner[point], return_inverse=True)
    # where along the crosswalk the connector crosses it: the mean of its points on the crossing
    at = np.bincount(pair, weights=along[cw_idx, point]) / np.bincount(pair)
    for code, position in zip(codes.tolist(), at.tolist()):
        idx, i = divmod(code, n)
        lanes[connectors[i]].crosswalks.append(idx)
        lanes[connectors[i]].crosswalk_at[idx] = position

