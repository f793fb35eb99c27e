"""What the AV's tracker reports: simulated objects -> Argoverse 2 tracks.

A tracker sees objects within its sensor range, loses them now and then (more often far away and for small
objects) and starts a new track id when it finds them again, so most tracks are short fragments; a few are
observed over the whole scenario. The focal agent is chosen first, as AV2 does, among agents observed
throughout, and its track is kept whole. Reported states carry tracker noise: smooth position and heading
errors, and a small velocity error also on objects that do not move.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from datasets.synthetic.profiles import SyntheticProfile, weighted_pick
from datasets.synthetic.trajectory import NUM_HISTORICAL_STEPS, NUM_STEPS, Trajectory

MIN_TRACK_STEPS = 10       # AV2 drops shorter tracks
SCORED_RADIUS = 50.0       # movers this close to the AV at the last history step may be scored ...
SCORED_PER_SCENE = 1.6     # ... this many on average (Poisson); their tracks are kept whole
DYNAMIC_TYPES = ('vehicle', 'bus', 'motorcyclist', 'cyclist', 'pedestrian')
FOCAL_TYPE_WEIGHT = {'vehicle': 1.0, 'bus': 0.3, 'motorcyclist': 0.3, 'cyclist': 0.3, 'pedestrian': 0.1}
BREAK_SCALE = {'pedestrian': 2.0, 'cyclist': 1.5, 'vehicle': 1.0, 'bus': 0.6, 'motorcyclist': 1.2}

PARKED_JITTER = 0.025      # m, frame-to-frame jitter of a parked vehicle's reported position
Run = Tuple[int, int, int]   # (object index, first step, last step) of one track


def _candidates(objects: List[Trajectory], sensor: float) -> List[int]:
    """Road users observed throughout (inside the sensor range all the time) that are moving at the current step
    and moved during the history. Nothing about their future enters the choice."""
    road_users = [i for i in range(1, len(objects))
                  if objects[i].dynamic and objects[i].object_type in DYNAMIC_TYPES]
    if not road_users:
        return []
    av = objects[0].position
    pos = np.stack([objects[i].position for i in road_users])                  # [n, T, 2]
    in_range = np.hypot(pos[..., 0] - av[:, 0], pos[..., 1] - av[:, 1]).max(1) <= sensor
    current = NUM_HISTORICAL_STEPS - 1
    history = np.hypot(pos[:, current, 0] - pos[:, 0, 0], pos[:, current, 1] - pos[:, 0, 1])
    velocity = np.stack([objects[i].velocity[current] for i in road_users])    # [n, 2]
    moving = np.hypot(velocity[:, 0], velocity[:, 1]) >= 1.0
    min_history = np.array([2.0 if objects[i].object_type == 'pedestrian' else 5.0 for i in road_users])
    return [road_users[k] for k in (in_range & moving & (history >= min_history)).nonzero()[0].tolist()]


def choose_focal(rng, objects: List[Trajectory], sensor: float) -> Optional[Tuple[int, List[int]]]:
    """(focal object, scored objects): a road user near the AV that moves and stays in range, and a few others
    like it; None if there is none."""
    candidates = _candidates(objects, sensor)
    if not candidates:
        return None
    av_now = objects[0].position[NUM_HISTORICAL_STEPS - 1]
    weights = []
    for i in candidates:
        obj = objects[i]
        dist = float(np.hypot(*(obj.position[NUM_HISTORICAL_STEPS - 1] - av_now)))
        # any moving road user near the AV, mostly vehicles; where it is headed (a stop line, a turn) plays no part
        weights.append(FOCAL_TYPE_WEIGHT[obj.object_type] * math.exp(-dist / 30.0))
    focal = candidates[weighted_pick(rng, weights)]
    near = [i for i in candidates if i != focal
            and np.hypot(*(objects[i].position[NUM_HISTORICAL_STEPS - 1] - av_now)) < SCORED_RADIUS]
    count = min(len(near), int(rng.poisson(SCORED_PER_SCENE)))
    scored = sorted(rng.choice(len(near), size=count, replace=False).tolist()) if count else []
    return focal, [near[k] for k in scored]


def tracked_runs(rng, objects: List[Trajectory], prof: SyntheticProfile, sensor: float, whole: List[int]) -> List[Run]:
    """Observed stretches of every object; the AV (index 0, always first) and the objects `whole` are seen throughout."""
    av = objects[0].position
    others = [i for i in range(1, len(objects)) if i not in whole]
    runs = [(0, 0, NUM_STEPS - 1)] + [(i, 0, NUM_STEPS - 1) for i in whole]
    if not others:
        return runs
    pos = np.stack([objects[i].position for i in others])                  # [n, T, 2]
    dist = np.hypot(pos[..., 0] - av[:, 0], pos[..., 1] - av[:, 1])        # [n, T]
    reach = sensor * rng.uniform(0.85, 1.1, size=(len(others), 1))
    scale = np.array([BREAK_SCALE.get(objects[i].object_type, 0.8) * (1.0 if objects[i].dynamic else 0.5)
                      for i in others])
    p_break = prof.track_break_rate * scale[:, None] * (0.4 + 2.0 * (dist / reach) ** 2)
    seen = _tracker_state(rng, p_break, 1.0 / prof.track_gap_steps) & (dist < reach)
    edges = np.diff(np.concatenate([np.zeros((len(others), 1), np.int8), seen.astype(np.int8),
                                    np.zeros((len(others), 1), np.int8)], axis=1), axis=1)
    rows_on, first = np.nonzero(edges == 1)
    _, end = np.nonzero(edges == -1)       # row-major order pairs every start with its end
    keep = end - first >= MIN_TRACK_STEPS
    runs += [(others[r], f, e - 1) for r, f, e in zip(rows_on[keep].tolist(), first[keep].tolist(),
                                                      end[keep].tolist())]
    return runs


def _tracker_state(rng, p_break: np.ndarray, p_recover: float) -> np.ndarray:
    """seen [n, T]: a two-state chain per object (tracked / lost) with per-step loss probabilities p_break."""
    n, steps = p_break.shape
    u = rng.random((n, steps))
    initial = u[:, 0] < 0.85
    stay = u >= p_break            # the next state when tracked now
    regain = u < p_recover         # the next state when lost now
    # Without a loop over steps: where both next states agree the state is set whatever it was; where only
    # `stay` holds it is kept; where only `regain` holds it flips. So the state is the last set value (or the
    # initial one) flipped once per flip since then.
    steps_idx = np.arange(steps)
    last_set = np.maximum.accumulate(np.where(stay == regain, steps_idx, -1), axis=1)
    set_value = np.where(last_set >= 0, np.take_along_axis(stay, np.maximum(last_set, 0), axis=1), initial[:, None])
    flips = np.cumsum(~stay & regain, axis=1)
    flips_before = np.where(last_set >= 0, np.take_along_axis(flips, np.maximum(last_set, 0), axis=1), 0)
    return set_value ^ ((flips - flips_before) % 2 == 1)


def choose_categories(runs: List[Run], focal: int, scored: List[int]) -> List[int]:
    """AV2 category per run: 0 fragment, 1 unscored (whole but not scored), 2 scored, 3 focal."""
    categories = []
    for i, first, last in runs:
        if first != 0 or last != NUM_STEPS - 1:
            categories.append(0)
        else:
            categories.append(3 if i == focal else 2 if i in scored else 1)
    return categories


def ar1_noise(rng, shape, sigma: np.ndarray, rho: float = 0.9) -> np.ndarray:
    """Smooth tracker noise [n, T, ...]: AR(1) along T with stationary std `sigma` (per track, [n]).

    x_0 = w_0, x_t = rho x_{t-1} + sqrt(1 - rho^2) w_t, written as x_t = rho^t sum_{s<=t} g_s w_s rho^-s (one
    cumulative sum; rho^-T stays far from overflow for the 110 steps used here).
    """
    steps = shape[1]
    t = np.arange(steps, dtype=float).reshape((1, steps) + (1,) * (len(shape) - 2))
    gain = np.full(t.shape, math.sqrt(1 - rho * rho))
    gain[:, 0] = 1.0
    white = rng.standard_normal(shape)
    out = np.cumsum(white * gain * rho ** -t, axis=1) * rho ** t
    return out * sigma.reshape((-1,) + (1,) * (len(shape) - 1))


def tracker_noise(rng, objects: List[Trajectory], runs: List[Run]):
    """(position noise [R, T, 2], heading noise [R, T], velocity noise [R, T, 2]) per run, scene frame.

    Objects that do not move are reported with a tiny velocity whose size varies over orders of magnitude
    from track to track (a tracker's estimate settling near zero), never exactly zero."""
    n_runs = len(runs)
    objs = [objects[i] for i, _, _ in runs]
    sigma_pos = np.array([0.005 if o.is_av else 0.05 if o.object_type == 'pedestrian'
                          else 0.02 for o in objs])
    sigma_heading = np.array([0.002 if o.is_av else 0.04 if o.object_type == 'pedestrian' else 0.01 for o in objs])
    dynamic = np.array([o.dynamic for o in objs])
    sigma_vel = np.where(dynamic, sigma_pos * 1.5, 10.0 ** rng.uniform(-5.0, -1.3, size=n_runs))
    # tracks are smoothed: the position error drifts slowly rather than jumping from step to step
    pos_noise = ar1_noise(rng, (n_runs, NUM_STEPS, 2), sigma_pos, rho=0.99)
    # a parked vehicle's box centre jitters from frame to frame as its visible outline changes
    parked = ~dynamic & np.array([o.object_type == 'vehicle' for o in objs])
    if parked.any():
        pos_noise[parked] += ar1_noise(rng, (int(parked.sum()), NUM_STEPS, 2), np.full(int(parked.sum()),
                                                                                        PARKED_JITTER), rho=0.7)
    heading_noise = ar1_noise(rng, (n_runs, NUM_STEPS), sigma_heading)
    vel_noise = ar1_noise(rng, (n_runs, NUM_STEPS, 2), sigma_vel, rho=0.5)
    return pos_noise, heading_noise, vel_noise
