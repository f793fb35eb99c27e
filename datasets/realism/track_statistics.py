"""Per-track quantities on the 10 Hz step grid: speed, longitudinal acceleration, yaw rate, stillness, offset from the
lane centreline, lane changes, constant-velocity error. Arrays are [N, T] (tracks x steps) with NaN where a step, or a
step a difference needs, is unobserved. City frame, metres, seconds.
"""
from typing import Tuple

import numpy as np

from datasets.realism.reading import SAMPLING_RATE_HZ, LaneMap

STATIC_DISPLACEMENT_M = 1.0      # a track that never gets this far from where it was first seen is static
MOVING_DISPLACEMENT_M = 5.0      # a vehicle that gets this far is moving; between the two: parked with box jitter
ACCELERATION_WINDOW_STEPS = 10   # longitudinal acceleration: speed difference over 1 s
MIN_YAW_RATE_SPEED = 1.0         # m/s; the heading of a near-still box is noise
LANE_ALIGNMENT_COS = np.cos(np.deg2rad(45.0))  # lanes within 45 deg of the heading can be the one it is on
MAX_LANE_OFFSET_M = 5.0          # farther than this from every aligned centreline: off the mapped lanes
MIN_LANE_RUN_STEPS = 5           # a lane must be held this long to count in a lane change (no flicker at boundaries)
VEHICLE_TYPES = ('vehicle', 'bus')
EDGE_STEPS = 5                   # steps at each end of a track where Argoverse 2 speeds ramp (smoothing edge effect)


def speeds(positions: np.ndarray) -> np.ndarray:
    """[N, T, 2] -> [N, T] m/s from the backward position difference (step 0 is NaN)."""
    out = np.full(positions.shape[:2], np.nan)
    out[:, 1:] = np.linalg.norm(np.diff(positions, axis=1), axis=-1) * SAMPLING_RATE_HZ
    return out


def longitudinal_accelerations(speed: np.ndarray, window: int = ACCELERATION_WINDOW_STEPS) -> np.ndarray:
    """[N, T] speeds -> [N, T] m/s^2: (v[t] - v[t - window]) over window / 10 s (the first ``window`` steps NaN)."""
    out = np.full(speed.shape, np.nan)
    out[:, window:] = (speed[:, window:] - speed[:, :-window]) * SAMPLING_RATE_HZ / window
    return out


def trim_track_ends(positions: np.ndarray, steps: int = EDGE_STEPS) -> np.ndarray:
    """[N, T, 2] -> a copy with the first and last ``steps`` observed steps of each track set to NaN (tracks assumed
    contiguous between their first and last observation; gaps stay gaps)."""
    observed = ~np.isnan(positions[..., 0])
    index = np.arange(positions.shape[1])[None]
    first = np.argmax(observed, axis=1)[:, None]
    last = positions.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)[:, None]
    out = positions.copy()
    out[(index < first + steps) | (index > last - steps)] = np.nan
    return out


def start_speed_ratios(speed: np.ndarray, later: int = 10) -> np.ndarray:
    """[N, T] speeds -> [N]: speed at a track's first step with a speed over the speed ``later`` steps after it
    (NaN where that step is unobserved or the later speed is below 1 m/s). Near 1 for an unbiased tracker."""
    has = ~np.isnan(speed)
    first = np.argmax(has, axis=1)
    rows = np.arange(len(speed))
    ok = has.any(axis=1) & (first + later < speed.shape[1])
    ratio = np.full(len(speed), np.nan)
    start, end = speed[rows[ok], first[ok]], speed[rows[ok], first[ok] + later]
    ratio[ok] = np.where(end >= 1.0, start / np.where(end >= 1.0, end, 1.0), np.nan)
    return ratio


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def yaw_rates(headings: np.ndarray) -> np.ndarray:
    """[N, T] rad -> [N, T] deg/s from the backward heading difference, wrapped to (-180, 180] deg per step."""
    out = np.full(headings.shape, np.nan)
    out[:, 1:] = np.rad2deg(wrap_angle(np.diff(headings, axis=1))) * SAMPLING_RATE_HZ
    return out


def displacements(positions: np.ndarray) -> np.ndarray:
    """[N, T, 2] -> [N]: largest distance of an observed position from the track's first observed position (m)."""
    first = np.argmax(~np.isnan(positions[..., 0]), axis=1)
    start = positions[np.arange(len(positions)), first]
    return np.nanmax(np.linalg.norm(positions - start[:, None], axis=-1), axis=1)


def is_static(positions: np.ndarray) -> np.ndarray:
    """[N, T, 2] -> [N] bool: the track moves less than ``STATIC_DISPLACEMENT_M`` over its whole life."""
    return displacements(positions) < STATIC_DISPLACEMENT_M


def is_moving_vehicle(positions: np.ndarray, object_types: np.ndarray) -> np.ndarray:
    """[N, T, 2], [N] -> [N] bool: a vehicle or bus that gets at least ``MOVING_DISPLACEMENT_M`` away from where it
    was first seen (parked cars whose boxes jitter by a metre or two are neither static nor moving)."""
    return np.isin(object_types, VEHICLE_TYPES) & (displacements(positions) >= MOVING_DISPLACEMENT_M)


def centreline_offsets(points: np.ndarray, headings: np.ndarray, lane_map: LaneMap) -> Tuple[np.ndarray, np.ndarray]:
    """Signed lateral distance of each position to the nearest lane centreline whose direction is within 45 deg of
    the heading (positive: left of the lane's direction), and that lane's row in ``lane_map.lane_ids``.

    points [M, 2], headings [M] -> offsets [M] (m), lanes [M] int; NaN / -1 for unobserved positions and for
    positions farther than ``MAX_LANE_OFFSET_M`` from every aligned centreline."""
    offsets = np.full(len(points), np.nan)
    lanes = np.full(len(points), -1, dtype=np.int64)
    valid = ~np.isnan(points[:, 0]) & ~np.isnan(headings)
    if not valid.any():
        return offsets, lanes
    p, h = points[valid], headings[valid]
    # Only pieces near this group of points (one track) take part: a box test before the dense one.
    low, high = p.min(axis=0) - MAX_LANE_OFFSET_M, p.max(axis=0) + MAX_LANE_OFFSET_M
    a, b = lane_map.piece_start, lane_map.piece_end
    near = np.flatnonzero(np.all((np.minimum(a, b) <= high) & (np.maximum(a, b) >= low), axis=1))
    if len(near) == 0:
        return offsets, lanes
    a, b = a[near], b[near]
    direction = b - a                                                         # [P, 2]
    piece_length = np.maximum(np.linalg.norm(direction, axis=-1), 1e-9)
    unit = direction / piece_length[:, None]
    rel = p[:, None, :] - a[None]                                             # [M, P, 2]
    along = np.clip(np.einsum('mpk,pk->mp', rel, unit), 0.0, piece_length[None])
    distance = np.linalg.norm(rel - along[..., None] * unit[None], axis=-1)   # [M, P]
    heading_unit = np.stack([np.cos(h), np.sin(h)], axis=-1)
    aligned = heading_unit @ unit.T >= LANE_ALIGNMENT_COS                     # [M, P]
    distance = np.where(aligned, distance, np.inf)
    best = np.argmin(distance, axis=1)
    rows = np.arange(len(p))
    close = distance[rows, best] <= MAX_LANE_OFFSET_M
    side = np.sign(unit[best, 0] * rel[rows, best, 1] - unit[best, 1] * rel[rows, best, 0])
    result_offsets = np.where(close, side * distance[rows, best], np.nan)
    result_lanes = np.where(close, lane_map.piece_lane[near[best]], -1)
    offsets[valid], lanes[valid] = result_offsets, result_lanes
    return offsets, lanes


def is_lateral_move(before: int, after: int, lane_map: LaneMap) -> bool:
    """Whether going from lane ``before`` to lane ``after`` (ids) crosses a lane line: ``after`` is a left or right
    neighbour of ``before``, or - for a change that crosses where lane segments end - a neighbour of a lane that
    continues ``before``, or a lane that continues one of its neighbours."""
    neighbours, successors = lane_map.neighbours, lane_map.successors
    if after in neighbours.get(before, ()):
        return True
    return (any(after in neighbours.get(s, ()) for s in successors.get(before, ()))
            or any(after in successors.get(n, ()) for n in neighbours.get(before, ())))


def lane_changes(lane_rows: np.ndarray, lane_map: LaneMap) -> int:
    """Number of moves of one track to a left or right neighbour lane (``is_lateral_move``). lane_rows [T]: matched
    lane row per step (-1: none). Runs shorter than ``MIN_LANE_RUN_STEPS`` are dropped first so that flicker near a
    lane boundary does not count."""
    kept = lane_rows[lane_rows >= 0]
    if len(kept) == 0:
        return 0
    change = np.flatnonzero(np.diff(kept)) + 1
    bounds = np.concatenate([[0], change, [len(kept)]])
    runs = [kept[s] for s, e in zip(bounds[:-1], bounds[1:]) if e - s >= MIN_LANE_RUN_STEPS]
    count = 0
    for before, after in zip(runs[:-1], runs[1:]):
        if is_lateral_move(int(lane_map.lane_ids[before]), int(lane_map.lane_ids[after]), lane_map):
            count += 1
    return count


def constant_velocity_errors(positions: np.ndarray, velocities: np.ndarray, current: int, target: int
                             ) -> Tuple[np.ndarray, np.ndarray]:
    """Distance at step ``target`` between the truth and a constant-velocity extrapolation from step ``current``.

    positions, velocities [N, T, 2] -> (error with the velocity of the last two observed positions
    ((p[current] - p[current - 1]) x 10 Hz), error with the tracker's reported velocity at ``current``), each [N] m;
    NaN where a needed step is unobserved."""
    horizon = (target - current) / SAMPLING_RATE_HZ
    from_positions = (positions[:, current] - positions[:, current - 1]) * SAMPLING_RATE_HZ
    truth = positions[:, target]
    by_positions = np.linalg.norm(positions[:, current] + from_positions * horizon - truth, axis=-1)
    by_reported = np.linalg.norm(positions[:, current] + velocities[:, current] * horizon - truth, axis=-1)
    return by_positions, by_reported


def to_agent_frame(points: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    """[K, 2] city-frame points -> the frame centred at ``origin`` with x along ``heading``."""
    cos, sin = np.cos(heading), np.sin(heading)
    rel = points - origin
    return np.stack([rel[:, 0] * cos + rel[:, 1] * sin, -rel[:, 0] * sin + rel[:, 1] * cos], axis=-1)
