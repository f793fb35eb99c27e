"""Synthetic scenarios sharing a road network per block (--scenes_per_map): determinism per (seed, index), a
scenario alone equals the same one in a split, a block's map json is one file byte for byte, traffic differs."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
from av2.map.map_api import ArgoverseStaticMap

import datasets.synthetic.scenario as scenario_module
from datasets.synthetic import (generate_scenario, generate_scenarios, generate_split, main, road_seed,
                                scenario_seed)
from datasets.synthetic.av2_writer import encode_map_json
from datasets.synthetic.cli import _blocks_of

SEED, PER_MAP, NUM = 5, 3, 5     # blocks {0, 1, 2} and {3, 4}


def _files(directory: Path):
    return directory / f'scenario_{directory.name}.parquet', directory / f'log_map_archive_{directory.name}.json'


def _table_digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


@pytest.fixture(scope='module')
def split_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('shared-maps')
    ids = generate_split(str(root), 'train', NUM, seed=SEED, profile='demo', scenes_per_map=PER_MAP)
    return [root / 'train' / sid for sid in ids]


def test_blocks_share_the_map_json_byte_for_byte(split_dirs):
    maps = [_files(d)[1].read_bytes() for d in split_dirs]
    assert maps[0] == maps[1] == maps[2] and maps[3] == maps[4]
    assert maps[0] != maps[3]
    cities = {load_argoverse_scenario_parquet(_files(d)[0]).city_name for d in split_dirs[:PER_MAP]}
    assert len(cities) == 1      # one network, one city


def test_scenarios_of_a_block_have_their_own_traffic(split_dirs):
    scenarios = [load_argoverse_scenario_parquet(_files(d)[0]) for d in split_dirs[:PER_MAP]]
    assert len({s.scenario_id for s in scenarios}) == PER_MAP
    av_starts = set()
    for s in scenarios:
        av = next(t for t in s.tracks if t.track_id == 'AV')
        av_starts.add(tuple(round(c, 3) for c in av.object_states[0].position))
    assert len(av_starts) == PER_MAP
    assert len({_files(d)[0].read_bytes() for d in split_dirs[:PER_MAP]}) == PER_MAP


def test_av2_loaders_read_the_shared_map_files(split_dirs):
    for directory in split_dirs:
        parquet_path, map_path = _files(directory)
        scenario = load_argoverse_scenario_parquet(parquet_path)
        assert scenario.scenario_id == directory.name
        static_map = ArgoverseStaticMap.from_json(map_path)
        assert len(static_map.vector_lane_segments) > 0
        # the AV drives on this map: somewhere along its track it is on a lane's centre line (<= 2 m spacing)
        centre = np.concatenate([static_map.get_lane_segment_centerline(lane_id)[:, :2]
                                 for lane_id in static_map.vector_lane_segments])
        av = next(t for t in scenario.tracks if t.track_id == 'AV')
        track = np.array([state.position for state in av.object_states])
        nearest = np.hypot(track[:, None, 0] - centre[None, :, 0], track[:, None, 1] - centre[None, :, 1]).min()
        assert nearest < 1.5


def test_a_scenario_alone_equals_the_same_scenario_in_the_split(split_dirs):
    for index in (1, 3):
        scenario_id, table, map_json = generate_scenario(scenario_seed(SEED, index), 'train', 'demo',
                                                         road_seed=road_seed(SEED, index // PER_MAP))
        directory = split_dirs[index]
        parquet_path, map_path = _files(directory)
        assert scenario_id == directory.name
        assert table.equals(pq.read_table(parquet_path))
        assert encode_map_json(map_json) == map_path.read_bytes()


def test_workers_write_the_same_bytes(split_dirs, tmp_path):
    ids = generate_split(str(tmp_path), 'train', NUM, seed=SEED, profile='demo', num_workers=2,
                         scenes_per_map=PER_MAP)
    assert ids == [d.name for d in split_dirs]
    for directory in split_dirs:
        for mine, theirs in zip(_files(directory), _files(tmp_path / 'train' / directory.name)):
            assert mine.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize('num,size,per_map', [(17, 3, 8), (20, 16, 8), (16, 2, 8), (10, 100, 8), (5, 1, 1), (9, 4, 3)])
def test_work_pieces_cover_the_split_without_straddling_a_block(num, size, per_map):
    pieces = _blocks_of(num, size, per_map)
    assert [i for piece in pieces for i in piece] == list(range(num))
    for piece in pieces:
        assert len(piece) <= max(size, per_map)
        if size < per_map:     # parts of one block
            assert piece[0] // per_map == piece[-1] // per_map
        else:                  # whole blocks
            assert piece.start % per_map == 0 and (piece.stop % per_map == 0 or piece.stop == num)


def test_each_scenario_depends_on_its_seed_and_index_only():
    everything = {i: (sid, _table_digest(t), cm.json_bytes())
                  for i, sid, t, cm in generate_scenarios(SEED, range(NUM), 'val', 'demo', PER_MAP)}
    # a range starting inside a block, and the indices out of order: the same scenarios
    some = {i: (sid, _table_digest(t), cm.json_bytes())
            for i, sid, t, cm in generate_scenarios(SEED, [4, 2, 1], 'val', 'demo', PER_MAP)}
    for i, value in some.items():
        assert value == everything[i]
    other_seed = next(generate_scenarios(SEED + 1, [1], 'val', 'demo', PER_MAP))
    assert other_seed[1] != everything[1][0] and other_seed[3].json_bytes() != everything[1][2]


def test_one_scene_per_map_is_a_map_of_its_own_per_scenario():
    [(_, sid, table, city_map)] = list(generate_scenarios(SEED, [2], 'train', 'demo', scenes_per_map=1))
    alone = generate_scenario(scenario_seed(SEED, 2), 'train', 'demo')
    assert sid == alone[0] and table.equals(alone[1])
    assert json.dumps(city_map.json_dict()) == json.dumps(alone[2])


def test_a_network_without_a_focal_agent_falls_back_to_a_map_of_the_scene_own(monkeypatch):
    shared = next(generate_scenarios(SEED, [0], 'train', 'demo', PER_MAP))[3].json_bytes()
    real_choose = scenario_module.choose_focal
    calls = []

    def none_on_the_shared_network(rng, objects, sensor):
        calls.append(1)
        chosen = real_choose(rng, objects, sensor)   # the same draws as without the patch
        return chosen if len(calls) > scenario_module.MAX_ATTEMPTS else None

    monkeypatch.setattr(scenario_module, 'choose_focal', none_on_the_shared_network)
    first = next(generate_scenarios(SEED, [0], 'train', 'demo', PER_MAP))
    calls.clear()
    again = next(generate_scenarios(SEED, [0], 'train', 'demo', PER_MAP))
    assert len(calls) > scenario_module.MAX_ATTEMPTS
    assert first[3].json_bytes() != shared                 # a network of its own ...
    assert first[1] == again[1] and first[2].equals(again[2]) and first[3].json_bytes() == again[3].json_bytes()


def test_scenes_per_map_must_be_positive(tmp_path, capsys):
    with pytest.raises(ValueError, match='scenes_per_map'):
        generate_split(str(tmp_path), 'train', 1, seed=0, scenes_per_map=0)
    assert main(['--out', str(tmp_path), '--split', 'train', '--num', '1', '--scenes_per_map', '0']) == 2
    assert 'scenes_per_map' in capsys.readouterr().err
