"""The synthetic default profile measured with the realism report (datasets.realism.summarize) against the bands it
is calibrated to, plus determinism of the tracker model and the new scene contents (signals, fragments, noise).

Scene count: NUM_SCENES default-profile scenarios (about 20-30 s of generation on one core); docs/REALISM_SYNTHETIC.md
has the table on 200 scenes.
"""
import math

import numpy as np
import pytest

from datasets.realism import summarize
from datasets.synthetic import generate_scenario, generate_split, scenario_seed
from datasets.synthetic.grid_roads import build_grid
from datasets.synthetic.profiles import PROFILES

NUM_SCENES = 80

# (key, low, high): the calibration bands of the default profile
BANDS = [
    ('centreline_offset_p50', 0.12, 0.35),
    ('centreline_offset_p90', 0.45, 0.9),
    ('driver_offset_spread', 0.1, math.inf),
    ('track_length_p50', 25, 45),
    ('short_track_fraction', 0.2, 1.0),
    ('static_zero_velocity_fraction', 0.0, 0.0),
    ('static_pedestrian_fraction', 0.3, 1.0),
    ('lane_segment_length_p50', 15, 25),
    # The acceleration and cruising bands were set from accelerations over every vehicle track, parked ones
    # included: on the real Argoverse 2 samples those give p50 0.232 m/s^2 and cruising 0.387, while the
    # moving-vehicle keys (lon_acc_p50, cruising_fraction) give 0.66-0.82 and 0.13-0.14.
    ('all_vehicle_lon_acc_p50', 0.0, 0.4),
    ('all_vehicle_cruising_fraction', 0.3, 1.0),
    # constant-velocity error of the focal agent at 6 s (real Argoverse 2: about 5.6 m on the samples, 7-8 m
    # reported for the validation split)
    ('focal_cv_fde6_mean', 5.0, 9.0),
]


@pytest.fixture(scope='module')
def default_summary(tmp_path_factory):
    root = tmp_path_factory.mktemp('realism')
    generate_split(str(root), 'train', NUM_SCENES, seed=0, profile='default')
    return summarize(root / 'train')


@pytest.mark.parametrize('key,low,high', BANDS)
def test_default_profile_inside_band(default_summary, key, low, high):
    assert default_summary['num_scenes'] == NUM_SCENES
    assert low <= default_summary[key] <= high, f'{key} = {default_summary[key]:.3f} outside [{low}, {high}]'


def test_default_profile_scene_composition(default_summary):
    assert 0.3 <= default_summary['scored_tracks_per_scene'] <= 2.5
    assert 0.02 <= default_summary['full_track_fraction'] <= 0.3
    assert default_summary['yaw_rate_p99'] < 40.0


def test_same_seed_same_scenario_for_every_profile():
    for profile in PROFILES:
        a = generate_scenario(scenario_seed(3, 1), 'val', profile)
        b = generate_scenario(scenario_seed(3, 1), 'val', profile)
        assert a[0] == b[0] and a[1].equals(b[1]) and a[2] == b[2]


def test_static_objects_carry_small_nonzero_velocity():
    _, table, _ = generate_scenario(scenario_seed(0, 2), 'train')
    frame = table.to_pandas()
    static = frame[frame.object_type.isin(['static', 'background', 'construction', 'riderless_bicycle'])]
    assert len(static)
    speed = np.hypot(static.velocity_x, static.velocity_y)
    assert (speed > 0).all() and speed.max() < 0.5


def test_signalised_nodes_have_two_phases():
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(10):
        road_map = build_grid(rng, PROFILES['default'])
        for node, (cycle, green0, _) in road_map.signals.items():
            groups = {lane.signal_group for lane in road_map.lanes.values() if lane.node == node and lane.kind == 'connector'}
            assert groups == {0, 1} and 0 < green0 < cycle
            found += 1
    assert found > 0


def test_pedestrians_step_onto_signalised_crossings_only_when_they_may_walk():
    from datasets.synthetic.lane_graph import build_lane_table
    from datasets.synthetic.pedestrians import spawn_pedestrians
    from datasets.synthetic.signals import red_lights, walk_signals

    prof = PROFILES['default']
    rng = np.random.default_rng(1)
    entries = 0
    for _ in range(12):
        road_map = build_grid(rng, prof)
        table = build_lane_table(road_map, prof.upstream_length)
        walk = walk_signals(road_map, table, red_lights(road_map, table, 600))
        for ped in spawn_pedestrians(rng, road_map, prof, 600, walk):
            for c, signal in walk.items():
                cw = road_map.crosswalks[c]
                rel = ped.position - cw.origin
                along = np.abs(rel @ cw.along)
                across = np.abs(rel[:, 1] * cw.along[0] - rel[:, 0] * cw.along[1])
                on_road = (along < cw.half_length - 1.0) & (across < cw.half_width + 0.5)
                stepped_on = np.flatnonzero(on_road[1:] & ~on_road[:-1]) + 1
                entries += len(stepped_on)
                # the first steps may still be a crossing that began before the scene: look from 3 s on
                assert signal[stepped_on[stepped_on > 30] - 1].all()
    assert entries > 0
