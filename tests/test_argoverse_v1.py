"""Argoverse 1: generated genuine-format files (CSV + city map XML) round trip through the adapter, canvas placement,
derived motion, map crop and topology, processing, bad inputs and the preprocessing CLI."""
import csv
import json
import shutil

import numpy as np
import pytest

from datasets.argoverse_v1 import (MAP_RADIUS, list_argoverse_v1_scenarios, load_argoverse_v1_scenario,
                                   load_city_map, map_file_name, motion_from_positions)
from datasets.processing import build_qcnet_features
from datasets.scenario import (AGENT_CATEGORIES, AGENT_TYPES, POLYGON_IS_INTERSECTIONS, POLYGON_KINDS,
                               POLYGON_TO_POLYGON_TYPES, ScenarioError)
from datasets.synthetic.av1 import generate_argoverse_v1, grid_city


@pytest.fixture(scope='module')
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp('av1')
    csv_dir, map_dir = generate_argoverse_v1(out, num_sequences=4, split='train', seed=3)
    test_dir, _ = generate_argoverse_v1(out, num_sequences=2, split='test', seed=4)
    return out, csv_dir, map_dir, test_dir


def read_rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_csv_round_trip_on_canvas(generated):
    _, csv_dir, _, _ = generated
    names = list_argoverse_v1_scenarios(csv_dir)
    assert len(names) == 4 and names == sorted(names)
    for name in names:
        rows = read_rows(csv_dir / f'{name}.csv')
        record = load_argoverse_v1_scenario(csv_dir / name)
        times = sorted({float(r['TIMESTAMP']) for r in rows})
        assert len(times) == 50 and record.dataset == 'argoverse_v1' and record.dataset_id == 0
        tb = record.time_base
        assert (tb.span_start, tb.span_end, tb.future_observed, tb.num_steps) == (30, 80, True, 110)
        ids = list(dict.fromkeys(r['TRACK_ID'] for r in rows))
        assert record.agents.ids == ids
        agents = record.agents
        assert not agents.observed[:, :30].any() and not agents.observed[:, 80:].any()
        assert int(agents.observed.sum()) == len(rows)
        for row in rows:  # every CSV row lands on canvas step 30 + (timestamp index)
            a, t = ids.index(row['TRACK_ID']), 30 + times.index(float(row['TIMESTAMP']))
            assert agents.observed[a, t]
            np.testing.assert_allclose(agents.position[a, t, :2], [float(row['X']), float(row['Y'])], atol=1e-9)
        roles = {r['TRACK_ID']: r['OBJECT_TYPE'] for r in rows}
        assert roles[ids[agents.av_index]] == 'AV' and roles[ids[agents.focal_index]] == 'AGENT'
        assert AGENT_CATEGORIES[agents.category[agents.focal_index]] == 'FOCAL_TRACK'
        assert AGENT_TYPES[agents.type[agents.focal_index]] == 'vehicle'
        assert all(AGENT_TYPES[agents.type[i]] == 'unknown' for i, t in enumerate(ids) if roles[t] == 'OTHERS')


def test_test_split_has_history_only(generated):
    _, _, _, test_dir = generated
    name = list_argoverse_v1_scenarios(test_dir)[0]
    record = load_argoverse_v1_scenario(test_dir / name)
    assert not record.time_base.future_observed and record.time_base.observable_span == (30, 50)
    assert not record.agents.observed[:, 50:].any()
    features = build_qcnet_features(record)
    assert (features['span_start'], features['span_end']) == (30, 50)


def test_motion_from_positions():
    steps = np.arange(6, dtype=float)
    position = np.zeros((3, 6, 2))
    position[0, :, 0] = 1.0 * steps                 # 10 m/s along +x
    position[1, :, 1] = -2.0 * steps                # 20 m/s along -y
    position[2] = [[5.0, 5.0]] * 3 + [[5.0, 5.5], [5.0, 6.0], [5.0, 6.5]]  # parked, then drives along +y
    observed = np.ones((3, 6), dtype=bool)
    observed[0, 0] = False
    velocity, heading = motion_from_positions(position, observed, 0.1)
    np.testing.assert_allclose(velocity[0, 1:], [[10.0, 0.0]] * 5)
    assert (velocity[0, 0] == 0).all() and heading[0, 0] == 0  # unobserved step
    np.testing.assert_allclose(heading[0, 1:], 0.0)
    np.testing.assert_allclose(heading[1], -np.pi / 2)
    np.testing.assert_allclose(velocity[1, 0], [0.0, -20.0])  # forward difference at the first step
    np.testing.assert_allclose(heading[2], np.pi / 2)  # back-filled before the agent starts moving
    np.testing.assert_allclose(np.hypot(*velocity[2, :3].T), 0.0)


def test_city_map_round_trip_and_crop(generated):
    _, csv_dir, map_dir, _ = generated
    lanes = grid_city()
    city = load_city_map(str(map_dir / map_file_name('PIT')))
    assert city.lane_ids.tolist() == [lane.lane_id for lane in lanes]
    for k, lane in enumerate(lanes):
        np.testing.assert_allclose(city.centerlines[k][:, :2], lane.points)
        assert city.predecessors[k] == lane.predecessors and city.successors[k] == lane.successors
        assert bool(city.is_intersection[k]) == lane.is_intersection
        assert city.left_neighbor[k] == (lane.left_neighbor if lane.left_neighbor is not None else -1)
    record = load_argoverse_v1_scenario(csv_dir / list_argoverse_v1_scenarios(csv_dir)[0])
    mp = record.map
    assert set(POLYGON_KINDS[k] for k in mp.kind) == {'POLYLINE'} and mp.center_mark_type is None
    # the crop keeps exactly the lanes with a node within the radius of an observed (rounded) position
    positions = np.unique(np.round(record.agents.position[record.agents.observed][:, :2]), axis=0)
    for k, lane_id in enumerate(city.lane_ids):
        distance = np.sqrt(((city.centerlines[k][:, None, :2] - positions[None]) ** 2).sum(-1)).min()
        assert (lane_id in mp.ids) == (distance <= MAP_RADIUS + 1.0), lane_id
    # topology among kept lanes mirrors the XML tags
    by_id = {lane.lane_id: lane for lane in lanes}
    ids = mp.ids.tolist()
    for (source, target), kind in zip(mp.topology_edge_index.T, mp.topology_type):
        lane, other = by_id[ids[target]], ids[source]
        name = POLYGON_TO_POLYGON_TYPES[kind]
        assert other in {'PRED': lane.predecessors, 'SUCC': lane.successors, 'LEFT': [lane.left_neighbor],
                         'RIGHT': [lane.right_neighbor]}[name]
    expected = sum(1 for lane_id in ids for other in by_id[lane_id].predecessors + by_id[lane_id].successors
                   + [by_id[lane_id].left_neighbor, by_id[lane_id].right_neighbor] if other in ids)
    assert mp.topology_edge_index.shape[1] == expected
    flags = [POLYGON_IS_INTERSECTIONS[i] for i in mp.is_intersection]
    assert flags == [by_id[i].is_intersection for i in ids]
    assert record.extras['lane_turn_direction'].shape == (len(ids),)


def test_processing(generated):
    _, csv_dir, _, _ = generated
    record = load_argoverse_v1_scenario(csv_dir / list_argoverse_v1_scenarios(csv_dir)[1])
    features = build_qcnet_features(record)
    assert features['data_set'] == 0 and (features['span_start'], features['span_end']) == (30, 80)
    polygon, point = features['map_polygon'], features['map_point']
    assert polygon['num_nodes'] == record.map.num_polygons  # no crosswalks in Argoverse 1
    assert point['num_nodes'] == int((record.map.centerline.lengths - 1).sum())
    assert (point['side'] == 2).all()  # centre-line points only
    agent = features['agent']
    assert not agent['valid_mask'][:, :31].any()  # nothing before step 30 (and step 30 has no predecessor)


def _write(path, rows, header='TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME'):
    path.write_text(header + '\n' + '\n'.join(rows) + '\n')


def test_bad_inputs_name_the_file(generated, tmp_path):
    out, csv_dir, map_dir, _ = generated
    name = list_argoverse_v1_scenarios(csv_dir)[0]
    lines = (csv_dir / f'{name}.csv').read_text().splitlines()
    data = tmp_path / 'data'
    data.mkdir()

    def expect(rows, pattern, header='TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME', map_dir=map_dir):
        path = data / 'bad.csv'
        _write(path, rows, header)
        with pytest.raises(ScenarioError, match=pattern) as info:
            load_argoverse_v1_scenario(path, map_dir=map_dir)
        assert '\n' not in str(info.value)
        return str(info.value)

    assert str(data / 'bad.csv') in expect(lines[1:], 'no Argoverse 1 map folder', map_dir=None)
    message = expect(lines[1:], 'vector map for city PIT is missing', map_dir=tmp_path)
    assert map_file_name('PIT') in message
    expect([l.replace(',PIT', ',MIA') if i == 3 else l for i, l in enumerate(lines[1:])], 'several values')
    expect([l.replace('AGENT', 'OTHERS') for l in lines[1:]], '0 tracks with OBJECT_TYPE AGENT')
    expect([l for l in lines[1:] if float(l.split(',')[0]) < float(lines[1].split(',')[0]) + 3.0],
           'distinct timestamps')
    expect(lines[1:], "missing column\\(s\\) \\['Y'\\]", header='TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Z,CITY_NAME')
    expect([l.replace(',PIT', ',NYC') for l in lines[1:]], "unknown CITY_NAME 'NYC'")
    expect(lines[1:] + [lines[1]], 'rows at timestamp index 0')

    broken_maps = tmp_path / 'broken_maps'
    broken_maps.mkdir()
    (broken_maps / map_file_name('PIT')).write_text('<ArgoverseVectorMap><node id="0" x="1"')
    path = data / 'ok.csv'
    shutil.copy(csv_dir / f'{name}.csv', path)
    with pytest.raises(ScenarioError, match='cannot read map XML') as info:
        load_argoverse_v1_scenario(path, map_dir=broken_maps)
    assert map_file_name('PIT') in str(info.value)


def test_preprocess_cli_and_dataset(generated, tmp_path, capsys):
    out, csv_dir, _, _ = generated
    raw = tmp_path / 'train' / 'raw'
    shutil.copytree(csv_dir, raw)
    shutil.copytree(out / 'map_files', tmp_path / 'map_files')  # <root>/map_files: found two levels up
    _write(raw / 'broken.csv', ['1.0,a,AV,0,0,PIT'])
    from datasets.preprocess import main
    processed = tmp_path / 'train' / 'processed'
    assert main(['--dataset', 'argoverse_v1', '--raw_dir', str(raw), '--processed_dir', str(processed),
                 '--num_workers', '1', '--no_progress']) == 2
    assert '5 found, 4 processed' in capsys.readouterr().out
    failures = json.loads((processed / 'failures.json').read_text())
    assert failures[0]['scenario'] == 'broken' and failures[0]['file'].endswith('broken.csv')
    from datasets.argoverse_v1_dataset import ArgoverseV1Dataset
    dataset = ArgoverseV1Dataset(str(tmp_path), 'train', num_workers=1, progress=False)
    assert len(dataset) == 4
    sample = dataset[0]
    assert int(sample['data_set']) == 0 and int(sample['span_start']) == 30 and int(sample['span_end']) == 80
