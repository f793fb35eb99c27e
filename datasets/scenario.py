"""Dataset-agnostic in-memory scenario record.

Every dataset adapter (``datasets/argoverse_v2.py`` now; Waymo Open Motion and Argoverse 1 later) turns its raw
files into one :class:`ScenarioRecord`: plain numpy arrays on an explicit time base, in the dataset's global
(city / map) frame, with categorical values stored as indices into the vocabularies defined here.
Model-specific feature construction (``datasets/processing.py``) reads only this record, never raw files.

Conventions
-----------
* ``A`` agents, ``T = time_base.num_steps`` steps, ``P`` map polygons, ``E`` polygon relations.
* Agents are ordered by their first row in the source file; unobserved steps hold zeros.
* Coordinates are float64 metres in the map frame, headings float64 radians (counter-clockwise from +x).
* Ragged per-polygon point lists are stored as :class:`Polylines` (concatenated points + offsets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# ----------------------------------------------------------------------------------------------------------------------
# Vocabularies. The order is part of the on-disk and checkpoint contract (official QCNet indices): append only.
# ----------------------------------------------------------------------------------------------------------------------
AGENT_TYPES: Tuple[str, ...] = ('vehicle', 'pedestrian', 'motorcyclist', 'cyclist', 'bus', 'static', 'background',
                                'construction', 'riderless_bicycle', 'unknown')
AGENT_CATEGORIES: Tuple[str, ...] = ('TRACK_FRAGMENT', 'UNSCORED_TRACK', 'SCORED_TRACK', 'FOCAL_TRACK')
# Union vocabularies: Argoverse 2's entries first (official QCNet indices), then the types only other datasets have
# (Waymo Open Motion road lines / edges, stop signs, speed bumps, driveways). A model trained on Argoverse 2 alone
# uses the first ``AV2_NUM_*`` entries; a checkpoint pre-trained on several datasets keeps the leading rows of its
# embedding tables for Argoverse 2 fine-tuning.
POLYGON_TYPES: Tuple[str, ...] = ('VEHICLE', 'BIKE', 'BUS', 'PEDESTRIAN',
                                  'ROAD_LINE', 'ROAD_EDGE', 'STOP_SIGN', 'SPEED_BUMP', 'DRIVEWAY')
# QCNet stores the index of the lane's ``is_intersection`` value in this tuple (None = not a lane, e.g. crosswalk).
POLYGON_IS_INTERSECTIONS: Tuple[object, ...] = (True, False, None)
POINT_TYPES: Tuple[str, ...] = ('DASH_SOLID_YELLOW', 'DASH_SOLID_WHITE', 'DASHED_WHITE', 'DASHED_YELLOW',
                                'DOUBLE_SOLID_YELLOW', 'DOUBLE_SOLID_WHITE', 'DOUBLE_DASH_YELLOW', 'DOUBLE_DASH_WHITE',
                                'SOLID_YELLOW', 'SOLID_WHITE', 'SOLID_DASH_WHITE', 'SOLID_DASH_YELLOW', 'SOLID_BLUE',
                                'NONE', 'UNKNOWN', 'CROSSWALK', 'CENTERLINE',
                                'ROAD_EDGE_BOUNDARY', 'ROAD_EDGE_MEDIAN', 'ROAD_EDGE_UNKNOWN', 'STOP_SIGN',
                                'SPEED_BUMP', 'DRIVEWAY')
POINT_SIDES: Tuple[str, ...] = ('LEFT', 'RIGHT', 'CENTER')
POLYGON_TO_POLYGON_TYPES: Tuple[str, ...] = ('NONE', 'PRED', 'SUCC', 'LEFT', 'RIGHT')
# What a map polygon is (record-level; QCNet derives its polygon list from it). LANE: lane segment with left/right
# boundaries and a centre line (Argoverse 2); CROSSWALK: two edges; POLYLINE: one polyline only, stored as the
# centre line (Argoverse 1 lane centre lines, Waymo lanes, road lines, road edges, stop signs, area outlines).
POLYGON_KINDS: Tuple[str, ...] = ('LANE', 'CROSSWALK', 'POLYLINE')
# The common canvas every dataset is put on (the official Argoverse 2 steps): 10 Hz, 50 history + 60 future steps;
# all three datasets record at this rate.
NUM_HISTORICAL_STEPS = 50
NUM_FUTURE_STEPS = 60
SAMPLING_RATE_HZ = 10.0
# Dataset tags, numbered as in the official SmartPretrain code (``data['data_set']``).
DATASET_IDS: Dict[str, int] = {'argoverse_v1': 0, 'argoverse_v2': 1, 'waymo': 2}
# Vocabulary sizes: the embedding-table sizes of the models (modules/ import them from here). The tables of the
# official QCNet checkpoints hold Argoverse 2's entries only; a model pre-trained on a mix passes the union sizes
# (``len(POINT_TYPES)``, ``len(POLYGON_TYPES)``) instead.
AV2_NUM_AGENT_TYPES = 10
AV2_NUM_POLYGON_TYPES = 4
AV2_NUM_POINT_TYPES = 17
# vocabularies every dataset uses in full
NUM_POINT_SIDES = len(POINT_SIDES)
NUM_POLYGON_INTERSECTION_FLAGS = len(POLYGON_IS_INTERSECTIONS)
NUM_POLYGON_TO_POLYGON_TYPES = len(POLYGON_TO_POLYGON_TYPES)  # none (radius edge), pred, succ, left, right

FOCAL_CATEGORY = AGENT_CATEGORIES.index('FOCAL_TRACK')
SCORED_CATEGORY = AGENT_CATEGORIES.index('SCORED_TRACK')
LANE_KIND = POLYGON_KINDS.index('LANE')
CROSSWALK_KIND = POLYGON_KINDS.index('CROSSWALK')
POLYLINE_KIND = POLYGON_KINDS.index('POLYLINE')


class ScenarioError(ValueError):
    """A scenario that cannot be used. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = ' '.join(str(problem).split())  # keep the message on one line
        super().__init__(f'{self.path}: {self.problem}')

    def __reduce__(self):  # picklable across multiprocessing workers
        return self.__class__, (self.path, self.problem)


@dataclass(frozen=True)
class TimeBase:
    """Discrete time axis of a scenario: steps ``0 .. num_steps-1`` at ``sampling_rate_hz``.

    Step ``num_historical_steps - 1`` is the "current" step; the future is ``num_future_steps`` steps after it.
    ``future_observed`` is False when the source holds history only (e.g. an Argoverse 2 test-split file): the
    future steps then exist on the time axis but are never observed.
    ``span_start`` / ``span_end`` (exclusive; None = ``num_steps``): the steps the source recording covers when it
    is placed on a longer common canvas (Argoverse 1: 30..79 of 110; Waymo: see ``datasets/waymo.py``); steps
    outside are never observed.
    """
    num_historical_steps: int
    num_future_steps: int
    sampling_rate_hz: float = 10.0
    future_observed: bool = True
    span_start: int = 0
    span_end: Optional[int] = None

    @property
    def num_steps(self) -> int:
        return self.num_historical_steps + self.num_future_steps

    @property
    def current_step(self) -> int:
        return self.num_historical_steps - 1

    @property
    def observable_span(self) -> Tuple[int, int]:
        """(first, last + 1) step that can hold observations: the source span, cut at the history end when the
        future is not observed."""
        end = self.num_steps if self.span_end is None else self.span_end
        if not self.future_observed:
            end = min(end, self.num_historical_steps)
        return self.span_start, end


@dataclass
class AgentTracks:
    """Agents x time, in the map frame.

    ids: list[str] [A]; type: uint8 [A] (index in AGENT_TYPES); category: uint8 [A] (index in AGENT_CATEGORIES);
    observed: bool [A, T] (raw per-step observation flag, no smoothing); position: float64 [A, T, 3] (z is 0 where
    the dataset has no height); heading: float64 [A, T]; velocity: float64 [A, T, 3] (m/s, map frame).
    av_index / focal_index: rows of the ego vehicle and of the focal agent (-1 where the dataset has none).
    """
    ids: List[str]
    type: np.ndarray
    category: np.ndarray
    observed: np.ndarray
    position: np.ndarray
    heading: np.ndarray
    velocity: np.ndarray
    av_index: int
    focal_index: int

    @property
    def num_agents(self) -> int:
        return len(self.ids)


@dataclass
class Polylines:
    """A ragged list of polylines: polyline ``i`` is ``points[offsets[i]:offsets[i+1]]``.

    points: float64 [N, 3]; offsets: int64 [L + 1], non-decreasing, offsets[0] == 0, offsets[-1] == N.
    """
    points: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_list(cls, polylines: Sequence[np.ndarray]) -> 'Polylines':
        lengths = np.fromiter((len(p) for p in polylines), dtype=np.int64, count=len(polylines))
        offsets = np.zeros(len(polylines) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        points = (np.concatenate(polylines, axis=0).astype(np.float64, copy=False) if len(polylines)
                  else np.zeros((0, 3), dtype=np.float64))
        return cls(points=points.reshape(-1, 3), offsets=offsets)

    @property
    def lengths(self) -> np.ndarray:
        """int64 [L]: number of points of each polyline."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.points[self.offsets[index]:self.offsets[index + 1]]


@dataclass
class MapRecord:
    """Vector map: lane and crosswalk polygons with boundary/centre polylines and lane topology.

    ids: int64 [P] (source ids, lanes first then crosswalks in source order); kind: uint8 [P] (POLYGON_KINDS);
    polygon_type: uint8 [P] (POLYGON_TYPES; crosswalks are PEDESTRIAN); is_intersection: uint8 [P] (index in
    POLYGON_IS_INTERSECTIONS; crosswalks hold the index of None); left_mark_type / right_mark_type: uint8 [P]
    (POINT_TYPES; crosswalk edges are CROSSWALK).
    left_boundary / right_boundary / centerline: :class:`Polylines` with P entries. For a crosswalk the two boundaries
    are its two long edges as given by the source (edge1 / edge2, not yet oriented) and the centerline is empty: a
    crosswalk has no direction, feature builders derive one.
    topology_edge_index: int64 [2, E], rows (neighbour polygon, lane polygon), both polygon rows in this record;
    relations to polygons outside this map are dropped. topology_type: uint8 [E] (POLYGON_TO_POLYGON_TYPES: edge
    (j, i) of type PRED means j is a predecessor of lane i). Edges are ordered by lane, then predecessors,
    successors, left neighbour, right neighbour, each in source order.
    POLYLINE polygons have empty left/right boundaries and their one polyline as the centre line.
    center_mark_type: uint8 [P] or None: POINT_TYPES of each polygon's centre-line points (None: CENTERLINE for
    every polygon, the Argoverse 2 case; Waymo road lines carry their mark type here).
    """
    ids: np.ndarray
    kind: np.ndarray
    polygon_type: np.ndarray
    is_intersection: np.ndarray
    left_mark_type: np.ndarray
    right_mark_type: np.ndarray
    left_boundary: Polylines
    right_boundary: Polylines
    centerline: Polylines
    topology_edge_index: np.ndarray
    topology_type: np.ndarray
    center_mark_type: Optional[np.ndarray] = None

    @property
    def num_polygons(self) -> int:
        return len(self.ids)

    @property
    def num_lanes(self) -> int:
        return int((self.kind == LANE_KIND).sum())

    @property
    def num_crosswalks(self) -> int:
        return int((self.kind == CROSSWALK_KIND).sum())


@dataclass
class ScenarioRecord:
    """One scenario of any dataset: identity, time base, agents and map. ``source`` names the file(s) it came from
    (used in error messages)."""
    scenario_id: str
    city: str
    dataset: str
    time_base: TimeBase
    agents: AgentTracks
    map: MapRecord
    source: str = ''
    extras: Dict[str, object] = field(default_factory=dict)

    @property
    def dataset_id(self) -> int:
        return DATASET_IDS[self.dataset]

    def validate(self) -> 'ScenarioRecord':
        """Check shapes, dtypes, index ranges and finiteness; raise :class:`ScenarioError` naming ``source``."""
        def fail(problem: str) -> None:
            raise ScenarioError(self.source or self.scenario_id, problem)

        if self.dataset not in DATASET_IDS:
            fail(f'unknown dataset {self.dataset!r}; known: {sorted(DATASET_IDS)}')
        tb, ag, mp = self.time_base, self.agents, self.map
        num_agents, num_steps = ag.num_agents, tb.num_steps
        if num_agents == 0:
            fail('scenario has no agents')
        expected = {'type': (num_agents,), 'category': (num_agents,), 'observed': (num_agents, num_steps),
                    'position': (num_agents, num_steps, 3), 'heading': (num_agents, num_steps),
                    'velocity': (num_agents, num_steps, 3)}
        for name, shape in expected.items():
            value = getattr(ag, name)
            if not isinstance(value, np.ndarray) or value.shape != shape:
                fail(f'agents.{name} has shape {getattr(value, "shape", None)}, expected {shape}')
        if ag.observed.dtype != np.bool_:
            fail(f'agents.observed has dtype {ag.observed.dtype}, expected bool')
        if ag.type.size and int(ag.type.max()) >= len(AGENT_TYPES):
            fail(f'agents.type index {int(ag.type.max())} is outside AGENT_TYPES')
        if ag.category.size and int(ag.category.max()) >= len(AGENT_CATEGORIES):
            fail(f'agents.category index {int(ag.category.max())} is outside AGENT_CATEGORIES')
        for name in ('position', 'heading', 'velocity'):
            if not np.isfinite(getattr(ag, name)).all():
                fail(f'agents.{name} contains NaN or infinite values')
        if not -1 <= ag.av_index < num_agents or not -1 <= ag.focal_index < num_agents:
            fail(f'av_index {ag.av_index} / focal_index {ag.focal_index} out of range for {num_agents} agents')
        if not tb.future_observed and ag.observed[:, tb.num_historical_steps:].any():
            fail('time base says the future is not observed but agents have future observations')
        span_start, span_end = tb.observable_span
        if not 0 <= span_start < span_end <= num_steps:
            fail(f'time base span [{span_start}, {span_end}) is not within [0, {num_steps}]')
        if ag.observed[:, :span_start].any() or ag.observed[:, span_end:].any():
            fail(f'agents are observed outside the span [{span_start}, {span_end}) of the source recording')

        num_polygons = mp.num_polygons
        if num_polygons == 0:
            fail('map has no lane segments and no pedestrian crossings')
        point_type_names = ('left_mark_type', 'right_mark_type') + (
            ('center_mark_type',) if mp.center_mark_type is not None else ())
        for name in ('kind', 'polygon_type', 'is_intersection') + point_type_names:
            if getattr(mp, name).shape != (num_polygons,):
                fail(f'map.{name} has shape {getattr(mp, name).shape}, expected ({num_polygons},)')
        for name, vocab in (('kind', POLYGON_KINDS), ('polygon_type', POLYGON_TYPES),
                            ('is_intersection', POLYGON_IS_INTERSECTIONS)) + tuple(
                (name, POINT_TYPES) for name in point_type_names):
            if int(getattr(mp, name).max()) >= len(vocab):
                fail(f'map.{name} index {int(getattr(mp, name).max())} is outside its vocabulary')
        for name in ('left_boundary', 'right_boundary', 'centerline'):
            lines: Polylines = getattr(mp, name)
            if len(lines) != num_polygons or lines.offsets[-1] != len(lines.points) or lines.points.shape[1:] != (3,):
                fail(f'map.{name} is inconsistent with {num_polygons} polygons')
            if not np.isfinite(lines.points).all():
                fail(f'map.{name} contains NaN or infinite coordinates')
        is_lane = mp.kind == LANE_KIND
        for name in ('left_boundary', 'right_boundary', 'centerline'):
            if (getattr(mp, name).lengths[is_lane] < 2).any():
                fail(f'a lane {name} has fewer than 2 points')
        for name in ('left_boundary', 'right_boundary'):
            if (getattr(mp, name).lengths[mp.kind == CROSSWALK_KIND] < 2).any():
                fail(f'a crosswalk edge ({name}) has fewer than 2 points')
        is_polyline = mp.kind == POLYLINE_KIND
        if (mp.centerline.lengths[is_polyline] < 2).any():
            fail('a polyline map feature has fewer than 2 points')
        if (mp.left_boundary.lengths[is_polyline] > 0).any() or (mp.right_boundary.lengths[is_polyline] > 0).any():
            fail('a polyline map feature has left/right boundary points')
        if mp.topology_edge_index.ndim != 2 or mp.topology_edge_index.shape[0] != 2 or \
                mp.topology_edge_index.shape[1] != mp.topology_type.shape[0]:
            fail('map topology edge_index / type shapes disagree')
        if mp.topology_edge_index.size and (mp.topology_edge_index.min() < 0 or
                                            mp.topology_edge_index.max() >= num_polygons):
            fail('map topology refers to a polygon outside the map')
        return self
