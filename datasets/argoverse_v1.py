"""Argoverse 1 motion-forecasting adapter: one sequence CSV + the city vector map -> :class:`ScenarioRecord`.

Raw layout (official release): ``<raw_dir>/<sequence id>.csv`` with columns ``TIMESTAMP, TRACK_ID, OBJECT_TYPE, X,
Y, CITY_NAME`` (``OBJECT_TYPE`` is AGENT / AV / OTHERS), 50 timestamps at 10 Hz (20 history + 30 future; the test
split has the 20 history steps only). City maps: ``pruned_argoverse_<CITY>_<city id>_vector_map.xml`` (PIT 10314,
MIA 10316; the argoverse-api ``map_files`` folder): nodes (``id, x, y[, height]``) and lane ways (``lane_id``;
tags has_traffic_control, turn_direction, is_intersection, l_neighbor_id, r_neighbor_id, predecessor*, successor*;
``nd`` refs = centre line). The map folder is ``map_dir`` or found next to the CSVs: ``<csv dir>/map_files``,
``<csv dir>/../map_files`` or ``<csv dir>/../../map_files``, or ``$ARGOVERSE_V1_MAP_DIR``.

Canvas: AV1 step ``k`` -> canvas step ``k + 30`` (current step 19 -> 49, the sequence covers 30..79 of 110).
AV1 has no headings or velocities: velocity is the finite difference of positions (backward where the previous
step is observed, else forward), heading the direction of motion, held over slow steps (< 0.5 m/s; back-filled
before the first moving step, 0 for agents that never move). z is the map height where nodes carry one, else 0.

Map: lanes (centre lines only: AV1 has no lane boundaries) with a node within ``map_radius`` metres of any
observed agent position, as POLYLINE polygons of type VEHICLE with their intersection flag; topology from
predecessor / successor / neighbour tags among the kept lanes. Turn direction and traffic control have no slot in
the QCNet features; they are kept in ``record.extras``.
"""
from __future__ import annotations

import functools
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from datasets.scenario import (AGENT_CATEGORIES, AGENT_TYPES, NUM_FUTURE_STEPS, NUM_HISTORICAL_STEPS, POINT_TYPES,
                               POLYGON_IS_INTERSECTIONS, POLYGON_KINDS, POLYGON_TO_POLYGON_TYPES, POLYGON_TYPES,
                               SAMPLING_RATE_HZ, AgentTracks, MapRecord, Polylines, ScenarioError, ScenarioRecord,
                               TimeBase)

DATASET_NAME = 'argoverse_v1'
AV1_NUM_STEPS = 50                 # a train/val sequence
AV1_NUM_HISTORICAL_STEPS = 20
CITY_IDS: Dict[str, int] = {'PIT': 10314, 'MIA': 10316}
MAP_DIR_ENV = 'ARGOVERSE_V1_MAP_DIR'
REQUIRED_COLUMNS = ('TIMESTAMP', 'TRACK_ID', 'OBJECT_TYPE', 'X', 'Y', 'CITY_NAME')
OBJECT_TYPES = ('AGENT', 'AV', 'OTHERS')
TURN_DIRECTIONS = ('NONE', 'LEFT', 'RIGHT')
MAP_RADIUS = 50.0
MIN_HEADING_SPEED = 0.5  # m/s: below this the direction of motion is noise; the heading is held
_AGENT_TYPE = {'AGENT': 'vehicle', 'AV': 'vehicle', 'OTHERS': 'unknown'}  # AV1 focal agents are vehicles
_PRED, _SUCC, _LEFT, _RIGHT = (POLYGON_TO_POLYGON_TYPES.index(name) for name in ('PRED', 'SUCC', 'LEFT', 'RIGHT'))


def map_file_name(city: str) -> str:
    return f'pruned_argoverse_{city}_{CITY_IDS[city]}_vector_map.xml'


def list_argoverse_v1_scenarios(raw_dir: Union[str, os.PathLike]) -> List[str]:
    """Sorted sequence names (CSV file names without ``.csv``) directly in ``raw_dir``."""
    if not os.path.isdir(raw_dir):
        return []
    with os.scandir(raw_dir) as entries:
        return sorted(entry.name[:-4] for entry in entries
                      if entry.is_file() and entry.name.endswith('.csv') and not entry.name.startswith('.'))


def find_map_dir(csv_path: Path, map_dir: Optional[Union[str, os.PathLike]] = None) -> Optional[Path]:
    if map_dir is not None:
        return Path(map_dir)
    if os.environ.get(MAP_DIR_ENV):
        return Path(os.environ[MAP_DIR_ENV])
    for candidate in (csv_path.parent / 'map_files', csv_path.parent.parent / 'map_files',
                      csv_path.parent.parent.parent / 'map_files'):
        if candidate.is_dir():
            return candidate
    return None


def load_argoverse_v1_scenario(path: Union[str, os.PathLike],
                               num_historical_steps: int = NUM_HISTORICAL_STEPS,
                               num_future_steps: int = NUM_FUTURE_STEPS,
                               map_dir: Optional[Union[str, os.PathLike]] = None,
                               map_radius: float = MAP_RADIUS) -> ScenarioRecord:
    """``<raw_dir>/<sequence>`` (``.csv`` optional) -> validated record on the canvas (see module docstring)."""
    csv_path = Path(path)
    if csv_path.suffix != '.csv':
        csv_path = csv_path.with_name(csv_path.name + '.csv')
    if not csv_path.is_file():
        raise ScenarioError(csv_path, 'sequence CSV file does not exist')
    tracks = read_argoverse_v1_csv(csv_path, num_historical_steps, num_future_steps)
    time_base, agents, city = tracks
    directory = find_map_dir(csv_path, map_dir)
    expected = map_file_name(city)
    if directory is None:
        raise ScenarioError(csv_path, f'no Argoverse 1 map folder found for city {city}: expected {expected} in '
                                      f'map_files/ next to the CSVs (or pass map_dir / set ${MAP_DIR_ENV})')
    map_path = directory / expected
    if not map_path.is_file():
        raise ScenarioError(map_path, f'Argoverse 1 vector map for city {city} is missing')
    city_map = load_city_map(str(map_path))
    map_record, extras = crop_city_map(city_map, agents, map_radius, map_path)
    scenario = ScenarioRecord(scenario_id=csv_path.stem, city=city, dataset=DATASET_NAME, time_base=time_base,
                              agents=agents, map=map_record, source=str(csv_path), extras=extras)
    try:
        return scenario.validate()
    except ScenarioError as error:
        target = map_path if error.problem.startswith('map') else csv_path
        raise ScenarioError(target, error.problem) from None


# ----------------------------------------------------------------------------------------------------------------------
# tracks (csv)
# ----------------------------------------------------------------------------------------------------------------------
def read_argoverse_v1_csv(path: Path, num_historical_steps: int = NUM_HISTORICAL_STEPS,
                          num_future_steps: int = NUM_FUTURE_STEPS) -> Tuple[TimeBase, AgentTracks, str]:
    """Parse a sequence CSV: (time base, agent tracks on the canvas, city)."""
    try:
        table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
            column_types={'TRACK_ID': pa.string(), 'OBJECT_TYPE': pa.string(), 'CITY_NAME': pa.string()}))
    except (pa.ArrowInvalid, OSError) as error:
        raise ScenarioError(path, f'cannot read CSV ({" ".join(str(error).split())})') from None
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise ScenarioError(path, f'missing column(s) {missing}')
    if table.num_rows == 0:
        raise ScenarioError(path, 'CSV has no rows')
    for name in REQUIRED_COLUMNS:
        if table.column(name).null_count:
            raise ScenarioError(path, f'column {name!r} has {table.column(name).null_count} missing value(s)')
    try:
        timestamp = table.column('TIMESTAMP').to_numpy().astype(np.float64)
        xy = np.stack([table.column('X').to_numpy().astype(np.float64),
                       table.column('Y').to_numpy().astype(np.float64)], axis=1)
    except (pa.ArrowInvalid, TypeError, ValueError) as error:
        raise ScenarioError(path, f'TIMESTAMP / X / Y are not numeric ({error})') from None
    if not np.isfinite(xy).all() or not np.isfinite(timestamp).all():
        raise ScenarioError(path, 'TIMESTAMP / X / Y contain NaN or infinite values')
    track_ids = table.column('TRACK_ID').to_pylist()
    object_types = table.column('OBJECT_TYPE').to_pylist()
    cities = set(table.column('CITY_NAME').to_pylist())
    if len(cities) != 1:
        raise ScenarioError(path, f'CITY_NAME has several values {sorted(cities)}')
    city = cities.pop()
    if city not in CITY_IDS:
        raise ScenarioError(path, f'unknown CITY_NAME {city!r}; known: {sorted(CITY_IDS)}')
    unknown = sorted(set(object_types) - set(OBJECT_TYPES))
    if unknown:
        raise ScenarioError(path, f'unknown OBJECT_TYPE value(s) {unknown}; known: {list(OBJECT_TYPES)}')

    times, step = np.unique(timestamp, return_inverse=True)
    if len(times) not in (AV1_NUM_STEPS, AV1_NUM_HISTORICAL_STEPS):
        raise ScenarioError(path, f'{len(times)} distinct timestamps, expected {AV1_NUM_STEPS} (train/val) or '
                                  f'{AV1_NUM_HISTORICAL_STEPS} (test)')
    gaps = np.diff(times)
    if gaps.min() < 0.05 or gaps.max() > 0.15:
        raise ScenarioError(path, f'timestamps are not at {SAMPLING_RATE_HZ:g} Hz (gaps between {gaps.min():.3f} and '
                                  f'{gaps.max():.3f} s)')
    # agents in order of first appearance (the CSV is sorted by time)
    order: Dict[str, int] = {}
    for track in track_ids:
        order.setdefault(track, len(order))
    agent_of_row = np.fromiter((order[t] for t in track_ids), dtype=np.int64, count=len(track_ids))
    num_agents = len(order)
    role: Dict[int, str] = {}
    for agent, object_type in zip(agent_of_row.tolist(), object_types):
        if role.setdefault(agent, object_type) != object_type:
            raise ScenarioError(path, f'track {track_ids[int(np.argmax(agent_of_row == agent))]!r} changes '
                                      f'OBJECT_TYPE')
    roles = [role[i] for i in range(num_agents)]
    for name in ('AGENT', 'AV'):
        if roles.count(name) != 1:
            raise ScenarioError(path, f'{roles.count(name)} tracks with OBJECT_TYPE {name}, expected exactly 1')

    canvas_steps = num_historical_steps + num_future_steps
    offset = (num_historical_steps - 1) - (AV1_NUM_HISTORICAL_STEPS - 1)
    if offset < 0 or offset + AV1_NUM_STEPS > canvas_steps:
        raise ValueError(f'an Argoverse 1 sequence does not fit a {num_historical_steps}+{num_future_steps} canvas')
    flat = agent_of_row * AV1_NUM_STEPS + step
    counts = np.bincount(flat, minlength=num_agents * AV1_NUM_STEPS)
    if counts.max() > 1:
        duplicate = int(np.argmax(counts))
        raise ScenarioError(path, f'track {list(order)[duplicate // AV1_NUM_STEPS]!r} has {int(counts[duplicate])} '
                                  f'rows at timestamp index {duplicate % AV1_NUM_STEPS}')
    observed_local = (counts > 0).reshape(num_agents, AV1_NUM_STEPS)
    position_local = np.zeros((num_agents * AV1_NUM_STEPS, 2), dtype=np.float64)
    position_local[flat] = xy
    position_local = position_local.reshape(num_agents, AV1_NUM_STEPS, 2)
    velocity_local, heading_local = motion_from_positions(position_local, observed_local, 1.0 / SAMPLING_RATE_HZ)

    observed = np.zeros((num_agents, canvas_steps), dtype=bool)
    position = np.zeros((num_agents, canvas_steps, 3), dtype=np.float64)
    velocity = np.zeros((num_agents, canvas_steps, 3), dtype=np.float64)
    heading = np.zeros((num_agents, canvas_steps), dtype=np.float64)
    window = slice(offset, offset + AV1_NUM_STEPS)
    observed[:, window] = observed_local
    position[:, window, :2] = position_local
    velocity[:, window, :2] = velocity_local
    heading[:, window] = heading_local

    current = AV1_NUM_HISTORICAL_STEPS - 1
    category = np.where(observed_local[:, current], AGENT_CATEGORIES.index('UNSCORED_TRACK'),
                        AGENT_CATEGORIES.index('TRACK_FRAGMENT')).astype(np.uint8)
    focal_index, av_index = roles.index('AGENT'), roles.index('AV')
    category[focal_index] = AGENT_CATEGORIES.index('FOCAL_TRACK')
    future_observed = len(times) == AV1_NUM_STEPS
    time_base = TimeBase(num_historical_steps=num_historical_steps, num_future_steps=num_future_steps,
                         sampling_rate_hz=SAMPLING_RATE_HZ, future_observed=future_observed,
                         span_start=offset, span_end=offset + AV1_NUM_STEPS)
    agents = AgentTracks(ids=list(order), type=np.array([AGENT_TYPES.index(_AGENT_TYPE[r]) for r in roles],
                                                        dtype=np.uint8),
                         category=category, observed=observed, position=position, heading=heading,
                         velocity=velocity, av_index=av_index, focal_index=focal_index)
    return time_base, agents, city


def motion_from_positions(position: np.ndarray, observed: np.ndarray, dt: float) -> Tuple[np.ndarray, np.ndarray]:
    """Velocity float[A, T, 2] and heading float[A, T] from positions float[A, T, 2] and observed bool[A, T].

    Backward difference where the previous step is observed, else forward difference, else 0. Heading: direction
    of motion where speed >= MIN_HEADING_SPEED, held forward over slower steps, back-filled before the first moving
    step; 0 for an agent that never moves. Unobserved steps hold 0.
    """
    num_agents, num_steps = observed.shape
    backward = np.zeros_like(position)
    backward[:, 1:] = position[:, 1:] - position[:, :-1]
    has_backward = np.zeros_like(observed)
    has_backward[:, 1:] = observed[:, 1:] & observed[:, :-1]
    forward = np.zeros_like(position)
    forward[:, :-1] = position[:, 1:] - position[:, :-1]
    has_forward = np.zeros_like(observed)
    has_forward[:, :-1] = observed[:, :-1] & observed[:, 1:]
    velocity = np.where(has_backward[..., None], backward, np.where(has_forward[..., None], forward, 0.0)) / dt
    velocity[~observed] = 0.0
    speed = np.hypot(velocity[..., 0], velocity[..., 1])
    moving = observed & (speed >= MIN_HEADING_SPEED)
    raw_heading = np.arctan2(velocity[..., 1], velocity[..., 0])
    # forward fill: index of the last moving step at or before t
    steps = np.broadcast_to(np.arange(num_steps), (num_agents, num_steps))
    last_moving = np.maximum.accumulate(np.where(moving, steps, -1), axis=1)
    first_moving = np.where(moving.any(axis=1), np.argmax(moving, axis=1), -1)
    source = np.where(last_moving >= 0, last_moving, first_moving[:, None])
    heading = np.where(source >= 0, np.take_along_axis(raw_heading, np.maximum(source, 0), axis=1), 0.0)
    heading[~observed] = 0.0
    return velocity, heading


# ----------------------------------------------------------------------------------------------------------------------
# city map (xml)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class CityMap:
    """A whole AV1 city vector map as arrays. centerlines: Polylines [L] (float64 xyz); lane_ids int64 [L];
    is_intersection / has_traffic_control bool [L]; turn_direction uint8 [L] (TURN_DIRECTIONS); neighbours
    int64 [L] (-1 = none); predecessors / successors: lists of lane ids."""
    lane_ids: np.ndarray
    centerlines: Polylines
    is_intersection: np.ndarray
    has_traffic_control: np.ndarray
    turn_direction: np.ndarray
    left_neighbor: np.ndarray
    right_neighbor: np.ndarray
    predecessors: List[List[int]]
    successors: List[List[int]]
    source: str

    @functools.cached_property
    def node_lane(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.lane_ids)), self.centerlines.lengths)

    @functools.cached_property
    def node_tree(self):
        from scipy.spatial import cKDTree
        return cKDTree(self.centerlines.points[:, :2])


def _bool_tag(value: str, lane_id: int, key: str) -> bool:
    if value == 'True':
        return True
    if value == 'False':
        return False
    raise ValueError(f'lane {lane_id}: tag {key} is {value!r}, expected True or False')


@functools.lru_cache(maxsize=4)
def load_city_map(path: str) -> CityMap:
    """Parse (once per process) a ``pruned_argoverse_*_vector_map.xml`` into a :class:`CityMap`."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ScenarioError(path, f'cannot read map XML ({" ".join(str(error).split())})') from None
    nodes: Dict[int, Tuple[float, float, float]] = {}
    lane_ids: List[int] = []
    points: List[Tuple[float, float, float]] = []
    lengths: List[int] = []
    flags: List[Tuple[bool, bool, int]] = []
    neighbours: List[Tuple[int, int]] = []
    predecessors: List[List[int]] = []
    successors: List[List[int]] = []
    element_name = 'a node'
    try:
        for child in root:
            if child.tag == 'node':
                element_name = f'node {child.get("id")!r}'
                attributes = child.attrib
                nodes[int(attributes['id'])] = (float(attributes['x']), float(attributes['y']),
                                                float(attributes.get('height', 0.0)))
            elif child.tag == 'way':
                element_name = f'lane {child.get("lane_id")!r}'
                lane_id = int(child.attrib['lane_id'])
                tags: Dict[str, str] = {}
                preds: List[int] = []
                succs: List[int] = []
                refs: List[int] = []
                for element in child:
                    if element.tag == 'nd':
                        refs.append(int(element.attrib['ref']))
                    elif element.tag == 'tag':
                        key, value = element.attrib['k'], element.attrib['v']
                        if key == 'predecessor':
                            preds.append(int(value))
                        elif key == 'successor':
                            succs.append(int(value))
                        else:
                            tags[key] = value
                if len(refs) < 2:
                    raise ValueError(f'lane {lane_id}: centre line has {len(refs)} node(s), expected >= 2')
                for ref in refs:
                    if ref not in nodes:
                        raise ValueError(f'lane {lane_id}: node {ref} is not defined before it')
                    points.append(nodes[ref])
                lengths.append(len(refs))
                turn = tags['turn_direction']
                if turn not in TURN_DIRECTIONS:
                    raise ValueError(f'lane {lane_id}: unknown turn_direction {turn!r}')
                flags.append((_bool_tag(tags['is_intersection'], lane_id, 'is_intersection'),
                              _bool_tag(tags['has_traffic_control'], lane_id, 'has_traffic_control'),
                              TURN_DIRECTIONS.index(turn)))
                neighbours.append(tuple(-1 if tags[key] == 'None' else int(tags[key])
                                        for key in ('l_neighbor_id', 'r_neighbor_id')))
                lane_ids.append(lane_id)
                predecessors.append(preds)
                successors.append(succs)
            else:
                raise ValueError(f'unknown XML element <{child.tag}>')
    except KeyError as error:
        raise ScenarioError(path, f'{element_name}: missing attribute or tag {error}') from None
    except ValueError as error:
        raise ScenarioError(path, str(error)) from None
    if not lane_ids:
        raise ScenarioError(path, 'map has no lanes (<way> elements)')
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flag_array = np.array(flags, dtype=np.int64).reshape(-1, 3)
    neighbour_array = np.array(neighbours, dtype=np.int64).reshape(-1, 2)
    return CityMap(lane_ids=np.array(lane_ids, dtype=np.int64),
                   centerlines=Polylines(points=np.array(points, dtype=np.float64).reshape(-1, 3), offsets=offsets),
                   is_intersection=flag_array[:, 0].astype(bool), has_traffic_control=flag_array[:, 1].astype(bool),
                   turn_direction=flag_array[:, 2].astype(np.uint8), left_neighbor=neighbour_array[:, 0],
                   right_neighbor=neighbour_array[:, 1], predecessors=predecessors, successors=successors,
                   source=path)


def crop_city_map(city_map: CityMap, agents: AgentTracks, radius: float,
                  map_path: Path) -> Tuple[MapRecord, Dict[str, object]]:
    """Lanes with a centre-line node within ``radius`` of an observed agent position -> (MapRecord, extras)."""
    query = agents.position[agents.observed][:, :2]
    # distinct positions at 1 m resolution are enough for a radius query (and far fewer)
    query = np.unique(np.round(query), axis=0)
    near = city_map.node_tree.query_ball_point(query, r=radius + 1.0)
    node_rows = np.unique(np.concatenate([np.asarray(rows, dtype=np.int64) for rows in near])) if len(near) else \
        np.zeros(0, dtype=np.int64)
    rows = np.unique(city_map.node_lane[node_rows])  # lanes in city-map (file) order
    lines = [city_map.centerlines[i] for i in rows]
    row_of_id = {int(city_map.lane_ids[i]): k for k, i in enumerate(rows)}
    sources: List[int] = []
    targets: List[int] = []
    kinds: List[int] = []
    for k, i in enumerate(rows):
        relations = ((city_map.predecessors[i], _PRED), (city_map.successors[i], _SUCC),
                     ((city_map.left_neighbor[i],) if city_map.left_neighbor[i] >= 0 else (), _LEFT),
                     ((city_map.right_neighbor[i],) if city_map.right_neighbor[i] >= 0 else (), _RIGHT))
        for neighbours, kind in relations:
            for neighbour in neighbours:
                other = row_of_id.get(int(neighbour))
                if other is not None:
                    sources.append(other)
                    targets.append(k)
                    kinds.append(kind)
    num = len(rows)
    empty = np.zeros((0, 3), dtype=np.float64)
    none_point = POINT_TYPES.index('NONE')
    intersection_index = {True: POLYGON_IS_INTERSECTIONS.index(True), False: POLYGON_IS_INTERSECTIONS.index(False)}
    map_record = MapRecord(
        ids=city_map.lane_ids[rows].astype(np.int64),
        kind=np.full(num, POLYGON_KINDS.index('POLYLINE'), dtype=np.uint8),
        polygon_type=np.full(num, POLYGON_TYPES.index('VEHICLE'), dtype=np.uint8),
        is_intersection=np.array([intersection_index[bool(v)] for v in city_map.is_intersection[rows]],
                                 dtype=np.uint8),
        left_mark_type=np.full(num, none_point, dtype=np.uint8),
        right_mark_type=np.full(num, none_point, dtype=np.uint8),
        left_boundary=Polylines.from_list([empty] * num),
        right_boundary=Polylines.from_list([empty] * num),
        centerline=Polylines.from_list(lines),
        topology_edge_index=np.array([sources, targets], dtype=np.int64).reshape(2, -1),
        topology_type=np.array(kinds, dtype=np.uint8))
    extras = {'map_file': str(map_path),
              'lane_turn_direction': city_map.turn_direction[rows].copy(),
              'lane_has_traffic_control': city_map.has_traffic_control[rows].copy()}
    return map_record, extras
