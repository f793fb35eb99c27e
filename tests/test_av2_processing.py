"""Argoverse 2 data layer on the real samples: parsing vs av2's own objects, official QCNet counts, structural
invariants of the HeteroData sample, the cache format, the dataset and the data module."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import (ArgoverseV2DataModule, ArgoverseV2Dataset, CacheVersionError, SizeCappedBatchSampler,
                      build_qcnet_features, load_argoverse_v2_scenario, load_features, preprocess_scenarios,
                      process_scenario, save_features, to_hetero_data)
from datasets.preprocess import main as preprocess_main
from datasets.scenario import AGENT_TYPES, POINT_TYPES, POLYGON_TO_POLYGON_TYPES, POLYGON_TYPES
from datasets.storage import CACHE_SUFFIX, FORMAT_VERSION, MAGIC, CacheError
from sample_data import AV2_DIR

pytestmark = pytest.mark.skipif(not AV2_DIR.is_dir(), reason=f'real Argoverse 2 samples not found at {AV2_DIR}')

TRAIN_A = '0a1e6f0a-1817-4a98-b02e-db8c9327d151'
TRAIN_B = '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca'
TEST_C = '0a0af725-fbc3-41de-b969-3be718f694e2'
# (split, id, city, focal, tracks, agents, polygons, points, polygon edges): official QCNet processing of the samples
SAMPLES = [
    ('train', TRAIN_A, 'austin', '138951', 58, 38, 83, 1479, 200),
    ('train', TRAIN_B, 'pittsburgh', '89320', 40, 25, 65, 1452, 156),
    ('test', TEST_C, 'austin', '9024', 19, 19, 142, 2595, 426),
]


def scenario_dir(split, scenario_id):
    return AV2_DIR / split / scenario_id


@pytest.fixture(scope='module')
def records():
    return {sid: load_argoverse_v2_scenario(scenario_dir(split, sid)) for split, sid, *_ in SAMPLES}


@pytest.fixture(scope='module')
def samples(records):
    return {sid: process_scenario(record) for sid, record in records.items()}


# ------------------------------------------------------------------------------------------------ record vs av2
@pytest.mark.parametrize('split,sid,city,focal,num_tracks', [s[:5] for s in SAMPLES])
def test_tracks_match_av2_scenario(records, split, sid, city, focal, num_tracks):
    from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
    scenario = load_argoverse_scenario_parquet(scenario_dir(split, sid) / f'scenario_{sid}.parquet')
    record = records[sid]
    agents = record.agents
    assert record.scenario_id == scenario.scenario_id == sid
    assert record.city == scenario.city_name == city
    assert agents.num_agents == len(scenario.tracks) == num_tracks
    assert agents.ids[agents.focal_index] == scenario.focal_track_id == focal
    assert agents.ids[agents.av_index] == 'AV'
    assert record.time_base.future_observed == (split != 'test')
    for track in scenario.tracks:
        row = agents.ids.index(track.track_id)
        steps = np.array([state.timestep for state in track.object_states])
        assert AGENT_TYPES[agents.type[row]] == track.object_type.value
        assert agents.category[row] == track.category.value
        assert np.array_equal(np.flatnonzero(agents.observed[row]), steps)
        np.testing.assert_array_equal(agents.position[row, steps, :2],
                                      np.array([state.position for state in track.object_states]))
        np.testing.assert_array_equal(agents.heading[row, steps], [state.heading for state in track.object_states])
        np.testing.assert_array_equal(agents.velocity[row, steps, :2],
                                      np.array([state.velocity for state in track.object_states]))
        assert not agents.position[row, ~agents.observed[row]].any()


@pytest.mark.parametrize('split,sid', [s[:2] for s in SAMPLES])
def test_map_matches_av2_static_map(records, split, sid):
    from av2.map.map_api import ArgoverseStaticMap
    map_path = next((scenario_dir(split, sid)).glob('log_map_archive_*.json'))
    static_map = ArgoverseStaticMap.from_json(map_path)
    record = records[sid].map
    lanes = static_map.get_scenario_lane_segments()
    crossings = static_map.get_scenario_ped_crossings()
    assert record.num_lanes == len(lanes) and record.num_crosswalks == len(crossings)
    assert list(record.ids) == [lane.id for lane in lanes] + [crossing.id for crossing in crossings]
    for row, lane in enumerate(lanes):
        np.testing.assert_array_equal(record.left_boundary[row], lane.left_lane_boundary.xyz)
        np.testing.assert_array_equal(record.right_boundary[row], lane.right_lane_boundary.xyz)
        assert POLYGON_TYPES[record.polygon_type[row]] == lane.lane_type.value
        assert POINT_TYPES[record.left_mark_type[row]] == lane.left_mark_type.value
        assert POINT_TYPES[record.right_mark_type[row]] == lane.right_mark_type.value
        assert record.is_intersection[row] == (0 if lane.is_intersection else 1)
        incoming = record.topology_edge_index[1] == row
        relation = {name: set(record.ids[record.topology_edge_index[0, incoming & (record.topology_type == k)]])
                    for k, name in enumerate(POLYGON_TO_POLYGON_TYPES)}
        known = set(record.ids.tolist())
        assert relation['PRED'] == set(lane.predecessors) & known
        assert relation['SUCC'] == set(lane.successors) & known
        assert relation['LEFT'] == ({lane.left_neighbor_id} & known)
        assert relation['RIGHT'] == ({lane.right_neighbor_id} & known)
    for k, crossing in enumerate(crossings):
        np.testing.assert_array_equal(record.left_boundary[len(lanes) + k], crossing.edge1.xyz)
        np.testing.assert_array_equal(record.right_boundary[len(lanes) + k], crossing.edge2.xyz)


def test_centerline_is_the_json_centerline(records):
    from av2.map.map_primitives import Polyline
    from av2.utils.io import read_json_file
    map_path = next(scenario_dir('train', TRAIN_A).glob('log_map_archive_*.json'))
    lanes = list(read_json_file(map_path)['lane_segments'].values())
    for row, lane in enumerate(lanes):
        np.testing.assert_array_equal(records[TRAIN_A].map.centerline[row], Polyline.from_json_data(lane['centerline']).xyz)


# ------------------------------------------------------------------------------------------------ QCNet sample
@pytest.mark.parametrize('split,sid,city,focal,num_tracks,num_agents,num_polygons,num_points,num_edges', SAMPLES)
def test_official_counts(samples, split, sid, city, focal, num_tracks, num_agents, num_polygons, num_points,
                         num_edges):
    data = samples[sid]
    assert data['scenario_id'] == sid and data['city'] == city
    assert data['agent']['num_nodes'] == num_agents
    assert data['map_polygon']['num_nodes'] == num_polygons
    assert data['map_point']['num_nodes'] == num_points
    assert data['map_polygon', 'to', 'map_polygon']['edge_index'].shape == (2, num_edges)
    assert data['agent']['id'][data['agent']['av_index']] == 'AV'
    assert focal in data['agent']['id']


EXPECTED_FIELDS = {
    'agent': {'valid_mask': torch.bool, 'predict_mask': torch.bool, 'predict_mask_ssl': torch.bool,
              'type': torch.uint8, 'category': torch.uint8, 'position': torch.float32, 'heading': torch.float32,
              'velocity': torch.float32},
    'map_polygon': {'position': torch.float32, 'orientation': torch.float32, 'height': torch.float32,
                    'type': torch.uint8, 'is_intersection': torch.uint8},
    'map_point': {'position': torch.float32, 'orientation': torch.float32, 'magnitude': torch.float32,
                  'height': torch.float32, 'type': torch.uint8, 'side': torch.uint8},
}


@pytest.mark.parametrize('split,sid', [s[:2] for s in SAMPLES])
def test_structure_and_invariants(samples, records, split, sid):
    data = samples[sid]
    A, P, N = data['agent']['num_nodes'], data['map_polygon']['num_nodes'], data['map_point']['num_nodes']
    T = 110  # the official processing keeps 110 steps for the test split too (future unobserved)
    for node_type, fields in EXPECTED_FIELDS.items():
        for name, dtype in fields.items():
            assert data[node_type][name].dtype == dtype, (node_type, name)
    agent = data['agent']
    assert agent['position'].shape == (A, T, 3) and agent['velocity'].shape == (A, T, 3)
    assert agent['valid_mask'].shape == agent['predict_mask'].shape == agent['heading'].shape == (A, T)
    assert len(agent['id']) == A and isinstance(agent['av_index'], int)
    # every kept agent is observed in the history; vector representation: step 0 never valid
    assert (agent['predict_mask_ssl'][:, :50] | agent['valid_mask'][:, :50]).any(dim=1).all()
    assert not agent['valid_mask'][:, 0].any()
    assert not agent['predict_mask'][:, :50].any()
    observed = agent['predict_mask_ssl']
    # history step t valid <=> observed at t and t-1
    assert torch.equal(agent['valid_mask'][:, 1:50], observed[:, 1:50] & observed[:, :49])
    assert not agent['position'][:, :50][~observed[:, :50]].any()  # unobserved steps hold zeros
    current = observed[:, 49]
    if split == 'test':
        assert torch.equal(agent['predict_mask'][:, 50:].all(dim=1), current | (agent['category'] >= 2))
        assert not agent['valid_mask'][:, 50:].any()
    else:
        assert torch.equal(agent['predict_mask'][:, 50:], agent['valid_mask'][:, 50:] & current[:, None])
    # map: shapes, edges, polygon-major point order, left/right/centre sides
    assert data['map_polygon']['position'].shape == (P, 3) and data['map_point']['position'].shape == (N, 3)
    p2pl = data['map_point', 'to', 'map_polygon']['edge_index']
    assert p2pl.dtype == torch.int64 and torch.equal(p2pl[0], torch.arange(N))
    assert (p2pl[1][1:] >= p2pl[1][:-1]).all() and p2pl[1].max() == P - 1
    pl2pl = data['map_polygon', 'to', 'map_polygon']
    assert pl2pl['edge_index'].dtype == torch.int64 and pl2pl['type'].dtype == torch.uint8
    assert pl2pl['edge_index'].max() < P and pl2pl['type'].min() >= 1 and pl2pl['type'].max() <= 4
    num_lanes, num_crosswalks = records[sid].map.num_lanes, records[sid].map.num_crosswalks
    assert P == num_lanes + 2 * num_crosswalks
    assert (data['map_polygon']['type'][num_lanes:] == POLYGON_TYPES.index('PEDESTRIAN')).all()
    assert (data['map_polygon']['is_intersection'][num_lanes:] == 2).all()
    assert (data['map_point']['magnitude'] >= 0).all() and torch.isfinite(data['map_point']['orientation']).all()


def test_values_follow_the_official_formulas(samples, records):
    """Spot checks of the official feature definitions on the austin sample (float32 arithmetic)."""
    data, record = samples[TRAIN_A], records[TRAIN_A]
    center = record.map.centerline[0].astype(np.float32)
    assert torch.equal(data['map_polygon']['position'][0], torch.from_numpy(center[0]))
    assert data['map_polygon']['orientation'][0] == torch.atan2(torch.tensor(center[1, 1] - center[0, 1]),
                                                                torch.tensor(center[1, 0] - center[0, 0]))
    assert data['map_polygon']['height'][0] == torch.tensor(center[1, 2] - center[0, 2])
    # first lane's points: left boundary starts, then right, then centre, each without its last point
    left = record.map.left_boundary[0].astype(np.float32)
    num_left = len(left) - 1
    assert torch.equal(data['map_point']['position'][:num_left], torch.from_numpy(left[:-1]))
    assert (data['map_point']['side'][:num_left] == 0).all()
    assert (data['map_point']['type'][:num_left] == int(record.map.left_mark_type[0])).all()
    vector = torch.from_numpy(left[1] - left[0])
    assert data['map_point']['magnitude'][0] == torch.norm(vector[:2])
    assert data['map_point']['height'][0] == vector[2]
    # a crosswalk and its reversed copy: opposite orientations, same start/end
    lanes, crosswalks = record.map.num_lanes, record.map.num_crosswalks
    forward, backward = lanes, lanes + crosswalks
    orientation = data['map_polygon']['orientation']
    assert math.isclose(abs(float(orientation[forward] - orientation[backward])), math.pi, abs_tol=1e-5)
    e1, e2 = (record.map.left_boundary[lanes].astype(np.float32), record.map.right_boundary[lanes].astype(np.float32))
    assert torch.equal(data['map_polygon']['position'][forward], torch.from_numpy((e1[0] + e2[0]) / 2))
    assert torch.equal(data['map_polygon']['position'][backward], torch.from_numpy((e1[-1] + e2[-1]) / 2))
    # agents are float32 copies of the parquet values
    row = record.agents.ids.index('AV')
    assert torch.equal(data['agent']['position'][data['agent']['av_index'], :, :2],
                       torch.from_numpy(record.agents.position[row, :, :2].astype(np.float32)))


def test_dim_2_drops_height(records):
    data = process_scenario(records[TRAIN_B], dim=2)
    assert data['agent']['position'].shape[-1] == 2 and data['map_point']['position'].shape[-1] == 2
    assert 'height' not in data['map_polygon'] and 'height' not in data['map_point']


# ------------------------------------------------------------------------------------------------ cache format
def test_cache_roundtrip_is_exact_and_small(records, tmp_path):
    features = build_qcnet_features(records[TRAIN_A])
    path = tmp_path / f'a{CACHE_SUFFIX}'
    size = save_features(path, features, {'dim': 3})
    assert size == path.stat().st_size <= 100 * 1024
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    loaded = load_features(path)
    assert loaded.keys() == features.keys()
    for key, group in features.items():
        if not isinstance(group, dict):
            assert loaded[key] == group
            continue
        for name, value in group.items():
            if isinstance(value, np.ndarray):
                assert loaded[key][name].dtype == value.dtype and np.array_equal(loaded[key][name], value)
            else:
                assert loaded[key][name] == value
    data = to_hetero_data(loaded)
    assert data['map_polygon', 'to', 'map_polygon']['edge_index'].shape == (2, 200)


def test_cache_of_another_version_asks_to_reprocess(records, tmp_path):
    path = tmp_path / f'a{CACHE_SUFFIX}'
    save_features(path, build_qcnet_features(records[TRAIN_B]))
    blob = bytearray(path.read_bytes())
    blob[len(MAGIC):len(MAGIC) + 4] = (FORMAT_VERSION + 1).to_bytes(4, 'little')
    path.write_bytes(bytes(blob))
    with pytest.raises(CacheVersionError, match='re-run preprocessing') as info:
        load_features(path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)
    path.write_bytes(bytes(blob[:40]))
    with pytest.raises(CacheError):
        load_features(path)


def test_atomic_write_leaves_no_partial_file(records, tmp_path, monkeypatch):
    path = tmp_path / f'a{CACHE_SUFFIX}'

    def failing_replace(src, dst):
        raise OSError('disk full')
    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full'):
        save_features(path, build_qcnet_features(records[TRAIN_B]))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ dataset / module
def _make_root(tmp_path):
    """root/<split>/raw/<id> -> symlinks to the real sample directories (read-only data stays in place)."""
    root = tmp_path / 'av2'
    for split, sid, *_ in SAMPLES:
        target = {'train': 'train', 'test': 'test'}[split]
        for split_name in ((target, 'val') if split == 'train' else (target,)):
            raw = root / split_name / 'raw'
            raw.mkdir(parents=True, exist_ok=True)
            (raw / sid).symlink_to(scenario_dir(split, sid).resolve(), target_is_directory=True)
    return root


def test_dataset_processes_on_first_use_and_matches_direct_processing(tmp_path, samples):
    root = _make_root(tmp_path)
    dataset = ArgoverseV2Dataset(str(root), 'train', num_workers=1, progress=False)
    assert len(dataset) == 2 and dataset.scenario_names == sorted([TRAIN_A, TRAIN_B])
    assert sorted(os.listdir(root / 'train' / 'processed')) == sorted(
        [f'{TRAIN_A}{CACHE_SUFFIX}', f'{TRAIN_B}{CACHE_SUFFIX}', 'failures.json'])
    item = dataset[dataset.scenario_names.index(TRAIN_A)]
    expected = samples[TRAIN_A]
    for node_type in ('agent', 'map_polygon', 'map_point'):
        for key, value in expected[node_type].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(item[node_type][key], value), (node_type, key)
    assert np.array_equal(dataset.item_sizes(), [[25, 65, 1452], [38, 83, 1479]])
    # processed dir alone (no raw) is enough; a renamed split name works too
    again = ArgoverseV2Dataset(str(tmp_path / 'elsewhere'), 'anything', raw_dir=str(tmp_path / 'missing'),
                               processed_dir=str(root / 'train' / 'processed'))
    assert len(again) == 2 and again[0]['agent']['num_nodes'] == 25
    with pytest.raises(ValueError, match='other options'):
        ArgoverseV2Dataset(str(root), 'train', dim=2)


def test_size_capped_batch_sampler():
    sizes = np.array([[10, 5], [30, 5], [10, 50], [100, 5], [5, 5], [5, 5]])
    sampler = SizeCappedBatchSampler(range(6), batch_size=3, sizes=sizes, max_sizes=[45, 60])
    batches = list(sampler)
    assert batches == [[0, 1], [2], [3], [4, 5]]
    assert len(sampler) == 4
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    for batch in batches:
        assert len(batch) == 1 or (sizes[batch].sum(0) <= [45, 60]).all()

    # distributed: every rank gets the same number of batches
    class FakeDataset:
        def __len__(self):
            return 6
    from torch.utils.data import DistributedSampler
    counts = [len(SizeCappedBatchSampler(DistributedSampler(FakeDataset(), num_replicas=2, rank=r, shuffle=False),
                                         batch_size=3, sizes=sizes, max_sizes=[45, None])) for r in range(2)]
    assert counts[0] == counts[1]


def test_datamodule_loads_batches_and_ignores_unknown_kwargs(tmp_path):
    root = _make_root(tmp_path)
    module = ArgoverseV2DataModule(str(root), train_batch_size=2, val_batch_size=2, test_batch_size=2,
                                   pin_memory=False, max_agents_per_batch=40, lr=1e-3, devices=1,
                                   dataset_kwargs={'progress': False, 'num_workers': 1})
    module.prepare_data()
    module.setup('fit')
    batches = list(module.train_dataloader())
    assert len(batches) == 2  # 25 + 38 agents exceed the cap of 40
    assert all(batch['agent']['target'].shape[1:] == (60, 4) for batch in batches)
    full = next(iter(ArgoverseV2DataModule(str(root), 2, 2, 2, pin_memory=False, train_transform=None,
                                           dataset_kwargs={'progress': False})._loader(module.val_dataset, 2, False)))
    assert full.num_graphs == 2 and full['agent']['num_nodes'] == 63
    module.setup('test')
    test_batch = next(iter(module.test_dataloader()))
    assert test_batch['agent']['num_nodes'] == 19 and 'target' not in test_batch['agent']


def test_preprocess_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        preprocess_main(['--help'])
    assert info.value.code == 0 and '--processed_dir' in capsys.readouterr().out
    root = _make_root(tmp_path)
    assert preprocess_main(['--raw_dir', str(root / 'test' / 'raw'), '--processed_dir', str(tmp_path / 'out'),
                            '--num_workers', '1', '--no_progress']) == 0
    out = capsys.readouterr().out
    assert '1 found, 1 processed, 0 already done' in out
    summary = preprocess_scenarios(str(root / 'test' / 'raw'), str(tmp_path / 'out'), progress=False)
    assert (summary.total, summary.processed, summary.skipped) == (1, 0, 1)


def test_synthetic_scenarios_process_strictly(tmp_path):
    """Scenarios of the synthetic AV2-format generator go through the whole pipeline without a single failure."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec('datasets.synthetic') is None:
        pytest.skip('datasets.synthetic (synthetic AV2 generator) is not available yet')
    project = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, '-m', 'datasets.synthetic', '--out', str(tmp_path), '--split', 'train',
                    '--num', '4', '--seed', '3'], check=True, cwd=project, capture_output=True)
    raw = tmp_path / 'train'
    summary = preprocess_scenarios(str(raw), str(tmp_path / 'processed'), strict=True, progress=False)
    assert summary.processed == summary.total == 4
    dataset = ArgoverseV2Dataset(str(tmp_path), 'train', raw_dir=str(raw), processed_dir=str(tmp_path / 'processed'))
    for data in dataset:
        assert data['agent']['id'][data['agent']['av_index']] == 'AV'
        assert data['map_point']['num_nodes'] == data['map_point', 'to', 'map_polygon']['edge_index'].shape[1]
