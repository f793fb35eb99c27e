"""Argoverse 2 motion-forecasting adapter: one raw scenario directory -> :class:`ScenarioRecord`.

Raw layout (official release): ``<raw_dir>/<scenario_id>/scenario_<scenario_id>.parquet`` (one row per track and
observed step) and ``<raw_dir>/<scenario_id>/log_map_archive_*.json`` (vector map). The files are parsed directly with
pyarrow / json because that is ~10x faster than building av2's ``ArgoverseScenario`` / ``ArgoverseStaticMap`` objects;
tests check every parsed value against those av2 objects on real samples.

Everything wrong with the input raises :class:`ScenarioError` naming the offending file.
"""
from __future__ import annotations

import json
import os
from operator import itemgetter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasets.scenario import (AGENT_CATEGORIES, AGENT_TYPES, AV2_NUM_POINT_TYPES, AV2_NUM_POLYGON_TYPES,
                               CROSSWALK_KIND, LANE_KIND, NUM_FUTURE_STEPS, NUM_HISTORICAL_STEPS, POINT_TYPES,
                               POLYGON_IS_INTERSECTIONS, POLYGON_TO_POLYGON_TYPES, POLYGON_TYPES, SAMPLING_RATE_HZ,
                               AgentTracks, MapRecord, Polylines, ScenarioError, ScenarioRecord, TimeBase)

DATASET_NAME = 'argoverse_v2'
AV_TRACK_ID = 'AV'
REQUIRED_COLUMNS: Tuple[str, ...] = ('track_id', 'object_type', 'object_category', 'timestep', 'position_x',
                                     'position_y', 'heading', 'velocity_x', 'velocity_y', 'scenario_id', 'city',
                                     'focal_track_id')

_AGENT_TYPE_INDEX = {name: i for i, name in enumerate(AGENT_TYPES)}
# lanes carry VEHICLE / BIKE / BUS; PEDESTRIAN is reserved for crosswalks
# (only Argoverse 2's own entries of the union vocabularies)
_LANE_TYPE_INDEX = {name: i for i, name in enumerate(POLYGON_TYPES[:AV2_NUM_POLYGON_TYPES]) if name != 'PEDESTRIAN'}
_POINT_TYPE_INDEX = {name: i for i, name in enumerate(POINT_TYPES[:AV2_NUM_POINT_TYPES])}
# dict lookup (not tuple.index) so that JSON true/false/null map exactly like QCNet's list.index
_IS_INTERSECTION_INDEX = {True: 0, False: 1, None: 2}
assert tuple(_IS_INTERSECTION_INDEX) == POLYGON_IS_INTERSECTIONS
_XYZ = itemgetter('x', 'y', 'z')
_PRED, _SUCC, _LEFT, _RIGHT = (POLYGON_TO_POLYGON_TYPES.index(name) for name in ('PRED', 'SUCC', 'LEFT', 'RIGHT'))


def list_argoverse_v2_scenarios(raw_dir: Union[str, os.PathLike]) -> List[str]:
    """Sorted names of the scenario sub-directories of ``raw_dir`` (empty if it does not exist)."""
    if not os.path.isdir(raw_dir):
        return []
    with os.scandir(raw_dir) as entries:
        return sorted(entry.name for entry in entries if entry.is_dir() and not entry.name.startswith('.'))


def argoverse_v2_scenario_files(scenario_dir: Union[str, os.PathLike]) -> Tuple[Path, Path]:
    """(parquet path, map json path) of one scenario directory; raises ScenarioError if either is missing."""
    scenario_dir = Path(scenario_dir)
    parquet_path = scenario_dir / f'scenario_{scenario_dir.name}.parquet'
    if not parquet_path.is_file():
        if not scenario_dir.is_dir():
            raise ScenarioError(scenario_dir, 'scenario directory does not exist')
        others = sorted(path.name for path in scenario_dir.glob('scenario_*.parquet'))
        if others:  # e.g. a folder renamed after its files were written
            found_id = others[0][len('scenario_'):-len('.parquet')]
            raise ScenarioError(parquet_path, f'scenario parquet file is missing: the folder holds {others[0]}, '
                                              f'scenario id {found_id} (the folder must be named by its scenario id)')
        raise ScenarioError(parquet_path, 'scenario parquet file is missing')
    # same choice as the official code: the first log_map_archive_*.json in sorted order
    map_paths = sorted(scenario_dir.glob('log_map_archive_*.json'))
    if not map_paths:
        raise ScenarioError(scenario_dir / 'log_map_archive_*.json', 'map json file is missing')
    return parquet_path, map_paths[0]


def load_argoverse_v2_scenario(scenario_dir: Union[str, os.PathLike],
                               num_historical_steps: int = NUM_HISTORICAL_STEPS,
                               num_future_steps: int = NUM_FUTURE_STEPS) -> ScenarioRecord:
    """Parse one raw Argoverse 2 scenario directory into a validated :class:`ScenarioRecord`.

    Agents observed during the history come first, in the order of their first history row (the order QCNet
    uses), then agents seen only in the future. A file whose last step is < ``num_historical_steps`` (the test
    split) gets ``time_base.future_observed = False``.
    """
    parquet_path, map_path = argoverse_v2_scenario_files(scenario_dir)
    time_base, agents, scenario_id, city = read_argoverse_v2_tracks(parquet_path, num_historical_steps,
                                                                    num_future_steps)
    map_record = read_argoverse_v2_map(map_path)
    record = ScenarioRecord(scenario_id=scenario_id, city=city, dataset=DATASET_NAME, time_base=time_base,
                            agents=agents, map=map_record, source=str(scenario_dir))
    try:
        record.validate()
    except ScenarioError as error:  # name the file that holds the problem, not just the directory
        path = map_path if error.problem.startswith('map') else parquet_path
        raise ScenarioError(path, error.problem) from None
    return record


# ----------------------------------------------------------------------------------------------------------------------
# tracks (parquet)
# ----------------------------------------------------------------------------------------------------------------------
def _read_table(path: Path) -> pa.Table:
    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError with varying wording for broken files
        raise ScenarioError(path, f'cannot read parquet file ({type(error).__name__}: {error})') from None
    names = set(parquet_file.schema_arrow.names)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ScenarioError(path, f'missing column(s) {missing}')
    columns = list(REQUIRED_COLUMNS)
    try:
        return parquet_file.read(columns=columns, use_threads=False)
    except Exception as error:
        raise ScenarioError(path, f'cannot read parquet file ({type(error).__name__}: {error})') from None


def _numeric(table: pa.Table, name: str, path: Path, dtype: type) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise ScenarioError(path, f'column {name!r} has {column.null_count} missing value(s)')
    try:
        return column.to_numpy().astype(dtype, copy=False)
    except (pa.ArrowInvalid, TypeError, ValueError) as error:
        raise ScenarioError(path, f'column {name!r} is not numeric ({error})') from None


def _encode(table: pa.Table, name: str, path: Path) -> Tuple[np.ndarray, List[str]]:
    """Dictionary-encode a string column: (int64 codes [R], distinct values in order of first appearance)."""
    column = table.column(name)
    if column.null_count:
        raise ScenarioError(path, f'column {name!r} has {column.null_count} missing value(s)')
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or
            pa.types.is_dictionary(column.type)):
        column = column.cast(pa.string())
    encoded = column.combine_chunks().dictionary_encode() if not pa.types.is_dictionary(column.type) \
        else column.combine_chunks()
    return (encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
            [str(value) for value in encoded.dictionary.to_pylist()])


def _first_value(table: pa.Table, name: str, path: Path) -> str:
    value = table.column(name)[0].as_py()
    if value is None:
        raise ScenarioError(path, f'column {name!r} is empty in the first row')
    return str(value)


def read_argoverse_v2_tracks(path: Path,
                             num_historical_steps: int = NUM_HISTORICAL_STEPS,
                             num_future_steps: int = NUM_FUTURE_STEPS) -> Tuple[TimeBase, AgentTracks, str, str]:
    """Parse a scenario parquet: (time base, agent tracks, scenario id, city)."""
    table = _read_table(path)
    num_rows = table.num_rows
    if num_rows == 0:
        raise ScenarioError(path, 'parquet file has no rows')
    num_steps = num_historical_steps + num_future_steps
    timestep = _numeric(table, 'timestep', path, np.int64)
    if timestep.min() < 0 or timestep.max() >= num_steps:
        raise ScenarioError(path, f'timestep values span [{timestep.min()}, {timestep.max()}], '
                                  f'expected within [0, {num_steps - 1}]')
    columns = {name: _numeric(table, name, path, np.float64)
               for name in ('position_x', 'position_y', 'heading', 'velocity_x', 'velocity_y')}
    for name, values in columns.items():
        if not np.isfinite(values).all():
            raise ScenarioError(path, f'column {name!r} contains {int((~np.isfinite(values)).sum())} NaN or '
                                      f'infinite value(s)')
    category = _numeric(table, 'object_category', path, np.int64)
    if category.min() < 0 or category.max() >= len(AGENT_CATEGORIES):
        raise ScenarioError(path, f'object_category values span [{category.min()}, {category.max()}], '
                                  f'expected within [0, {len(AGENT_CATEGORIES) - 1}]')
    track_code, track_names = _encode(table, 'track_id', path)
    type_code, type_names = _encode(table, 'object_type', path)
    unknown_types = [name for name in type_names if name not in _AGENT_TYPE_INDEX]
    if unknown_types:
        raise ScenarioError(path, f'unknown object_type value(s) {unknown_types}; known: {list(AGENT_TYPES)}')
    type_index = np.array([_AGENT_TYPE_INDEX[name] for name in type_names], dtype=np.uint8)

    # agent order: history-observed tracks by first history row, then future-only tracks by first row
    num_tracks = len(track_names)
    row_index = np.arange(num_rows, dtype=np.int64)
    first_row = np.full(num_tracks, num_rows, dtype=np.int64)
    np.minimum.at(first_row, track_code, row_index)
    in_history = timestep < num_historical_steps
    first_history_row = np.full(num_tracks, 2 * num_rows, dtype=np.int64)
    np.minimum.at(first_history_row, track_code[in_history], row_index[in_history])
    sort_key = np.where(first_history_row < 2 * num_rows, first_history_row, num_rows + first_row)
    order = np.argsort(sort_key, kind='stable')        # agent -> track code
    rank = np.empty(num_tracks, dtype=np.int64)
    rank[order] = np.arange(num_tracks)                # track code -> agent
    agent_of_row = rank[track_code]

    flat = agent_of_row * num_steps + timestep
    counts = np.bincount(flat, minlength=num_tracks * num_steps)
    if counts.max() > 1:
        duplicate = int(np.argmax(counts))
        raise ScenarioError(path, f'track {track_names[order[duplicate // num_steps]]!r} has '
                                  f'{int(counts[duplicate])} rows for timestep {duplicate % num_steps}')
    observed = (counts > 0).reshape(num_tracks, num_steps)
    position = np.zeros((num_tracks * num_steps, 3), dtype=np.float64)
    position[flat, 0] = columns['position_x']
    position[flat, 1] = columns['position_y']
    velocity = np.zeros((num_tracks * num_steps, 3), dtype=np.float64)
    velocity[flat, 0] = columns['velocity_x']
    velocity[flat, 1] = columns['velocity_y']
    heading = np.zeros(num_tracks * num_steps, dtype=np.float64)
    heading[flat] = columns['heading']

    first_row_of_agent = first_row[order]
    ids = [track_names[code] for code in order]
    if AV_TRACK_ID not in ids:
        raise ScenarioError(path, f'no {AV_TRACK_ID!r} track (ego vehicle)')
    focal_track_id = _first_value(table, 'focal_track_id', path)
    if focal_track_id not in ids:
        raise ScenarioError(path, f'focal track {focal_track_id!r} (column focal_track_id) has no rows')

    # test-split files hold the history only (their num_timestamps column still says 110): look at the rows
    max_timestep = int(timestep.max())
    time_base = TimeBase(num_historical_steps=num_historical_steps, num_future_steps=num_future_steps,
                         sampling_rate_hz=SAMPLING_RATE_HZ, future_observed=max_timestep >= num_historical_steps)
    agents = AgentTracks(ids=ids,
                         type=type_index[type_code[first_row_of_agent]],
                         category=category[first_row_of_agent].astype(np.uint8),
                         observed=observed,
                         position=position.reshape(num_tracks, num_steps, 3),
                         heading=heading.reshape(num_tracks, num_steps),
                         velocity=velocity.reshape(num_tracks, num_steps, 3),
                         av_index=ids.index(AV_TRACK_ID),
                         focal_index=ids.index(focal_track_id))
    return time_base, agents, _first_value(table, 'scenario_id', path), _first_value(table, 'city', path)


# ----------------------------------------------------------------------------------------------------------------------
# map (json)
# ----------------------------------------------------------------------------------------------------------------------
def _lookup(vocabulary: Dict[object, int], value: object, field: str) -> int:
    try:
        return vocabulary[value]
    except (KeyError, TypeError):
        raise ValueError(f'unknown {field} {value!r}; known: {list(vocabulary)}') from None


def _polyline(points: Sequence[Dict[str, float]]) -> List[Tuple[float, float, float]]:
    return list(map(_XYZ, points))


def read_argoverse_v2_map(path: Path) -> MapRecord:
    """Parse a ``log_map_archive_*.json`` into a :class:`MapRecord` (lanes in file order, then crosswalks)."""
    try:
        with open(path, 'rb') as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError) as error:
        raise ScenarioError(path, f'cannot read map json ({type(error).__name__}: {error})') from None
    if not isinstance(data, dict) or not isinstance(data.get('lane_segments'), dict):
        raise ScenarioError(path, "map json has no 'lane_segments' object")
    crossings = data.get('pedestrian_crossings', {})  # av2 also accepts maps without crossings
    if not isinstance(crossings, dict):
        raise ScenarioError(path, "map json 'pedestrian_crossings' is not an object")
    lanes = list(data['lane_segments'].values())
    crossings = list(crossings.values())

    ids: List[int] = []
    polygon_type: List[int] = []
    is_intersection: List[int] = []
    left_mark: List[int] = []
    right_mark: List[int] = []
    left_points: List[Tuple[float, float, float]] = []
    right_points: List[Tuple[float, float, float]] = []
    center_points: List[Tuple[float, float, float]] = []
    left_lengths: List[int] = []
    right_lengths: List[int] = []
    center_lengths: List[int] = []
    relations: List[Tuple[list, list, Optional[int], Optional[int]]] = []
    element = 'a lane segment'
    try:
        for lane in lanes:
            element = f'lane segment {lane.get("id")!r}' if isinstance(lane, dict) else 'a lane segment'
            ids.append(int(lane['id']))
            polygon_type.append(_lookup(_LANE_TYPE_INDEX, lane['lane_type'], 'lane_type'))
            is_intersection.append(_lookup(_IS_INTERSECTION_INDEX, lane['is_intersection'], 'is_intersection'))
            left_mark.append(_lookup(_POINT_TYPE_INDEX, lane['left_lane_mark_type'], 'left_lane_mark_type'))
            right_mark.append(_lookup(_POINT_TYPE_INDEX, lane['right_lane_mark_type'], 'right_lane_mark_type'))
            for points, lengths, key in ((left_points, left_lengths, 'left_lane_boundary'),
                                         (right_points, right_lengths, 'right_lane_boundary'),
                                         (center_points, center_lengths, 'centerline')):
                polyline = _polyline(lane[key])
                points += polyline
                lengths.append(len(polyline))
            relations.append((lane['predecessors'], lane['successors'], lane['left_neighbor_id'],
                              lane['right_neighbor_id']))
        for crossing in crossings:
            element = (f'pedestrian crossing {crossing.get("id")!r}' if isinstance(crossing, dict)
                       else 'a pedestrian crossing')
            ids.append(int(crossing['id']))
            for points, lengths, key in ((left_points, left_lengths, 'edge1'), (right_points, right_lengths, 'edge2')):
                polyline = _polyline(crossing[key])
                points += polyline
                lengths.append(len(polyline))
            center_lengths.append(0)
    except (KeyError, TypeError, ValueError) as error:
        problem = f'missing field {error}' if isinstance(error, KeyError) else str(error)
        raise ScenarioError(path, f'{element}: {problem}') from None

    num_lanes, num_crossings = len(lanes), len(crossings)
    if len(set(ids[:num_lanes])) != num_lanes or len(set(ids[num_lanes:])) != num_crossings:
        raise ScenarioError(path, 'duplicate lane segment or pedestrian crossing id')
    # QCNet looks neighbours up in the list lanes + crosswalks and takes the first match: lanes win on id clashes
    index_of_id: Dict[int, int] = {}
    for index, polygon_id in enumerate(ids):
        index_of_id.setdefault(polygon_id, index)
    sources: List[int] = []
    targets: List[int] = []
    kinds: List[int] = []
    for lane_index, (predecessors, successors, left_id, right_id) in enumerate(relations):
        for neighbours, kind in ((predecessors, _PRED), (successors, _SUCC),
                                 ((left_id,) if left_id is not None else (), _LEFT),
                                 ((right_id,) if right_id is not None else (), _RIGHT)):
            for neighbour in neighbours:
                neighbour_index = index_of_id.get(neighbour)
                if neighbour_index is not None:
                    sources.append(neighbour_index)
                    targets.append(lane_index)
                    kinds.append(kind)

    def polylines(points: list, lengths: list) -> Polylines:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        try:
            array = np.array(points, dtype=np.float64).reshape(-1, 3)
        except (TypeError, ValueError) as error:
            raise ScenarioError(path, f'map coordinates are not numbers ({error})') from None
        return Polylines(points=array, offsets=offsets)

    pedestrian = POLYGON_TYPES.index('PEDESTRIAN')
    crosswalk_point_type = POINT_TYPES.index('CROSSWALK')
    return MapRecord(
        ids=np.array(ids, dtype=np.int64),
        kind=np.array([LANE_KIND] * num_lanes + [CROSSWALK_KIND] * num_crossings, dtype=np.uint8),
        polygon_type=np.array(polygon_type + [pedestrian] * num_crossings, dtype=np.uint8),
        is_intersection=np.array(is_intersection + [_IS_INTERSECTION_INDEX[None]] * num_crossings, dtype=np.uint8),
        left_mark_type=np.array(left_mark + [crosswalk_point_type] * num_crossings, dtype=np.uint8),
        right_mark_type=np.array(right_mark + [crosswalk_point_type] * num_crossings, dtype=np.uint8),
        left_boundary=polylines(left_points, left_lengths),
        right_boundary=polylines(right_points, right_lengths),
        centerline=polylines(center_points, center_lengths),
        topology_edge_index=np.array([sources, targets], dtype=np.int64).reshape(2, -1),
        topology_type=np.array(kinds, dtype=np.uint8))
