"""Synthetic scenario generator: genuine AV2 files (av2's own loaders), determinism, splits, kinematics, profiles."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from av2.datasets.motion_forecasting.data_schema import ObjectType, TrackCategory
from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
from av2.map.lane_segment import LaneMarkType, LaneType
from av2.map.map_api import ArgoverseStaticMap

from datasets.synthetic import (NUM_HISTORICAL_STEPS, NUM_STEPS, generate_scenario, generate_split, main,
                                scenario_seed)
from datasets.synthetic.profiles import AV2_CITIES, PROFILES
from sample_data import AV2_DIR

REAL_AV2 = AV2_DIR
REAL_TRAIN = REAL_AV2 / 'train' / '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca'
needs_real = pytest.mark.skipif(not REAL_TRAIN.is_dir(), reason=f'real AV2 sample not found at {REAL_TRAIN}')


def _files(directory: Path):
    sid = directory.name
    return directory / f'scenario_{sid}.parquet', directory / f'log_map_archive_{sid}.json'


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """A few scenarios per (profile, split), written once through the public API."""
    root = tmp_path_factory.mktemp('synthetic')
    out = {}
    for profile, split, num in (('default', 'train', 4), ('default', 'test', 2), ('highway', 'train', 3)):
        base = root / profile
        ids = generate_split(str(base), split, num, seed=7, profile=profile)
        out[(profile, split)] = [base / split / sid for sid in ids]
    return out


def test_files_load_with_av2_loaders(dataset):
    for (profile, split), dirs in dataset.items():
        for directory in dirs:
            parquet_path, map_path = _files(directory)
            scenario = load_argoverse_scenario_parquet(parquet_path)
            assert scenario.scenario_id == directory.name
            assert scenario.city_name in PROFILES[profile].cities and scenario.city_name in AV2_CITIES
            assert len(scenario.timestamps_ns) == NUM_STEPS
            assert np.allclose(np.diff(scenario.timestamps_ns), 1e8)
            by_id = {track.track_id: track for track in scenario.tracks}
            assert 'AV' in by_id and by_id['AV'].object_type == ObjectType.VEHICLE
            focal = [t for t in scenario.tracks if t.category == TrackCategory.FOCAL_TRACK]
            assert len(focal) == 1 and focal[0].track_id == scenario.focal_track_id != 'AV'
            last = NUM_STEPS if split != 'test' else NUM_HISTORICAL_STEPS
            assert [s.timestep for s in focal[0].object_states] == list(range(last))
            for track in scenario.tracks:
                steps = [s.timestep for s in track.object_states]
                assert steps == list(range(steps[0], steps[-1] + 1)), f'{track.track_id}: gap inside a track'
                assert all(s.observed == (s.timestep < NUM_HISTORICAL_STEPS) for s in track.object_states)
                if split != 'test':
                    assert len(steps) >= 10          # AV2 drops shorter fragments
                if track.category in (TrackCategory.SCORED_TRACK, TrackCategory.UNSCORED_TRACK):
                    assert steps == list(range(last))  # only fragments are partially observed
            static_map = ArgoverseStaticMap.from_json(map_path)
            assert static_map.log_id == directory.name
            _check_map_topology(static_map)


def _check_map_topology(static_map: ArgoverseStaticMap):
    lanes = static_map.vector_lane_segments
    assert 20 <= len(lanes) <= 400   # the largest grids (3 x 1 nodes, 3 lanes per direction) reach ~360
    for lane in lanes.values():
        for other in lane.successors:
            assert other in lanes and lane.id in lanes[other].predecessors
        for other in lane.predecessors:
            assert other in lanes and lane.id in lanes[other].successors
        for other in (lane.left_neighbor_id, lane.right_neighbor_id):
            assert other is None or other in lanes
        assert len(lane.left_lane_boundary.xyz) >= 2 and len(lane.right_lane_boundary.xyz) >= 2
    for crossing in static_map.vector_pedestrian_crossings.values():
        assert crossing.edge1.xyz.shape == (2, 3) and crossing.edge2.xyz.shape == (2, 3)
    assert len(static_map.vector_drivable_areas) >= 1


def test_scene_contents_are_av2_sized(dataset):
    for (profile, split), dirs in dataset.items():
        for directory in dirs:
            table = pq.read_table(_files(directory)[0]).to_pandas()
            history = table[table.timestep < NUM_HISTORICAL_STEPS]
            assert 10 <= history.track_id.nunique() <= 120
            categories = table.groupby('track_id').object_category.first()
            assert (categories == 0).any(), 'no track fragments (observation gaps)'
            assert set(table.object_type) <= {t.value for t in ObjectType}
            lane_json = json.loads(_files(directory)[1].read_text())['lane_segments']
            centers = [np.array([[p['x'], p['y']] for p in lane['centerline']]) for lane in lane_json.values()]
            spacing = np.concatenate([np.hypot(*np.diff(c, axis=0).T) for c in centers])
            assert spacing.max() <= 2.0 + 0.02    # AV2 centre lines have <= 2 m between points


@needs_real
def test_parquet_schema_and_row_order_match_official(dataset):
    official = pq.read_table(_files(REAL_TRAIN)[0])
    for dirs in dataset.values():
        table = pq.read_table(_files(dirs[0])[0])
        assert table.schema.names == official.schema.names
        assert [f.type for f in table.schema] == [f.type for f in official.schema]
        frame = table.to_pandas()
        assert frame.equals(frame.sort_values(['track_id', 'timestep'], kind='stable'))
        for column in ('scenario_id', 'start_timestamp', 'end_timestamp', 'num_timestamps', 'focal_track_id', 'city'):
            assert frame[column].nunique() == 1


@needs_real
def test_map_json_schema_matches_official(dataset):
    official = json.loads(_files(REAL_TRAIN)[1].read_text())

    def keys(doc, kind):
        return set(next(iter(doc[kind].values())))

    for dirs in dataset.values():
        doc = json.loads(_files(dirs[0])[1].read_text())
        assert list(doc) == list(official)
        for kind in ('drivable_areas', 'lane_segments'):
            assert keys(doc, kind) == keys(official, kind)
        if doc['pedestrian_crossings']:
            assert keys(doc, 'pedestrian_crossings') == keys(official, 'pedestrian_crossings')
        for key, lane in doc['lane_segments'].items():
            assert key == str(lane['id']) and isinstance(lane['id'], int)
            assert isinstance(lane['is_intersection'], bool)
            LaneType(lane['lane_type'])
            LaneMarkType(lane['left_lane_mark_type'])
            LaneMarkType(lane['right_lane_mark_type'])
            assert set(lane['centerline'][0]) == {'x', 'y', 'z'}


def test_same_seed_gives_identical_bytes_for_any_worker_count(tmp_path):
    one = generate_split(str(tmp_path / 'a'), 'val', 3, seed=11, num_workers=1)
    two = generate_split(str(tmp_path / 'b'), 'val', 3, seed=11, num_workers=2)
    other = generate_split(str(tmp_path / 'c'), 'val', 3, seed=12, num_workers=1)
    assert one == two and len(set(one)) == 3
    assert not set(one) & set(other)
    for sid in one:
        for name in (f'scenario_{sid}.parquet', f'log_map_archive_{sid}.json'):
            first, second = tmp_path / 'a' / 'val' / sid / name, tmp_path / 'b' / 'val' / sid / name
            assert first.read_bytes() == second.read_bytes()
    leftovers = [p for p in (tmp_path / 'a').rglob('*') if p.name.startswith('.')]
    assert not leftovers, f'temporary files left behind: {leftovers}'
    # splits draw different worlds from the same seed
    assert generate_scenario(scenario_seed(11, 0), 'train')[0] != generate_scenario(scenario_seed(11, 0), 'val')[0]


def test_cli_in_a_fresh_interpreter_writes_the_same_bytes(tmp_path):
    """Nothing may depend on the interpreter (e.g. set order under string-hash randomisation)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONHASHSEED='12345')
    command = [sys.executable, '-m', 'datasets.synthetic', '--out', str(tmp_path / 'cli'), '--split', 'test',
               '--num', '2', '--seed', '21', '--profile', 'highway']
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True)
    ids = generate_split(str(tmp_path / 'api'), 'test', 2, seed=21, profile='highway')
    assert sorted(ids) == sorted(os.listdir(tmp_path / 'cli' / 'test'))
    for sid in ids:
        for path in _files(tmp_path / 'api' / 'test' / sid):
            assert path.read_bytes() == (tmp_path / 'cli' / 'test' / sid / path.name).read_bytes()


def test_test_split_holds_history_only(dataset):
    for directory in dataset[('default', 'test')]:
        frame = pq.read_table(_files(directory)[0]).to_pandas()
        assert frame.timestep.max() == NUM_HISTORICAL_STEPS - 1
        assert frame.observed.all()
        assert (frame.num_timestamps == NUM_STEPS).all()   # as in the official test files
        focal = frame[frame.track_id == frame.focal_track_id.iloc[0]]
        assert len(focal) == NUM_HISTORICAL_STEPS and (focal.object_category == 3).all()


def _kinematics(directory):
    frame = pq.read_table(_files(directory)[0]).to_pandas()
    out = []
    for track_id, track in frame.groupby('track_id'):
        pos = track[['position_x', 'position_y']].to_numpy()
        vel = track[['velocity_x', 'velocity_y']].to_numpy()
        out.append((track.object_type.iloc[0], pos, vel, track.heading.to_numpy(), track.object_category.iloc[0]))
    return out


def test_speeds_headings_and_velocities_are_consistent(dataset):
    heading_error, velocity_error = [], []
    for dirs in dataset.values():
        for directory in dirs:
            for object_type, pos, vel, heading, _ in _kinematics(directory):
                speed = np.hypot(*vel.T)
                limit = {'pedestrian': 4.0, 'cyclist': 10.0}.get(object_type, 40.0)
                assert speed.max() < limit, f'{object_type} at {speed.max():.1f} m/s'
                assert np.all(np.abs(heading) <= math.pi + 1e-9)
                if object_type in ('vehicle', 'bus', 'motorcyclist') and len(pos) > 2:
                    moving = speed > 2.0
                    diff = np.angle(np.exp(1j * (heading - np.arctan2(vel[:, 1], vel[:, 0]))))
                    heading_error.extend(np.abs(diff[moving]).tolist())
                    finite = np.diff(pos, axis=0) / 0.1
                    velocity_error.extend(np.hypot(*(finite - (vel[1:] + vel[:-1]) / 2).T).tolist())
    assert np.percentile(heading_error, 95) < 0.1
    assert np.percentile(velocity_error, 95) < 0.6   # 10 Hz: velocities match position differences


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test: bool [K] for points [K, 2] and a polygon [M, 2]."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    x, y = points[:, None, 0], points[:, None, 1]
    crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    with np.errstate(divide='ignore', invalid='ignore'):
        at = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (b[None, :, 1] - a[None, :, 1])
    return (crosses & (x < at)).sum(1) % 2 == 1


def test_moving_vehicles_follow_lanes(dataset):
    """Map-consistent motion: on the mapped roads, moving vehicles keep close to a lane centre line."""
    for dirs in (dataset[('default', 'train')], dataset[('highway', 'train')]):
        for directory in dirs:
            doc = json.loads(_files(directory)[1].read_text())
            centers = np.concatenate([[[p['x'], p['y']] for p in lane['centerline']]
                                      for lane in doc['lane_segments'].values()])
            areas = [np.array([[p['x'], p['y']] for p in area['area_boundary']])
                     for area in doc['drivable_areas'].values()]
            dist = []
            for object_type, pos, vel, _, _ in _kinematics(directory):
                if object_type != 'vehicle' or np.hypot(*vel.T).mean() < 3.0:
                    continue
                samples = pos[::5]
                on_map = np.any([_inside(samples, area) for area in areas], axis=0)
                d = np.sqrt(((samples[on_map, None, :] - centers[None]) ** 2).sum(-1)).min(1)
                dist.extend(d.tolist())
            assert dist, f'{directory.name}: no moving vehicle on the map'
            assert np.percentile(dist, 95) < 2.0, f'{directory.name}: vehicles off the lanes'


def test_profiles_are_different_datasets(dataset):
    def summary(dirs):
        crossings, intersections, pedestrians, speeds = 0, 0, 0, []
        for directory in dirs:
            doc = json.loads(_files(directory)[1].read_text())
            crossings += len(doc['pedestrian_crossings'])
            intersections += sum(lane['is_intersection'] for lane in doc['lane_segments'].values())
            for object_type, _, vel, _, category in _kinematics(directory):
                pedestrians += object_type == 'pedestrian'
                if category == 3:
                    speeds.append(np.hypot(*vel.T).mean())
        return crossings, intersections, pedestrians, float(np.mean(speeds))

    urban, highway = summary(dataset[('default', 'train')]), summary(dataset[('highway', 'train')])
    assert urban[0] > 0 and urban[1] > 0 and urban[2] > 0
    assert highway[:3] == (0, 0, 0)
    assert highway[3] > urban[3] + 5.0   # the highway focal agents drive much faster


def test_team_reader_turns_synthetic_files_into_qcnet_samples(dataset):
    from datasets import load_argoverse_v2_scenario, process_scenario

    for key in (('default', 'train'), ('default', 'test'), ('highway', 'train')):
        directory = dataset[key][0]
        data = process_scenario(load_argoverse_v2_scenario(directory))
        doc = json.loads(_files(directory)[1].read_text())
        assert data['agent']['position'].shape[1] == NUM_STEPS
        assert data['agent']['id'][data['agent']['av_index']] == 'AV'
        assert data['map_polygon']['num_nodes'] == len(doc['lane_segments']) + 2 * len(doc['pedestrian_crossings'])
        focal = data['agent']['category'] == 3
        assert int(focal.sum()) == 1


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(['--help'])
    assert info.value.code == 0
    with pytest.raises(SystemExit):
        main(['--out', str(tmp_path), '--split', 'train', '--num', '1', '--profile', 'nope'])
    assert 'invalid choice' in capsys.readouterr().err
    with pytest.raises(ValueError, match='unknown split'):
        generate_scenario(0, 'training')
    with pytest.raises(ValueError, match='non-negative'):
        generate_scenario(-1, 'train')
    with pytest.raises(ValueError, match='unknown synthetic profile'):
        generate_split(str(tmp_path), 'train', 1, seed=0, profile='city')
    assert main(['--out', str(tmp_path), '--split', 'val', '--num', '1', '--seed', '3']) == 0
    assert len(os.listdir(tmp_path / 'val')) == 1
