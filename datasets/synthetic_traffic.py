"""Traffic for the synthetic generator: routes on the lane graph, an IDM car-following simulation with
intersection right-of-way, pedestrians on sidewalks and crosswalks, and static objects.

All positions are in the scene frame of `datasets.synthetic_map` (metres), time steps are 0.1 s. The simulation
runs `warmup + num_steps` steps; the warm-up lets randomly spawned traffic settle before anything is recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.synthetic_geometry import arc_length, batch_arc, batch_headings, headings, resample
from datasets.synthetic_map import RoadMap, pedestrian_path, sidewalk_point
from datasets.synthetic_profiles import SyntheticProfile, weighted_pick

DT = 0.1
WARMUP_STEPS = 20
POST_EXTENSION = 450.0       # straight virtual road after lanes that leave the map
STOP_DWELL = (5, 13)         # steps a vehicle stands at a stop line before entering
SUBSTEPS = 3                 # the car-following model is integrated at SUBSTEPS * DT
COMMIT_DECEL = 4.0           # m/s^2: closer than the stopping distance at this deceleration -> go
SPAWN_GAP = 9.0              # minimum bumper-free spacing when seeding vehicles on a lane


@dataclass
class Trajectory:
    """One simulated object over all steps: position [T, 2], heading [T], velocity [T, 2] (scene frame)."""
    object_type: str
    position: np.ndarray
    heading: np.ndarray
    velocity: np.ndarray
    dynamic: bool = True          # False for parked cars and static objects
    is_av: bool = False
    turns: int = 0                # intersection turns on its route (makes a focal agent interesting)


# ----------------------------------------------------------------------------------------------------------
# lane index with virtual extensions
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _LaneTable:
    """Simulator view of the lane graph: integer lane indices, and virtual lanes before map entries and after
    map exits (straight extensions, never written to the map) so traffic can enter and leave. Per lane it caches
    arc length, unwrapped heading and curvature of the centre line, so routes are cheap to assemble."""
    ids: List[int]
    index: Dict[int, int]
    points: List[np.ndarray]
    arc: List[np.ndarray]
    heading: List[np.ndarray]
    curvature: List[np.ndarray]
    lengths: List[float]
    tails: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]   # the above without the first point
    heading_ends: List[Tuple[float, float, float]]   # heading at the first, second and last point
    is_turn: List[bool]                              # a left or right turn through an intersection
    pre: Dict[int, int]           # real lane index -> virtual lane index feeding it
    post: Dict[int, int]          # real lane index -> virtual lane index it drains into
    gated: List[bool]
    needs_stop: List[bool]
    conflicts: List[Tuple[Tuple[int, float], ...]]   # (conflicting lane, arc length on it where paths meet)
    crosswalks: List[frozenset]
    siblings: List[Tuple[Tuple[int, float], ...]]   # (overlapping lane, shift of its s onto this lane's s)

    @property
    def total(self) -> int:
        return len(self.points)

    def add(self, pts: np.ndarray) -> int:
        """Append a lane (real or virtual) given its centre line [K, 2]; returns its index."""
        self.add_many([pts])
        return len(self.points) - 1

    def add_many(self, polylines: List[np.ndarray]) -> None:
        counts = np.array([len(p) for p in polylines])
        pts = np.concatenate(polylines)
        arc = batch_arc(pts, counts)
        heading = batch_headings(pts, counts)
        curvature = np.zeros(len(pts))
        curvature[1:-1] = np.abs(heading[2:] - heading[:-2]) / np.maximum(np.abs(arc[2:] - arc[:-2]), 1e-6)
        starts = np.cumsum(counts) - counts
        ends = starts + counts - 1
        curvature[starts] = 0.0      # the differences above straddle two polylines there
        curvature[ends] = 0.0
        bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            p, s, h, c = polylines[k], arc[a:b], heading[a:b], curvature[a:b]
            self.points.append(p)
            self.arc.append(s)
            self.heading.append(h)
            self.curvature.append(c)
            self.lengths.append(float(s[-1]))
            self.tails.append((p[1:], s[1:], h[1:], c[1:]))
            self.heading_ends.append((float(h[0]), float(h[1]), float(h[-1])))
            self.is_turn.append(False)
            self.gated.append(False)
            self.needs_stop.append(False)
            self.conflicts.append(())
            self.crosswalks.append(frozenset())
            self.siblings.append(())


def _straight(origin: np.ndarray, direction: np.ndarray, start: float, end: float) -> np.ndarray:
    t = np.linspace(start, end, int(abs(end - start) / 2.0) + 1)[:, None]
    return origin + t * (direction / np.hypot(*direction))


def _lane_table(road_map: RoadMap, upstream: float) -> _LaneTable:
    ids = list(road_map.lanes)
    table = _LaneTable(ids=ids, index={lid: i for i, lid in enumerate(ids)}, points=[], arc=[], heading=[],
                       curvature=[], lengths=[], tails=[], heading_ends=[], is_turn=[], pre={}, post={}, gated=[],
                       needs_stop=[], conflicts=[],
                       crosswalks=[], siblings=[])
    table.add_many([road_map.lanes[lid].center for lid in ids])
    for i, lid in enumerate(ids):
        lane = road_map.lanes[lid]
        table.gated[i] = lane.gated
        table.needs_stop[i] = lane.needs_stop
        table.conflicts[i] = tuple((table.index[c], lane.conflict_at.get(c, table.lengths[table.index[c]]))
                                   for c in lane.conflicts)
        table.crosswalks[i] = frozenset(lane.crosswalks)
        table.is_turn[i] = lane.turn in ('left', 'right')
        # lanes branching from one predecessor overlap at their start (aligned there); lanes merging into one
        # successor (a taper, a ramp, connectors into one exit lane) overlap at their end (aligned there)
        starts = {s for p in lane.predecessors for s in road_map.lanes[p].successors} - {lid}
        ends = {p for s in lane.successors for p in road_map.lanes[s].predecessors} - {lid} - starts
        table.siblings[i] = tuple([(table.index[x], 0.0) for x in sorted(starts)]
                                  + [(table.index[x], table.lengths[i] - table.lengths[table.index[x]])
                                     for x in sorted(ends)])
    virtual, owners = [], []
    for lid in ids:
        lane = road_map.lanes[lid]
        c = lane.center
        if not lane.predecessors:
            virtual.append(_straight(c[0], c[1] - c[0], -upstream, 0.0))
            owners.append((table.pre, table.index[lid]))
        if not lane.successors:
            virtual.append(_straight(c[-1], c[-1] - c[-2], 0.0, POST_EXTENSION))
            owners.append((table.post, table.index[lid]))
    if virtual:
        first = table.total
        table.add_many(virtual)
        for k, (mapping, lane_idx) in enumerate(owners):
            mapping[lane_idx] = first + k
    return table


# ----------------------------------------------------------------------------------------------------------
# routes
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Route:
    points: np.ndarray            # [K, 2]
    s: np.ndarray                 # [K] arc length
    heading: np.ndarray           # [K] unwrapped tangent angle
    curvature: np.ndarray         # [K] |d heading / ds|
    entry_start: List[float]      # route s where each entry (lane occupancy interval) begins
    entry_lane: List[int]
    entry_base: List[float]       # route s at which that lane's own s is zero
    entry_lane2: List[int]        # second lane the agent is in (the other lane while changing lanes)
    entry_base2: List[float]
    gates: List[Tuple[float, int]]
    turns: int


def _choose_successor(rng, road_map: RoadMap, table: _LaneTable, prof: SyntheticProfile, lane_idx: int,
                      lane_type: str) -> Optional[int]:
    lane = road_map.lanes[table.ids[lane_idx]]
    options = [table.index[s] for s in lane.successors if road_map.lanes[s].lane_type == lane_type]
    if not options and lane_type == 'BIKE':   # the bike lane ends: cyclists carry on in traffic
        options = [table.index[s] for s in lane.successors]
    if not options:
        return None
    if len(options) == 1:
        return options[0]
    weights = []
    kinds = [road_map.lanes[table.ids[o]].kind for o in options]
    special = [k for k in kinds if k in ('pocket', 'ramp')]
    for o, kind in zip(options, kinds):
        nxt = road_map.lanes[table.ids[o]]
        if kind == 'connector':
            weights.append(prof.turn_weights.get(nxt.turn, 0.1))
        elif kind == 'pocket':
            weights.append(prof.pocket_choice_prob)
        elif kind == 'ramp':
            weights.append(prof.exit_choice_prob)
        else:
            weights.append((1.0 - (prof.pocket_choice_prob if 'pocket' in special else prof.exit_choice_prob))
                           if special else 1.0)
    return options[weighted_pick(rng, weights)]


def _forward_chain(rng, road_map, table, prof, start_idx: int, length_needed: float, lane_type: str) -> List[int]:
    """Lane indices from start_idx onwards covering `length_needed` metres, ending in a virtual exit if needed."""
    chain = [start_idx]
    total = table.lengths[start_idx]
    while total < length_needed:
        cur = chain[-1]
        nxt = None if cur >= len(table.ids) else _choose_successor(rng, road_map, table, prof, cur, lane_type)
        if nxt is None:   # leaves the map (or only lanes of another type follow): continue straight on
            if cur >= len(table.ids):
                break
            chain.append(_ensure_post(table, cur))
            break
        chain.append(nxt)
        total += table.lengths[nxt]
    return chain


def _ensure_post(table: _LaneTable, lane_idx: int) -> int:
    if lane_idx not in table.post:
        c = table.points[lane_idx]
        table.post[lane_idx] = table.add(_straight(c[-1], c[-1] - c[-2], 0.0, POST_EXTENSION))
    return table.post[lane_idx]


def _insert_lane_change(rng, road_map, table, prof, chain: List[int], first: int, lane_type: str,
                        length_needed: float, v_desired: float) -> List:
    """Replace part of `chain` (lane indices) by one lane-change element; returns the element list.

    The manoeuvre spans as many parallel lane pieces as needed for about 4 s of travel at the desired speed,
    which keeps its lateral acceleration (and hence the curvature speed limit) mild.
    """
    elements: List = [('lane', c) for c in chain]
    n_real = len(table.ids)
    candidates = []
    for q in range(first, len(chain) - 1):
        if chain[q] >= n_real:
            continue
        lane = road_map.lanes[table.ids[chain[q]]]
        if lane.kind not in ('road', 'aux'):
            continue
        nxt = chain[q + 1]
        if nxt < n_real and road_map.lanes[table.ids[nxt]].kind == 'connector':
            continue   # queues form in front of intersections: change lanes further upstream
        for side in ('left_same', 'right_same'):
            target = getattr(lane, side)
            if target is not None:
                candidates.append((q, table.index[target], 3.0 if lane.kind == 'aux' else 1.0))
    if not candidates:
        return elements
    q, target, _ = candidates[weighted_pick(rng, [c[2] for c in candidates])]
    src, dst = [chain[q]], [target]
    wanted = max(35.0, 4.0 * v_desired)
    while sum(table.lengths[i] for i in src) < wanted and q + len(src) < len(chain):
        nxt_src = chain[q + len(src)]
        if nxt_src >= n_real:
            break
        src_next = road_map.lanes[table.ids[nxt_src]]
        side_of = {src_next.left_same, src_next.right_same}
        parallel = [table.index[s] for s in road_map.lanes[table.ids[dst[-1]]].successors if s in side_of]
        if src_next.kind not in ('road', 'aux') or not parallel:
            break
        src.append(nxt_src)
        dst.append(parallel[0])
    if sum(table.lengths[i] for i in src) < 0.6 * wanted:
        return elements   # no room for a comfortable manoeuvre here
    remaining = length_needed - sum(table.lengths[c] for c in chain[:q]) - sum(table.lengths[c] for c in dst)
    rest = _forward_chain(rng, road_map, table, prof, dst[-1], remaining + table.lengths[dst[-1]], lane_type)[1:]
    return elements[:q] + [('lc', src, dst)] + [('lane', c) for c in rest]


def _build_route(table: _LaneTable, road_map: RoadMap, elements: List) -> _Route:
    """Concatenate the lanes (and lane-change blends) of `elements` into one route with lane bookkeeping."""
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    offsets: List[float] = []       # route s of each part's lane-local s = 0
    shifts: List[float] = []        # multiples of 2 pi that keep the heading continuous
    entry_start, entry_lane, entry_base, gates = [], [], [], []
    entry_lane2, entry_base2 = [], []
    turns = 0
    pos = 0.0
    last_heading = None
    two_pi = 2 * math.pi
    for element in elements:
        if element[0] == 'lane':
            idx = element[1]
            h_first, h_second, h_last = table.heading_ends[idx]
            if last_heading is None:
                parts.append((table.points[idx], table.arc[idx], table.heading[idx], table.curvature[idx]))
                shifts.append(0.0)
            else:   # consecutive lanes share their joint point
                parts.append(table.tails[idx])
                shifts.append(two_pi * round((last_heading - h_second) / two_pi))
            last_heading = h_last + shifts[-1]
            offsets.append(pos)
            entry_start.append(pos)
            entry_lane.append(idx)
            entry_base.append(pos)
            entry_lane2.append(idx)
            entry_base2.append(pos)
            if table.gated[idx]:
                gates.append((pos, idx))
            turns += table.is_turn[idx]
            pos += table.lengths[idx]
            continue
        _, src, dst = element
        a = np.concatenate([table.points[src[0]]] + [table.tails[i][0] for i in src[1:]])
        b = np.concatenate([table.points[dst[0]]] + [table.tails[i][0] for i in dst[1:]])
        count = max(len(a), len(b))
        if len(a) != len(b):   # parallel pieces of one road already have equal point counts
            a, b = resample(a, count), resample(b, count)
        x = np.clip((np.linspace(0.0, 1.0, count) - 0.1) / 0.8, 0.0, 1.0)
        alpha = (x * x * (3 - 2 * x))[:, None]
        pts = (1 - alpha) * a + alpha * b
        arc = arc_length(pts)
        heading = headings(pts)
        curv = np.zeros(count)
        curv[1:-1] = np.abs(heading[2:] - heading[:-2]) / np.maximum(arc[2:] - arc[:-2], 1e-6)
        length = float(arc[-1])
        # during the manoeuvre the agent is in both lanes: the source lane first, then (from half way)
        # the target lane as its primary lane, the other one as its secondary lane
        switch = pos + 0.5 * length

        def covering(lanes_, at):
            base = pos
            for i in lanes_:
                if at < base + table.lengths[i] or i == lanes_[-1]:
                    return i, base
                base += table.lengths[i]

        cuts = {pos, switch}
        for lanes_ in (src, dst):
            base = pos
            for i in lanes_[:-1]:
                base += table.lengths[i]
                if pos < base < pos + length:
                    cuts.add(base)
        for cut in sorted(cuts):
            primary, secondary = (src, dst) if cut < switch else (dst, src)
            lane1, base1 = covering(primary, cut)
            lane2, base2 = covering(secondary, cut)
            entry_start.append(cut)
            entry_lane.append(lane1)
            entry_base.append(base1)
            entry_lane2.append(lane2)
            entry_base2.append(base2)
        if last_heading is None:
            shifts.append(0.0)
        else:
            pts, arc, heading, curv = pts[1:], arc[1:], heading[1:], curv[1:]
            shifts.append(two_pi * round((last_heading - float(heading[0])) / two_pi))
        last_heading = float(heading[-1]) + shifts[-1]
        parts.append((pts, arc, heading, curv))
        offsets.append(pos)
        pos += length
    counts = [len(part[0]) for part in parts]
    return _Route(points=np.concatenate([part[0] for part in parts]),
                  s=np.concatenate([part[1] for part in parts]) + np.repeat(offsets, counts),
                  heading=np.concatenate([part[2] for part in parts]) + np.repeat(shifts, counts),
                  curvature=np.concatenate([part[3] for part in parts]), entry_start=entry_start,
                  entry_lane=entry_lane, entry_base=entry_base, entry_lane2=entry_lane2, entry_base2=entry_base2,
                  gates=gates, turns=turns)


def _speed_profile(route: _Route, v_desired: float, lateral_acc: float, comfort_dec: float) -> np.ndarray:
    """Speed limit at 1 m resolution along the route: desired speed, curvature limit, anticipated by braking."""
    limit = np.minimum(v_desired, np.sqrt(lateral_acc / np.maximum(route.curvature, 1e-6)))
    # v(s)^2 <= min_{s' >= s} v(s')^2 + 2 b (s' - s): a reverse running minimum
    key = limit ** 2 + 2 * comfort_dec * route.s
    key = np.minimum.accumulate(key[::-1])[::-1]
    limit = np.sqrt(np.maximum(key - 2 * comfort_dec * route.s, 0.0))
    # the limit at each metre is the lowest one within it, so short tight curves are not skipped
    cells = route.s.astype(int)
    grid = np.full(cells[-1] + 2, v_desired)
    np.minimum.at(grid, cells, limit)
    grid[-1] = grid[-2]
    return grid


# ----------------------------------------------------------------------------------------------------------
# vehicles
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Driver:
    object_type: str
    route: _Route
    s: float
    v: float
    length: float
    v_desired: float
    a_max: float
    b_comf: float
    headway: float
    min_gap: float
    lateral_acc: float
    dwell: int
    is_av: bool = False


_KINEMATICS = {
    # type: (length, a_max, b_comf, headway, min_gap, speed factor)
    'vehicle': ((4.2, 5.2), (1.3, 2.2), (1.8, 2.8), (1.0, 1.7), 2.0, 1.0),
    'bus': ((11.0, 12.5), (0.8, 1.2), (1.5, 2.0), (1.4, 2.0), 2.5, 0.8),
    'motorcyclist': ((2.0, 2.4), (2.0, 3.0), (2.0, 3.0), (0.8, 1.2), 1.5, 1.05),
    'cyclist': ((1.7, 1.9), (0.7, 1.1), (1.2, 1.8), (0.8, 1.2), 1.2, 0.0),
}


def _make_driver(rng, object_type: str, route: _Route, s: float, v_desired: float, is_av=False) -> _Driver:
    length, a_max, b_comf, headway, min_gap, _ = _KINEMATICS[object_type]
    return _Driver(object_type=object_type, route=route, s=s, v=v_desired * float(rng.uniform(0.5, 1.0)),
                   length=float(rng.uniform(*length)),
                   v_desired=v_desired, a_max=float(rng.uniform(*a_max)), b_comf=float(rng.uniform(*b_comf)),
                   headway=float(rng.uniform(*headway)), min_gap=min_gap, lateral_acc=float(rng.uniform(1.6, 2.6)),
                   dwell=int(rng.integers(*STOP_DWELL)), is_av=is_av)


def _spawn_vehicles(rng, road_map: RoadMap, table: _LaneTable, prof: SyntheticProfile, horizon_s: float,
                    ) -> List[_Driver]:
    """The AV (first) and the other road users that follow lanes (vehicles, buses, motorcyclists, cyclists)."""
    drivers: List[_Driver] = []
    lanes = road_map.lanes
    speed_lo, speed_hi = prof.desired_speed

    # --- the AV: on a road lane near the scene centre, about there at the end of the history ---
    road_lanes = [table.index[lid] for lid, lane in lanes.items()
                  if lane.kind == 'road' and lane.lane_type == 'VEHICLE']
    mids = np.array([table.points[i][len(table.points[i]) // 2] for i in road_lanes])
    dist = np.hypot(mids[:, 0], mids[:, 1])
    near = [road_lanes[i] for i in np.nonzero(dist < max(45.0, np.sort(dist)[min(3, len(dist) - 1)]))[0]]
    anchor = near[int(rng.integers(len(near)))]
    av_speed = float(rng.uniform(speed_lo, 0.5 * (speed_lo + speed_hi)))
    back_needed = av_speed * (WARMUP_STEPS + 50) * DT * float(rng.uniform(0.6, 1.0))
    back = []
    total = 0.0
    cur = anchor
    while total < back_needed:
        preds = [table.index[p] for p in lanes[table.ids[cur]].predecessors if lanes[p].lane_type == 'VEHICLE']
        if not preds:
            back.append(table.pre[cur] if cur in table.pre else None)
            total += table.lengths[table.pre[cur]] if cur in table.pre else 0.0
            break
        cur = preds[int(rng.integers(len(preds)))]
        back.append(cur)
        total += table.lengths[cur]
    back = [b for b in back if b is not None][::-1]
    offset_in_anchor = float(rng.uniform(0.0, table.lengths[anchor]))
    before = float(sum(table.lengths[b] for b in back))
    s_av = max(0.0, before + offset_in_anchor - back_needed)
    need = s_av + speed_hi * (WARMUP_STEPS + 110) * DT * 1.2 + 40.0
    chain = back + _forward_chain(rng, road_map, table, prof, anchor, need - before, 'VEHICLE')
    elements = [('lane', c) for c in chain]
    route = _build_route(table, road_map, elements)
    av = _make_driver(rng, 'vehicle', route, s_av, av_speed, is_av=True)
    drivers.append(av)
    occupied: Dict[int, List[float]] = {}
    av_lane_pos = _lane_at(route, s_av)
    occupied.setdefault(av_lane_pos[0], []).append(av_lane_pos[1])

    # --- other vehicles: Poisson along every drivable lane and the virtual roads feeding the map ---
    density = float(rng.uniform(*prof.vehicle_density)) / 100.0
    spawn_lanes = [table.index[lid] for lid, lane in lanes.items()
                   if lane.lane_type == 'VEHICLE' and lane.kind != 'connector']
    spawn_lanes += [v for k, v in table.pre.items() if lanes[table.ids[k]].lane_type == 'VEHICLE']
    types = [t for t, _ in prof.vehicle_type_weights]
    type_w = [w for _, w in prof.vehicle_type_weights]
    for idx in spawn_lanes:
        length = table.lengths[idx]
        count = rng.poisson(density * length)
        if count == 0:
            continue
        positions = np.sort(rng.uniform(0.0, max(length - 4.0, 0.0), size=count))
        taken = occupied.setdefault(idx, [])
        for p in positions.tolist():
            if any(abs(p - q) < SPAWN_GAP for q in taken):
                continue
            taken.append(p)
            object_type = types[weighted_pick(rng, type_w)]
            drivers.append(_driver_from(rng, road_map, table, prof, idx, p, object_type, 'VEHICLE', horizon_s))

    # --- cyclists: bike lanes when the map has them, else the kerb-side vehicle lane ---
    n_cyclists = int(rng.integers(prof.cyclists[0], prof.cyclists[1] + 1))
    bike_lanes = [table.index[lid] for lid, lane in lanes.items() if lane.lane_type == 'BIKE' and lane.kind == 'road']
    kerb_lanes = [table.index[lid] for lid, lane in lanes.items()
                  if lane.kind == 'road' and lane.lane_type == 'VEHICLE' and lane.right_same is None
                  and (lane.right_neighbor is None)]
    pool, lane_type = (bike_lanes, 'BIKE') if bike_lanes else (kerb_lanes, 'VEHICLE')
    for _ in range(n_cyclists if pool else 0):
        idx = pool[int(rng.integers(len(pool)))]
        p = float(rng.uniform(0.0, max(table.lengths[idx] - 4.0, 0.0)))
        taken = occupied.setdefault(idx, [])
        if any(abs(p - q) < SPAWN_GAP for q in taken):
            continue
        taken.append(p)
        drivers.append(_driver_from(rng, road_map, table, prof, idx, p, 'cyclist', lane_type, horizon_s))
    return drivers


def _lane_at(route: _Route, s: float) -> Tuple[int, float]:
    k = int(np.searchsorted(np.asarray(route.entry_start), s, side='right')) - 1
    return route.entry_lane[k], s - route.entry_base[k]


def _driver_from(rng, road_map, table, prof, idx: int, p: float, object_type: str, lane_type: str,
                 horizon_s: float) -> _Driver:
    speed_lo, speed_hi = prof.desired_speed
    if object_type == 'cyclist':
        v_desired = float(rng.uniform(3.5, 6.5))
    else:
        v_desired = float(rng.uniform(speed_lo, speed_hi)) * _KINEMATICS[object_type][5]
    start = idx
    prefix: List[int] = []
    if idx >= len(table.ids):   # on a virtual feeder road: continue into the lane it feeds
        real = next(k for k, v in table.pre.items() if v == idx)
        prefix, start = [idx], real
    need = p + v_desired * horizon_s * 1.15 + 40.0
    chain = prefix + _forward_chain(rng, road_map, table, prof, start, need - (table.lengths[idx] if prefix else 0.0),
                                    lane_type)
    if object_type != 'cyclist' and rng.random() < prof.lane_change_prob:
        elements = _insert_lane_change(rng, road_map, table, prof, chain, 1, lane_type, need, v_desired)
    else:
        elements = [('lane', c) for c in chain]
    route = _build_route(table, road_map, elements)
    driver = _make_driver(rng, object_type, route, p, v_desired)
    return driver


@np.errstate(invalid='ignore')   # NaN (a lane that is not on a route) compares False, as intended
def _simulate(drivers: List[_Driver], table: _LaneTable, crosswalk_busy: np.ndarray, steps: int):
    """IDM car following along each driver's route; returns route positions s [N, steps] and speeds [N, steps].

    Leaders are found through the lane graph: agent j is ahead of agent i when j's current lane lies on i's
    route. Entering a gated lane (intersection connector, merge) needs its conflicting lanes to be free of
    other agents and its crosswalks free of pedestrians; stop-controlled connectors also need a full stop.
    The model is integrated at SUBSTEPS * DT with constant acceleration per step, which gives the 10 Hz
    samples in between exactly (a fraction of the Python work of a 10 Hz loop).
    """
    n = len(drivers)
    ar = np.arange(n)
    n_entries = max(len(d.route.entry_start) for d in drivers) + 1
    start_pad = np.full((n, n_entries), np.inf)
    lane_pad = np.zeros((n, n_entries), dtype=int)
    base_pad = np.zeros((n, n_entries))
    lane2_pad = np.zeros((n, n_entries), dtype=int)
    base2_pad = np.zeros((n, n_entries))
    n_gates = max(len(d.route.gates) for d in drivers) + 1
    gate_pad = np.full((n, n_gates), np.inf)
    gate_lane_pad = np.zeros((n, n_gates), dtype=int)
    on_route = np.full((n, table.total), np.nan)
    vlims = [_speed_profile(d.route, d.v_desired, d.lateral_acc, d.b_comf) for d in drivers]
    max_len = max(len(x) for x in vlims)
    vlim_pad = np.empty((n, max_len))
    route_end = np.zeros(n)
    for i, d in enumerate(drivers):
        r = d.route
        m = len(r.entry_start)
        start_pad[i, :m] = r.entry_start
        lane_pad[i, :m] = r.entry_lane
        base_pad[i, :m] = r.entry_base
        lane2_pad[i, :m] = r.entry_lane2
        base2_pad[i, :m] = r.entry_base2
        on_route[i, r.entry_lane] = r.entry_base
        on_route[i, r.entry_lane2] = r.entry_base2
        # lanes branching from the same predecessor overlap where they start: an agent that took the other
        # branch is still in the way there, so treat it as if it were on this route
        for lane_idx, base in zip(r.entry_lane, r.entry_base):
            for sib, shift in table.siblings[lane_idx]:
                if np.isnan(on_route[i, sib]):
                    on_route[i, sib] = base + shift
        for g, (gs, gl) in enumerate(r.gates):
            gate_pad[i, g] = gs
            gate_lane_pad[i, g] = gl
        vlim_pad[i, :len(vlims[i])] = vlims[i]
        vlim_pad[i, len(vlims[i]):] = vlims[i][-1]
        route_end[i] = r.s[-1] - 1.0
    half = np.array([d.length for d in drivers]) / 2
    half_sum = half[:, None] + half[None, :]
    a_max = np.array([d.a_max for d in drivers])
    sqrt_ab = 2.0 * np.sqrt(a_max * np.array([d.b_comf for d in drivers]))
    headway = np.array([d.headway for d in drivers])
    min_gap = np.array([d.min_gap for d in drivers])
    dwell = [d.dwell for d in drivers]
    needs_stop, conflicts, crosswalks = table.needs_stop, table.conflicts, table.crosswalks
    watched = np.zeros(table.total, dtype=bool)     # lanes some gate has to keep an eye on
    for conf in conflicts:
        for c, _ in conf:
            watched[c] = True
    s = np.array([d.s for d in drivers])
    v = np.minimum(vlim_pad[ar, np.minimum(s.astype(int), max_len - 1)], np.array([d.v for d in drivers]))
    # seeded vehicles must be able to stop comfortably (2.5 m/s^2) before their next gate
    first_gate = gate_pad[ar, (gate_pad < (s + half)[:, None]).sum(1)] - s - half
    v = np.minimum(v, np.sqrt(5.0 * np.maximum(first_gate - 1.0, 0.0)))
    k = (start_pad <= s[:, None]).sum(1) - 1
    def leaders(k):
        """(leader index [N], bumper gap [N], primary lane [N], secondary lane [N]) at the current state.

        rel[i, j] is how far agent j is ahead of agent i along i's route (NaN when j's lane is not on it;
        exactly 0 for i itself). Agents changing lanes are also looked up through their secondary lane."""
        lane = lane_pad[ar, k]
        lane2 = lane2_pad[ar, k]
        rel = on_route[:, lane]
        rel += s - base_pad[ar, k]
        rel -= s[:, None]
        ahead = np.where(rel > 0, rel, np.inf)
        changing = np.nonzero(lane2 != lane)[0]
        if len(changing):
            rel2 = on_route[:, lane2[changing]]
            rel2 += s[changing] - base2_pad[changing, k[changing]]
            rel2 -= s[:, None]
            ahead[:, changing] = np.minimum(ahead[:, changing], np.where(rel2 > 0, rel2, np.inf))
        ahead -= half_sum
        lead = ahead.argmin(1)
        gap = ahead[ar, lead]
        overlapped = np.nonzero(gap < 0)[0]
        if len(overlapped):
            # a vehicle beside us that is already faster is pulling away, not a reason for an emergency stop
            sub = ahead[overlapped]
            sub[(sub < 0) & (v[None, :] > v[overlapped, None] + 0.5)] = np.inf
            lead[overlapped] = sub.argmin(1)
            gap[overlapped] = sub[np.arange(len(overlapped)), lead[overlapped]]
        return lead, gap, lane, lane2

    # ... and behind their leader (3 m/s^2 would do; repeated so that platoons settle)
    for _ in range(3):
        lead, gap_l, _, _ = leaders(k)
        v = np.minimum(v, v[lead] + np.sqrt(6.0 * np.maximum(np.minimum(gap_l, 1e3) - 2.0, 0.0)))
    stop_done = [-1] * n
    stop_timer = [0] * n
    sim_dt = SUBSTEPS * DT
    s_hist = np.empty((n, steps))
    v_hist = np.empty((n, steps))
    s_hist[:, 0], v_hist[:, 0] = s, v
    busy_sets = [frozenset(np.nonzero(row)[0].tolist()) for row in crosswalk_busy] if crosswalk_busy.size else None
    for t in range(0, steps - 1, SUBSTEPS):
        k += start_pad[ar, k + 1] <= s
        k += start_pad[ar, k + 1] <= s     # short entries: at most two boundaries per step
        k += start_pad[ar, k + 1] <= s
        lead, gap_l, lane, lane2 = leaders(k)
        v_l = v[lead]
        gptr = (gate_pad < (s + half)[:, None]).sum(1)
        g_s = gate_pad[ar, gptr]
        d_gate = g_s - s - half
        gate_gap = np.full(n, np.inf)
        hard_stop = np.zeros(n, dtype=bool)
        gate_active = False
        # agents queued behind a leader whose front has not reached the gate yet need no check
        cand = np.nonzero((d_gate < 45.0) & (gap_l + 2 * half[lead] > d_gate))[0]
        if len(cand):
            # clear_of[lane]: how far along that lane the rearmost vehicle touching it has its rear bumper
            # (-inf when one is just entering or has claimed it). A conflict blocks until that rear passes
            # the point where the two paths meet.
            k_front = (start_pad <= (s + half)[:, None]).sum(1) - 1
            k_rear = np.maximum((start_pad <= (s - half)[:, None]).sum(1) - 1, 0)
            front = lane_pad[ar, k_front]
            rear = lane_pad[ar, k_rear]
            rear_local = s - half - base_pad[ar, k_rear]
            touching = np.nonzero(watched[lane] | watched[lane2] | watched[front] | watched[rear])[0]
            clear_of: Dict[int, float] = {}
            for i, l1, l2, lf, lr, r_local in zip(touching.tolist(), lane[touching].tolist(),
                                                  lane2[touching].tolist(), front[touching].tolist(),
                                                  rear[touching].tolist(), rear_local[touching].tolist()):
                marks = {l1: -np.inf, l2: -np.inf, lf: -np.inf}   # lanes it is entering
                marks[lr] = r_local                                  # the lane its rear is in
                for lane_i, pos_i in marks.items():
                    if pos_i < clear_of.get(lane_i, np.inf):
                        clear_of[lane_i] = pos_i
            busy = busy_sets[t] if busy_sets is not None else frozenset()
            lead_list, gap_list = lead.tolist(), gap_l.tolist()
            lane_list, front_list = lane.tolist(), front.tolist()
            order = cand[np.argsort(d_gate[cand])].tolist()
            gl_list = gate_lane_pad[order, gptr[order]].tolist()
            for i, gl, dist, vi, gp in zip(order, gl_list, d_gate[order].tolist(), v[order].tolist(),
                                           gptr[order].tolist()):
                if needs_stop[gl] and stop_done[i] != gp:
                    if vi < 0.3 and dist < 3.0:
                        stop_timer[i] += SUBSTEPS
                        if stop_timer[i] >= dwell[i]:
                            stop_done[i] = gp
                            stop_timer[i] = 0
                    if stop_done[i] != gp:
                        gate_gap[i] = dist
                        hard_stop[i] = True
                        gate_active = True
                        continue
                # nearest first: whoever is closer claims the conflict area, later ones see that claim.
                # Pedestrians are only respected by agents that can still stop for them.
                committed = vi > 3.0 and dist < vi * vi / (2 * COMMIT_DECEL) + 1.0
                # following a leader through the same connector (a platoon) needs no new check: crossing
                # traffic is already waiting for that leader
                j = lead_list[i]
                platoon = gap_list[i] < 15.0 and (lane_list[j] == gl or front_list[j] == gl)
                blocked = not platoon and any(clear_of.get(c, np.inf) < at + 1.0 for c, at in conflicts[gl])
                if blocked or (not committed and not busy.isdisjoint(crosswalks[gl])):
                    gate_gap[i] = dist
                    hard_stop[i] = not committed
                    gate_active = True
                    continue
                if dist < max(12.0, vi * vi / (2 * COMMIT_DECEL) + 3.0):
                    clear_of[gl] = -np.inf
        v0 = vlim_pad[ar, s.astype(int)]                  # s <= route_end < len(speed profile)
        ratio = v / np.maximum(v0, 0.1)
        ratio *= ratio
        vh = v * headway
        inter = (min_gap + np.maximum(vh + v * (v - v_l) / sqrt_ab, 0.0)) / np.maximum(gap_l, 0.1)
        inter *= inter
        if gate_active:
            inter_g = (1.0 + vh + v * v / sqrt_ab) / np.maximum(gate_gap, 0.1)
            np.maximum(inter, inter_g * inter_g, out=inter)
        acc = a_max * (1.0 - ratio * ratio - inter)
        np.clip(acc, -9.0, a_max, out=acc)
        v_new = np.maximum(v + acc * sim_dt, 0.0)
        acc = (v_new - v) / sim_dt                       # a stop within the step: decelerate exactly to 0
        s_new = s + 0.5 * (v + v_new) * sim_dt
        clamped = None
        if hard_stop.any():         # never roll over a line that is not clear (unless too close to stop)
            limit = np.where(hard_stop, np.maximum(g_s - half - 0.05, s), np.inf)
            over = s_new > limit
            if over.any():
                s_new = np.where(over, limit, s_new)
                v_new = np.where(over, 0.0, v_new)
                clamped = s_new
        for j in range(1, SUBSTEPS + 1):
            if t + j >= steps:
                break
            if j == SUBSTEPS:
                s_j, v_j = s_new, v_new
            else:
                s_j = s + v * (j * DT) + (0.5 * (j * DT) ** 2) * acc
                v_j = v + acc * (j * DT)
                if clamped is not None:
                    s_j = np.minimum(s_j, clamped)
            s_hist[:, t + j] = np.minimum(s_j, route_end)
            v_hist[:, t + j] = v_j
        s = np.minimum(s_new, route_end)
        v = v_new
    return s_hist, v_hist


def _driver_trajectories(drivers: List[_Driver], s_hist: np.ndarray, v_hist: np.ndarray) -> List[Trajectory]:
    out = []
    for i, d in enumerate(drivers):
        r = d.route
        x = np.interp(s_hist[i], r.s, r.points[:, 0])
        y = np.interp(s_hist[i], r.s, r.points[:, 1])
        h = np.interp(s_hist[i], r.s, r.heading)
        speed = v_hist[i]
        out.append(Trajectory(object_type=d.object_type, position=np.stack([x, y], 1), heading=h,
                              velocity=np.stack([speed * np.cos(h), speed * np.sin(h)], 1), is_av=d.is_av,
                              turns=r.turns))
    return out


# ----------------------------------------------------------------------------------------------------------
# pedestrians and static objects
# ----------------------------------------------------------------------------------------------------------

def _pedestrians(rng, road_map: RoadMap, prof: SyntheticProfile, steps: int) -> List[Trajectory]:
    if not road_map.nodes:
        return []
    count = int(rng.integers(prof.pedestrians[0], prof.pedestrians[1] + 1))
    out: List[Trajectory] = []
    for _ in range(count):
        path, s_cross = pedestrian_path(rng, road_map)
        ps = arc_length(path)
        heading_path = headings(path)
        kind = rng.random()
        if kind < 0.15:          # standing / waiting
            speed = np.zeros(steps)
        else:
            base = float(np.clip(rng.normal(1.35, 0.2), 0.7, 2.0)) if kind < 0.97 else float(rng.uniform(2.4, 3.2))
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
        if kind < 0.15:
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


def _crosswalk_occupancy(road_map: RoadMap, pedestrians: List[Trajectory], steps: int) -> np.ndarray:
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


_STATIC_TYPES = (('static', 0.35), ('background', 0.2), ('construction', 0.15), ('riderless_bicycle', 0.25),
                 ('unknown', 0.05))


def _static_objects(rng, road_map: RoadMap, prof: SyntheticProfile, steps: int) -> List[Trajectory]:
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
    types = [t for t, _ in _STATIC_TYPES]
    weights = [w for _, w in _STATIC_TYPES]
    for _ in range(int(rng.integers(prof.static_objects[0], prof.static_objects[1] + 1))):
        p, h = sidewalk_point(rng, road_map)
        outward = np.array([math.sin(h), -math.cos(h)])   # right of the kerb line points away from the road
        p = p + outward * rng.uniform(0.0, 3.0)
        kind = types[weighted_pick(rng, weights)]
        out.append(still(kind, p, float(rng.uniform(-math.pi, math.pi))))
    return out


def simulate_scene(rng: np.random.Generator, road_map: RoadMap, prof: SyntheticProfile, num_steps: int = 110
                   ) -> List[Trajectory]:
    """All objects of one scene over `num_steps` recorded steps (after the warm-up); the AV comes first."""
    steps = WARMUP_STEPS + num_steps
    table = _lane_table(road_map, prof.upstream_length)
    drivers = _spawn_vehicles(rng, road_map, table, prof, steps * DT)
    pedestrians = _pedestrians(rng, road_map, prof, steps)
    busy = _crosswalk_occupancy(road_map, pedestrians, steps)
    s_hist, v_hist = _simulate(drivers, table, busy, steps)
    objects = _driver_trajectories(drivers, s_hist, v_hist) + pedestrians
    objects += _static_objects(rng, road_map, prof, steps)
    for obj in objects:
        obj.position = obj.position[WARMUP_STEPS:]
        obj.heading = obj.heading[WARMUP_STEPS:]
        obj.velocity = obj.velocity[WARMUP_STEPS:]
    return objects
