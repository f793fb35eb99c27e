"""One synthetic scenario: road network -> traffic -> tracker -> Argoverse 2 table and map json.

Coordinates: city frame in metres (a random rotation and offset of the scene frame), 10 Hz, 110 steps
(50 history + 60 future) for train/val, 50 history steps for test. Same seed -> byte-identical output. The road
network and city frame are the scenario's own, or a `CityMap` shared by a block of scenarios (`generate_scenarios`).
"""
from __future__ import annotations

import contextlib
import gc
import uuid
from typing import Iterable, Iterator, Optional, Tuple

import numpy as np
import pyarrow as pa

from datasets.synthetic.av2_writer import tracks_table
from datasets.synthetic.city_map import (CityMap, build_city_map, build_road_map, place_in_city, road_seed,
                                         stable_code)
from datasets.synthetic.observation import choose_categories, choose_focal, tracked_runs, tracker_noise
from datasets.synthetic.profiles import SyntheticProfile, get_profile
from datasets.synthetic.traffic import simulate_scene

SPLITS = ('train', 'val', 'test')
MAX_ATTEMPTS = 20
# Consecutive scenarios of a split that share one road network and city frame (as real logs share city streets);
# 1 gives every scenario a map of its own.
SCENES_PER_MAP = 8


def scenario_seed(seed: int, index: int) -> int:
    """Seed of the `index`-th scenario of a split generated with `seed` (64-bit, well mixed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def _check_seed(seed, what: str) -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'synthetic {what} must be a non-negative integer, got {seed!r}')
    return int(seed)


def _scene_rng(seed: int, split: str, profile: str) -> np.random.Generator:
    seed = _check_seed(seed, 'scenario seed')
    return np.random.default_rng(np.random.SeedSequence([seed, stable_code(split), stable_code(profile)]))


@contextlib.contextmanager
def _without_cyclic_gc():
    # A scenario allocates tens of thousands of small objects (the map json) and creates no reference cycles;
    # letting the cyclic collector run in the middle of that costs a good part of the generation time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc_was_enabled:
            gc.enable()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLITS)}')


def generate_scenario(seed: int, split: str = 'train', profile: str = 'default', road_seed: Optional[int] = None
                      ) -> Tuple[str, pa.Table, dict]:
    """One synthetic scenario: (scenario_id, AV2 parquet table, AV2 map json dict).

    Deterministic in (seed, split, profile, road_seed). road_seed None: the scenario draws its own road network and
    city frame; otherwise it is simulated on the city map of that road seed, exactly as the scenarios of a block in
    `generate_scenarios` / `generate_split` (road_seed(seed, index // scenes_per_map)). The table has the official
    16 columns; the test split holds only the 50 history steps (num_timestamps stays 110, as in the official test
    files).
    """
    _check_split(split)
    prof = get_profile(profile)
    with _without_cyclic_gc():
        city_map = None if road_seed is None else build_city_map(_check_seed(road_seed, 'road seed'), split, prof)
        scenario_id, table, city_map = _generate_scenario(seed, split, prof, city_map)
        return scenario_id, table, city_map.json_dict()


def generate_scenarios(seed: int, indices: Iterable[int], split: str = 'train', profile: str = 'default',
                       scenes_per_map: int = SCENES_PER_MAP) -> Iterator[Tuple[int, str, pa.Table, CityMap]]:
    """Scenarios `indices` of the split generated with `seed`, in order: (index, scenario_id, table, city map).

    Scenario k has seed scenario_seed(seed, k). With scenes_per_map > 1 it runs on the city map of
    road_seed(seed, k // scenes_per_map), built once for consecutive indices of one block (its `json_dict()` and
    `json_bytes()` are shared by them; a scenario whose traffic gives no focal agent there in MAX_ATTEMPTS tries
    draws a map of its own); with 1 each scenario draws its own map, as `generate_scenario` without a road seed.
    Either way scenario k is the same whatever else is generated.
    """
    _check_split(split)
    prof = get_profile(profile)
    seed = _check_seed(seed, 'seed')
    if scenes_per_map < 1:
        raise ValueError(f'scenes_per_map must be >= 1, got {scenes_per_map}')
    block, city_map = None, None
    for index in indices:
        with _without_cyclic_gc():
            if scenes_per_map > 1 and index // scenes_per_map != block:
                block = index // scenes_per_map
                city_map = build_city_map(road_seed(seed, block), split, prof)
            scenario_id, table, scene_map = _generate_scenario(scenario_seed(seed, index), split, prof, city_map)
        yield index, scenario_id, table, scene_map


def _simulate_tracked_scene(rng, prof: SyntheticProfile, city_map: Optional[CityMap]):
    """(road map, objects, sensor range, (focal, scored objects)), retried until the scene has a focal agent; None
    after MAX_ATTEMPTS tries.

    Without a city map every attempt draws a new road network from the scene's generator; on a city map the
    traffic is simulated again on the same network."""
    for _ in range(MAX_ATTEMPTS):
        if city_map is None:
            try:
                road_map = build_road_map(rng, prof)
            except RuntimeError:   # a degenerate random network (e.g. a road shorter than its intersections)
                continue
            table = None
        else:
            road_map, table = city_map.road_map, city_map.lane_table(prof.upstream_length)
        objects = simulate_scene(rng, road_map, prof, table=table)
        sensor = float(rng.uniform(*prof.sensor_range))
        chosen = choose_focal(rng, objects, sensor)
        if chosen is not None:
            return road_map, objects, sensor, chosen
    return None


def _generate_scenario(seed: int, split: str, prof: SyntheticProfile, city_map: Optional[CityMap]
                       ) -> Tuple[str, pa.Table, CityMap]:
    rng = _scene_rng(seed, split, prof.name)
    scenario_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    scene = _simulate_tracked_scene(rng, prof, city_map)
    if scene is None and city_map is not None:
        # a shared network on which this scene's traffic never gave a focal agent: a map of the scene's own
        # (still a function of the scene's seed and road seed alone)
        city_map = None
        scene = _simulate_tracked_scene(rng, prof, None)
    if scene is None:
        raise RuntimeError(f'synthetic scenario seed={seed} split={split} profile={prof.name}: no focal agent '
                           f'after {MAX_ATTEMPTS} attempts')
    road_map, objects, sensor, (focal, scored) = scene
    runs = tracked_runs(rng, objects, prof, sensor, [focal] + scored)
    categories = choose_categories(runs, focal, scored)
    noise = tracker_noise(rng, objects, runs)
    if city_map is None:   # a map of its own, placed with the scene's generator
        city_map = place_in_city(rng, road_map, prof)
    table = tracks_table(rng, scenario_id, city_map.city, split, objects, runs, categories, noise, city_map.to_city,
                         city_map.rot, city_map.theta)
    return scenario_id, table, city_map
