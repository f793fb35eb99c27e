"""The `heavy` synthetic profile: scenes the size of the largest Argoverse 2 scenarios, for benchmarks."""
import numpy as np

from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
from av2.map.map_api import ArgoverseStaticMap

from datasets.synthetic import generate_split


def test_heavy_scenes_have_the_size_of_the_largest_real_ones(tmp_path):
    ids = generate_split(str(tmp_path), 'train', 8, seed=0, profile='heavy')
    tracks, polygons = [], []
    for sid in ids:
        directory = tmp_path / 'train' / sid
        scenario = load_argoverse_scenario_parquet(directory / f'scenario_{sid}.parquet')
        static_map = ArgoverseStaticMap.from_json(directory / f'log_map_archive_{sid}.json')
        tracks.append(len(scenario.tracks))
        polygons.append(len(static_map.vector_lane_segments) + len(static_map.vector_pedestrian_crossings))
    # the real samples of tests/data hold 40-60 tracks and 60-80 polygons; the largest real scenes ~150 / ~250
    assert 120 <= np.median(tracks) <= 220, tracks
    assert 200 <= np.median(polygons) <= 350, polygons
