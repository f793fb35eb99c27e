"""Realism report: statistics that say how much a folder of Argoverse 2-format scenarios moves like real traffic.

``summarize(folder, max_scenes=None) -> Dict[str, float]``; ``collect(folder)`` gives the raw samples behind it
(:class:`RealismSamples`); ``python -m datasets.realism --data DIR [--reference DIR] --out DIR`` writes the report.

Conventions: 10 Hz steps; step 49 is the last history step, step 109 the last future step (6 s later); a Waymo
``.tfrecord`` (file or folder of them) is read too, with its own current step and no focal agent, categories or
Argoverse 2 lane segments (those keys are NaN). Speed at a step is the distance to the previous step's position x
10 Hz. A track is *static* when it never gets 1 m away from where it was first seen; *moving vehicles* are vehicle
or bus tracks that get at least 5 m away (parked cars whose boxes jitter by a metre or two are neither). Unless said
otherwise a statistic is over moving-vehicle observations; pXX is the XX-th percentile.

Keys (one line each):
- num_scenes / num_skipped: scenarios measured / scenarios that could not be read.
- centreline_offset_p50, _p90: |lateral distance| (m) from a position to the nearest centreline piece of a lane whose
  direction is within 45 deg of the reported heading (the lane it is on or nearest); only positions within 5 m.
- off_lane_fraction: share of moving-vehicle observations with no such centreline within 5 m.
- driver_offset_spread: std over tracks (>= 10 matched positions) of each track's mean signed offset (m, + = left).
- driver_offset_spread_robust: 1.4826 x median absolute deviation of the same means (blind to a few mismatched tracks).
- lon_acc_p50, _p90: |speed(t) - speed(t - 10 steps)| / 1 s (m/s^2).
- cruising_fraction: share of those steps with |longitudinal acceleration| < 0.1 m/s^2.
- lon_acc_interior_p50, _p90, cruising_interior_fraction: the same without the first and last 5 steps of each track,
  where Argoverse 2 position-derived speeds ramp (an edge effect of its track smoothing, not driving).
- all_vehicle_lon_acc_p50, _p90, all_vehicle_cruising_fraction: lon_acc / cruising over every vehicle or bus track,
  parked ones included (their near-zero speed differences pull the median down and the cruising share up).
- track_start_speed_ratio_p50: speed at a track's first step over its speed 10 steps later (later speed >= 1 m/s).
- speed_p50, _p90: speed (m/s).
- yaw_rate_p99: |wrapped heading difference between consecutive steps| x 10 Hz (deg/s), steps at speed >= 1 m/s.
- focal_cv_fde6_mean, _p50: focal agent, distance at step 109 between the truth and a constant-velocity extrapolation
  from step 49 with the velocity of the last two observed positions ((p49 - p48) x 10 Hz); mean / median over scenes.
- focal_cv_fde6_reported_velocity_mean: the same with the tracker's reported velocity at step 49.
- other_vehicle_cv_fde6_mean: the first of these for every other moving vehicle observed at all steps (mean).
- focal_future_distinct_fraction: among the first 100 complete focal futures (focal frame), distinct shapes / futures;
  a future is a new shape unless it stays within 1 m on average of an earlier shape's representative.
- focal_speed_change_p10, _p90: focal speed at step 109 minus at step 49 (m/s), over scenes.
- track_length_p50: observed steps per track (all tracks, all types).
- short_track_fraction: share of tracks observed at fewer than 20 steps.
- full_track_fraction: share of tracks observed at every step of the scenario (110).
- scored_tracks_per_scene: tracks of category SCORED_TRACK per scene (the focal track is FOCAL_TRACK, not counted).
- agents_per_scene: tracks per scene, all types; agents_at_current_per_scene: those observed at step 49.
- static_fraction_at_current: share of the tracks observed at step 49 that are static (all types).
- static_zero_velocity_fraction: among observations of static tracks (all types), share whose reported velocity is
  exactly (0, 0).
- static_pedestrian_fraction: share of pedestrian tracks that are static.
- lane_changes_per_track: moves to a left/right neighbour lane per moving-vehicle track, also across the ends of
  lane segments (lanes held >= 5 steps).
- lane_segment_length_p50: centreline length (m) of the map's lane segments (av2 midpoint ladder, all lane types).
- polygons_per_scene: lane segments + 2 x pedestrian crossings per map (QCNet's polygon count).
"""
from datasets.realism.scene_statistics import RealismSamples, collect
from datasets.realism.summary import statistics, summarize

__all__ = ['RealismSamples', 'collect', 'statistics', 'summarize']
