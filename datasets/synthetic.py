"""Synthetic motion-forecasting scenarios written in the genuine Argoverse 2 file format.

Each scenario is a small world: a road network (`datasets.synthetic_map`, profile 'default' = urban grid with
intersections, 'highway' = multi-lane curved road with ramps), traffic simulated on it
(`datasets.synthetic_traffic`: lane-following vehicles with car following, stops, turns and lane changes,
cyclists, pedestrians on sidewalks and crosswalks, parked cars and static objects), and an AV whose sensor range
and occlusions turn the objects into AV2 tracks (fragments, unscored, scored, one focal track).

Output per scenario, exactly as the official release lays it out:
    <out>/<split>/<scenario_id>/scenario_<scenario_id>.parquet       (AV2 columns and dtypes)
    <out>/<split>/<scenario_id>/log_map_archive_<scenario_id>.json   (AV2 map schema)
Both load with av2's `load_argoverse_scenario_parquet` and `ArgoverseStaticMap.from_json`.

Coordinates: city frame in metres (a random rotation and offset of the scene frame), 10 Hz, 110 steps
(50 history + 60 future) for train/val, 50 history steps for test. Same seed -> byte-identical files.

    python -m datasets.synthetic --out DIR --split train --num 100 --seed 0 [--num_workers 2] [--profile highway]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datasets.storage import ensure_writable_directory
from datasets.synthetic_geometry import rotation
from datasets.synthetic_map import build_road_map, map_to_av2_json
from datasets.synthetic_profiles import PROFILES, SyntheticProfile, get_profile, weighted_pick
from datasets.synthetic_traffic import Trajectory, simulate_scene

SPLITS = ('train', 'val', 'test')
NUM_STEPS = 110            # 11 s at 10 Hz
NUM_HISTORICAL_STEPS = 50
MIN_TRACK_STEPS = 10       # AV2 drops shorter tracks
SCORED_RADIUS = 40.0       # fully observed movers this close to the AV at the last history step are scored
MAX_ATTEMPTS = 20
DYNAMIC_TYPES = ('vehicle', 'bus', 'motorcyclist', 'cyclist', 'pedestrian')
FOCAL_TYPE_WEIGHT = {'vehicle': 1.0, 'bus': 0.4, 'motorcyclist': 0.5, 'cyclist': 0.5, 'pedestrian': 0.25}

# (column, arrow type) in the order of the official AV2 parquet files
COLUMNS: Tuple[Tuple[str, pa.DataType], ...] = (
    ('observed', pa.bool_()), ('track_id', pa.string()), ('object_type', pa.string()),
    ('object_category', pa.int64()), ('timestep', pa.int64()), ('position_x', pa.float64()),
    ('position_y', pa.float64()), ('heading', pa.float64()), ('velocity_x', pa.float64()),
    ('velocity_y', pa.float64()), ('scenario_id', pa.string()), ('start_timestamp', pa.float64()),
    ('end_timestamp', pa.float64()), ('num_timestamps', pa.int64()), ('focal_track_id', pa.string()),
    ('city', pa.string()),
)


def _pandas_metadata_template() -> dict:
    """pandas metadata as pyarrow writes it for an AV2-like DataFrame (RangeIndex); 'stop' is set per table."""
    empty = pd.DataFrame({name: pd.Series([], dtype=typ.to_pandas_dtype() if typ != pa.string() else object)
                          for name, typ in COLUMNS})
    return json.loads(pa.Schema.from_pandas(empty).metadata[b'pandas'])


_PANDAS_META = _pandas_metadata_template()
_ARROW_FIELDS = [pa.field(name, typ) for name, typ in COLUMNS]


def _stable_code(text: str) -> int:
    return zlib.crc32(text.encode('utf-8'))


def scenario_seed(seed: int, index: int) -> int:
    """Seed of the `index`-th scenario of a split generated with `seed` (64-bit, well mixed)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------------------
# AV sensing: objects -> AV2 tracks
# ----------------------------------------------------------------------------------------------------------

def _visible_runs(rng, objects: List[Trajectory], prof: SyntheticProfile) -> List[Tuple[int, int, int]]:
    """(object index, first step, last step) of every observed stretch; the AV (index 0) is always observed."""
    av = objects[0].position
    sensor = float(rng.uniform(*prof.sensor_range))
    runs = [(0, 0, NUM_STEPS - 1)]
    for i in range(1, len(objects)):
        dist = np.hypot(*(objects[i].position - av).T)
        visible = dist < sensor * float(rng.uniform(0.85, 1.1))
        if not visible.any():
            continue
        if rng.random() < prof.dropout_prob * (0.5 + min(1.0, float(dist.mean()) / sensor)):
            start = int(rng.integers(0, NUM_STEPS))
            visible[start:start + int(rng.integers(5, 31))] = False   # occlusion: the tracker loses it
        edges = np.diff(np.concatenate([[0], visible.astype(np.int8), [0]]))
        for first, end in zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()):
            if end - first >= MIN_TRACK_STEPS:
                runs.append((i, first, end - 1))
    return runs


def _choose_categories(rng, objects: List[Trajectory], runs) -> Optional[List[int]]:
    """AV2 category per run (0 fragment, 1 unscored, 2 scored, 3 focal); None when no run can be focal."""
    av_now = objects[0].position[NUM_HISTORICAL_STEPS - 1]
    categories = [0] * len(runs)
    candidates, weights = [], []
    for r, (i, first, last) in enumerate(runs):
        if first != 0 or last != NUM_STEPS - 1:
            continue
        categories[r] = 1
        obj = objects[i]
        if i == 0 or not obj.dynamic or obj.object_type not in DYNAMIC_TYPES:
            continue
        travelled = float(np.hypot(*np.diff(obj.position, axis=0).T).sum())
        if travelled < (2.0 if obj.object_type == 'pedestrian' else 5.0):
            continue
        dist = float(np.hypot(*(obj.position[NUM_HISTORICAL_STEPS - 1] - av_now)))
        if dist < SCORED_RADIUS:
            categories[r] = 2
        future = float(np.hypot(*(obj.position[-1] - obj.position[NUM_HISTORICAL_STEPS - 1])))
        candidates.append(r)
        # AV2 picks focal tracks for interesting behaviour: prefer movers, turns, and agents near the AV
        weights.append(FOCAL_TYPE_WEIGHT[obj.object_type] * (1.0 + obj.turns) * math.exp(-dist / 35.0)
                       * (0.05 + min(future, 60.0) / 20.0) ** 1.5)
    if not candidates:
        return None
    categories[candidates[weighted_pick(rng, weights)]] = 3
    return categories


def _ar1_noise(rng, shape, sigma: np.ndarray, rho: float = 0.9) -> np.ndarray:
    """Smooth tracker noise [n, T, ...]: AR(1) along T with stationary std `sigma` (per track, [n]).

    x_0 = w_0, x_t = rho x_{t-1} + sqrt(1 - rho^2) w_t, written as x_t = rho^t sum_{s<=t} g_s w_s rho^-s (one
    cumulative sum; rho^-T stays far from overflow for the 110 steps used here).
    """
    steps = shape[1]
    t = np.arange(steps, dtype=float).reshape((1, steps) + (1,) * (len(shape) - 2))
    gain = np.full(t.shape, math.sqrt(1 - rho * rho))
    gain[:, 0] = 1.0
    white = rng.standard_normal(shape)
    out = np.cumsum(white * gain * rho ** -t, axis=1) * rho ** t
    return out * sigma.reshape((-1,) + (1,) * (len(shape) - 1))


# ----------------------------------------------------------------------------------------------------------
# one scenario
# ----------------------------------------------------------------------------------------------------------

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
    # letting the cyclic collector run in the middle of that costs ~15 % of the generation time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate_scenario(seed, split, prof)
    finally:
        if gc_was_enabled:
            gc.enable()


def _generate_scenario(seed: int, split: str, prof: SyntheticProfile) -> Tuple[str, pa.Table, dict]:
    profile = prof.name
    rng = _scene_rng(seed, split, profile)
    scenario_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    for _ in range(MAX_ATTEMPTS):
        try:
            road_map = build_road_map(rng, prof)
        except RuntimeError:   # a degenerate random network (e.g. a road shorter than its intersections)
            continue
        objects = simulate_scene(rng, road_map, prof, NUM_STEPS)
        runs = _visible_runs(rng, objects, prof)
        categories = _choose_categories(rng, objects, runs)
        if categories is not None:
            break
    else:
        raise RuntimeError(f'synthetic scenario seed={seed} split={split} profile={profile}: no focal agent '
                           f'after {MAX_ATTEMPTS} attempts')
    city = prof.cities[int(rng.integers(len(prof.cities)))]
    theta = float(rng.uniform(-math.pi, math.pi))
    offset = rng.uniform(-3000.0, 3000.0, size=2)
    rot = rotation(theta)

    def to_city(points: np.ndarray) -> np.ndarray:
        # written out: a BLAS product for a 2x2 rotation spends more on threads than on arithmetic
        return _rotate(points, rot) + offset

    table = _tracks_table(rng, scenario_id, city, split, objects, runs, categories, to_city, rot, theta)
    return scenario_id, table, map_to_av2_json(road_map, to_city)


def _rotate(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """points [K, 2] rotated by the 2x2 matrix `rot`."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([rot[0, 0] * x + rot[0, 1] * y, rot[1, 0] * x + rot[1, 1] * y], axis=1)


def _tracks_table(rng, scenario_id: str, city: str, split: str, objects: List[Trajectory], runs, categories,
                  to_city, rot: np.ndarray, theta: float) -> pa.Table:
    """AV2 rows for all runs, sorted by track id then timestep (as the official files)."""
    n_runs = len(runs)
    # numeric track ids in order of first appearance, 'AV' for the ego vehicle
    order = sorted(range(1, n_runs), key=lambda r: (runs[r][1], float(rng.random())))
    next_id = int(rng.integers(10000, 400000))
    track_ids = ['AV'] + [''] * (n_runs - 1)
    for r in order:
        track_ids[r] = str(next_id)
        next_id += int(rng.integers(1, 12))
    focal = track_ids[categories.index(3)]

    obj_of_run = np.array([i for i, _, _ in runs])
    sigma_pos = np.array([0.005 if objects[i].is_av else 0.05 if objects[i].object_type == 'pedestrian'
                          else 0.02 if not objects[i].dynamic else 0.03 for i, _, _ in runs])
    sigma_heading = np.array([0.002 if objects[i].is_av else 0.04 if objects[i].object_type == 'pedestrian'
                              else 0.01 for i, _, _ in runs])
    dynamic = np.array([objects[i].dynamic for i, _, _ in runs], dtype=float)
    pos_noise = _ar1_noise(rng, (n_runs, NUM_STEPS, 2), sigma_pos)
    heading_noise = _ar1_noise(rng, (n_runs, NUM_STEPS), sigma_heading)
    vel_noise = rng.standard_normal((n_runs, NUM_STEPS, 2)) * (sigma_pos * 1.5 * dynamic)[:, None, None]

    # rows: runs in track-id order, each over its (split-truncated) steps
    last_step = NUM_STEPS - 1 if split != 'test' else NUM_HISTORICAL_STEPS - 1
    kept = [r for r in sorted(range(n_runs), key=lambda r: track_ids[r]) if runs[r][1] <= last_step]
    first = np.array([runs[r][1] for r in kept])
    counts = np.array([min(runs[r][2], last_step) for r in kept]) - first + 1
    run_of_row = np.repeat(np.array(kept), counts)
    timestep = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts))
    obj_of_row = obj_of_run[run_of_row]
    positions = np.stack([o.position for o in objects])      # [n_objects, T, 2]
    headings = np.stack([o.heading for o in objects])
    velocities = np.stack([o.velocity for o in objects])
    position = to_city(positions[obj_of_row, timestep] + pos_noise[run_of_row, timestep])
    heading = headings[obj_of_row, timestep] + theta + heading_noise[run_of_row, timestep]
    heading = np.arctan2(np.sin(heading), np.cos(heading))
    velocity = _rotate(velocities[obj_of_row, timestep] + vel_noise[run_of_row, timestep], rot)
    rows = len(timestep)
    types = [objects[i].object_type for i, _, _ in runs]

    def per_run(values: List[str]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(run_of_row.astype(np.int32)),
                                              pa.array(values, pa.string())).cast(pa.string())

    def constant(value) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                              pa.array([value], pa.string())).cast(pa.string())

    start_ns = float(rng.integers(315_960_000, 316_000_000)) * 1e9 + float(rng.integers(0, 10 ** 9))
    arrays = [
        pa.array(timestep < NUM_HISTORICAL_STEPS),
        per_run(track_ids),
        per_run(types),
        pa.array(np.asarray(categories, dtype=np.int64)[run_of_row]),
        pa.array(timestep.astype(np.int64)),
        pa.array(position[:, 0]), pa.array(position[:, 1]),
        pa.array(heading),
        pa.array(velocity[:, 0]), pa.array(velocity[:, 1]),
        constant(scenario_id),
        pa.array(np.full(rows, start_ns)),
        pa.array(np.full(rows, start_ns + (NUM_STEPS - 1) * 1e8)),
        pa.array(np.full(rows, NUM_STEPS, dtype=np.int64)),
        constant(focal),
        constant(city),
    ]
    meta = dict(_PANDAS_META)
    meta['index_columns'] = [{'kind': 'range', 'name': None, 'start': 0, 'stop': rows, 'step': 1}]
    schema = pa.schema(_ARROW_FIELDS, metadata={b'pandas': json.dumps(meta).encode('utf-8')})
    return pa.Table.from_arrays(arrays, schema=schema)


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------

def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.tmp-{os.getpid()}')
    with open(tmp, 'wb') as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_scenario(out_dir: str, split: str, scenario_id: str, table: pa.Table, map_json: dict) -> str:
    """Write one scenario in the AV2 layout (atomically, file by file); returns the scenario directory."""
    directory = os.path.join(out_dir, split, scenario_id)
    os.makedirs(directory, exist_ok=True)
    _atomic_write_bytes(os.path.join(directory, f'log_map_archive_{scenario_id}.json'),
                        json.dumps(map_json).encode('utf-8'))   # the official files are exactly json.dumps output
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    _atomic_write_bytes(os.path.join(directory, f'scenario_{scenario_id}.parquet'), sink.getvalue().to_pybytes())
    return directory


def _generate_range(args) -> List[str]:
    out_dir, split, seed, profile, indices = args
    ids = []
    for index in indices:
        scenario_id, table, map_json = generate_scenario(scenario_seed(seed, index), split, profile)
        write_scenario(out_dir, split, scenario_id, table, map_json)
        ids.append(scenario_id)
    return ids


def generate_split(out_dir: str, split: str, num: int, seed: int, num_workers: int = 1,
                   profile: str = 'default', progress: bool = False) -> List[str]:
    """Write `num` scenarios under out_dir/split; returns their ids in generation order.

    Scenario k uses seed scenario_seed(seed, k), so the result does not depend on num_workers. ``progress`` shows a
    progress bar on stderr.
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLITS)}')
    get_profile(profile)
    if num < 0:
        raise ValueError(f'--num must be >= 0, got {num}')
    if num_workers < 1:
        raise ValueError(f'--num_workers must be >= 1, got {num_workers}')
    ensure_writable_directory(os.path.join(out_dir, split), what='output directory', fix='choose a writable --out')
    bar = None
    if progress and num > 0:
        from tqdm import tqdm
        bar = tqdm(total=num, desc=f'Generating {split} scenarios', unit='scenario', file=sys.stderr,
                   dynamic_ncols=True)
    try:
        if num_workers == 1 or num <= 1:
            chunk = 16 if bar is not None else max(num, 1)  # small chunks only to move the bar
            ids = []
            for lo in range(0, num, chunk):
                ids += _generate_range((out_dir, split, seed, profile, range(lo, min(num, lo + chunk))))
                if bar is not None:
                    bar.update(min(num, lo + chunk) - lo)
        else:
            chunk = max(1, min(64, num // (num_workers * 4) or 1))
            jobs = [(out_dir, split, seed, profile, range(lo, min(num, lo + chunk))) for lo in range(0, num, chunk)]
            ids = []
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                for part in pool.map(_generate_range, jobs):  # in job order
                    ids += part
                    if bar is not None:
                        bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f'duplicate synthetic scenario ids for seed {seed} split {split}')
    return ids


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m datasets.synthetic',
        description='Write synthetic motion-forecasting scenarios in the Argoverse 2 layout '
                    '(<out>/<split>/<id>/scenario_<id>.parquet + log_map_archive_<id>.json).')
    parser.add_argument('--out', type=str, required=True, help='root directory (the AV2 "raw" root)')
    parser.add_argument('--split', type=str, required=True, choices=SPLITS,
                        help='train/val: 110 steps; test: the 50 history steps only')
    parser.add_argument('--num', type=int, required=True, help='number of scenarios')
    parser.add_argument('--seed', type=int, default=0, help='base seed; same seed gives byte-identical files')
    parser.add_argument('--num_workers', type=int, default=1, help='parallel worker processes')
    parser.add_argument('--profile', type=str, default='default', choices=sorted(PROFILES),
                        help='; '.join(f'{name}: {p.description}' for name, p in sorted(PROFILES.items())))
    parser.add_argument('--no_progress', dest='progress', action='store_false', help='no progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        ids = generate_split(args.out, args.split, args.num, args.seed, args.num_workers, args.profile,
                             progress=args.progress)
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    rate = len(ids) / elapsed if elapsed > 0 else float('inf')
    print(f'wrote {len(ids)} {args.profile} scenarios to {os.path.join(args.out, args.split)} '
          f'in {elapsed:.1f} s ({rate:.1f} scenarios/s, {args.num_workers} worker(s))')
    return 0


if __name__ == '__main__':
    sys.exit(main())
