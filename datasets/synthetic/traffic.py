"""Traffic of one synthetic scene: lane-following road users (car following, signals, right of way, lane
changes, turns), pedestrians and static objects, simulated together on a road network.

All positions are in the scene frame of the road network (metres), steps are DT = 0.1 s. The simulation runs
`WARMUP_STEPS + num_steps` steps; the warm-up lets randomly spawned traffic settle before anything is recorded.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from datasets.synthetic.car_following import simulate_vehicles
from datasets.synthetic.drivers import Driver, driver_speed_limits, spawn_vehicles
from datasets.synthetic.lane_changes import LaneChanges
from datasets.synthetic.lane_graph import LaneTable, build_lane_table
from datasets.synthetic.lateral_motion import driver_trajectories
from datasets.synthetic.pedestrians import crosswalk_occupancy, spawn_pedestrians
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.signals import (connector_priority, merging_pairs, queue_at_red_signals, red_lights,
                                        walk_signals)
from datasets.synthetic.static_objects import place_static_objects
from datasets.synthetic.trajectory import DT, NUM_STEPS, WARMUP_STEPS, Trajectory


def simulate_scene(rng: np.random.Generator, road_map: RoadMap, prof: SyntheticProfile, num_steps: int = NUM_STEPS,
                   table: Optional[LaneTable] = None) -> List[Trajectory]:
    """All objects of one scene over `num_steps` recorded steps (after the warm-up); the AV comes first.

    table: this scene's own lane table of `road_map` (built here when None; the scene may append virtual lanes)."""
    steps = WARMUP_STEPS + num_steps
    drivers, s_hist, v_hist, pedestrians = simulate_road_users(rng, road_map, prof, steps, table)
    # the drivers' 2-D motion is worked out for the recorded steps alone (it is a function of each step's s and v)
    objects = driver_trajectories(drivers, s_hist[:, WARMUP_STEPS:], v_hist[:, WARMUP_STEPS:])
    others = pedestrians + place_static_objects(rng, road_map, prof, steps)
    for obj in others:
        obj.position = obj.position[WARMUP_STEPS:]
        obj.heading = obj.heading[WARMUP_STEPS:]
        obj.velocity = obj.velocity[WARMUP_STEPS:]
    return objects + others


def simulate_road_users(rng: np.random.Generator, road_map: RoadMap, prof: SyntheticProfile, steps: int,
                        table: Optional[LaneTable] = None
                        ) -> Tuple[List[Driver], np.ndarray, np.ndarray, List[Trajectory]]:
    """(lane-following drivers with the routes they ended up taking, their route positions s [N, steps] and
    speeds [N, steps], pedestrian trajectories) over all `steps`, warm-up included."""
    if table is None:
        table = build_lane_table(road_map, prof.upstream_length)
    drivers = spawn_vehicles(rng, road_map, table, prof, steps * DT)
    red = red_lights(road_map, table, steps)
    queue_at_red_signals(drivers, road_map, table)
    pedestrians = spawn_pedestrians(rng, road_map, prof, steps, walk_signals(road_map, table, red))
    busy = crosswalk_occupancy(road_map, pedestrians, steps, table.crossings)
    # lane changes draw from their own generator, so the rest of the scene is the same with them or without
    change_rng = np.random.default_rng(int(rng.integers(1 << 62)))
    changes = LaneChanges(change_rng, road_map, table, prof) if prof.lane_changes else None
    s_hist, v_hist = simulate_vehicles(drivers, table, driver_speed_limits(drivers), busy, red, steps,
                                       connector_priority(road_map, table), merging_pairs(road_map, table), changes)
    return drivers, s_hist, v_hist, pedestrians
