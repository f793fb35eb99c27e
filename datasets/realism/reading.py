"""Argoverse 2 scenarios as dense arrays: tracks on the 10 Hz step grid and lane centrelines of the scenario map.

Both are read with av2's own loaders (``load_argoverse_scenario_parquet``, ``ArgoverseStaticMap.from_json``); this
module only lays their content out as arrays the statistics can vectorise over. Frames: the city frame of the scenario
(metres), headings in radians from the city x axis.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from av2.datasets.motion_forecasting.data_schema import TrackCategory
from av2.datasets.motion_forecasting.scenario_serialization import load_argoverse_scenario_parquet
from av2.geometry.interpolate import compute_midpoint_line
from av2.map.map_api import ArgoverseStaticMap

SAMPLING_RATE_HZ = 10
NUM_HISTORICAL_STEPS = 50
NUM_STEPS = 110
CURRENT_STEP = NUM_HISTORICAL_STEPS - 1
# Centreline waypoints every ~1 m at most, so that the offset of a position is not dominated by chord error on curves.
CENTRELINE_SPACING_M = 1.0


class RealismInputError(ValueError):
    """A scenario that cannot be read; ``str(error)`` is one line naming the file and the problem."""

    def __init__(self, path, problem: str) -> None:
        super().__init__(f'{path}: {problem}')
        self.path = str(path)
        self.problem = problem


@dataclass
class ScenarioTracks:
    """Every track of one scenario on the step grid; unobserved steps are NaN.

    positions [N, T, 2], headings [N, T], velocities [N, T, 2] (as reported by the tracker), observed [N, T] bool,
    object_types [N] str (av2 ``ObjectType`` values), categories [N] int (av2 ``TrackCategory`` values),
    track_ids [N] str, focal_index: row of the focal track (-1 if absent), T = number of steps of the scenario;
    current_step: last history step; future_step: the step 6 s later (-1 when the scenario ends before it);
    categories are -1 where the source has no Argoverse 2 track categories."""
    scenario_id: str
    positions: np.ndarray
    headings: np.ndarray
    velocities: np.ndarray
    observed: np.ndarray
    object_types: np.ndarray
    categories: np.ndarray
    track_ids: np.ndarray
    focal_index: int
    current_step: int = CURRENT_STEP
    future_step: int = NUM_STEPS - 1

    @property
    def num_steps(self) -> int:
        return self.positions.shape[1]


@dataclass
class LaneMap:
    """Lane centrelines of one scenario map as a flat list of straight pieces.

    piece_start / piece_end [P, 2]: ends of each centreline piece (city frame, m); piece_lane [P]: row in
    ``lane_ids`` of the lane the piece belongs to; lane_ids [L]; lane_lengths [L] (m, along the centreline);
    neighbours: lane id -> ids of its left and right neighbours; successors: lane id -> ids of the lanes that
    continue it (empty when the map does not say); num_crosswalks: pedestrian crossings;
    argoverse_segments: lanes are Argoverse 2 lane segments (lengths and polygon counts comparable across folders)."""
    lane_ids: np.ndarray
    lane_lengths: np.ndarray
    piece_start: np.ndarray
    piece_end: np.ndarray
    piece_lane: np.ndarray
    neighbours: Dict[int, Tuple[int, ...]] = field(default_factory=dict)
    successors: Dict[int, Tuple[int, ...]] = field(default_factory=dict)
    num_crosswalks: int = 0
    argoverse_segments: bool = True

    @property
    def num_polygons(self) -> int:
        """Map polygons as QCNet counts them: each lane segment once, each pedestrian crossing twice (once per
        walking direction)."""
        return len(self.lane_ids) + 2 * self.num_crosswalks


@dataclass
class ScenarioFiles:
    scenario_path: Path
    map_path: Optional[Path]


def find_scenarios(folder, max_scenes: Optional[int] = None) -> List[ScenarioFiles]:
    """Every ``scenario_<id>.parquet`` under ``folder`` (any depth, sorted by path) with the
    ``log_map_archive_<id>.json`` beside it (``map_path`` None when missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'{folder}: not a directory')
    found = []
    for scenario_path in sorted(folder.rglob('scenario_*.parquet')):
        if scenario_path.name.startswith('.'):
            continue
        scenario_id = scenario_path.stem[len('scenario_'):]
        map_path = scenario_path.with_name(f'log_map_archive_{scenario_id}.json')
        found.append(ScenarioFiles(scenario_path, map_path if map_path.is_file() else None))
        if max_scenes is not None and len(found) >= max_scenes:
            break
    return found


def read_tracks(path) -> ScenarioTracks:
    """One ``scenario_<id>.parquet`` -> :class:`ScenarioTracks`. Raises :class:`RealismInputError`."""
    try:
        scenario = load_argoverse_scenario_parquet(Path(path))
    except Exception as error:  # pyarrow, pandas and av2 raise many kinds for a damaged file
        raise RealismInputError(path, f'not a readable Argoverse 2 scenario ({type(error).__name__}: {error})') \
            from None
    num_steps = len(scenario.timestamps_ns)
    if num_steps < 2 or not scenario.tracks:
        raise RealismInputError(path, f'scenario has {num_steps} timestamps and {len(scenario.tracks)} tracks')
    num_tracks = len(scenario.tracks)
    positions = np.full((num_tracks, num_steps, 2), np.nan)
    velocities = np.full((num_tracks, num_steps, 2), np.nan)
    headings = np.full((num_tracks, num_steps), np.nan)
    for row, track in enumerate(scenario.tracks):
        steps = np.array([state.timestep for state in track.object_states], dtype=np.int64)
        if len(steps) and (steps.min() < 0 or steps.max() >= num_steps):
            raise RealismInputError(path, f'track {track.track_id} has time steps outside [0, {num_steps - 1}]')
        positions[row, steps] = [state.position for state in track.object_states]
        velocities[row, steps] = [state.velocity for state in track.object_states]
        headings[row, steps] = [state.heading for state in track.object_states]
    track_ids = np.array([str(track.track_id) for track in scenario.tracks])
    focal = np.flatnonzero(track_ids == str(scenario.focal_track_id))
    return ScenarioTracks(
        scenario_id=str(scenario.scenario_id), positions=positions, headings=headings, velocities=velocities,
        observed=~np.isnan(positions[..., 0]),
        object_types=np.array([track.object_type.value for track in scenario.tracks]),
        categories=np.array([track.category.value for track in scenario.tracks], dtype=np.int64),
        track_ids=track_ids, focal_index=int(focal[0]) if len(focal) else -1)


def lane_centreline(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Centreline [K, 2] of a lane between its left and right boundaries (av2's midpoint ladder), with a waypoint at
    least every ``CENTRELINE_SPACING_M`` of the longer boundary (and never fewer than av2's default 10)."""
    longest = max(polyline_length(left[:, :2]), polyline_length(right[:, :2]))
    num_points = max(10, int(math.ceil(longest / CENTRELINE_SPACING_M)) + 1)
    centreline, _ = compute_midpoint_line(left[:, :2], right[:, :2], num_interp_pts=num_points)
    return centreline[:, :2]


def polyline_length(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(points, axis=0), axis=-1).sum())


def read_lane_map(path) -> LaneMap:
    """One ``log_map_archive_<id>.json`` -> :class:`LaneMap`. Raises :class:`RealismInputError`."""
    try:
        static_map = ArgoverseStaticMap.from_json(Path(path))
    except Exception as error:  # json, av2 and numpy errors of a damaged file
        raise RealismInputError(path, f'not a readable Argoverse 2 map ({type(error).__name__}: {error})') from None
    centrelines, neighbours, successors = {}, {}, {}
    for lane_id, segment in static_map.vector_lane_segments.items():
        centrelines[lane_id] = lane_centreline(segment.left_lane_boundary.xyz, segment.right_lane_boundary.xyz)
        neighbours[lane_id] = tuple(n for n in (segment.left_neighbor_id, segment.right_neighbor_id) if n is not None)
        successors[lane_id] = tuple(segment.successors or ())
    if not centrelines:
        raise RealismInputError(path, 'map has no lane segments')
    return lane_map_from_centrelines(centrelines, neighbours, len(static_map.vector_pedestrian_crossings),
                                     successors=successors)


def lane_map_from_centrelines(centrelines: Dict[int, np.ndarray], neighbours: Dict[int, Tuple[int, ...]],
                              num_crosswalks: int, argoverse_segments: bool = True,
                              successors: Optional[Dict[int, Tuple[int, ...]]] = None) -> LaneMap:
    """lane id -> centreline [K >= 2, 2] (city frame, m) -> :class:`LaneMap` (lanes of fewer than 2 points are left
    out)."""
    lane_ids, lengths, starts, ends, owners = [], [], [], [], []
    for lane_id, centreline in centrelines.items():
        if len(centreline) < 2:
            continue
        owners.append(np.full(len(centreline) - 1, len(lane_ids), dtype=np.int64))
        lane_ids.append(lane_id)
        lengths.append(polyline_length(centreline))
        starts.append(centreline[:-1])
        ends.append(centreline[1:])
    return LaneMap(lane_ids=np.array(lane_ids, dtype=np.int64), lane_lengths=np.array(lengths),
                   piece_start=np.concatenate(starts) if starts else np.zeros((0, 2)),
                   piece_end=np.concatenate(ends) if ends else np.zeros((0, 2)),
                   piece_lane=np.concatenate(owners) if owners else np.zeros(0, dtype=np.int64),
                   neighbours=neighbours, successors=dict(successors or {}), num_crosswalks=num_crosswalks,
                   argoverse_segments=argoverse_segments)


def read_scenarios(folder, max_scenes: Optional[int] = None) -> Iterator[Tuple[str, object]]:
    """(scenario file, (tracks, lane map)) for each scenario of ``folder``; on a bad scenario (unreadable, or without
    its map) the second item is the :class:`RealismInputError` instead, so that a caller can report it and go on.
    ``folder`` may also be a Waymo Open Motion ``.tfrecord`` file or a folder of them (read by
    :mod:`datasets.realism.reading_waymo`)."""
    from datasets.realism import reading_waymo   # imported here: that module builds on this one
    if reading_waymo.is_waymo_source(folder):
        yield from reading_waymo.read_waymo_scenarios(folder, max_scenes)
        return
    for files in find_scenarios(folder, max_scenes):
        try:
            tracks = read_tracks(files.scenario_path)
            if files.map_path is None:
                scenario_id = files.scenario_path.stem[len('scenario_'):]
                raise RealismInputError(files.scenario_path, f'no log_map_archive_{scenario_id}.json beside it')
            lane_map = read_lane_map(files.map_path)
        except RealismInputError as error:
            yield str(files.scenario_path), error
            continue
        yield str(files.scenario_path), (tracks, lane_map)


SCORED = TrackCategory.SCORED_TRACK.value
