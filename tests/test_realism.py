"""Realism report on the real Argoverse 2 samples: statistics checked against hand computations from the raw
parquet / map JSON, the CLI's report and plots, and a damaged scenario reported and skipped."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from datasets.realism import RealismSamples, collect, statistics, summarize
from datasets.realism.summary import distinct_shape_fraction
from datasets.realism.__main__ import main as realism_main
from datasets.waymo import decode_scenario, read_waymo_payload
from sample_data import AV2_DIR, AV2_TRAIN_DIR, WOMD_FILE


@pytest.fixture(scope='module')
def samples() -> RealismSamples:
    return collect(AV2_TRAIN_DIR, progress=False)


@pytest.fixture(scope='module')
def stats(samples):
    return statistics(samples)


@pytest.fixture(scope='module')
def frames():
    return [pd.read_parquet(path) for path in sorted(AV2_TRAIN_DIR.glob('*/scenario_*.parquet'))]


def _polyline_length(points) -> float:
    xy = np.array([[p['x'], p['y']] for p in points])
    return float(np.linalg.norm(np.diff(xy, axis=0), axis=1).sum())


def test_summarize_is_statistics_of_collect(stats):
    assert summarize(AV2_TRAIN_DIR) == stats
    assert stats['num_scenes'] == 2 and stats['num_skipped'] == 0


def test_signs_and_ranges(stats):
    assert 0.0 < stats['centreline_offset_p50'] < stats['centreline_offset_p90'] < 3.0
    assert 0.0 < stats['driver_offset_spread'] < 2.0
    assert 0.0 < stats['driver_offset_spread_robust'] < 2.0
    assert 0.0 < stats['lon_acc_p50'] < stats['lon_acc_p90'] < 6.0
    assert 0.0 < stats['speed_p50'] < stats['speed_p90'] < 30.0
    assert 5.0 < stats['yaw_rate_p99'] < 90.0
    assert stats['focal_speed_change_p10'] <= stats['focal_speed_change_p90']
    for key in ('cruising_fraction', 'short_track_fraction', 'full_track_fraction', 'static_zero_velocity_fraction',
                'static_pedestrian_fraction', 'static_fraction_at_current', 'off_lane_fraction'):
        assert 0.0 <= stats[key] <= 1.0, key
    # Argoverse 2 speeds from positions ramp up over a track's first steps (edge effect of its track smoothing).
    assert stats['track_start_speed_ratio_p50'] < 0.9
    assert 10.0 < stats['lane_segment_length_p50'] < 40.0


def test_track_lengths_and_counts_match_the_raw_parquet(stats, frames):
    lengths = np.concatenate([frame.groupby('track_id').size().to_numpy() for frame in frames])
    assert stats['track_length_p50'] == pytest.approx(np.median(lengths))
    assert stats['short_track_fraction'] == pytest.approx(np.mean(lengths < 20))
    assert stats['full_track_fraction'] == pytest.approx(np.mean(lengths == 110))
    scored = [frame.loc[frame.object_category == 2, 'track_id'].nunique() for frame in frames]
    assert stats['scored_tracks_per_scene'] == pytest.approx(np.mean(scored))
    assert stats['agents_per_scene'] == pytest.approx(np.mean([frame.track_id.nunique() for frame in frames]))


def test_static_statistics_match_the_raw_parquet(stats, frames):
    zero, observations, static_pedestrians, pedestrians = 0, 0, 0, 0
    for frame in frames:
        for _, track in frame.sort_values('timestep').groupby('track_id'):
            xy = track[['position_x', 'position_y']].to_numpy()
            static = np.max(np.hypot(*(xy - xy[0]).T)) < 1.0
            if static:
                zero += int(((track.velocity_x == 0) & (track.velocity_y == 0)).sum())
                observations += len(track)
            if track.object_type.iloc[0] == 'pedestrian':
                pedestrians += 1
                static_pedestrians += int(static)
    assert observations > 0 and pedestrians > 0
    assert stats['static_zero_velocity_fraction'] == pytest.approx(zero / observations)
    assert stats['static_pedestrian_fraction'] == pytest.approx(static_pedestrians / pedestrians)


def test_focal_constant_velocity_error_matches_the_raw_parquet(stats, frames):
    errors, changes = [], []
    for frame in frames:
        focal = frame[frame.track_id == frame.focal_track_id.iloc[0]].set_index('timestep')
        p = focal[['position_x', 'position_y']].to_numpy()[np.argsort(focal.index.to_numpy())]
        velocity = (p[49] - p[48]) * 10.0
        errors.append(np.linalg.norm(p[49] + 6.0 * velocity - p[109]))
        changes.append(np.linalg.norm(p[109] - p[108]) * 10.0 - np.linalg.norm(p[49] - p[48]) * 10.0)
    assert stats['focal_cv_fde6_mean'] == pytest.approx(np.mean(errors))
    assert stats['focal_speed_change_p10'] == pytest.approx(np.percentile(changes, 10))


def test_distinct_focal_future_shapes(samples, stats):
    futures = samples.focal_future
    assert futures.shape == (2, 60, 2) and stats['focal_future_distinct_fraction'] == 1.0
    # A copy shifted sideways by 0.5 m is the same shape; by 3 m, another one.
    repeated = np.concatenate([futures, futures + [0.0, 0.5], futures + [0.0, 3.0]])
    assert distinct_shape_fraction(repeated) == pytest.approx(4 / 6)


def test_lane_segment_length_matches_the_map_json(stats):
    # The centreline (av2's midpoint ladder) of a lane is as long as the mean of its two boundaries, up to curvature.
    lengths = []
    for path in sorted(AV2_TRAIN_DIR.glob('*/log_map_archive_*.json')):
        for lane in json.loads(path.read_text())['lane_segments'].values():
            lengths.append(0.5 * (_polyline_length(lane['left_lane_boundary'])
                                  + _polyline_length(lane['right_lane_boundary'])))
    assert stats['lane_segment_length_p50'] == pytest.approx(np.median(lengths), abs=0.3)
    # QCNet's polygon count of these two maps (tests/data/README.md): 83 and 65.
    assert stats['polygons_per_scene'] == pytest.approx((83 + 65) / 2)


def test_centreline_offsets_of_the_av_are_small(samples):
    # The AV of scene 0a1e6f0a drives along its lane: every matched position lies well inside a lane.
    assert np.all(np.abs(samples.centreline_offset) <= 5.0)
    assert np.median(np.abs(samples.centreline_offset)) < 0.5
    assert len(samples.track_mean_offset) >= 5


def test_test_split_has_no_future_statistics():
    test_stats = summarize(AV2_DIR / 'test')
    assert test_stats['num_scenes'] == 1
    assert math.isnan(test_stats['focal_cv_fde6_mean'])
    assert test_stats['track_length_p50'] <= 50


def test_cli_writes_report_and_plots_and_skips_damaged_and_mapless_scenarios(tmp_path, capsys):
    data = tmp_path / 'data' / 'train'
    shutil.copytree(AV2_TRAIN_DIR, data)
    damaged = data / 'ffffffff-0000-0000-0000-000000000000'
    damaged.mkdir()
    damaged_file = damaged / 'scenario_ffffffff-0000-0000-0000-000000000000.parquet'
    damaged_file.write_bytes(b'PAR1 this is not a parquet file')
    shutil.copy(next(AV2_TRAIN_DIR.glob('*/log_map_archive_*.json')),
                damaged / 'log_map_archive_ffffffff-0000-0000-0000-000000000000.json')
    mapless = data / 'eeeeeeee-0000-0000-0000-000000000000'
    mapless.mkdir()
    mapless_file = mapless / 'scenario_eeeeeeee-0000-0000-0000-000000000000.parquet'
    shutil.copy(next(AV2_TRAIN_DIR.glob('*/scenario_*.parquet')), mapless_file)
    out = tmp_path / 'report'
    # In-process (the same argv as `python -m datasets.realism ...`): a second interpreter would import torch again.
    code = realism_main(['--data', str(tmp_path / 'data'), '--reference', str(AV2_DIR), '--out', str(out),
                         '--label', 'copy', '--reference_label', 'samples'])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    problem_lines = [line for line in stderr.splitlines() if str(damaged_file) in line]
    assert len(problem_lines) == 1 and 'not a readable Argoverse 2 scenario' in problem_lines[0]
    assert [line for line in stderr.splitlines() if str(mapless_file) in line] == [
        f'realism: skipped {mapless_file}: no log_map_archive_eeeeeeee-0000-0000-0000-000000000000.json beside it']
    report = (out / 'realism.md').read_text()
    assert '| statistic | copy | samples |' in report
    assert '| num_scenes | 2 | 3 |' in report
    assert '| num_skipped | 2 | 0 |' in report
    row = next(line for line in report.splitlines() if line.startswith('| centreline_offset_p50 |'))
    assert len(row.strip('|').split('|')) == 3
    skipped_section = report.split('## Skipped scenarios')[1]
    assert str(damaged_file) in skipped_section and str(mapless_file) in skipped_section
    for name in ('histograms.png', 'focal_speed.png', 'focal_futures.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', name
    assert not list(out.glob('.*tmp*'))


def test_waymo_reference_statistics_match_the_decoded_scenario():
    stats = summarize(WOMD_FILE)
    assert stats['num_scenes'] == 1 and stats['num_skipped'] == 0
    scenario = decode_scenario(read_waymo_payload(str(WOMD_FILE), 0))
    valid = scenario.states['valid']
    assert stats['track_length_p50'] == pytest.approx(np.median(valid.sum(axis=1)))
    assert stats['full_track_fraction'] == pytest.approx(np.mean(valid.all(axis=1)))
    assert stats['agents_at_current_per_scene'] == valid[:, scenario.current_time_index].sum()
    # No focal agent, no track categories, no Argoverse 2 lane segments; Waymo lanes are centrelines.
    for key in ('focal_cv_fde6_mean', 'scored_tracks_per_scene', 'lane_segment_length_p50', 'polygons_per_scene'):
        assert math.isnan(stats[key]), key
    assert 0.0 < stats['centreline_offset_p50'] < stats['centreline_offset_p90'] < 2.0
    assert 1.0 < stats['other_vehicle_cv_fde6_mean'] < 30.0


def test_damaged_waymo_file_is_reported(tmp_path, capsys):
    damaged = tmp_path / 'cut.tfrecord'
    damaged.write_bytes(WOMD_FILE.read_bytes()[:5000])
    samples = collect(damaged)
    assert samples.num_scenes == 0 and len(samples.skipped) == 1
    assert samples.skipped[0][0] == str(damaged)
    assert str(damaged) in capsys.readouterr().err


def test_lane_change_across_the_end_of_lane_segments_counts():
    """Two parallel lanes, each cut into two segments at x = 20 m: left 1 -> 2, right 3 -> 4 (1|3 and 2|4
    neighbours). A move from 1 to 4 crosses the lane line where the segments end; 1 -> 2 only follows the lane."""
    from datasets.realism.reading import lane_map_from_centrelines
    from datasets.realism.track_statistics import MIN_LANE_RUN_STEPS, lane_changes
    line = lambda x0, y: np.array([[x0, y], [x0 + 20.0, y]])  # noqa: E731
    lane_map = lane_map_from_centrelines({1: line(0, 3.5), 2: line(20, 3.5), 3: line(0, 0), 4: line(20, 0)},
                                         {1: (3,), 3: (1,), 2: (4,), 4: (2,)}, 0, successors={1: (2,), 3: (4,)})
    row = {int(lane_id): i for i, lane_id in enumerate(lane_map.lane_ids)}
    hold = lambda *lanes: np.repeat([row[lane] for lane in lanes], MIN_LANE_RUN_STEPS)  # noqa: E731
    assert lane_changes(hold(1, 2), lane_map) == 0
    assert lane_changes(hold(1, 3), lane_map) == 1                  # within one segment pair
    assert lane_changes(hold(1, 4), lane_map) == 1                  # across the segment ends
    assert lane_changes(hold(3, 2), lane_map) == 1
    assert lane_changes(hold(1, 4, 2), lane_map) == 2               # and back
    without_successors = lane_map_from_centrelines({1: line(0, 3.5), 2: line(20, 3.5), 3: line(0, 0), 4: line(20, 0)},
                                                   {1: (3,), 3: (1,), 2: (4,), 4: (2,)}, 0)
    assert lane_changes(hold(1, 4), without_successors) == 0       # a map without successors: as before
