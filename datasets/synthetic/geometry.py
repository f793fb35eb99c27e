"""Small 2-D polyline helpers for the synthetic scenario generator.

All functions take and return float64 numpy arrays of shape [K, 2] (x, y in metres, any fixed frame).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np


def arc_length(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length [K] of a polyline [K, 2]; starts at 0."""
    seg = np.hypot(np.diff(points[:, 0]), np.diff(points[:, 1]))
    out = np.empty(len(points))
    out[0] = 0.0
    np.cumsum(seg, out=out[1:])
    return out


def resample(points: np.ndarray, num: int) -> np.ndarray:
    """Resample a polyline [K, 2] to `num` points equally spaced in arc length (end points kept)."""
    s = arc_length(points)
    t = np.linspace(0.0, s[-1], num)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=1)


def resample_spacing(points: np.ndarray, spacing: float) -> np.ndarray:
    """Resample to the fewest equally spaced points whose spacing does not exceed `spacing`."""
    length = arc_length(points)[-1]
    return resample(points, max(2, int(math.ceil(length / spacing - 1e-9)) + 1))


def unit_normals(points: np.ndarray) -> np.ndarray:
    """Left unit normals [K, 2] of a polyline (tangent rotated +90 deg), central differences inside."""
    tangent = np.empty_like(points)
    tangent[1:-1] = points[2:] - points[:-2]
    tangent[0] = points[1] - points[0]
    tangent[-1] = points[-1] - points[-2]
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-12)[:, None]
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def offset(points: np.ndarray, lateral) -> np.ndarray:
    """Shift a polyline sideways by `lateral` metres (scalar or [K]); positive is to the left."""
    return points + unit_normals(points) * np.asarray(lateral, dtype=float).reshape(-1, 1)


def headings(points: np.ndarray) -> np.ndarray:
    """Unwrapped tangent angle [K] (radians) of a polyline [K, 2]: the mean of the two adjacent segments' angles."""
    return _headings(points[1:] - points[:-1])


def arc_length_and_headings(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(arc_length(points) [K], headings(points) [K]) from one pass of point differences."""
    d = points[1:] - points[:-1]
    out = np.empty(len(points))
    out[0] = 0.0
    np.cumsum(np.hypot(d[:, 0], d[:, 1]), out=out[1:])
    return out, _headings(d)


def _headings(d: np.ndarray) -> np.ndarray:
    """headings() of a polyline from its point differences [K - 1, 2]."""
    seg = np.arctan2(d[:, 1], d[:, 0])
    if len(seg) > 1:
        step = seg[1:] - seg[:-1]
        step -= 2 * np.pi * np.rint(step / (2 * np.pi))   # np.round to integers is rint
        turned = np.empty(len(seg))
        turned[0] = 0.0
        np.cumsum(step, out=turned[1:])
        seg = seg[0] + turned
    out = np.empty(len(seg) + 1)
    out[0] = seg[0]
    out[-1] = seg[-1]
    out[1:-1] = 0.5 * (seg[1:] + seg[:-1])
    return out


def cubic_bezier(p0, p1, p2, p3, num: int) -> np.ndarray:
    """Points [num, 2] of the cubic Bezier curve with control points p0..p3 (each [2])."""
    t = np.linspace(0.0, 1.0, num)[:, None]
    u = 1.0 - t
    return (u ** 3) * p0 + 3 * (u ** 2) * t * p1 + 3 * u * (t ** 2) * p2 + (t ** 3) * p3


def smooth_connector(start, start_heading: float, end, end_heading: float, spacing: float = 0.5) -> np.ndarray:
    """A smooth curve [K, 2] leaving `start` along `start_heading` and arriving at `end` along `end_heading`.

    Control arms of 0.39 x chord make a 90-degree turn close to a circular arc.
    """
    start = np.asarray(start, dtype=float)
    end = np.asarray(end, dtype=float)
    chord = float(np.hypot(*(end - start)))
    arm = 0.39 * chord
    p1 = start + arm * np.array([math.cos(start_heading), math.sin(start_heading)])
    p2 = end - arm * np.array([math.cos(end_heading), math.sin(end_heading)])
    # the control polygon bounds the curve length, so this keeps the point spacing below `spacing`
    polygon = arm * 2 + float(np.hypot(*(p2 - p1)))
    return cubic_bezier(start, p1, p2, end, max(4, int(math.ceil(polygon / spacing)) + 1))


def smooth_connectors(starts: np.ndarray, start_headings, ends: np.ndarray, end_headings,
                      spacing: float = 0.5) -> List[np.ndarray]:
    """`smooth_connector` for n curves at once (the same points): starts, ends [n, 2], headings [n] -> n curves."""
    starts = np.asarray(starts, dtype=float)
    ends = np.asarray(ends, dtype=float)
    chord = np.hypot(ends[:, 0] - starts[:, 0], ends[:, 1] - starts[:, 1])
    arm = (0.39 * chord)[:, None]
    # math's cos/sin, as the single-curve version uses
    p1 = starts + arm * np.array([[math.cos(h), math.sin(h)] for h in start_headings])
    p2 = ends - arm * np.array([[math.cos(h), math.sin(h)] for h in end_headings])
    polygon = arm[:, 0] * 2 + np.hypot(p2[:, 0] - p1[:, 0], p2[:, 1] - p1[:, 1])
    counts = np.array([max(4, int(math.ceil(length / spacing)) + 1) for length in polygon.tolist()])
    # t: np.linspace(0, 1, count) per curve, laid end to end (index * (1 / (count - 1)), the last one exactly 1)
    offsets = np.cumsum(counts) - counts
    within = np.arange(counts.sum()) - np.repeat(offsets, counts)
    t = (within * np.repeat(1.0 / (counts - 1), counts))[:, None]
    t[offsets + counts - 1] = 1.0
    u = 1.0 - t
    owner = np.repeat(np.arange(len(counts)), counts)
    points = ((u ** 3) * starts[owner] + 3 * (u ** 2) * t * p1[owner] + 3 * u * (t ** 2) * p2[owner]
              + (t ** 3) * ends[owner])
    return [points[a:a + c] for a, c in zip(offsets.tolist(), counts.tolist())]


def rotation(theta: float) -> np.ndarray:
    """2x2 rotation matrix by `theta` radians (counter-clockwise)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def line_intersection(p, u, q, v):
    """Parameters (t, r) with p + t*u == q + r*v for 2-D lines, or None when (nearly) parallel."""
    det = u[0] * (-v[1]) - u[1] * (-v[0])
    if abs(det) < 1e-6:
        return None
    rhs = q - p
    t = (rhs[0] * (-v[1]) - rhs[1] * (-v[0])) / det
    r = (u[0] * rhs[1] - u[1] * rhs[0]) / det
    return t, r


# ----------------------------------------------------------------------------------------------------------
# batched versions: many polylines at once (one numpy pass instead of one per polyline)
# ----------------------------------------------------------------------------------------------------------

def batch_arc(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Arc length [M] of concatenated polylines (each restarting at 0); counts [n] are their point counts."""
    seg = np.hypot(np.diff(points[:, 0]), np.diff(points[:, 1]))
    starts = np.cumsum(counts) - counts
    seg[starts[1:] - 1] = 0.0          # the step between two polylines
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    return arc - np.repeat(arc[starts], counts)


def batch_resample(polylines, spacing):
    """Resample each polyline to ceil(L / spacing) + 1 equally spaced points (end points kept).

    spacing: one value for all polylines, or one per polyline.

    Returns (points [M, 2], counts [n]). Uses one interpolation over all polylines laid end to end along a
    global coordinate with a 1 m gap between neighbours, so no target falls between two of them.
    """
    counts_in = np.array([len(p) for p in polylines])
    pts = np.concatenate(polylines)
    seg = np.hypot(np.diff(pts[:, 0]), np.diff(pts[:, 1]))
    starts = np.cumsum(counts_in) - counts_in
    ends = starts + counts_in - 1
    seg[starts[1:] - 1] = 1.0
    glob = np.concatenate([[0.0], np.cumsum(seg)])
    g0, g1 = glob[starts], glob[ends]
    length = g1 - g0
    counts = np.maximum(2, np.ceil(length / np.asarray(spacing, dtype=float) - 1e-9).astype(int) + 1)
    owner = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    target = g0[owner] + length[owner] * (within / (counts[owner] - 1))
    out = np.stack([np.interp(target, glob, pts[:, 0]), np.interp(target, glob, pts[:, 1])], axis=1)
    return out, counts


def batch_normals(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Left unit normals [M, 2] of concatenated polylines (central differences inside each, one-sided at ends)."""
    starts = np.cumsum(counts) - counts
    ends = starts + counts - 1
    tangent = np.empty_like(points)
    tangent[1:-1] = points[2:] - points[:-2]
    tangent[starts] = points[starts + 1] - points[starts]
    tangent[ends] = points[ends] - points[ends - 1]
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-12)[:, None]
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def batch_headings(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-polyline unwrapped tangent angles [M], as `headings` would give for each polyline."""
    starts = np.cumsum(counts) - counts
    ends = starts + counts - 1
    d = np.diff(points, axis=0)
    seg = np.arctan2(d[:, 1], d[:, 0])            # seg[i]: from point i to i+1 (invalid at polyline ends)
    step = np.diff(seg)
    step -= 2 * np.pi * np.round(step / (2 * np.pi))
    joints = ends[:-1]                             # seg[joints] runs from one polyline into the next
    step[joints[joints - 1 >= 0] - 1] = 0.0
    step[joints[joints < len(step)]] = 0.0
    unwrapped = np.concatenate([[seg[0]], seg[0] + np.cumsum(step)])
    # restart each polyline at its own first segment angle
    first_seg = seg[np.minimum(starts, len(seg) - 1)]
    shift = np.repeat(first_seg - unwrapped[np.minimum(starts, len(seg) - 1)], counts)
    seg_u = np.append(unwrapped, unwrapped[-1]) + shift   # [M]; entries at polyline ends are placeholders
    out = np.empty(len(points))
    out[1:] = 0.5 * (seg_u[1:] + seg_u[:-1])
    out[starts] = seg_u[starts]
    out[ends] = seg_u[ends - 1]
    return out
