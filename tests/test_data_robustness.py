"""Bad raw inputs give a one-line ScenarioError naming the file; batch processing lists them and goes on (or stops
with strict=True); resuming skips finished scenarios."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasets import ArgoverseV2Dataset, ScenarioError, load_argoverse_v2_scenario, preprocess_scenarios
from datasets.preprocess import FAILURES_FILE, read_failures
from datasets.storage import CACHE_SUFFIX
from sample_data import AV2_DIR

SOURCE = AV2_DIR / 'train' / '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca'
pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f'real Argoverse 2 sample not found at {SOURCE}')


def copy_scenario(raw_dir: Path, name: str) -> Path:
    """Copy the real sample into raw_dir/<name>/ with the file names the layout asks for."""
    target = raw_dir / name
    target.mkdir(parents=True)
    shutil.copyfile(next(SOURCE.glob('scenario_*.parquet')), target / f'scenario_{name}.parquet')
    shutil.copyfile(next(SOURCE.glob('log_map_archive_*.json')), target / f'log_map_archive_{name}.json')
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def parquet_of(scenario: Path) -> Path:
    return scenario / f'scenario_{scenario.name}.parquet'


def map_of(scenario: Path) -> Path:
    return scenario / f'log_map_archive_{scenario.name}.json'


def rewrite_table(scenario: Path, change) -> None:
    path = parquet_of(scenario)
    pq.write_table(change(pq.read_table(path)), path)


def rewrite_map(scenario: Path, change) -> None:
    path = map_of(scenario)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type=table.schema.field(name).type))


def truncate_parquet(s):
    blob = parquet_of(s).read_bytes()
    parquet_of(s).write_bytes(blob[:len(blob) // 2])


def nan_position(s):
    def change(table):
        x = table.column('position_x').to_numpy().copy()
        x[7] = np.nan
        return set_column(table, 'position_x', x)
    rewrite_table(s, change)


def no_focal(s):
    rewrite_table(s, lambda t: set_column(t, 'focal_track_id', ['no-such-track'] * t.num_rows))


def empty_map(s):
    def change(data):
        data['lane_segments'] = {}
        data['pedestrian_crossings'] = {}
    rewrite_map(s, change)


def lane_without_centerline(s):
    def change(data):
        del next(iter(data['lane_segments'].values()))['centerline']
    rewrite_map(s, change)


def unknown_mark_type(s):
    def change(data):
        next(iter(data['lane_segments'].values()))['left_lane_mark_type'] = 'PURPLE_ZIGZAG'
    rewrite_map(s, change)


def nan_in_map(s):
    def change(data):
        next(iter(data['lane_segments'].values()))['right_lane_boundary'][0]['x'] = float('nan')
    rewrite_map(s, change)


def no_av(s):
    def change(table):
        ids = ['EGO' if v == 'AV' else v for v in table.column('track_id').to_pylist()]
        return set_column(table, 'track_id', ids)
    rewrite_table(s, change)


def duplicate_rows(s):
    rewrite_table(s, lambda t: pa.concat_tables([t, t.slice(0, 1)]))


# (name, how to break it, which file the message must name, words the message must contain)
BAD_INPUTS = [
    ('truncated_parquet', truncate_parquet, parquet_of, 'cannot read parquet'),
    ('missing_map', lambda s: map_of(s).unlink(), lambda s: s / 'log_map_archive_*.json', 'map json file is missing'),
    ('missing_parquet', lambda s: parquet_of(s).unlink(), parquet_of, 'parquet file is missing'),
    ('parquet_of_another_id', lambda s: parquet_of(s).rename(s / 'scenario_other-id.parquet'), parquet_of,
     'parquet file is missing: the folder holds scenario_other-id.parquet, scenario id other-id'),
    ('missing_column', lambda s: rewrite_table(s, lambda t: t.drop_columns(['heading'])), parquet_of,
     "missing column(s) ['heading']"),
    ('nan_position', nan_position, parquet_of, "'position_x' contains 1 NaN"),
    ('no_focal_track', no_focal, parquet_of, "focal track 'no-such-track'"),
    ('no_av_track', no_av, parquet_of, "no 'AV' track"),
    ('duplicate_rows', duplicate_rows, parquet_of, 'rows for timestep'),
    ('empty_map', empty_map, map_of, 'map has no lane segments and no pedestrian crossings'),
    ('corrupt_map_json', lambda s: map_of(s).write_text('{"lane_segments": {'), map_of, 'cannot read map json'),
    ('lane_without_centerline', lane_without_centerline, map_of, "missing field 'centerline'"),
    ('unknown_mark_type', unknown_mark_type, map_of, "unknown left_lane_mark_type 'PURPLE_ZIGZAG'"),
    ('nan_in_map', nan_in_map, map_of, 'NaN or infinite coordinates'),
]


@pytest.mark.parametrize('name,breaker,culprit,words', BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_one_line_error_naming_the_file(tmp_path, name, breaker, culprit, words):
    scenario = copy_scenario(tmp_path, name)
    load_argoverse_v2_scenario(scenario)  # intact copy loads
    breaker(scenario)
    with pytest.raises(ScenarioError) as info:
        load_argoverse_v2_scenario(scenario)
    message = str(info.value)
    assert message.startswith(str(culprit(scenario)) + ': '), message
    assert words in message and '\n' not in message


def test_batch_processing_lists_bad_scenarios_and_continues(tmp_path):
    raw, processed = tmp_path / 'raw', tmp_path / 'processed'
    good = [copy_scenario(raw, f'good{i}').name for i in range(3)]
    for bad_name, breaker, culprit, words in BAD_INPUTS[:5]:
        breaker(copy_scenario(raw, bad_name))
    summary = preprocess_scenarios(str(raw), str(processed), num_workers=2, progress=False)
    assert (summary.total, summary.processed, summary.skipped) == (8, 3, 0)
    failures = {failure.scenario: failure for failure in read_failures(str(processed))}
    assert sorted(failures) == sorted(b[0] for b in BAD_INPUTS[:5])
    for bad_name, breaker, culprit, words in BAD_INPUTS[:5]:
        assert failures[bad_name].file == str(culprit(raw / bad_name)) and words in failures[bad_name].reason
    assert sorted(os.listdir(processed)) == sorted([f'{n}{CACHE_SUFFIX}' for n in good] + [FAILURES_FILE])
    assert all(bad_name in summary.format() for bad_name, *_ in BAD_INPUTS[:5])

    # the dataset leaves them out without retrying them; strict mode stops at the first one
    dataset = ArgoverseV2Dataset(str(tmp_path), 'train', raw_dir=str(raw), processed_dir=str(processed),
                                 progress=False)
    assert dataset.scenario_names == good
    with pytest.raises(ScenarioError):
        preprocess_scenarios(str(raw), str(tmp_path / 'strict'), strict=True, num_workers=1, progress=False)


def test_resume_skips_finished_scenarios(tmp_path):
    raw, processed = tmp_path / 'raw', tmp_path / 'processed'
    for i in range(3):
        copy_scenario(raw, f's{i}')
    first = preprocess_scenarios(str(raw), str(processed), names=['s0', 's1'], progress=False)
    assert first.processed == 2
    done = processed / f's0{CACHE_SUFFIX}'
    os.utime(done, (1, 1))  # an untouched file keeps this mtime
    second = preprocess_scenarios(str(raw), str(processed), num_workers=2, progress=False)
    assert (second.total, second.processed, second.skipped) == (3, 1, 2)
    assert done.stat().st_mtime == 1
    # a half-written file can only be a leftover temporary (atomic rename): it is ignored, never loaded
    (processed / '.tmp-garbage').write_bytes(b'partial')
    assert len(ArgoverseV2Dataset(str(tmp_path), 'x', raw_dir=str(raw), processed_dir=str(processed))) == 3


def test_a_dying_worker_is_a_one_line_error_and_finished_scenarios_are_kept(tmp_path, monkeypatch):
    """A worker killed mid-run (out of memory, a crash in native code) must not leave the run waiting forever for
    its lost scenarios: one-line error, the finished cache files stay, and a second run completes the rest."""
    import datasets.preprocess as preprocess
    raw, processed = tmp_path / 'raw', tmp_path / 'processed'
    names = [copy_scenario(raw, f's{i}').name for i in range(4)]
    real_process_one = preprocess.process_one

    def dies_on_s3(name):
        if name == 's3':
            os._exit(9)  # the forked worker inherits this patched module
        return real_process_one(name)

    monkeypatch.setattr(preprocess, 'process_one', dies_on_s3)
    with pytest.raises(preprocess.PreprocessWorkerDied) as info:
        preprocess_scenarios(str(raw), str(processed), num_workers=2, progress=False, chunksize=1)
    message = str(info.value)
    assert message.startswith(f'{raw}: a preprocessing worker process died') and '\n' not in message
    kept = sorted(p.name for p in processed.iterdir() if p.name.endswith(CACHE_SUFFIX))
    assert f's3{CACHE_SUFFIX}' not in kept
    monkeypatch.setattr(preprocess, 'process_one', real_process_one)
    second = preprocess_scenarios(str(raw), str(processed), num_workers=2, progress=False)
    assert (second.processed, second.skipped) == (len(names) - len(kept), len(kept))
    assert sorted(p.name for p in processed.iterdir() if p.name.endswith(CACHE_SUFFIX)) == \
        sorted(f'{n}{CACHE_SUFFIX}' for n in names)
