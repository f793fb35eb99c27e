"""Road users that follow lanes (the AV, vehicles, buses, motorcyclists, cyclists): where they start, where they
go, and their individual driving style (desired speed, time headway, comfortable deceleration, reaction time,
own position within the lane)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from datasets.synthetic.lane_graph import LaneTable
from datasets.synthetic.profiles import SyntheticProfile, weighted_pick
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.routes import Route, forward_chain, join_lane_routes, lane_route, speed_profiles
from datasets.synthetic.trajectory import DT, NUM_HISTORICAL_STEPS, NUM_STEPS, WARMUP_STEPS

STOP_DWELL = (5, 13)         # steps a vehicle stands at a stop line before entering
FULL_STOP_PROB = 0.35        # drivers who stop completely at a stop sign; the others roll through slowly
ROLLING_STOP_SPEED = (1.5, 3.0)   # m/s below which a rolling stop counts as done
ARTERIAL_WEIGHT = 4.0       # preference of the AV for lanes along the arterial
SPAWN_GAP = 20.0             # minimum spacing when seeding vehicles on a lane (about a time headway)


@dataclass
class Driver:
    object_type: str
    route: Route
    s: float
    v: float
    length: float
    v_desired: float
    a_max: float
    b_comf: float
    headway: float
    min_gap: float
    lateral_acc: float
    dwell: int                    # steps standing at a stop line (0: a rolling stop)
    stop_speed: float             # m/s at the stop line that counts as having stopped
    reaction: float               # s, lag of the applied acceleration behind the desired one
    lateral_bias: float           # m, the driver's own offset from the lane centre (left positive)
    wander: Tuple[float, float, float]   # slow weaving within the lane: amplitude (m), wavelength (m), phase
    # lane changing: the advantage (m/s^2) that makes the driver change, the weight it gives to what its
    # followers gain or lose, and the time (s) its lateral move takes
    change_threshold: float = 0.3
    politeness: float = 0.3
    change_duration: float = 4.5
    patience: float = 0.0         # s behind a slower leader before it looks for a gap beside it
    is_av: bool = False


LATERAL_BIAS_SD = {'vehicle': 0.3, 'bus': 0.15, 'motorcyclist': 0.35, 'cyclist': 0.2}
KINEMATICS = {
    # type: (length, a_max, b_comf, headway, min_gap, speed factor)
    'vehicle': ((4.2, 5.2), (1.5, 2.5), (1.8, 2.8), (1.0, 1.8), 2.0, 1.0),
    'bus': ((11.0, 12.5), (0.8, 1.2), (1.5, 2.0), (1.4, 2.0), 2.5, 0.8),
    'motorcyclist': ((2.0, 2.4), (2.0, 3.0), (2.0, 3.0), (0.8, 1.2), 1.5, 1.05),
    'cyclist': ((1.7, 1.9), (0.7, 1.1), (1.2, 1.8), (0.8, 1.2), 1.2, 0.0),
}


def _bounds(lows, highs) -> Tuple[List[float], List[float]]:
    low = np.array(lows, dtype=float)
    return low.tolist(), (np.array(highs, dtype=float) - low).tolist()


def _uniform(rng, bounds: Tuple[List[float], List[float]]) -> List[float]:
    """Uniform draws in [low, high) per element: the same numbers as one rng.uniform(low, high) call per element
    (low + (high - low) * a standard uniform), at the cost of one call."""
    low, span = bounds
    # in plain Python: the same arithmetic (one product, one sum per element) on a handful of values
    return [a + b * u for a, b, u in zip(low, span, rng.random(len(low)).tolist())]


# speed factor, length, a_max, b_comf, headway, lateral acceleration in curves
STYLE_BOUNDS = {kind: _bounds((0.97, k[0][0], k[1][0], k[2][0], k[3][0], 1.5),
                              (1.0, k[0][1], k[1][1], k[2][1], k[3][1], 2.5))
                for kind, k in KINEMATICS.items()}
WANDER_BOUNDS = _bounds((0.03, 40.0, 0.0), (0.2, 140.0, 2 * np.pi))   # amplitude, wavelength, phase


_LANE_CHANGE_BOUNDS: Dict[tuple, Tuple[List[float], List[float]]] = {}


def _lane_change_bounds(prof: SyntheticProfile) -> Tuple[List[float], List[float]]:
    """Bounds of the lane-change style (threshold, politeness, duration, patience), made once per profile
    setting (every driver draws from them)."""
    ranges = (prof.lane_change_threshold, prof.lane_change_politeness, prof.lane_change_duration,
              prof.lane_change_patience)
    if ranges not in _LANE_CHANGE_BOUNDS:
        _LANE_CHANGE_BOUNDS[ranges] = _bounds(*zip(*ranges))
    return _LANE_CHANGE_BOUNDS[ranges]


def make_driver(rng, prof: SyntheticProfile, object_type: str, route: Route, s: float, v_desired: float,
                is_av=False) -> Driver:
    min_gap = KINEMATICS[object_type][4]
    lateral_sd = 0.08 if is_av else LATERAL_BIAS_SD[object_type]
    full_stop = is_av or rng.random() < FULL_STOP_PROB
    speed_factor, length, a_max, b_comf, headway, lateral_acc = _uniform(rng, STYLE_BOUNDS[object_type])
    dwell = int(rng.integers(*STOP_DWELL)) if full_stop else 0
    stop_speed = 0.3 if full_stop else float(rng.uniform(*ROLLING_STOP_SPEED))
    reaction = float(rng.uniform(0.3, 0.9))
    lateral_bias = min(max(float(rng.normal(0.0, lateral_sd)), -2.5 * lateral_sd), 2.5 * lateral_sd)
    wander = tuple(_uniform(rng, WANDER_BOUNDS))
    threshold, politeness, duration, patience = _uniform(rng, _lane_change_bounds(prof))
    return Driver(object_type=object_type, route=route, s=s, v=v_desired * speed_factor, length=length,
                  v_desired=v_desired, a_max=a_max, b_comf=b_comf, headway=headway, min_gap=min_gap,
                  lateral_acc=lateral_acc, dwell=dwell, stop_speed=stop_speed, reaction=reaction,
                  lateral_bias=lateral_bias, wander=wander, change_threshold=threshold, politeness=politeness,
                  change_duration=duration, patience=patience, is_av=is_av)


def driver_speed_limits(drivers: List[Driver]) -> List[np.ndarray]:
    """Speed limit [metres] along each driver's route; turns are anticipated with a gentler deceleration than
    the driver's comfortable maximum."""
    return speed_profiles([d.route for d in drivers], [d.v_desired for d in drivers],
                          [d.lateral_acc for d in drivers], [0.5 * d.b_comf for d in drivers])


def spawn_vehicles(rng, road_map: RoadMap, table: LaneTable, prof: SyntheticProfile, horizon_s: float,
                   ) -> List[Driver]:
    """The AV (first) and the other road users that follow lanes (vehicles, buses, motorcyclists, cyclists)."""
    av = _spawn_av(rng, road_map, table, prof)
    occupied: Dict[int, List[float]] = {}
    av_lane, av_pos = lane_at(av.route, av.s)
    occupied.setdefault(av_lane, []).append(av_pos)
    drivers = [av] + _spawn_traffic(rng, road_map, table, prof, horizon_s, occupied)
    drivers += _spawn_cyclists(rng, road_map, table, prof, horizon_s, occupied)
    join_lane_routes([d.route for d in drivers], table)
    return drivers


def _spawn_av(rng, road_map: RoadMap, table: LaneTable, prof: SyntheticProfile) -> Driver:
    """The AV: on a road lane near the scene centre, about there at the end of the history."""
    lanes = road_map.lanes
    speed_lo, speed_hi = prof.desired_speed
    road_lanes = [table.index[lid] for lid, lane in lanes.items()
                  if lane.kind == 'road' and lane.lane_type == 'VEHICLE']
    mids = np.array([table.points[i][len(table.points[i]) // 2] for i in road_lanes])
    dist = np.hypot(mids[:, 0], mids[:, 1])
    near = [road_lanes[i] for i in np.nonzero(dist < max(45.0, np.sort(dist)[min(3, len(dist) - 1)]))[0]]
    # the AV, like most traffic, mostly drives along the arterial
    weights = [ARTERIAL_WEIGHT if table.arterial[i] else 1.0 for i in near]
    anchor = near[weighted_pick(rng, weights)]
    av_speed = float(rng.uniform(speed_lo, 0.5 * (speed_lo + speed_hi)))
    back_needed = av_speed * (WARMUP_STEPS + NUM_HISTORICAL_STEPS) * DT * float(rng.uniform(0.6, 1.0))
    back = _predecessor_chain(rng, road_map, table, anchor, back_needed)
    offset_in_anchor = float(rng.uniform(0.0, table.lengths[anchor]))
    before = float(sum(table.lengths[b] for b in back))
    s_av = max(0.0, before + offset_in_anchor - back_needed)
    need = s_av + speed_hi * (WARMUP_STEPS + NUM_STEPS) * DT * 1.2 + 40.0
    chain = back + forward_chain(rng, road_map, table, prof, anchor, need - before, 'VEHICLE')
    route = lane_route(table, chain)
    return make_driver(rng, prof, 'vehicle', route, s_av, av_speed, is_av=True)


def _predecessor_chain(rng, road_map: RoadMap, table: LaneTable, anchor: int, back_needed: float) -> List[int]:
    """Lane indices leading to `anchor` (in driving order) covering about `back_needed` metres."""
    lanes = road_map.lanes
    back = []
    total = 0.0
    cur = anchor
    while total < back_needed:
        preds = [table.index[p] for p in lanes[table.ids[cur]].predecessors if lanes[p].lane_type == 'VEHICLE']
        if not preds:
            if cur in table.pre:
                back.append(table.pre[cur])
            break
        cur = preds[int(rng.integers(len(preds)))]
        back.append(cur)
        total += table.lengths[cur]
    return back[::-1]


def _spawn_traffic(rng, road_map: RoadMap, table: LaneTable, prof: SyntheticProfile, horizon_s: float,
                   occupied: Dict[int, List[float]]) -> List[Driver]:
    """Motor vehicles: Poisson along every drivable lane and the virtual roads feeding the map."""
    lanes = road_map.lanes
    density = float(rng.uniform(*prof.vehicle_density)) / 100.0
    spawn_lanes = [table.index[lid] for lid, lane in lanes.items()
                   if lane.lane_type == 'VEHICLE' and lane.kind != 'connector']
    spawn_lanes += [v for k, v in table.pre.items() if lanes[table.ids[k]].lane_type == 'VEHICLE']
    types = [t for t, _ in prof.vehicle_type_weights]
    type_w = [w for _, w in prof.vehicle_type_weights]
    out = []
    for idx in spawn_lanes:
        length = table.lengths[idx]
        arterial = road_map.arterial is None or table.arterial[idx]
        count = rng.poisson(density * length * (1.0 if arterial else prof.cross_street_density))
        if count == 0:
            continue
        positions = np.sort(rng.uniform(0.0, max(length - 4.0, 0.0), size=count))
        taken = occupied.setdefault(idx, [])
        for p in positions.tolist():
            if any(abs(p - q) < SPAWN_GAP for q in taken):
                continue
            taken.append(p)
            object_type = types[weighted_pick(rng, type_w)]
            out.append(driver_from(rng, road_map, table, prof, idx, p, object_type, 'VEHICLE', horizon_s))
    return out


def _spawn_cyclists(rng, road_map: RoadMap, table: LaneTable, prof: SyntheticProfile, horizon_s: float,
                    occupied: Dict[int, List[float]]) -> List[Driver]:
    """Cyclists: bike lanes when the map has them, else the kerb-side vehicle lane."""
    lanes = road_map.lanes
    n_cyclists = int(rng.integers(prof.cyclists[0], prof.cyclists[1] + 1))
    bike_lanes = [table.index[lid] for lid, lane in lanes.items() if lane.lane_type == 'BIKE' and lane.kind == 'road']
    kerb_lanes = [table.index[lid] for lid, lane in lanes.items()
                  if lane.kind == 'road' and lane.lane_type == 'VEHICLE' and lane.right_same is None
                  and (lane.right_neighbor is None)]
    pool, lane_type = (bike_lanes, 'BIKE') if bike_lanes else (kerb_lanes, 'VEHICLE')
    out = []
    for _ in range(n_cyclists if pool else 0):
        idx = pool[int(rng.integers(len(pool)))]
        p = float(rng.uniform(0.0, max(table.lengths[idx] - 4.0, 0.0)))
        taken = occupied.setdefault(idx, [])
        if any(abs(p - q) < SPAWN_GAP for q in taken):
            continue
        taken.append(p)
        out.append(driver_from(rng, road_map, table, prof, idx, p, 'cyclist', lane_type, horizon_s))
    return out


def _lanes_to_the_right(road_map: RoadMap, table: LaneTable, idx: int) -> int:
    """Same-direction lanes right of lane `idx` (0 for virtual lanes): faster traffic keeps left."""
    if idx >= len(table.ids):
        return 0
    lanes, count = road_map.lanes, 0
    lane = lanes[table.ids[idx]]
    while lane.right_same is not None and count < 4:
        lane = lanes[lane.right_same]
        count += 1
    return count


def lane_at(route: Route, s: float) -> Tuple[int, float]:
    k = int(np.searchsorted(np.asarray(route.entry_start), s, side='right')) - 1
    return route.entry_lane[k], s - route.entry_base[k]


def driver_from(rng, road_map, table, prof, idx: int, p: float, object_type: str, lane_type: str,
                 horizon_s: float) -> Driver:
    speed_lo, speed_hi = prof.desired_speed
    if object_type == 'cyclist':
        v_desired = float(rng.uniform(3.5, 6.5))
    else:
        v_desired = float(rng.uniform(speed_lo, speed_hi)) * KINEMATICS[object_type][5]
        v_desired += prof.lane_speed_step * _lanes_to_the_right(road_map, table, idx)
    start = idx
    prefix: List[int] = []
    if idx >= len(table.ids):   # on a virtual feeder road: continue into the lane it feeds
        real = next(k for k, v in table.pre.items() if v == idx)
        prefix, start = [idx], real
    need = p + v_desired * horizon_s * 1.15 + 40.0
    chain = prefix + forward_chain(rng, road_map, table, prof, start, need - (table.lengths[idx] if prefix else 0.0),
                                    lane_type)
    route = lane_route(table, chain)
    return make_driver(rng, prof, object_type, route, p, v_desired)

