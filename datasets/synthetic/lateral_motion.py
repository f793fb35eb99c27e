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


def lateral_offset(driver: Driver, s: np.ndarray):
    """(offset [T] in metres, left positive; its slope d offset / ds [T]) along the route positions s [T]."""
    amplitude, wavelength, phase = driver.wander
    k = 2 * np.pi / wavelength
    angle = k * s + phase
    return driver.lateral_bias + amplitude * np.sin(angle), amplitude * k * np.cos(angle)


def driver_trajectories(drivers: List[Driver], s_hist: np.ndarray, v_hist: np.ndarray) -> List[Trajectory]:
    """Trajectories of the lane-following agents from their route positions s [N, T] and speeds [N, T]."""
    out = []
    for i, d in enumerate(drivers):
        r = d.route
        s = s_hist[i]
        x = np.interp(s, r.s, r.points[:, 0])
        y = np.interp(s, r.s, r.points[:, 1])
        h = np.interp(s, r.s, r.heading)
        off, slope = lateral_offset(d, s)
        cos_h, sin_h = np.cos(h), np.sin(h)
        position = np.stack([x - sin_h * off, y + cos_h * off], 1)
        heading = h + np.arctan(slope)
        speed = v_hist[i]
        out.append(Trajectory(object_type=d.object_type, position=position, heading=heading,
                              velocity=np.stack([speed * np.cos(heading), speed * np.sin(heading)], 1),
                              is_av=d.is_av, turns=r.turns))
    return out
