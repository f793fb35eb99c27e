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
    """Raw samples of a folder. Per moving-vehicle observation: ``speed`` (m/s), ``lon_acc`` (m/s^2, signed),
    ``yaw_rate`` (deg/s, signed, steps at >= 1 m/s), ``centreline_offset`` (m, signed, positive left).
    ``lon_acc_interior``: the same without the first and last 5 steps of each track. ``vehicle_lon_acc``: the same
    over every vehicle / bus track, parked ones included.
    Per moving-vehicle track: ``start_speed_ratio``, ``track_mean_offset`` (m), ``lane_changes``, ``other_cv_fde6`` (fully observed
    non-focal vehicles, m). Per track (all types): ``track_length`` (observed steps), ``track_full`` (observed at every step), ``track_static`` (bool),
    ``track_type`` (av2 object type). Per observation of a static track: ``static_velocity_zero`` (bool).
    Per scene: ``focal_cv_fde6`` / ``focal_cv_fde6_reported`` (m), ``focal_speed_change`` (m/s), ``scored_tracks``,
    ``agents``, ``agents_at_current``, ``static_at_current``, ``polygons`` (NaN without an Argoverse 2 map), ``scored_tracks`` NaN without Argoverse 2 categories; ``focal_speed``
    [S, 110] (m/s, NaN-padded) and ``focal_future`` [S, 60, 2] / ``focal_history`` [S, 50, 2] in the focal agent's
    frame at the current step (x forward, y left). Per map: ``lane_segment_length`` (m). ``off_lane`` / ``on_lane``:
    moving-vehicle observations without / with an aligned centreline within 5 m. ``skipped``: (file, problem)."""
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


def _pad_steps(values: np.ndarray, num_steps: int = NUM_STEPS) -> np.ndarray:
    out = np.full((num_steps,) + values.shape[1:], np.nan)
    out[:min(num_steps, len(values))] = values[:num_steps]
    return out


def scene_samples(tracks: ScenarioTracks, lane_map: Optional[LaneMap]) -> Dict[str, object]:
    """The samples of one scene, as lists / arrays keyed like :class:`RealismSamples`' fields."""
    out: Dict[str, object] = {}
    static = ts.is_static(tracks.positions)
    moving_vehicle = ts.is_moving_vehicle(tracks.positions, tracks.object_types)
    speed = ts.speeds(tracks.positions)
    lon_acc = ts.longitudinal_accelerations(speed)
    yaw_rate = ts.yaw_rates(tracks.headings)
    mv = moving_vehicle
    out['speed'] = speed[mv][~np.isnan(speed[mv])]
    out['lon_acc'] = lon_acc[mv][~np.isnan(lon_acc[mv])]
    vehicle = np.isin(tracks.object_types, ts.VEHICLE_TYPES)
    out['vehicle_lon_acc'] = lon_acc[vehicle][~np.isnan(lon_acc[vehicle])]
    interior = ts.longitudinal_accelerations(ts.speeds(ts.trim_track_ends(tracks.positions[mv])))
    out['lon_acc_interior'] = interior[~np.isnan(interior)]
    out['start_speed_ratio'] = ts.start_speed_ratios(speed[mv])
    fast_yaw = yaw_rate[mv][speed[mv] >= ts.MIN_YAW_RATE_SPEED]
    out['yaw_rate'] = fast_yaw[~np.isnan(fast_yaw)]
    out['track_length'] = tracks.observed.sum(axis=1)
    out['track_full'] = tracks.observed.all(axis=1)
    out['track_static'] = static
    out['track_type'] = tracks.object_types
    reported = tracks.velocities[static][tracks.observed[static]]
    out['static_velocity_zero'] = np.all(reported == 0.0, axis=-1)
    offsets, mean_offsets, changes, off_lane, on_lane = [], [], [], 0, 0
    if lane_map is not None:
        for row in np.flatnonzero(mv):
            offset, lanes = ts.centreline_offsets(tracks.positions[row], tracks.headings[row], lane_map)
            observed = tracks.observed[row]
            on = ~np.isnan(offset)
            off_lane += int((observed & ~on).sum())
            on_lane += int(on.sum())
            offsets.append(offset[on])
            if on.sum() >= 10:
                mean_offsets.append(float(offset[on].mean()))
            changes.append(ts.lane_changes(lanes, lane_map))
        if lane_map.argoverse_segments:
            out['lane_segment_length'] = lane_map.lane_lengths
    out['centreline_offset'] = np.concatenate(offsets) if offsets else np.zeros(0)
    out['track_mean_offset'] = np.array(mean_offsets)
    out['lane_changes'] = np.array(changes)
    out['off_lane'], out['on_lane'] = off_lane, on_lane
    current, future = tracks.current_step, tracks.future_step
    has_future = future > current
    if has_future:
        cv, cv_reported = ts.constant_velocity_errors(tracks.positions, tracks.velocities, current, future)
        others = mv & tracks.observed.all(axis=1)
        if tracks.focal_index >= 0:
            others[tracks.focal_index] = False
        out['other_cv_fde6'] = cv[others]
    focal = tracks.focal_index
    has_categories = bool((tracks.categories >= 0).all())
    has_segments = lane_map is not None and lane_map.argoverse_segments
    scene: Dict[str, float] = {'scored_tracks': float((tracks.categories == SCORED).sum()) if has_categories
                               else np.nan,
                               'agents': float(len(tracks.track_ids)),
                               'agents_at_current': float(tracks.observed[:, current].sum()),
                               'static_at_current': float((static & tracks.observed[:, current]).sum()),
                               'polygons': float(lane_map.num_polygons) if has_segments else np.nan,
                               'focal_cv_fde6': np.nan, 'focal_cv_fde6_reported': np.nan,
                               'focal_speed_change': np.nan}
    if focal >= 0 and tracks.observed[focal, current - 1:current + 1].all():
        origin, heading = tracks.positions[focal, current], float(tracks.headings[focal, current])
        local = ts.to_agent_frame(tracks.positions[focal], origin, heading)
        out['focal_history'] = _pad_steps(local[:current + 1][::-1], CURRENT_STEP + 1)[::-1]
        out['focal_speed'] = _pad_steps(speed[focal])
        if has_future:
            out['focal_future'] = _pad_steps(local[current + 1:future + 1], FUTURE_STEP - CURRENT_STEP)
            scene['focal_cv_fde6'] = float(cv[focal])
            scene['focal_cv_fde6_reported'] = float(cv_reported[focal])
            scene['focal_speed_change'] = float(speed[focal, future] - speed[focal, current])
    out.update({name: np.array([value]) for name, value in scene.items()})
    return out


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
