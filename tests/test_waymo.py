"""Waymo Open Motion: TFRecord framing / CRC-32C, the protobuf decoder on the real sample, canvas placement, map
conversion, processing and bad inputs.

The exact numbers of the real sample (scenario 637f20cafde22ff8) were checked once against the official compiled
protos of the waymo-open-dataset package (every decoded value was equal); the tests below need no extra package.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets.processing import build_qcnet_features
from datasets.scenario import (AGENT_TYPES, POINT_TYPES, POLYGON_KINDS, POLYGON_TYPES, ScenarioError)
from datasets.tfrecord import (_crc32c_numpy, _crc_register_python, index_tfrecord, masked_crc32c, read_record,
                               write_tfrecord)
from datasets.waymo import (crosswalk_edges, decode_scenario, list_waymo_scenarios, load_waymo_scenario,
                            read_waymo_payload, read_waymo_tfrecord, waymo_record_from_bytes)
from sample_data import WOMD_FILE

ROOT = Path(__file__).resolve().parents[1]
WOMD = WOMD_FILE
needs_sample = pytest.mark.skipif(not WOMD.is_file(), reason=f'real Waymo sample absent ({WOMD})')


@pytest.fixture(scope='module')
def payload():
    if not WOMD.is_file():
        pytest.skip(f'real Waymo sample absent ({WOMD})')
    return read_waymo_payload(str(WOMD), 0)


# ----------------------------------------------------------------------------------------------------------------------
# TFRecord / CRC-32C
# ----------------------------------------------------------------------------------------------------------------------
def test_crc32c_known_vector_and_numpy_path():
    assert _crc32c_numpy(b'123456789') == 0xE3069283  # the standard CRC-32C check value
    rng = np.random.default_rng(0)
    for size in (0, 1, 4095, 4096, 4097, 70001):  # below and above the chunked numpy path, odd sizes
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert _crc32c_numpy(data) == _crc_register_python(data, 0xFFFFFFFF) ^ 0xFFFFFFFF, size


def test_tfrecord_round_trip(tmp_path):
    payloads = [b'', b'a', os.urandom(5000), b'xyz' * 1000]
    path = tmp_path / 'x.tfrecord'
    write_tfrecord(path, payloads)
    records, problem = index_tfrecord(path)
    assert problem is None and [length for _, length in records] == [len(p) for p in payloads]
    assert [read_record(path, o, n) for o, n in records] == payloads
    assert os.path.getsize(path) == sum(16 + len(p) for p in payloads)
    # first record (empty payload): length 0, masked CRC of the length, no payload, masked CRC of b''
    assert path.read_bytes()[:16] == struct.pack('<QII', 0, masked_crc32c(struct.pack('<Q', 0)), masked_crc32c(b''))


@needs_sample
def test_real_file_framing():
    records, problem = index_tfrecord(WOMD)
    assert problem is None and len(records) == 1
    offset, length = records[0]
    assert offset == 12 and length + 16 == os.path.getsize(WOMD)
    assert list_waymo_scenarios(WOMD.parent) == ['motion_data_one_scenario.tfrecord#000000']


# ----------------------------------------------------------------------------------------------------------------------
# decoder on the real sample
# ----------------------------------------------------------------------------------------------------------------------
def test_real_sample_exact_counts(payload):
    scenario = decode_scenario(payload)
    assert scenario.scenario_id == '637f20cafde22ff8'
    assert len(scenario.timestamps_seconds) == 91 and scenario.current_time_index == 10
    np.testing.assert_allclose(np.diff(scenario.timestamps_seconds), 0.1, atol=1e-3)
    assert scenario.num_tracks == 83 and scenario.states['valid'].shape == (83, 91)
    assert len(scenario.map_features) == 301
    assert scenario.tracks_to_predict == [(72, 1), (43, 1), (42, 2)]
    assert scenario.sdc_track_index == 82 and scenario.objects_of_interest == []
    assert scenario.num_dynamic_map_states == 91
    assert Counter(scenario.object_types.tolist()) == {1: 70, 2: 10, 3: 3}
    assert int(scenario.states['valid'].sum()) == 4596
    assert Counter(f.kind for f in scenario.map_features) == {'lane': 199, 'road_line': 59, 'road_edge': 28,
                                                              'stop_sign': 8, 'crosswalk': 4, 'speed_bump': 3}
    assert sum(len(f.points) for f in scenario.map_features if f.kind in ('lane', 'road_line', 'road_edge')) == 19596
    assert Counter(f.type for f in scenario.map_features if f.kind == 'road_line') == {1: 24, 2: 18, 6: 17}
    assert Counter(f.type for f in scenario.map_features if f.kind == 'road_edge') == {1: 15, 2: 13}
    assert all(len(f.points) == 4 for f in scenario.map_features if f.kind == 'crosswalk')
    lane_154 = next(f for f in scenario.map_features if f.id == 154)
    assert (lane_154.kind, lane_154.type, lane_154.speed_limit_mph, len(lane_154.points), lane_154.exit_lanes) == \
        ('lane', 2, 15.0, 6, [158])
    sdc = scenario.states
    assert sdc['valid'][82].all()  # the ego vehicle is tracked over the whole scenario


# a tiny protobuf encoder (test-only) to exercise the generic decoder paths
def _varint(value):
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number, wire):
    return _varint((number << 3) | wire)


def _len(number, body):
    return _key(number, 2) + _varint(len(body)) + body


def _f64(number, value):
    return _key(number, 1) + struct.pack('<d', value)


def _f32(number, value):
    return _key(number, 5) + struct.pack('<f', value)


def _int(number, value):
    return _key(number, 0) + _varint(value)


def _point(x, y, z, order=(1, 2, 3)):
    values = {1: x, 2: y, 3: z}
    return b''.join(_f64(k, values[k]) for k in order)


def _tiny_scenario(num_steps=11, current=10, packed=True, reordered=False):
    tracks = []
    for track_id, speed in ((5, 10.0), (-1 + 2 ** 32, 0.0)):  # a large (unsigned-looking) id is kept as given
        states = []
        for t in range(num_steps):
            fields = [_f64(2, speed * 0.1 * t), _f64(3, 1.0), _f64(4, 0.5), _f32(5, 4.5), _f32(6, 2.0),
                      _f32(7, 1.5), _f32(8, 0.0), _f32(9, speed), _f32(10, 0.0), _int(11, 1)]
            if reordered:
                fields = fields[::-1]  # valid protobuf, but not the fast-path layout
            states.append(_len(3, b''.join(fields)))
        tracks.append(_len(2, _int(1, track_id) + _int(2, 1) + b''.join(states)))
    lane_points = b''.join(_len(8, _point(float(x), 0.0, 0.0, (3, 1, 2) if reordered else (1, 2, 3)))
                           for x in range(0, 30, 5))
    exit_lanes = _len(10, _varint(2) + _varint(3)) if packed else _int(10, 2) + _int(10, 3)
    lane = _len(8, _int(1, 1) + _len(3, _int(2, 2) + lane_points + exit_lanes))
    lane2 = _len(8, _int(1, 2) + _len(3, _int(2, 3) + b''.join(_len(8, _point(30.0 + x, 0.0, 0.0))
                                                               for x in (0.0, 10.0))))
    crosswalk = _len(8, _int(1, 7) + _len(8, b''.join(_len(1, _point(x, y, 0.0)) for x, y in
                                                      ((10, -5), (14, -5), (14, 5), (10, 5)))))
    unknown = _len(99, b'future field')  # unknown top-level field: skipped
    if packed:
        stamps = _len(1, b''.join(struct.pack('<d', 0.1 * t) for t in range(num_steps)))
    else:
        stamps = b''.join(_f64(1, 0.1 * t) for t in range(num_steps))
    return (_len(5, b'tiny') + stamps + _int(10, current) + b''.join(tracks) + lane + lane2 + crosswalk
            + _int(6, 0) + _len(11, _int(1, 1) + _int(2, 1)) + unknown)


@pytest.mark.parametrize('packed,reordered', [(True, False), (False, True)])
def test_decoder_generic_paths(packed, reordered):
    scenario = decode_scenario(_tiny_scenario(packed=packed, reordered=reordered))
    assert scenario.scenario_id == 'tiny' and scenario.track_ids.tolist() == [5, 2 ** 32 - 1]
    np.testing.assert_allclose(scenario.timestamps_seconds, 0.1 * np.arange(11))
    np.testing.assert_allclose(scenario.states['center_x'][0], np.arange(11) * 1.0)
    assert scenario.states['valid'].all() and scenario.tracks_to_predict == [(1, 1)]
    lane = scenario.map_features[0]
    assert lane.exit_lanes == [2, 3] and lane.points[:, 0].tolist() == [0, 5, 10, 15, 20, 25]


def test_tiny_record_on_canvas_and_map():
    record = waymo_record_from_bytes(_tiny_scenario(), 'tiny.tfrecord (record 0)')
    # history-only file (11 steps): shift 0, Waymo steps 0..10 on canvas 39..49, no future
    assert (record.time_base.span_start, record.time_base.span_end, record.time_base.future_observed) == (39, 50,
                                                                                                           False)
    assert record.agents.observed[:, 39:50].all() and not record.agents.observed[:, 50:].any()
    np.testing.assert_allclose(record.agents.position[0, 49], [10.0, 1.0, 0.5])
    assert record.agents.type.tolist() == [AGENT_TYPES.index('vehicle')] * 2
    mp = record.map
    assert [POLYGON_KINDS[k] for k in mp.kind] == ['POLYLINE', 'POLYLINE', 'CROSSWALK']
    # lane 1 exits into lane 2 (lane 3 does not exist): one SUCC edge (1 -> 2) = row 1 is a successor of row 0
    assert mp.topology_edge_index.tolist() == [[1], [0]]
    edge1, edge2 = mp.left_boundary[2], mp.right_boundary[2]
    assert np.isclose(np.linalg.norm(edge1[1] - edge1[0]), 10.0)  # the long sides of the 4 x 10 m crossing
    assert np.isclose(np.linalg.norm(edge2[0] - edge1[0]), 4.0)
    features = build_qcnet_features(record)
    assert features['data_set'] == 2 and (features['span_start'], features['span_end']) == (39, 50)
    assert features['map_polygon']['num_nodes'] == 2 + 2
    assert (features['agent']['predict_mask'][:, 50:]).all()  # history-only files follow the test-split rule


def test_crosswalk_edges_of_a_rotated_rectangle():
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[0, 0], [3, 0], [3, 12], [0, 12]], dtype=float) @ rotation.T
    edge1, edge2 = crosswalk_edges(np.concatenate([corners, np.ones((4, 1))], axis=1))
    assert np.isclose(np.linalg.norm(edge1[1] - edge1[0]), 12) and np.isclose(np.linalg.norm(edge2[1] - edge2[0]), 12)
    assert np.isclose(np.linalg.norm(edge2[0] - edge1[0]), 3) and (edge1[:, 2] == 1).all()


# ----------------------------------------------------------------------------------------------------------------------
# record and processing of the real sample
# ----------------------------------------------------------------------------------------------------------------------
@needs_sample
def test_real_sample_record_on_canvas():
    name = str(WOMD) + '#000000'
    record = load_waymo_scenario(name)
    scenario = decode_scenario(read_waymo_payload(str(WOMD), 0))
    # default: all 91 steps kept, Waymo step k on canvas step k + 19 (Waymo step 30 at the canvas current step 49)
    assert (record.time_base.span_start, record.time_base.span_end) == (19, 110) and record.extras['waymo_shift'] == 20
    assert record.agents.num_agents == 83 and record.agents.av_index == 82 and record.city == 'waymo'
    np.testing.assert_array_equal(record.agents.observed[:, 19:], scenario.states['valid'])
    assert not record.agents.observed[:, :19].any()
    np.testing.assert_array_equal(record.agents.position[:, 19:, 0][scenario.states['valid']],
                                  scenario.states['center_x'][scenario.states['valid']])
    categories = record.agents.category
    assert [int(categories[i]) for i in (72, 43, 42)] == [2, 2, 2] and int((categories == 2).sum()) == 3
    # shift 0: the 11 history steps on 39..49, 60 of the 80 future steps on 50..109
    unshifted = load_waymo_scenario(name, shift=0)
    assert (unshifted.time_base.span_start, unshifted.time_base.span_end) == (39, 110)
    np.testing.assert_array_equal(unshifted.agents.observed[:, 39:110], scenario.states['valid'][:, :71])
    # map: 301 features, 2 degenerate ones (a 1-point lane and a 1-point road line) dropped
    mp = record.map
    assert record.extras['dropped_map_features'] == 2 and mp.num_polygons == 299
    assert Counter(POLYGON_TYPES[t] for t in mp.polygon_type) == {
        'VEHICLE': 197, 'BIKE': 1, 'ROAD_LINE': 58, 'ROAD_EDGE': 28, 'STOP_SIGN': 8, 'SPEED_BUMP': 3, 'PEDESTRIAN': 4}
    assert int((mp.kind == POLYGON_KINDS.index('CROSSWALK')).sum()) == 4
    assert {POINT_TYPES[t] for t in mp.center_mark_type} >= {'CENTERLINE', 'DASHED_WHITE', 'SOLID_WHITE',
                                                             'SOLID_YELLOW', 'ROAD_EDGE_BOUNDARY',
                                                             'ROAD_EDGE_MEDIAN', 'STOP_SIGN', 'SPEED_BUMP'}


@needs_sample
def test_real_sample_processing():
    record = load_waymo_scenario(str(WOMD) + '#000000')
    features = build_qcnet_features(record)
    assert features['data_set'] == 2 and features['city'] == 'waymo'
    assert (features['span_start'], features['span_end']) == (19, 110)
    polygon, point = features['map_polygon'], features['map_point']
    assert polygon['num_nodes'] == 295 + 2 * 4  # polylines + both directions of each crosswalk
    assert int(polygon['type'].max()) < len(POLYGON_TYPES) and int(point['type'].max()) < len(POINT_TYPES)
    # a polyline of K points gives K - 1 map points; crosswalk points come from their edges and centre lines
    polylines = record.map.centerline.lengths[record.map.kind == POLYGON_KINDS.index('POLYLINE')]
    point_polygon = features[('map_point', 'to', 'map_polygon')]['edge_index'][1]
    assert int((point_polygon < 295).sum()) == int((polylines - 1).sum())
    agent = features['agent']
    assert agent['num_nodes'] == int(record.agents.observed[:, :50].any(axis=1).sum())
    assert agent['position'].shape == (agent['num_nodes'], 110, 3)


# ----------------------------------------------------------------------------------------------------------------------
# bad inputs
# ----------------------------------------------------------------------------------------------------------------------
@needs_sample
def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    blob = WOMD.read_bytes()
    bad_payload = tmp_path / 'bad_payload.tfrecord'
    bad_payload.write_bytes(blob[:5000] + bytes([blob[5000] ^ 0xFF]) + blob[5001:])
    with pytest.raises(ScenarioError, match='payload CRC mismatch') as info:
        load_waymo_scenario(str(bad_payload) + '#000000')
    assert str(bad_payload) in str(info.value) and '\n' not in str(info.value)

    bad_length = tmp_path / 'bad_length.tfrecord'
    bad_length.write_bytes(bytes([blob[0] ^ 0x01]) + blob[1:])
    assert list_waymo_scenarios(tmp_path) == ['bad_length.tfrecord#000000', 'bad_payload.tfrecord#000000']
    with pytest.raises(ScenarioError, match='length CRC mismatch'):
        load_waymo_scenario(str(bad_length) + '#000000')

    truncated = tmp_path / 'truncated.tfrecord'
    truncated.write_bytes(blob + blob[:len(blob) // 2])  # a good record, then half a record
    assert [n for n in list_waymo_scenarios(tmp_path) if n.startswith('truncated')] == \
        ['truncated.tfrecord#000000', 'truncated.tfrecord#000001']
    assert load_waymo_scenario(str(truncated) + '#000000').scenario_id == '637f20cafde22ff8'
    with pytest.raises(ScenarioError, match=r'truncated\.tfrecord: record 1 .*truncated'):
        load_waymo_scenario(str(truncated) + '#000001')
    with pytest.raises(ScenarioError, match='truncated'):
        list(read_waymo_tfrecord(truncated))


def test_garbage_payload_and_bad_names(tmp_path):
    path = tmp_path / 'garbage.tfrecord'
    write_tfrecord(path, [b'\xff' * 64])  # framing fine, payload not a protobuf
    with pytest.raises(ScenarioError, match='not a valid Scenario protobuf') as info:
        load_waymo_scenario(str(path) + '#000000')
    assert str(path) in str(info.value)
    with pytest.raises(ScenarioError, match='record 3 does not exist'):
        load_waymo_scenario(str(path) + '#000003')
    with pytest.raises(ScenarioError, match='not a Waymo scenario name'):
        load_waymo_scenario(str(path))
    with pytest.raises(ScenarioError, match='does not exist'):
        load_waymo_scenario(str(tmp_path / 'missing.tfrecord') + '#000000')
    write_tfrecord(tmp_path / 'not10hz.tfrecord', [_tiny_scenario().replace(struct.pack('<d', 0.1), struct.pack(
        '<d', 0.5))])
    with pytest.raises(ScenarioError, match='not at 10 Hz'):
        load_waymo_scenario(str(tmp_path / 'not10hz.tfrecord') + '#000000')


@needs_sample
def test_preprocess_cli_waymo(tmp_path, capsys):
    raw = tmp_path / 'raw'
    raw.mkdir()
    shutil.copy(WOMD, raw / 'a.tfrecord-00000-of-00002')
    write_tfrecord(raw / 'b.tfrecord-00001-of-00002', [_tiny_scenario(), b'\x08'])  # a good and a bad scenario
    processed = tmp_path / 'processed'
    command = [sys.executable, '-m', 'datasets.preprocess', '--dataset', 'waymo', '--raw_dir', str(raw),
               '--processed_dir', str(processed), '--num_workers', '2', '--no_progress']
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert '3 found, 2 processed' in result.stdout
    assert sorted(p.name for p in processed.glob('*.qcs')) == ['a.tfrecord-00000-of-00002#000000.qcs',
                                                               'b.tfrecord-00001-of-00002#000000.qcs']
    failures = json.loads((processed / 'failures.json').read_text())
    assert [f['scenario'] for f in failures] == ['b.tfrecord-00001-of-00002#000001']
    assert 'b.tfrecord-00001-of-00002' in failures[0]['file'] and 'protobuf' in failures[0]['reason']
    from datasets.preprocess import main as preprocess_main  # a second run resumes (in-process: faster)
    assert preprocess_main(command[3:]) == 2
    assert '2 already done' in capsys.readouterr().out

    from datasets.waymo_dataset import WaymoDataset
    dataset = WaymoDataset(str(tmp_path), 'train', raw_dir=str(raw), processed_dir=str(processed), num_workers=1,
                           progress=False)
    assert len(dataset) == 2 and {int(dataset[i]['data_set']) for i in range(2)} == {2}
