"""Reduction of :class:`RealismSamples` to the named statistics of the realism report (definitions: the package
docstring)."""
from typing import Dict, Optional

import numpy as np

from datasets.realism.scene_statistics import RealismSamples, collect

CRUISING_ACCELERATION = 0.1   # m/s^2
SHORT_TRACK_STEPS = 20
SAME_SHAPE_M = 1.0          # two focal futures closer than this on average are one shape
DISTINCT_SHAPE_SAMPLE = 100  # futures compared (the first ones with a complete future)


def _percentile(values: np.ndarray, q: float) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if len(values) else float('nan')


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else float('nan')


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else float('nan')


def _robust_spread(values: np.ndarray) -> float:
    """1.4826 x median absolute deviation: the standard deviation of a normal sample, blind to a few outliers."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float('nan')
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def distinct_shape_fraction(futures: np.ndarray, same_shape: float = SAME_SHAPE_M,
                            sample: int = DISTINCT_SHAPE_SAMPLE) -> float:
    """futures [S, K, 2] (focal frame) -> distinct shapes / futures among the first ``sample`` complete ones. Each
    future joins the first earlier shape whose representative is within ``same_shape`` metres on average over the
    K steps, else it starts a new shape."""
    complete = futures[~np.isnan(futures).any(axis=(1, 2))][:sample]
    if len(complete) == 0:
        return float('nan')
    representatives = []
    for future in complete:
        if not any(np.linalg.norm(future - r, axis=-1).mean() < same_shape for r in representatives):
            representatives.append(future)
    return len(representatives) / len(complete)


def statistics(samples: RealismSamples) -> Dict[str, float]:
    """:class:`RealismSamples` -> the report's statistics (NaN where a folder has nothing to measure)."""
    s = samples
    abs_offset = np.abs(s.centreline_offset)
    abs_acc = np.abs(s.lon_acc)
    pedestrian = s.track_type == 'pedestrian'
    stats = {
        'num_scenes': float(s.num_scenes),
        'num_skipped': float(len(s.skipped)),
        'centreline_offset_p50': _percentile(abs_offset, 50),
        'centreline_offset_p90': _percentile(abs_offset, 90),
        'driver_offset_spread': float(np.std(s.track_mean_offset)) if len(s.track_mean_offset) > 1 else float('nan'),
        'driver_offset_spread_robust': _robust_spread(s.track_mean_offset),
        'off_lane_fraction': _ratio(s.off_lane, s.off_lane + s.on_lane),
        'lon_acc_p50': _percentile(abs_acc, 50),
        'lon_acc_p90': _percentile(abs_acc, 90),
        'cruising_fraction': _ratio((abs_acc < CRUISING_ACCELERATION).sum(), len(abs_acc)),
        'lon_acc_interior_p50': _percentile(np.abs(s.lon_acc_interior), 50),
        'lon_acc_interior_p90': _percentile(np.abs(s.lon_acc_interior), 90),
        'cruising_interior_fraction': _ratio((np.abs(s.lon_acc_interior) < CRUISING_ACCELERATION).sum(),
                                             len(s.lon_acc_interior)),
        'all_vehicle_lon_acc_p50': _percentile(np.abs(s.vehicle_lon_acc), 50),
        'all_vehicle_lon_acc_p90': _percentile(np.abs(s.vehicle_lon_acc), 90),
        'all_vehicle_cruising_fraction': _ratio((np.abs(s.vehicle_lon_acc) < CRUISING_ACCELERATION).sum(),
                                                len(s.vehicle_lon_acc)),
        'track_start_speed_ratio_p50': _percentile(s.start_speed_ratio, 50),
        'speed_p50': _percentile(s.speed, 50),
        'speed_p90': _percentile(s.speed, 90),
        'yaw_rate_p99': _percentile(np.abs(s.yaw_rate), 99),
        'focal_cv_fde6_mean': _mean(s.focal_cv_fde6),
        'focal_cv_fde6_p50': _percentile(s.focal_cv_fde6, 50),
        'focal_cv_fde6_reported_velocity_mean': _mean(s.focal_cv_fde6_reported),
        'other_vehicle_cv_fde6_mean': _mean(s.other_cv_fde6),
        'focal_future_distinct_fraction': distinct_shape_fraction(s.focal_future),
        'focal_speed_change_p10': _percentile(s.focal_speed_change, 10),
        'focal_speed_change_p90': _percentile(s.focal_speed_change, 90),
        'track_length_p50': _percentile(s.track_length, 50),
        'short_track_fraction': _ratio((s.track_length < SHORT_TRACK_STEPS).sum(), len(s.track_length)),
        'full_track_fraction': _ratio(s.track_full.sum(), len(s.track_full)),
        'scored_tracks_per_scene': _mean(s.scored_tracks),
        'agents_per_scene': _mean(s.agents),
        'agents_at_current_per_scene': _mean(s.agents_at_current),
        'static_fraction_at_current': _ratio(np.nansum(s.static_at_current), np.nansum(s.agents_at_current)),
        'static_zero_velocity_fraction': _ratio(s.static_velocity_zero.sum(), len(s.static_velocity_zero)),
        'static_pedestrian_fraction': _ratio((s.track_static & pedestrian).sum(), pedestrian.sum()),
        'lane_changes_per_track': _mean(s.lane_changes),
        'lane_segment_length_p50': _percentile(s.lane_segment_length, 50),
        'polygons_per_scene': _mean(s.polygons),
    }
    return stats


def summarize(folder, max_scenes: Optional[int] = None) -> Dict[str, float]:
    """Statistics of the Argoverse 2-format scenarios under ``folder`` (first ``max_scenes`` by path, all if None).
    Keys and definitions: the package docstring. Unreadable scenarios are named on stderr and left out."""
    return statistics(collect(folder, max_scenes, progress=True))
