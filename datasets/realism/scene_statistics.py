"""Per-scene collection: every quantity the realism statistics and plots need, gathered over a folder of scenarios
into one :class:`RealismSamples` (flat numpy arrays, one entry per observation, track or scene as named)."""
import sys
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Tuple

import numpy as np

from datasets.realism import track_statistics as ts
from datasets.realism.reading import (CURRENT_STEP, NUM_STEPS, SCORED, LaneMap, RealismInputError, ScenarioTracks,
                                      read_scenarios)

FUTURE_STEP = NUM_STEPS - 1          # 6 s after the current step
PROGRESS_EVERY = 50


@dataclass
class RealismSamples:
    """Raw samples of a folder.

    Per moving-vehicle observation: ``speed`` (m/s), ``lon_acc`` (m/s^2, signed), ``lon_acc_interior`` (the same
    without the first and last 5 steps of each track), ``yaw_rate`` (deg/s, signed, steps at >= 1 m/s),
    ``centreline_offset`` (m, signed, positive left). ``vehicle_lon_acc``: ``lon_acc`` over every vehicle / bus track,
    parked ones included.
    Per moving-vehicle track: ``start_speed_ratio``, ``track_mean_offset`` (m), ``lane_changes``, ``other_cv_fde6``
    (fully observed non-focal vehicles, m).
    Per track (all types): ``track_length`` (observed steps), ``track_full`` (observed at every step),
    ``track_static`` (bool), ``track_type`` (av2 object type). Per observation of a static track:
    ``static_velocity_zero`` (bool).
    Per scene: ``focal_cv_fde6`` / ``focal_cv_fde6_reported`` (m), ``focal_speed_change`` (m/s), ``scored_tracks``
    (NaN without Argoverse 2 categories), ``agents``, ``agents_at_current``, ``static_at_current``, ``polygons`` (NaN
    without an Argoverse 2 map); ``focal_speed`` [S, 110] (m/s, NaN-padded), ``focal_future`` [S, 60, 2] and
    ``focal_history`` [S, 50, 2] in the focal agent's frame at the current step (x forward, y left).
    Per map: ``lane_segment_length`` (m). ``off_lane`` / ``on_lane``: moving-vehicle observations without / with an
    aligned centreline within 5 m. ``skipped``: (file, problem) of each scenario left out."""
    speed: np.ndarray = None
    lon_acc: np.ndarray = None
    lon_acc_interior: np.ndarray = None
    vehicle_lon_acc: np.ndarray = None
    start_speed_ratio: np.ndarray = None
    yaw_rate: np.ndarray = None
    centreline_offset: np.ndarray = None
    track_mean_offset: np.ndarray = None
    lane_changes: np.ndarray = None
    other_cv_fde6: np.ndarray = None
    track_length: np.ndarray = None
    track_full: np.ndarray = None
    track_static: np.ndarray = None
    track_type: np.ndarray = None
    static_velocity_zero: np.ndarray = None
    focal_cv_fde6: np.ndarray = None
    focal_cv_fde6_reported: np.ndarray = None
    focal_speed_change: np.ndarray = None
    scored_tracks: np.ndarray = None
    agents: np.ndarray = None
    agents_at_current: np.ndarray = None
    static_at_current: np.ndarray = None
    polygons: np.ndarray = None
    focal_speed: np.ndarray = None
    focal_future: np.ndarray = None
    focal_history: np.ndarray = None
    lane_segment_length: np.ndarray = None
    off_lane: int = 0
    on_lane: int = 0
    num_scenes: int = 0
    skipped: List[Tuple[str, str]] = field(default_factory=list)


_STACKED = {'focal_speed': (NUM_STEPS,), 'focal_future': (FUTURE_STEP - CURRENT_STEP, 2),
            'focal_history': (CURRENT_STEP + 1, 2)}   # per-scene arrays stacked, with their per-scene shapes


def _finite(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def _pad_steps(values: np.ndarray, num_steps: int = NUM_STEPS) -> np.ndarray:
    out = np.full((num_steps,) + values.shape[1:], np.nan)
    out[:min(num_steps, len(values))] = values[:num_steps]
    return out


def motion_samples(tracks: ScenarioTracks, moving: np.ndarray, speed: np.ndarray) -> Dict[str, np.ndarray]:
    """Speeds, accelerations, yaw rates of moving vehicles [M] plus track lengths and stillness of every track."""
    lon_acc = ts.longitudinal_accelerations(speed)
    yaw_rate = ts.yaw_rates(tracks.headings)[moving]
    interior = ts.longitudinal_accelerations(ts.speeds(ts.trim_track_ends(tracks.positions[moving])))
    vehicle = np.isin(tracks.object_types, ts.VEHICLE_TYPES)
    static = ts.is_static(tracks.positions)
    reported = tracks.velocities[static][tracks.observed[static]]
    return {'speed': _finite(speed[moving]), 'lon_acc': _finite(lon_acc[moving]),
            'vehicle_lon_acc': _finite(lon_acc[vehicle]), 'lon_acc_interior': _finite(interior),
            'start_speed_ratio': ts.start_speed_ratios(speed[moving]),
            'yaw_rate': _finite(yaw_rate[speed[moving] >= ts.MIN_YAW_RATE_SPEED]),
            'track_length': tracks.observed.sum(axis=1), 'track_full': tracks.observed.all(axis=1),
            'track_static': static, 'track_type': tracks.object_types,
            'static_velocity_zero': np.all(reported == 0.0, axis=-1)}


def lane_samples(tracks: ScenarioTracks, moving: np.ndarray, lane_map: Optional[LaneMap]) -> Dict[str, object]:
    """Centreline offsets, per-track mean offsets and lane changes of moving vehicles; lane segment lengths."""
    offsets, mean_offsets, changes, off_lane, on_lane = [], [], [], 0, 0
    for row in np.flatnonzero(moving) if lane_map is not None else ():
        offset, lanes = ts.centreline_offsets(tracks.positions[row], tracks.headings[row], lane_map)
        on = ~np.isnan(offset)
        off_lane += int((tracks.observed[row] & ~on).sum())
        on_lane += int(on.sum())
        offsets.append(offset[on])
        if on.sum() >= 10:
            mean_offsets.append(float(offset[on].mean()))
        changes.append(ts.lane_changes(lanes, lane_map))
    out = {'centreline_offset': np.concatenate(offsets) if offsets else np.zeros(0),
           'track_mean_offset': np.array(mean_offsets), 'lane_changes': np.array(changes),
           'off_lane': off_lane, 'on_lane': on_lane}
    if lane_map is not None and lane_map.argoverse_segments:
        out['lane_segment_length'] = lane_map.lane_lengths
    return out


def focal_samples(tracks: ScenarioTracks, moving: np.ndarray, speed: np.ndarray) -> Dict[str, np.ndarray]:
    """Constant-velocity errors (focal, other fully observed moving vehicles), focal speed change, speed profile
    and history / future in the focal frame."""
    out: Dict[str, np.ndarray] = {}
    scene = {'focal_cv_fde6': np.nan, 'focal_cv_fde6_reported': np.nan, 'focal_speed_change': np.nan}
    current, future, focal = tracks.current_step, tracks.future_step, tracks.focal_index
    has_future = future > current
    if has_future:
        cv, cv_reported = ts.constant_velocity_errors(tracks.positions, tracks.velocities, current, future)
        others = moving & tracks.observed.all(axis=1)
        if focal >= 0:
            others[focal] = False
        out['other_cv_fde6'] = cv[others]
    if focal >= 0 and tracks.observed[focal, current - 1:current + 1].all():
        origin, heading = tracks.positions[focal, current], float(tracks.headings[focal, current])
        local = ts.to_agent_frame(tracks.positions[focal], origin, heading)
        out['focal_history'] = _pad_steps(local[:current + 1][::-1], CURRENT_STEP + 1)[::-1]
        out['focal_speed'] = _pad_steps(speed[focal])
        if has_future:
            out['focal_future'] = _pad_steps(local[current + 1:future + 1], FUTURE_STEP - CURRENT_STEP)
            scene = {'focal_cv_fde6': cv[focal], 'focal_cv_fde6_reported': cv_reported[focal],
                     'focal_speed_change': speed[focal, future] - speed[focal, current]}
    out.update({name: np.array([float(value)]) for name, value in scene.items()})
    return out


def count_samples(tracks: ScenarioTracks, lane_map: Optional[LaneMap]) -> Dict[str, np.ndarray]:
    """Per-scene counts; NaN where the source has no Argoverse 2 categories or lane segments."""
    current = tracks.current_step
    static = ts.is_static(tracks.positions)
    has_categories = bool((tracks.categories >= 0).all())
    has_segments = lane_map is not None and lane_map.argoverse_segments
    counts = {'scored_tracks': (tracks.categories == SCORED).sum() if has_categories else np.nan,
              'agents': len(tracks.track_ids), 'agents_at_current': tracks.observed[:, current].sum(),
              'static_at_current': (static & tracks.observed[:, current]).sum(),
              'polygons': lane_map.num_polygons if has_segments else np.nan}
    return {name: np.array([float(value)]) for name, value in counts.items()}


def scene_samples(tracks: ScenarioTracks, lane_map: Optional[LaneMap]) -> Dict[str, object]:
    """The samples of one scene, keyed like :class:`RealismSamples`' fields."""
    moving = ts.is_moving_vehicle(tracks.positions, tracks.object_types)
    speed = ts.speeds(tracks.positions)
    return {**motion_samples(tracks, moving, speed), **lane_samples(tracks, moving, lane_map),
            **focal_samples(tracks, moving, speed), **count_samples(tracks, lane_map)}


def collect(folder, max_scenes: Optional[int] = None, progress: bool = True) -> RealismSamples:
    """Every scenario of ``folder`` (Argoverse 2 layout, any depth) -> :class:`RealismSamples`. A scenario that
    cannot be read is named on stderr in one line, listed in ``skipped`` and left out."""
    parts: Dict[str, list] = {f.name: [] for f in fields(RealismSamples)
                              if f.name not in ('off_lane', 'on_lane', 'num_scenes', 'skipped')}
    samples = RealismSamples()
    for index, (source, result) in enumerate(read_scenarios(folder, max_scenes), start=1):
        if isinstance(result, RealismInputError):
            print(f'realism: skipped {result}', file=sys.stderr)
            samples.skipped.append((result.path, result.problem))
            continue
        tracks, lane_map = result
        try:
            scene = scene_samples(tracks, lane_map)
        except (ValueError, IndexError) as error:  # inconsistent content that av2 read without complaint
            problem = f'cannot compute statistics ({type(error).__name__}: {error})'
            print(f'realism: skipped {source}: {problem}', file=sys.stderr)
            samples.skipped.append((source, problem))
            continue
        samples.num_scenes += 1
        samples.off_lane += scene.pop('off_lane')
        samples.on_lane += scene.pop('on_lane')
        for name, value in scene.items():
            parts[name].append(value)
        if progress and index % PROGRESS_EVERY == 0:
            print(f'realism: {folder}: {index} scenarios read', file=sys.stderr)
    for name, values in parts.items():
        if name in _STACKED:
            setattr(samples, name, np.stack(values) if values else np.zeros((0,) + _STACKED[name]))
        else:
            setattr(samples, name, np.concatenate(values) if values else np.zeros(0))
    return samples
