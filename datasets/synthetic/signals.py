"""Traffic signals: a hidden two-phase plan per signalised node, shared by all agents of an approach.

Phase 0 (the arms along the node's first axis) is green from the start of the cycle for its green time, then
after an all-red clearance phase 1 is green until the next clearance. Amber is not modelled as a phase: a
driver who cannot stop comfortably when the light turns red drives on (see `car_following`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from datasets.synthetic.lane_graph import LaneTable
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.trajectory import DT

ALL_RED = 2.0   # seconds between one phase's red and the other's green
QUEUE_STOP_MARGIN = 1.0   # metres between a queue's first vehicle and the stop line


def red_lights(road_map: RoadMap, table: LaneTable, steps: int) -> Optional[np.ndarray]:
    """red [steps, lanes]: the signal of that connector lane shows red at that step; None without signals."""
    if not road_map.signals:
        return None
    t = np.arange(steps) * DT
    red = np.zeros((steps, table.total), dtype=bool)
    for lane_id, lane in road_map.lanes.items():
        if lane.signal_group < 0:
            continue
        cycle, green0, offset = road_map.signals[lane.node]
        x = (t + offset) % cycle
        if lane.signal_group == 0:
            green = x < green0
        else:
            green = (x >= green0 + ALL_RED) & (x < cycle - ALL_RED)
        red[:, table.index[lane_id]] = ~green
    return red


def red_elapsed(road_map: RoadMap, table: LaneTable) -> np.ndarray:
    """elapsed [lanes]: seconds for which the signal of each connector lane has shown red at step 0 (0 where it
    is green or there is no signal)."""
    elapsed = np.zeros(table.total)
    for lane_id, lane in road_map.lanes.items():
        if lane.signal_group < 0:
            continue
        cycle, green0, offset = road_map.signals[lane.node]
        x = offset % cycle
        if lane.signal_group == 0:
            since = x - green0                       # red from the end of phase 0's green to the cycle's end
        elif x >= cycle - ALL_RED:
            since = x - (cycle - ALL_RED)            # phase 1 turned red before the cycle's end ...
        else:
            since = x + ALL_RED if x < green0 + ALL_RED else 0.0   # ... and stays red into the next one
        elapsed[table.index[lane_id]] = max(since, 0.0)
    return elapsed


def queue_at_red_signals(drivers, road_map: RoadMap, table: LaneTable) -> None:
    """Stand the spawned road users that would have reached a red signal since it turned red in its queue.

    Traffic is spawned moving and spread along the lanes; without this, every queue at a red light builds up from
    nothing in the first seconds of a scene and most traffic near a signal brakes to a stop in the recording. A
    driver whose next gate is a red signal joins the queue at its line if it would have covered the distance to the
    back of the queue at its spawn speed in the time the signal has been red; the queue stands at the line, one
    vehicle length and standstill gap per vehicle. Approach lanes where some drivers have green, or that overlap
    another lane, are left alone.
    Changes the drivers' `s` and `v` in place."""
    elapsed = red_elapsed(road_map, table)
    approaches: Dict[int, List[Tuple[float, float, object]]] = {}
    mixed = set()
    for d in drivers:
        route = d.route
        front = d.s + 0.5 * d.length
        gate = next(((g, lane) for g, lane in route.gates if g > front), None)
        if gate is None:
            continue
        g, gate_lane = gate
        k = int(np.searchsorted(np.asarray(route.entry_start), g - 1e-6, side='right')) - 1
        approach = route.entry_lane[max(k, 0)]
        # where the approach lane overlaps another one (a turn pocket branching off) two queues would share the
        # road before it: those queues build up as traffic arrives
        if elapsed[gate_lane] <= 0.0 or table.siblings[approach]:
            mixed.add(approach)
            continue
        approaches.setdefault(approach, []).append((g - front, g, float(elapsed[gate_lane]), d))
    for approach, waiting in approaches.items():
        if approach in mixed:
            continue
        queue = 0.0
        for dist, g, since, d in sorted(waiting, key=lambda w: w[0]):
            if dist - queue >= since * d.v:
                break
            d.s = g - 0.5 * d.length - QUEUE_STOP_MARGIN - queue
            d.v = 0.0
            queue += d.length + d.min_gap


def walk_signals(road_map: RoadMap, table: LaneTable, red: Optional[np.ndarray]) -> Dict[int, np.ndarray]:
    """walk[crosswalk] [steps]: pedestrians may step onto that crosswalk of a signalised node.

    A crosswalk runs across one road; its walk phase is the red phase of the traffic along that road (the
    straight connectors that cross it), so pedestrians cross beside the traffic that has green and only turning
    vehicles meet them. Crosswalks without a straight signalised connector (the stem of a T) have no signal."""
    if red is None:
        return {}
    straight: Dict[int, list] = {}
    for lane_id, lane in road_map.lanes.items():
        if lane.signal_group >= 0 and lane.turn == 'straight' and lane.lane_type == 'VEHICLE':
            for cw in lane.crosswalks:
                straight.setdefault(cw, []).append(table.index[lane_id])
    return {cw: red[:, lanes].all(1) for cw, lanes in straight.items()}


def connector_priority(road_map: RoadMap, table: LaneTable) -> np.ndarray:
    """priority [lanes] of intersection connectors (-1 elsewhere): where two connectors conflict, the one of
    lower priority gives way to vehicles approaching on the other.

    At nodes without a signal the arterial has right of way: arms with a stop sign and, at uncontrolled nodes,
    arms across the arterial rank below it (a yield). On either, straight on and right turns rank above left
    turns (a permissive left yields to oncoming traffic)."""
    priority = np.full(table.total, -1, dtype=int)
    lanes = road_map.lanes
    for lane_id, lane in lanes.items():
        if lane.kind != 'connector':
            continue
        entry = lanes[lane.predecessors[0]].center if lane.predecessors else lane.center
        major = not lane.needs_stop and (lane.signal_group >= 0 or road_map.arterial is None
                                         or road_map.along_arterial(entry))
        priority[table.index[lane_id]] = (2 if major else 0) + (0 if lane.turn == 'left' else 1)
    return priority


def merging_pairs(road_map: RoadMap, table: LaneTable) -> Set[Tuple[int, int]]:
    """(lane, other lane) index pairs of conflicting connectors that come side by side from one road and lead into
    the same lane (a lane drop through the intersection): their traffic zips, one vehicle following the other,
    instead of waiting at the line for the other stream. Streams from different arms keep their right of way.
    Worked out once per lane table and its copies (the same set each time: read it, do not change it)."""
    if 'merging_pairs' not in table.derived:
        table.derived['merging_pairs'] = _merging_pairs(road_map, table)
    return table.derived['merging_pairs']


def _merging_pairs(road_map: RoadMap, table: LaneTable) -> Set[Tuple[int, int]]:
    pairs = set()
    lanes = road_map.lanes
    for lane_id, lane in lanes.items():
        start = lane.center[1] - lane.center[0]
        for other_id in lane.conflicts:
            other = lanes[other_id]
            if other.successors != lane.successors or other.turn != lane.turn:
                continue
            other_start = other.center[1] - other.center[0]
            # same direction of travel where they begin (within about 25 degrees)
            if float(start @ other_start) > 0.9 * float(np.hypot(*start) * np.hypot(*other_start)):
                pairs.add((table.index[lane_id], table.index[other_id]))
    return pairs
