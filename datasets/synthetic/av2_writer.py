"""Argoverse 2 writer: a simulated, tracked scene -> the official scenario parquet table and map json.

Output per scenario, exactly as the official release lays it out:
    <out>/<split>/<scenario_id>/scenario_<scenario_id>.parquet       (AV2 columns and dtypes)
    <out>/<split>/<scenario_id>/log_map_archive_<scenario_id>.json   (AV2 map schema)
Both load with av2's `load_argoverse_scenario_parquet` and `ArgoverseStaticMap.from_json`.
"""
from __future__ import annotations

import gc
import json
import os
import re
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from datasets.synthetic.geometry import batch_normals, batch_resample
from datasets.synthetic.points_text import point_lists_text
from datasets.synthetic.road_network import RoadMap
from datasets.synthetic.trajectory import NUM_HISTORICAL_STEPS, NUM_STEPS, Trajectory
from utils.atomic_io import atomic_write_bytes

CENTERLINE_SPACING = 2.0   # AV2 centre lines have <= 2 m between points
BOUNDARY_SPACING = (10.0, 4.0)   # AV2 lane boundaries are sparse: (nearly straight road pieces, curved lanes)

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
# json.dumps' settings without its reference-cycle check (a map dict is a tree): the same text, a little faster
_JSON_ENCODER = json.JSONEncoder(check_circular=False)


def rotate(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """points [K, 2] rotated by the 2x2 matrix `rot`."""
    x, y = points[:, 0], points[:, 1]
    return np.stack([rot[0, 0] * x + rot[0, 1] * y, rot[1, 0] * x + rot[1, 1] * y], axis=1)


def track_ids(rng, runs: Sequence[Tuple[int, int, int]]) -> List[str]:
    """'AV' for run 0, numeric ids for the others in order of first appearance (as the official files)."""
    order = sorted(range(1, len(runs)), key=lambda r: (runs[r][1], float(rng.random())))
    next_id = int(rng.integers(10000, 400000))
    ids = ['AV'] + [''] * (len(runs) - 1)
    for r in order:
        ids[r] = str(next_id)
        next_id += int(rng.integers(1, 12))
    return ids


def repeated_string(value: str, rows: int) -> pa.Array:
    """A string array of `rows` copies of `value`, built from its buffers (pa.repeat copies long strings one by
    one)."""
    data = value.encode('utf-8')
    offsets = np.arange(rows + 1, dtype=np.int32) * np.int32(len(data))
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data * rows))


def _rows(values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values [A, T, 2] at the flat (a * T + t) indices `at` [R]: [R, 2]."""
    return values.reshape(-1, 2).take(at, axis=0)


def tracks_table(rng, scenario_id: str, city: str, split: str, objects: List[Trajectory], runs, categories,
                 noise, to_city: Callable, rot: np.ndarray, theta: float) -> pa.Table:
    """AV2 rows for all runs, sorted by track id then timestep (as the official files).

    noise: (position [R, T, 2], heading [R, T], velocity [R, T, 2]) tracker errors per run, scene frame."""
    ids = track_ids(rng, runs)
    pos_noise, heading_noise, vel_noise = noise
    obj_of_run = np.array([i for i, _, _ in runs])
    n_runs = len(runs)
    # rows: runs in track-id order, each over its (split-truncated) steps
    last_step = NUM_STEPS - 1 if split != 'test' else NUM_HISTORICAL_STEPS - 1
    kept = [r for r in sorted(range(n_runs), key=lambda r: ids[r]) if runs[r][1] <= last_step]
    first = np.array([runs[r][1] for r in kept])
    counts = np.array([min(runs[r][2], last_step) for r in kept]) - first + 1
    run_of_row = np.repeat(np.array(kept), counts)
    timestep = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts))
    obj_of_row = obj_of_run[run_of_row]
    positions = np.stack([o.position for o in objects])      # [n_objects, T, 2]
    headings = np.stack([o.heading for o in objects])
    velocities = np.stack([o.velocity for o in objects])
    # each row's (object, step) and (run, step) as flat indices: `take` of the flattened arrays gathers many
    # times faster than an index pair, most of all for the [.., 2] arrays
    at_obj = obj_of_row * positions.shape[1] + timestep
    at_run = run_of_row * pos_noise.shape[1] + timestep
    position = to_city(_rows(positions, at_obj) + _rows(pos_noise, at_run))
    heading = headings.reshape(-1).take(at_obj) + theta + heading_noise.reshape(-1).take(at_run)
    heading = np.arctan2(np.sin(heading), np.cos(heading))
    velocity = rotate(_rows(velocities, at_obj) + _rows(vel_noise, at_run), rot)
    rows = len(timestep)
    focal = ids[categories.index(3)]
    types = [objects[i].object_type for i, _, _ in runs]

    run_index = pa.array(run_of_row.astype(np.int32))

    def per_run(values: List[str]) -> pa.Array:
        return pa.array(values, pa.string()).take(run_index)

    def constant(value: str) -> pa.Array:
        return repeated_string(value, rows)

    start_ns = float(rng.integers(315_960_000, 316_000_000)) * 1e9 + float(rng.integers(0, 10 ** 9))
    arrays = [
        pa.array(timestep < NUM_HISTORICAL_STEPS),
        per_run(ids),
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


def encode_map_json(map_json: dict) -> bytes:
    """The map json file's bytes: exactly json.dumps(map_json), as the official files."""
    return _JSON_ENCODER.encode(map_json).encode('utf-8')


def write_scenario(out_dir: str, split: str, scenario_id: str, table: pa.Table, map_json: Union[dict, bytes]
                   ) -> str:
    """Write one scenario in the AV2 layout (atomically, file by file); returns the scenario directory.

    map_json: the map dict, or its bytes from `encode_map_json` (scenarios sharing a map encode it once)."""
    # as in generate_scenario: the map dict is tens of thousands of young objects without reference cycles, which
    # the cyclic collector would otherwise traverse (and promote) while the files are written
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _write_scenario(out_dir, split, scenario_id, table, map_json)
    finally:
        if gc_was_enabled:
            gc.enable()


def _write_scenario(out_dir: str, split: str, scenario_id: str, table: pa.Table, map_json: Union[dict, bytes]
                    ) -> str:
    directory = os.path.join(out_dir, split, scenario_id)
    # Atomic (a reader never sees part of a file) but not flushed to disk file by file: a scenario is rebuilt
    # exactly from its seed, so a power loss costs a rerun, not data.
    map_bytes = map_json if isinstance(map_json, bytes) else encode_map_json(map_json)
    atomic_write_bytes(os.path.join(directory, f'log_map_archive_{scenario_id}.json'), map_bytes, sync=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(os.path.join(directory, f'scenario_{scenario_id}.parquet'), sink.getvalue().to_pybytes(),
                       sync=False)
    return directory


def _rounded(points_xy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """[3, K] x, y, z rounded to centimetres (as the map json stores them)."""
    return np.round(np.stack([points_xy[:, 0], points_xy[:, 1], z]), 2)


def _split_points_json(points_xy: np.ndarray, z: np.ndarray, counts: np.ndarray) -> List[List[dict]]:
    """Consecutive point lists [{'x': .., 'y': .., 'z': ..}, ...], one per entry of `counts`."""
    # three flat columns: .tolist() then makes floats only, no list per point
    xs, ys, zs = _rounded(points_xy, z).tolist()
    rows = [{'x': x, 'y': y, 'z': zz} for x, y, zz in zip(xs, ys, zs)]
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# a point list's place in the map dict of `map_json_bytes` (json writes the NUL character as \u0000; no map
# string contains it)
_MARK = '\0'
_MARKED = re.compile(r'"\\u0000(\d+)"')


def map_json_bytes(road_map: RoadMap, to_city) -> bytes:
    """The map json file's bytes, exactly encode_map_json(map_to_av2_json(road_map, to_city)): the point lists
    are written by `points_text` for all points at once and put in place of markers in the dict's json."""
    points: List[np.ndarray] = []    # [3, K] rounded x, y, z per call
    counts: List[np.ndarray] = []

    def marked_lists(points_xy: np.ndarray, z: np.ndarray, list_counts: np.ndarray) -> List[str]:
        first = sum(len(c) for c in counts)
        points.append(_rounded(points_xy, z))
        counts.append(np.asarray(list_counts))
        return [f'{_MARK}{k}' for k in range(first, first + len(list_counts))]

    skeleton = _JSON_ENCODER.encode(map_to_av2_json(road_map, to_city, marked_lists))
    texts = point_lists_text(*np.concatenate(points, axis=1), np.concatenate(counts)) if points else []
    pieces = _MARKED.split(skeleton)
    pieces[1::2] = [texts[int(k)] for k in pieces[1::2]]
    return ''.join(pieces).encode('utf-8')


def map_to_av2_json(road_map: RoadMap, to_city, point_lists: Callable = _split_points_json) -> dict:
    """The log_map_archive dict (AV2 schema, keys in AV2 order) with coordinates mapped by `to_city`.

    to_city: function [K, 2] scene -> [K, 2] city coordinates. Ground heights are taken in the scene frame.
    Centre lines get <= 2 m point spacing and z = 0 (as in the AV2 files), boundaries 4-10 m and ground z.
    point_lists(points_xy [K, 2], z [K], counts): what stands for each of the consecutive point lists in the dict
    (by default the lists of point dicts themselves).
    """
    # drivable areas and crosswalk edges: many short polygons, mapped and rounded in one pass
    area_items = sorted(road_map.drivable_areas, key=lambda item: item[0])
    cw_list = sorted(road_map.crosswalks, key=lambda c: c.id)
    small = [poly for _, poly in area_items] + [edge for cw in cw_list for edge in (cw.edge1, cw.edge2)]
    small_json = []
    if small:
        small_pts = np.concatenate(small)
        small_json = point_lists(to_city(small_pts), road_map.ground_height(small_pts),
                                 np.array([len(poly) for poly in small]))
    areas = {}
    for k, (area_id, _) in enumerate(area_items):
        areas[str(area_id)] = {'area_boundary': small_json[k], 'id': area_id}
    lane_ids = sorted(road_map.lanes)
    lane_list = [road_map.lanes[i] for i in lane_ids]
    centers = [lane.center for lane in lane_list]
    c_pts, c_counts = batch_resample(centers, CENTERLINE_SPACING)
    # road pieces curve gently (radius >= ~250 m: < 5 cm chord error at 10 m); connectors, tapers, ramps do not
    spacing = [BOUNDARY_SPACING[0] if lane.kind == 'road' else BOUNDARY_SPACING[1] for lane in lane_list]
    b_pts, b_counts = batch_resample(centers, spacing)
    half = np.repeat([lane.width / 2 for lane in lane_list], b_counts)[:, None] * batch_normals(b_pts, b_counts)
    left, right = b_pts + half, b_pts - half
    c_json = point_lists(to_city(c_pts), np.zeros(len(c_pts)), c_counts)
    l_json = point_lists(to_city(left), road_map.ground_height(left), b_counts)
    r_json = point_lists(to_city(right), road_map.ground_height(right), b_counts)
    lanes = {}
    for k, (lane_id, lane) in enumerate(zip(lane_ids, lane_list)):
        lanes[str(lane_id)] = {
            'centerline': c_json[k],
            'id': lane_id,
            'is_intersection': lane.is_intersection,
            'lane_type': lane.lane_type,
            'left_lane_boundary': l_json[k],
            'left_lane_mark_type': lane.left_mark,
            'left_neighbor_id': lane.left_neighbor,
            'predecessors': list(lane.predecessors),
            'right_lane_boundary': r_json[k],
            'right_lane_mark_type': lane.right_mark,
            'right_neighbor_id': lane.right_neighbor,
            'successors': list(lane.successors),
        }
    crossings = {}
    for k, cw in enumerate(cw_list):
        j = len(area_items) + 2 * k
        crossings[str(cw.id)] = {'edge1': small_json[j], 'edge2': small_json[j + 1], 'id': cw.id}
    return {'drivable_areas': areas, 'lane_segments': lanes, 'pedestrian_crossings': crossings}
