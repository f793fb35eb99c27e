"""Where within its lane a road user drives: route positions s [T] -> 2-D trajectories.

Real drivers do not follow the painted centre line: each keeps an own offset (some hug the left line, some the
right) and weaves slowly around it. The offset is a function of the distance driven, so a standing vehicle does
not drift and the heading turns with the weave (d offset / ds).
"""
from __future__ import annotations

from typing import List

import numpy as np

from datasets.synthetic.drivers import Driver
from datasets.synthetic.trajectory import Trajectory


def driver_trajectories(drivers: List[Driver], s_hist: np.ndarray, v_hist: np.ndarray) -> List[Trajectory]:
    """Trajectories of the lane-following agents from their route positions s [N, T] and speeds [N, T]."""
    if not drivers:
        return []
    # the look-up along each route is per driver; everything after it runs on all drivers at once [N, T]
    x, y, h = (np.empty((len(drivers), s_hist.shape[1])) for _ in range(3))
    for i, d in enumerate(drivers):
        route = d.route
        x[i] = np.interp(s_hist[i], route.s, route.points[:, 0])
        y[i] = np.interp(s_hist[i], route.s, route.points[:, 1])
        h[i] = np.interp(s_hist[i], route.s, route.heading)
    # own offset plus the weave (amplitude, wavelength, phase per driver) as a function of the distance driven
    amplitude, wavelength, phase = (np.array(values)[:, None] for values in zip(*(d.wander for d in drivers)))
    k = 2 * np.pi / wavelength
    angle = k * s_hist[:len(drivers)] + phase
    off = np.array([d.lateral_bias for d in drivers])[:, None] + amplitude * np.sin(angle)
    slope = amplitude * k * np.cos(angle)
    cos_h, sin_h = np.cos(h), np.sin(h)
    position = np.stack([x - sin_h * off, y + cos_h * off], 2)
    heading = h + np.arctan(slope)
    speed = v_hist[:len(drivers)]
    velocity = np.stack([speed * np.cos(heading), speed * np.sin(heading)], 2)
    return [Trajectory(object_type=d.object_type, position=position[i], heading=heading[i], velocity=velocity[i],
                       is_av=d.is_av, turns=d.route.turns) for i, d in enumerate(drivers)]
