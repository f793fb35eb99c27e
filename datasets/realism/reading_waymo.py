"""Waymo Open Motion scenarios (``.tfrecord`` files of ``Scenario`` protobufs, decoded by :mod:`datasets.waymo`) as
:class:`ScenarioTracks` and :class:`LaneMap`, so that a Waymo file can be the reference of the realism report.

What carries over: tracks at 10 Hz (91 steps; the current step is the file's ``current_time_index``, 10, and the
6 s horizon is 60 steps later), object types, reported velocities, and Waymo lanes, which are given as centrelines
(offsets and lane changes are measured on them). What does not: Waymo has no focal agent and no Argoverse 2 track
categories (focal and scored-track statistics stay empty), and it cuts lanes differently (lane segment lengths and
polygon counts stay empty)."""
import os
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from datasets.realism.reading import (SAMPLING_RATE_HZ, RealismInputError, ScenarioTracks,
                                      lane_map_from_centrelines)
from datasets.scenario import ScenarioError
from datasets.tfrecord import read_record
from datasets.waymo import DecodeError, WaymoScenario, decode_scenario, is_tfrecord_file, tfrecord_index

WAYMO_TYPES = {1: 'vehicle', 2: 'pedestrian', 3: 'cyclist'}   # TYPE_UNSET / TYPE_OTHER -> 'unknown'
HORIZON_STEPS = 6 * SAMPLING_RATE_HZ


def is_waymo_source(path) -> bool:
    """A ``.tfrecord`` file, or a folder holding some directly."""
    path = Path(path)
    if path.is_file():
        return is_tfrecord_file(path.name)
    return path.is_dir() and any(is_tfrecord_file(p.name) and p.is_file() for p in path.iterdir())


def waymo_tracks(scenario: WaymoScenario) -> ScenarioTracks:
    states = scenario.states
    valid = states['valid']
    positions = np.stack([states['center_x'], states['center_y']], axis=-1)
    positions[~valid] = np.nan
    velocities = np.stack([states['velocity_x'], states['velocity_y']], axis=-1)
    velocities[~valid] = np.nan
    headings = np.where(valid, states['heading'], np.nan)
    current = scenario.current_time_index
    future = current + HORIZON_STEPS
    return ScenarioTracks(
        scenario_id=scenario.scenario_id, positions=positions, headings=headings, velocities=velocities,
        observed=valid.copy(), object_types=np.array([WAYMO_TYPES.get(int(t), 'unknown')
                                                      for t in scenario.object_types]),
        categories=np.full(scenario.num_tracks, -1, dtype=np.int64),
        track_ids=np.array([str(i) for i in scenario.track_ids]), focal_index=-1, current_step=current,
        future_step=future if future < valid.shape[1] else -1)


def waymo_lane_map(scenario: WaymoScenario):
    lanes = [f for f in scenario.map_features if f.kind == 'lane' and f.points is not None]
    centrelines = {f.id: f.points[:, :2] for f in lanes}
    neighbours = {f.id: tuple(f.left_neighbors) + tuple(f.right_neighbors) for f in lanes}
    crosswalks = sum(f.kind == 'crosswalk' for f in scenario.map_features)
    successors = {f.id: tuple(f.exit_lanes) for f in lanes}
    lane_map = lane_map_from_centrelines(centrelines, neighbours, crosswalks, argoverse_segments=False,
                                         successors=successors)
    return lane_map if len(lane_map.lane_ids) else None


def read_waymo_scenarios(path, max_scenes: Optional[int] = None) -> Iterator[Tuple[str, object]]:
    """(``<file> (record i)``, (tracks, lane map or None) or :class:`RealismInputError`) for every record of a
    ``.tfrecord`` file or of the ``.tfrecord`` files directly in a folder (sorted)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if is_tfrecord_file(p.name))
    count = 0
    for file_path in files:
        try:
            records, problem = tfrecord_index(file_path)
        except ScenarioError as error:
            yield str(file_path), RealismInputError(file_path, error.problem)
            continue
        for index, (offset, length) in enumerate(records):
            if max_scenes is not None and count >= max_scenes:
                return
            count += 1
            source = f'{file_path} (record {index})'
            try:
                scenario = decode_scenario(read_record(os.fspath(file_path), offset, length, index))
                yield source, (waymo_tracks(scenario), waymo_lane_map(scenario))
            except ScenarioError as error:
                yield source, RealismInputError(source, error.problem)
            except (DecodeError, ValueError) as error:
                yield source, RealismInputError(source, f'not a readable Waymo Scenario ({error})')
        if problem is not None:
            yield str(file_path), RealismInputError(file_path, problem)
