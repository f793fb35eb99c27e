"""Routes: the chain of lanes (and lane-change blends) a road user follows, with its lane bookkeeping and
speed profile."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import List, Optional, Tuple

import numpy as np

from datasets.synthetic.geometry import arc_length_and_headings, resample
from datasets.synthetic.lane_graph import LaneTable, straight, POST_EXTENSION
from datasets.synthetic.profiles import SyntheticProfile, weighted_pick
from datasets.synthetic.road_network import RoadMap


@dataclass
class Route:
    """Lane bookkeeping of a route, and its geometry: `parts` (pieces of lane-local points, arc length, heading,
    curvature) until `join_geometry` turns them into the arrays below."""
    entry_start: List[float]      # route s where each entry (lane occupancy interval) begins
    entry_lane: List[int]
    entry_base: List[float]       # route s at which that lane's own s is zero
    entry_lane2: List[int]        # second lane the agent is in (the other lane while changing lanes)
    entry_base2: List[float]
    gates: List[Tuple[float, int]]
    turns: int
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    part_offsets: List[float]     # route s of each part's local arc length 0
    part_shifts: List[float]      # multiples of 2 pi added to each part's heading (continuous heading)
    points: Optional[np.ndarray] = None       # [K, 2]
    s: Optional[np.ndarray] = None            # [K] arc length
    heading: Optional[np.ndarray] = None      # [K] unwrapped tangent angle
    curvature: Optional[np.ndarray] = None    # [K] |d heading / ds|
    # ('lane', lane) and ('lc', source lanes, target lanes[, start, span]) in order; a lane change moves across
    # over the `span` of its length that begins at `start` (fractions; 0.1 and 0.8 when not given)
    elements: Optional[List] = None
    element_start: Optional[List[float]] = None   # route s at which each element begins
    lane_change_end: float = -math.inf        # route s at which its last lane change ends


def _successor_options(road_map: RoadMap, table: LaneTable, prof: SyntheticProfile, lane_idx: int,
                       lane_type: str) -> Tuple[List[int], List[float]]:
    """(successor lane indices a road user on lane `lane_type` may take, their weights)."""
    lane = road_map.lanes[table.ids[lane_idx]]
    options = [table.index[s] for s in lane.successors if road_map.lanes[s].lane_type == lane_type]
    if not options and lane_type == 'BIKE':   # the bike lane ends: cyclists carry on in traffic
        options = [table.index[s] for s in lane.successors]
    if len(options) < 2:
        return options, []
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
    return options, weights


def forward_chain(rng, road_map, table, prof, start_idx: int, length_needed: float, lane_type: str) -> List[int]:
    """Lane indices from start_idx onwards covering `length_needed` metres, ending in a virtual exit if needed."""
    chain = [start_idx]
    lengths, choices, n_real = table.lengths, table.successor_choices, len(table.ids)
    total = lengths[start_idx]
    while total < length_needed:
        cur = chain[-1]
        if cur >= n_real:   # a virtual lane: the road ends
            break
        # the successor options are the same for every road user of the scene: worked out once per lane
        key = (cur, lane_type)
        if key not in choices:
            choices[key] = _successor_options(road_map, table, prof, cur, lane_type)
        options, weights = choices[key]
        if not options:   # leaves the map (or only lanes of another type follow): continue straight on
            chain.append(ensure_post(table, cur))
            break
        nxt = options[0] if len(options) == 1 else options[weighted_pick(rng, weights)]
        chain.append(nxt)
        total += lengths[nxt]
    return chain


def ensure_post(table: LaneTable, lane_idx: int) -> int:
    if lane_idx not in table.post:
        c = table.points[lane_idx]
        table.post[lane_idx] = table.add(straight(c[-1], c[-1] - c[-2], 0.0, POST_EXTENSION))
    return table.post[lane_idx]


def parallel_run(road_map: RoadMap, table: LaneTable, src_lanes: List[int], first_target: int,
                 wanted: float, at_most: float = math.inf) -> Tuple[List[int], List[int]]:
    """(source pieces, target pieces) of a lane change starting on src_lanes[0] towards first_target (a side
    neighbour of it): consecutive road or auxiliary pieces of `src_lanes` with their parallel pieces in the target
    lane, until they cover `wanted` metres (or the road stops running parallel, or the next piece would take
    them past `at_most` metres)."""
    n_real, lengths = len(table.ids), table.lengths
    # (next source piece, target piece) -> the target's successor beside it: a function of the map's lanes alone
    beside = table.derived.setdefault('parallel_next', {})
    src, dst = [src_lanes[0]], [first_target]
    length = lengths[src_lanes[0]]
    for nxt_src in src_lanes[1:]:
        if length >= wanted or nxt_src >= n_real or length + lengths[nxt_src] > at_most:
            break
        key = (nxt_src, dst[-1])
        if key not in beside:
            beside[key] = _parallel_next(road_map, table, nxt_src, dst[-1])
        if beside[key] < 0:
            break
        src.append(nxt_src)
        dst.append(beside[key])
        length += lengths[nxt_src]
    return src, dst


def _parallel_next(road_map: RoadMap, table: LaneTable, src_next: int, target: int) -> int:
    """The successor of lane `target` that runs beside lane `src_next` (map lanes); -1 when there is none or
    src_next is no road or auxiliary piece."""
    lane = road_map.lanes[table.ids[src_next]]
    side_of = {lane.left_same, lane.right_same}
    parallel = [table.index[s] for s in road_map.lanes[table.ids[target]].successors if s in side_of]
    if lane.kind not in ('road', 'aux') or not parallel:
        return -1
    return parallel[0]


def build_route(table: LaneTable, road_map: RoadMap, elements: List) -> Route:
    """Concatenate the lanes (and lane-change blends) of `elements` into one route with lane bookkeeping."""
    if all(element[0] == 'lane' for element in elements):
        return lane_route(table, [element[1] for element in elements])
    element_start: List[float] = []   # also the route s of each part's lane-local s = 0
    lane_change_end = -math.inf
    parts: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    shifts: List[float] = []        # multiples of 2 pi that keep the heading continuous
    entries: List[Tuple[float, int, float, int, float]] = []   # (start, lane, base, lane2, base2) of each entry
    gates = []
    turns = 0
    pos = 0.0
    last_heading = None
    two_pi = 2 * math.pi
    lengths, heading_ends, tails, gated, is_turn = (table.lengths, table.heading_ends, table.tails, table.gated,
                                                    table.is_turn)
    for element in elements:
        element_start.append(pos)
        if element[0] == 'lane':
            idx = element[1]
            _, h_second, h_last = heading_ends[idx]
            if last_heading is None:
                parts.append((table.points[idx], table.arc[idx], table.heading[idx], table.curvature[idx]))
                shift = 0.0
            else:   # consecutive lanes share their joint point
                parts.append(tails[idx])
                shift = two_pi * round((last_heading - h_second) / two_pi)
            shifts.append(shift)
            last_heading = h_last + shift
            entries.append((pos, idx, pos, idx, pos))
            if gated[idx]:
                gates.append((pos, idx))
            turns += is_turn[idx]
            pos += lengths[idx]
            continue
        src, dst = element[1], element[2]
        start, span = element[3:5] if len(element) > 3 else (0.1, 0.8)   # of the manoeuvre: the lateral move
        a = np.concatenate([table.points[src[0]]] + [table.tails[i][0] for i in src[1:]])
        b = np.concatenate([table.points[dst[0]]] + [table.tails[i][0] for i in dst[1:]])
        count = max(len(a), len(b))
        if len(a) != len(b):   # parallel pieces of one road already have equal point counts
            a, b = resample(a, count), resample(b, count)
        x = _unit_steps(count) - start     # np.clip((linspace - start) / span, 0, 1) with fewer temporaries
        x /= span
        np.maximum(x, 0.0, out=x)
        np.minimum(x, 1.0, out=x)
        alpha = (x * x * (3 - 2 * x))[:, None]
        pts = (1 - alpha) * a + alpha * b
        arc, heading = arc_length_and_headings(pts)
        curv = np.zeros(count)
        curv[1:-1] = np.abs(heading[2:] - heading[:-2]) / np.maximum(arc[2:] - arc[:-2], 1e-6)
        length = float(arc[-1])
        # during the manoeuvre the agent is in both lanes: the source lane first, then (from the crossing of
        # the lane line) the target lane as its primary lane, the other one as its secondary lane
        switch = pos + (start + 0.5 * span) * length

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
            entries.append((cut, *covering(primary, cut), *covering(secondary, cut)))
        if last_heading is None:
            shifts.append(0.0)
        else:
            pts, arc, heading, curv = pts[1:], arc[1:], heading[1:], curv[1:]
            shifts.append(two_pi * round((last_heading - float(heading[0])) / two_pi))
        last_heading = float(heading[-1]) + shifts[-1]
        parts.append((pts, arc, heading, curv))
        pos += length
        lane_change_end = pos
    entry_start, entry_lane, entry_base, entry_lane2, entry_base2 = map(list, zip(*entries))
    return Route(entry_start=entry_start, entry_lane=entry_lane, entry_base=entry_base, entry_lane2=entry_lane2,
                 entry_base2=entry_base2, gates=gates, turns=turns, parts=parts, part_offsets=list(element_start),
                 part_shifts=shifts, elements=list(elements), element_start=element_start,
                 lane_change_end=lane_change_end)


@lru_cache(maxsize=1024)
def _unit_steps(count: int) -> np.ndarray:
    """np.linspace(0, 1, count), read-only: the blends of lane changes share it."""
    out = np.linspace(0.0, 1.0, count)
    out.flags.writeable = False
    return out


def lane_route(table: LaneTable, chain: List[int]) -> Route:
    """`build_route` for a plain chain of lane indices (no lane change): the same route, built in fewer steps."""
    two_pi = 2 * math.pi
    heading_ends, gated, is_turn = table.heading_ends, table.gated, table.is_turn
    first = chain[0]
    parts = [(table.points[first], table.arc[first], table.heading[first], table.curvature[first])]
    parts += [table.tails[idx] for idx in chain[1:]]
    # the same sums as adding the lane lengths one by one
    starts = list(accumulate([table.lengths[idx] for idx in chain[:-1]], initial=0.0))
    shifts = [0.0]
    last_heading = heading_ends[first][2]
    for idx in chain[1:]:   # consecutive lanes share their joint point
        _, h_second, h_last = heading_ends[idx]
        shift = two_pi * round((last_heading - h_second) / two_pi)
        shifts.append(shift)
        last_heading = h_last + shift
    return Route(entry_start=starts, entry_lane=list(chain), entry_base=list(starts), entry_lane2=list(chain),
                 entry_base2=list(starts), gates=[(pos_, idx) for pos_, idx in zip(starts, chain) if gated[idx]],
                 turns=sum([is_turn[idx] for idx in chain]), parts=parts, part_offsets=list(starts),
                 part_shifts=shifts, elements=[('lane', idx) for idx in chain], element_start=starts)


def join_geometry(routes: List[Route]) -> None:
    """Set points, s, heading and curvature of every route from its parts: one concatenation for all routes, each
    route gets its slice."""
    parts = [part for route in routes for part in route.parts]
    counts = [len(part[0]) for part in parts]
    offsets = [offset for route in routes for offset in route.part_offsets]
    shifts = [shift for route in routes for shift in route.part_shifts]
    points = np.concatenate([part[0] for part in parts])
    s = np.concatenate([part[1] for part in parts]) + np.repeat(offsets, counts)
    heading = np.concatenate([part[2] for part in parts]) + np.repeat(shifts, counts)
    curvature = np.concatenate([part[3] for part in parts])
    end = 0
    for route in routes:
        count = sum(len(part[0]) for part in route.parts)
        start, end = end, end + count
        route.points, route.s = points[start:end], s[start:end]
        route.heading, route.curvature = heading[start:end], curvature[start:end]


def join_lane_routes(routes: List[Route], table: LaneTable) -> None:
    """`join_geometry` for routes of lanes alone (as `build_route` makes them without lane changes): each route's
    points are gathered from the lane table's flat arrays in one pass for all routes (the same values)."""
    if any(route.lane_change_end != -math.inf for route in routes):
        raise ValueError('join_lane_routes takes routes without lane changes')
    lanes = np.array([element[1] for route in routes for element in route.elements])
    per_route = np.array([len(route.elements) for route in routes])
    ends = np.cumsum(per_route)
    tail = np.ones(len(lanes), dtype=int)      # consecutive lanes share their joint point: it is skipped
    tail[ends - per_route] = 0
    first = np.asarray(table.first_point)[lanes] + tail
    counts = np.array([len(table.arc[k]) for k in lanes.tolist()]) - tail
    stops = np.cumsum(counts)
    at = np.repeat(first - (stops - counts), counts)
    at += np.arange(len(at))
    points, arc, heading, curvature = table.flat_geometry()
    # `take`: a two-dimensional fancy index of rows costs many times as much here; in place where the values
    # allow (these arrays hold every point of every route)
    points, s, heading, curvature = points.take(at, axis=0), arc.take(at), heading.take(at), curvature.take(at)
    s += np.repeat([offset for route in routes for offset in route.part_offsets], counts)
    heading += np.repeat([shift for route in routes for shift in route.part_shifts], counts)
    bounds = stops[ends - 1].tolist()
    for route, start, end in zip(routes, [0] + bounds, bounds):
        route.points, route.s = points[start:end], s[start:end]
        route.heading, route.curvature = heading[start:end], curvature[start:end]


def speed_profiles(routes: List[Route], v_desired: List[float], lateral_acc: List[float],
                   comfort_dec: List[float]) -> List[np.ndarray]:
    """Speed limit of each route at 1 m resolution: its desired speed, the curvature limit, anticipated by braking
    at its comfortable deceleration. All routes are processed together; each gets its slice."""
    counts = [len(route.s) for route in routes]
    s = np.concatenate([route.s for route in routes])

    def per_point(values):
        return np.repeat(values, counts)

    curvature = _smoothed_curvature([route.curvature for route in routes], counts)
    limit = np.minimum(per_point(v_desired), np.sqrt(per_point(lateral_acc) / np.maximum(curvature, 1e-6)))
    # v(s)^2 <= min_{s' >= s} v(s')^2 + 2 b (s' - s): a reverse running minimum along each route
    braking = per_point([2 * b for b in comfort_dec]) * s
    key = limit ** 2 + braking
    bounds = np.cumsum([0] + counts).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        key[a:b] = np.minimum.accumulate(key[a:b][::-1])[::-1]
    limit = np.sqrt(np.maximum(key - braking, 0.0))
    return _per_metre_minimum(s, limit, v_desired, bounds)


def _smoothed_curvature(curvatures: List[np.ndarray], counts: List[int]) -> np.ndarray:
    """Curvature averaged over about 4 m (points are 0.5 m apart): drivers take a curve, not its joints. Each
    route is padded with its end values (as np.pad(mode='edge')) and convolved in one pass over all routes."""
    c = np.concatenate(curvatures)
    ends = np.cumsum(counts)
    copies = np.ones(len(c), dtype=int)
    copies[ends - counts] += 4
    copies[ends - 1] += 4
    smooth = np.convolve(np.repeat(c, copies), np.full(9, 1.0 / 9), mode='valid')
    if len(counts) == 1:    # (the single routes of lane changes)
        return smooth
    # drop the 8 windows that straddle the end of one route and the start of the next
    keep = np.ones(len(smooth), dtype=bool)
    keep[((ends[:-1] + 8 * np.arange(len(counts) - 1))[:, None] + np.arange(8)).ravel()] = False
    return smooth[keep]


def _per_metre_minimum(s: np.ndarray, limit: np.ndarray, v_desired: List[float], bounds: List[int]
                       ) -> List[np.ndarray]:
    """Per route, the speed limit at each metre: the lowest one within it, so short tight curves are not skipped
    (cells beyond the route end hold the last one)."""
    cells = s.astype(int)
    sizes = [int(cells[b - 1]) + 2 for b in bounds[1:]]
    grid_start = np.cumsum([0] + sizes).tolist()
    grid = np.repeat(v_desired, sizes)
    cells += np.repeat(grid_start[:-1], np.diff(bounds))
    np.minimum.at(grid, cells, limit)
    last = np.array(grid_start[1:]) - 1
    grid[last] = grid[last - 1]
    return [grid[a:b] for a, b in zip(grid_start[:-1], grid_start[1:])]
