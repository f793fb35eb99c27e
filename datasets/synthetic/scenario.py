"""One synthetic scenario: road network -> traffic -> tracker -> Argoverse 2 table and map json.

Coordinates: city frame in metres (a random rotation and offset of the scene frame), 10 Hz, 110 steps
(50 history + 60 future) for train/val, 50 history steps for test. Same seed -> byte-identical output.
"""
from __future__ import annotations

import gc
import math
import uuid
import zlib
from typing import Tuple

import numpy as np
import pyarrow as pa

from datasets.synthetic.av2_writer import map_to_av2_json, rotate, tracks_table
from datasets.synthetic.geometry import rotation
from datasets.synthetic.grid_roads import build_grid
from datasets.synthetic.highway_roads import build_highway
from datasets.synthetic.observation import choose_categories, choose_focal, tracked_runs, tracker_noise
from datasets.synthetic.profiles import SyntheticProfile, get_profile
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.traffic import simulate_scene

SPLITS = ('train', 'val', 'test')
MAX_ATTEMPTS = 20
ROAD_BUILDERS = {'grid': build_grid, 'highway': build_highway}


def _stable_code(text: str) -> int:
    return zlib.crc32(text.encode('utf-8'))


def scenario_seed(seed: int, index: int) -> int:
    """Seed of the `index`-th scenario of a split generated with `seed` (64-bit, well mixed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def build_road_map(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    """Road network of the profile's kind."""
    if prof.road_kind not in ROAD_BUILDERS:
        raise ValueError(f'profile {prof.name!r}: unknown road_kind {prof.road_kind!r} (expected grid or highway)')
    return ROAD_BUILDERS[prof.road_kind](rng, prof)


def _scene_rng(seed: int, split: str, profile: str) -> np.random.Generator:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'synthetic scenario seed must be a non-negative integer, got {seed!r}')
    return np.random.default_rng(np.random.SeedSequence([int(seed), _stable_code(split), _stable_code(profile)]))


def generate_scenario(seed: int, split: str = 'train', profile: str = 'default') -> Tuple[str, pa.Table, dict]:
    """One synthetic scenario: (scenario_id, AV2 parquet table, AV2 map json dict).

    Deterministic in (seed, split, profile). The table has the official 16 columns; the test split holds only
    the 50 history steps (num_timestamps stays 110, as in the official test files).
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLITS)}')
    prof = get_profile(profile)
    # A scenario allocates tens of thousands of small objects (the map json) and creates no reference cycles;
    # letting the cyclic collector run in the middle of that costs a good part of the generation time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate_scenario(seed, split, prof)
    finally:
        if gc_was_enabled:
            gc.enable()


def _simulate_tracked_scene(rng, prof: SyntheticProfile, seed: int, split: str):
    """(road map, objects, sensor range, (focal, scored objects)); retried until the scene has a focal agent."""
    for _ in range(MAX_ATTEMPTS):
        try:
            road_map = build_road_map(rng, prof)
        except RuntimeError:   # a degenerate random network (e.g. a road shorter than its intersections)
            continue
        objects = simulate_scene(rng, road_map, prof)
        sensor = float(rng.uniform(*prof.sensor_range))
        chosen = choose_focal(rng, objects, sensor)
        if chosen is not None:
            return road_map, objects, sensor, chosen
    raise RuntimeError(f'synthetic scenario seed={seed} split={split} profile={prof.name}: no focal agent '
                       f'after {MAX_ATTEMPTS} attempts')


def _generate_scenario(seed: int, split: str, prof: SyntheticProfile) -> Tuple[str, pa.Table, dict]:
    rng = _scene_rng(seed, split, prof.name)
    scenario_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    road_map, objects, sensor, (focal, scored) = _simulate_tracked_scene(rng, prof, seed, split)
    runs = tracked_runs(rng, objects, prof, sensor, [focal] + scored)
    categories = choose_categories(runs, focal, scored)
    noise = tracker_noise(rng, objects, runs)
    city = prof.cities[int(rng.integers(len(prof.cities)))]
    theta = float(rng.uniform(-math.pi, math.pi))
    offset = rng.uniform(-3000.0, 3000.0, size=2)
    rot = rotation(theta)

    def to_city(points: np.ndarray) -> np.ndarray:
        # written out: a BLAS product for a 2x2 rotation spends more on threads than on arithmetic
        return rotate(points, rot) + offset

    table = tracks_table(rng, scenario_id, city, split, objects, runs, categories, noise, to_city, rot, theta)
    return scenario_id, table, map_to_av2_json(road_map, to_city)
