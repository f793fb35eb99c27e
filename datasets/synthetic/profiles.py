"""Named configurations ("profiles") of the synthetic Argoverse 2 scenario generator.

A profile fixes the kind of road network and the traffic statistics, so that two profiles behave like two
different datasets (used for multi-dataset experiments). Ranges are (low, high) for uniform draws; weight tuples
are ((value, weight), ...) for categorical draws.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

AV2_CITIES = ('austin', 'dearborn', 'miami', 'palo-alto', 'pittsburgh', 'washington-dc')


@dataclass(frozen=True)
class SyntheticProfile:
    name: str
    description: str
    road_kind: str                                   # 'grid' (urban intersections) or 'highway'
    cities: Tuple[str, ...] = AV2_CITIES
    # --- urban grid network ---
    grid_shapes: Tuple = (((1, 1), 0.2), ((2, 1), 0.45), ((2, 2), 0.2), ((3, 1), 0.15))
    block_length: Tuple[float, float] = (120.0, 220.0)  # metres between intersections (arterial signal spacing)
    dangling_length: Tuple[float, float] = (60.0, 100.0)
    dangling_drop_prob: float = 0.25                 # a dropped outer arm turns a 4-way node into a T-junction
    node_jitter: float = 4.0                         # metres, breaks the perfect grid
    arm_angle_jitter_deg: float = 10.0
    lanes_per_direction: Tuple = ((1, 0.45), (2, 0.45), (3, 0.10))
    lane_width: Tuple[float, float] = (3.2, 3.8)
    divided_prob: float = 0.45                       # painted/raised median between the two directions
    turn_pocket_prob: float = 0.6                    # on divided roads: left-turn pocket before the node
    bike_lane_prob: float = 0.35
    bike_lane_width: Tuple[float, float] = (1.5, 2.0)
    crosswalk_prob: float = 0.7                      # per intersection arm
    # half the intersections signalised; most others stop the cross street only (two-way stop), the arterial runs
    node_control_weights: Tuple = (('signal', 0.5), ('all_stop', 0.02), ('minor_stop', 0.36), ('uncontrolled', 0.12))
    signal_cycle: Tuple[float, float] = (100.0, 150.0)  # seconds for both phases, common to a scene's corridor
    arterial_green_share: Tuple[float, float] = (0.72, 0.85)  # of the cycle, for the arterial phase
    # traffic on cross streets relative to the arterial: demand in proportion to the shorter green they get
    cross_street_density: float = 0.35
    progression_speed: Tuple[float, float] = (11.0, 14.0)    # m/s of the green wave along the arterial
    lane_segment_length: Tuple[float, float] = (12.0, 30.0)   # metres; longer road pieces are cut into segments
    warp_amplitude: Tuple[float, float] = (0.0, 5.0)  # smooth deformation making grid roads curve
    warp_wavelength: Tuple[float, float] = (220.0, 420.0)
    # --- highway network ---
    highway_length: Tuple[float, float] = (420.0, 540.0)
    highway_lanes: Tuple = ((2, 0.3), (3, 0.5), (4, 0.2))
    highway_lane_width: Tuple[float, float] = (3.5, 3.9)
    highway_median: Tuple[float, float] = (1.0, 10.0)
    highway_max_curvature: float = 1.0 / 350.0
    exit_ramp_prob: float = 0.6
    entry_ramp_prob: float = 0.5
    # --- traffic ---
    vehicle_density: Tuple[float, float] = (1.0, 2.0)   # vehicles per 100 m of lane
    desired_speed: Tuple[float, float] = (9.0, 14.0)     # m/s, per vehicle
    upstream_length: float = 130.0                       # virtual road before map entries that feeds traffic in
    turn_weights: Dict[str, float] = field(default_factory=lambda: {'straight': 0.82, 'left': 0.09, 'right': 0.09})
    pocket_choice_prob: float = 0.2                      # taking the left-turn pocket when passing one
    exit_choice_prob: float = 0.3                        # taking a highway exit ramp
    # lane changes decided during the simulation (see lane_changes): per-driver ranges of the advantage that
    # triggers one (m/s^2), the politeness towards the followers, the duration of the lateral move (s) and the
    # patience (s) behind a slower leader before looking for a gap
    lane_changes: bool = True
    lane_change_threshold: Tuple[float, float] = (0.0, 0.4)
    lane_change_politeness: Tuple[float, float] = (0.0, 0.6)
    lane_change_duration: Tuple[float, float] = (3.0, 6.0)
    lane_change_patience: Tuple[float, float] = (0.0, 1.0)
    lane_preference_share: float = 0.6                   # drivers who want the lane to one side (route beyond)
    lane_speed_step: float = 0.5                         # m/s more desired speed per lane to the right
    vehicle_type_weights: Tuple = (('vehicle', 0.93), ('bus', 0.04), ('motorcyclist', 0.03))
    cyclists: Tuple[int, int] = (0, 3)
    pedestrians: Tuple[int, int] = (2, 10)
    pedestrian_standing_prob: float = 0.5
    static_objects: Tuple[int, int] = (2, 10)
    parked_side_prob: float = 0.3                        # per road side: a row of parked cars at the curb
    sensor_range: Tuple[float, float] = (70.0, 100.0)    # metres around the AV in which tracks are observed
    track_break_rate: float = 0.02                       # per step: the tracker loses an object (x distance)
    track_gap_steps: float = 6.0                         # mean steps until a lost object gets a new track


PROFILES: Dict[str, SyntheticProfile] = {
    'default': SyntheticProfile(
        name='default',
        description='urban grid: 1-6 intersections (4-way and T), 1-3 lanes per direction, turn pockets, '
                    'bike lanes, crosswalks, stop-controlled and uncontrolled nodes, pedestrians and cyclists',
        road_kind='grid',
    ),
    'highway': SyntheticProfile(
        name='highway',
        description='divided multi-lane curved road (2-4 lanes per direction) with exit and entry ramps, '
                    'high speeds, frequent lane changes, no pedestrians',
        road_kind='highway',
        cities=('austin', 'dearborn', 'miami', 'pittsburgh'),
        vehicle_density=(1.2, 2.4),
        desired_speed=(21.0, 32.0),
        upstream_length=250.0,
        lane_change_threshold=(0.15, 0.6),
        lane_change_patience=(2.0, 10.0),
        lane_preference_share=0.25,
        lane_speed_step=1.5,
        lane_segment_length=(14.0, 34.0),
        vehicle_type_weights=(('vehicle', 0.94), ('bus', 0.03), ('motorcyclist', 0.03)),
        cyclists=(0, 0),
        pedestrians=(0, 0),
        static_objects=(0, 4),
        parked_side_prob=0.0,
        sensor_range=(90.0, 130.0),
        track_break_rate=0.015,
    ),
    # Small scenes for demo.sh on a CPU: the urban grid of 'default' cut down to one or two intersections, fewer
    # lanes and side objects and a shorter sensor range, so a QCNet step costs a fraction of a 'default' one.
    'demo': SyntheticProfile(
        name='demo',
        description='small urban scenes for the CPU demo: 1-2 intersections, 1-2 lanes per direction, few '
                    'pedestrians and static objects, short sensor range',
        road_kind='grid',
        grid_shapes=(((1, 1), 0.5), ((2, 1), 0.5)),
        block_length=(60.0, 90.0),
        dangling_length=(45.0, 70.0),
        lanes_per_direction=((1, 0.6), (2, 0.4)),
        bike_lane_prob=0.15,
        crosswalk_prob=0.5,
        cyclists=(0, 1),
        pedestrians=(0, 4),
        static_objects=(0, 3),
        parked_side_prob=0.1,
        vehicle_density=(0.5, 1.2),                  # small scenes: lighter traffic than 'default'
        cross_street_density=0.8,                    # ... but keep the cross streets busy enough
        sensor_range=(45.0, 60.0),
    ),
    # The size of Argoverse 2's largest scenes (about 150 tracks, about 250 lane segments and crossings): a dense
    # downtown grid for speed and memory benchmarks on heavy scenes, not a dataset of its own.
    'heavy': SyntheticProfile(
        name='heavy',
        description='dense downtown grid the size of the largest Argoverse 2 scenes (~150 tracks, ~250 map '
                    'polygons), for speed and memory benchmarks',
        road_kind='grid',
        grid_shapes=(((2, 2), 0.5), ((3, 1), 0.5)),
        block_length=(100.0, 150.0),
        dangling_drop_prob=0.1,
        lanes_per_direction=((2, 0.6), (3, 0.4)),
        vehicle_density=(2.0, 2.8),
        cross_street_density=0.6,
        cyclists=(2, 6),
        pedestrians=(15, 30),
        static_objects=(10, 20),
        parked_side_prob=0.5,
        sensor_range=(110.0, 140.0),
    ),
}


def weighted_pick(rng, weights) -> int:
    """Index drawn with probability proportional to `weights` (non-negative, not all zero).

    Same role as rng.choice(len(w), p=w / sum(w)) at a fraction of its cost for the short lists used here.
    """
    total = float(sum(weights))
    u = float(rng.random()) * total
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if u < acc:
            return i
    return len(weights) - 1


def get_profile(name: str) -> SyntheticProfile:
    """The profile called `name`; raises ValueError listing the known names otherwise."""
    if name not in PROFILES:
        raise ValueError(f'unknown synthetic profile {name!r}; known profiles: {", ".join(sorted(PROFILES))}')
    return PROFILES[name]
