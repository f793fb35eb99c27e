"""Matplotlib drawings of one scenario: map, agents, ground truth, predicted modes and pre-training views.

Everything drawn is in the scenario's world (map) frame, in metres. Inputs are one QCNet ``HeteroData`` sample
(see the shared data contract) and, for predictions, :class:`Prediction` objects already in the world frame
(:func:`prediction_from_output` converts the model's agent-frame output the way the official ``test_step`` does).

Only the object-oriented matplotlib API with the Agg canvas is used (no ``pyplot``), so importing this module never
changes the global backend and figures are freed as soon as they go out of scope. PNGs are written atomically.
"""
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Polygon, Rectangle
import matplotlib.transforms as mtransforms

# Vocabularies (official QCNet indices) come from the scenario record, the single place that defines them.
from utils.atomic_io import atomic_write
from datasets.scenario import AGENT_TYPES, FOCAL_CATEGORY, POINT_SIDES, POINT_TYPES, POLYGON_TYPES

# Colours close to the SmartPretrain paper's figures: grey road, white paint, orange focal agent, blue others,
# pink ground truth, blue predicted modes.
ROAD_COLOR = '#c4c4c4'
ROAD_EDGE_COLOR = '#3a3a3a'
CROSSWALK_COLOR = '#ececec'
CROSSWALK_HATCH_COLOR = '#a8a8a8'
WHITE_PAINT_COLOR = '#ffffff'
YELLOW_PAINT_COLOR = '#f2d24b'
FOCAL_COLOR = '#f28e2b'
AV_COLOR = '#59a14f'
AGENT_COLOR = '#1a9be6'
STATIC_COLOR = '#8c8c8c'
GT_COLOR = '#f05ad2'
PRED_COLOR = '#0a14d9'
VIEW_COLORS = ('#1f6fd1', '#e0402a', '#2ca02c', '#9467bd')
OUTSIDE_VIEW_COLOR = '#9e9e9e'

# Footprints (length, width) in metres drawn at the last history step, per agent type.
_AGENT_FOOTPRINT = {
    'vehicle': (4.6, 2.0), 'bus': (11.0, 2.8), 'motorcyclist': (2.2, 0.9), 'cyclist': (1.9, 0.7),
    'riderless_bicycle': (1.9, 0.7), 'static': (1.2, 1.2), 'background': (1.2, 1.2), 'construction': (1.0, 1.0),
    'unknown': (1.0, 1.0),
}
_PEDESTRIAN_RADIUS = 0.5

ArrayLike = Union[np.ndarray, Any]  # numpy array or torch tensor


def _np(x: ArrayLike) -> np.ndarray:
    """Converts a torch tensor (any device, any grad state) or array-like to a numpy array."""
    if hasattr(x, 'detach'):
        x = x.detach().cpu()
        if str(x.dtype) == 'torch.bfloat16':
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _get(store: Any, key: str, what: str) -> Any:
    """Reads ``store[key]`` and raises a one-line error naming the missing field instead of a KeyError deep inside."""
    try:
        return store[key]
    except (KeyError, AttributeError) as error:
        raise KeyError(f'scenario sample has no {what}.{key} (needed for plotting)') from error


def _scenario_name(data: Any) -> str:
    try:
        return str(data['scenario_id'])
    except (KeyError, AttributeError):
        return '<unknown scenario>'


# ----------------------------------------------------------------------------------------------------------------------
# Geometry helpers
# ----------------------------------------------------------------------------------------------------------------------

def agent_frame_to_world(trajectories: ArrayLike, origin: ArrayLike, theta: float) -> np.ndarray:
    """Rotates agent-frame points by ``theta`` and translates them by ``origin`` (as the official ``test_step``).

    Args:
        trajectories: [..., 2] x/y in the agent's frame at the last history step.
        origin: [>=2] the agent's world position at the last history step (only x, y are used).
        theta: the agent's world heading (rad) at the last history step.
    Returns:
        [..., 2] float64 world-frame x/y.
    """
    local = _np(trajectories).astype(np.float64)[..., :2]
    origin_xy = _np(origin).astype(np.float64).reshape(-1)[:2]
    cos, sin = math.cos(float(theta)), math.sin(float(theta))
    rotation = np.array([[cos, sin], [-sin, cos]])  # row-vector convention: p_world = p_local @ R + origin
    return local @ rotation + origin_xy


def focal_agent_index(data: Any) -> int:
    """Index of the focal agent (category 3, the one the benchmark scores); raises if the sample has none."""
    category = _np(_get(data['agent'], 'category', 'agent'))
    focal = np.flatnonzero(category == FOCAL_CATEGORY)
    if focal.size == 0:
        raise ValueError(f'scenario {_scenario_name(data)}: no agent has category {FOCAL_CATEGORY} (focal track)')
    return int(focal[0])


@dataclass
class MapPolygon:
    """One map polygon as drawable polylines, world frame. Boundaries are [n, 2]; ``None`` when absent."""
    polygon_type: str
    left: Optional[np.ndarray]
    right: Optional[np.ndarray]
    center: Optional[np.ndarray]
    left_mark: str
    right_mark: str
    center_mark: str = 'CENTERLINE'

    def bounds(self) -> Tuple[float, float, float, float]:
        points = np.concatenate([p for p in (self.left, self.right, self.center) if p is not None], axis=0)
        return points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()


def map_polygons(data: Any) -> List[MapPolygon]:
    """Rebuilds per-polygon boundary polylines from the map points of a sample.

    Each map point is the start of one vector (position, orientation, magnitude); the end of a polyline is
    recovered from its last vector so the drawn lines close exactly where the raw map's did.
    """
    polygon = data['map_polygon']
    point = data['map_point']
    num_polygons = int(_get(polygon, 'num_nodes', 'map_polygon'))
    polygon_type = _np(_get(polygon, 'type', 'map_polygon')).astype(np.int64)
    position = _np(_get(point, 'position', 'map_point'))[:, :2].astype(np.float64)
    orientation = _np(_get(point, 'orientation', 'map_point')).astype(np.float64)
    magnitude = _np(_get(point, 'magnitude', 'map_point')).astype(np.float64)
    point_type = _np(_get(point, 'type', 'map_point')).astype(np.int64)
    side = _np(_get(point, 'side', 'map_point')).astype(np.int64)
    edge_index = _np(_get(data['map_point', 'to', 'map_polygon'], 'edge_index', "('map_point','to','map_polygon')"))
    if position.shape[0] == 0 or num_polygons == 0:
        return []
    if edge_index.shape[1] != position.shape[0]:
        raise ValueError(f'scenario {_scenario_name(data)}: map_point->map_polygon edge_index has '
                         f'{edge_index.shape[1]} edges for {position.shape[0]} map points (expected one per point)')
    point_index, polygon_of_point = edge_index[0], edge_index[1]
    # Points of one polygon keep their storage order (left, right, centre vectors in driving direction).
    order = np.lexsort((point_index, polygon_of_point))
    point_index, polygon_of_point = point_index[order], polygon_of_point[order]
    splits = np.flatnonzero(np.diff(polygon_of_point)) + 1
    result = []
    for indices, owners in zip(np.split(point_index, splits), np.split(polygon_of_point, splits)):
        lines: Dict[str, Optional[np.ndarray]] = {}
        marks: Dict[str, str] = {}
        for side_index, side_name in enumerate(POINT_SIDES):
            members = indices[side[indices] == side_index]
            if members.size == 0:
                lines[side_name], marks[side_name] = None, 'NONE'
                continue
            last = members[-1]
            end = position[last] + magnitude[last] * np.array([math.cos(orientation[last]),
                                                               math.sin(orientation[last])])
            lines[side_name] = np.concatenate([position[members], end[None]], axis=0)
            mark_index = int(point_type[members[0]])
            marks[side_name] = POINT_TYPES[mark_index] if mark_index < len(POINT_TYPES) else 'UNKNOWN'
        type_index = int(polygon_type[owners[0]])
        result.append(MapPolygon(polygon_type=POLYGON_TYPES[type_index] if type_index < len(POLYGON_TYPES)
                                 else 'UNKNOWN',
                                 left=lines['LEFT'], right=lines['RIGHT'], center=lines['CENTER'],
                                 left_mark=marks['LEFT'], right_mark=marks['RIGHT'], center_mark=marks['CENTER']))
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Predictions and their errors
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """K predicted modes of one agent, world frame.

    trajectories: [K, F, 2] world x/y of the F future steps; probabilities: [K] (sum to 1); label: e.g. "scratch".
    """
    trajectories: np.ndarray
    probabilities: np.ndarray
    label: str = ''

    def __post_init__(self) -> None:
        self.trajectories = _np(self.trajectories).astype(np.float64)
        self.probabilities = _np(self.probabilities).astype(np.float64).reshape(-1)
        if self.trajectories.ndim != 3 or self.trajectories.shape[-1] != 2:
            raise ValueError(f'Prediction {self.label!r}: trajectories must be [K, F, 2], got '
                             f'{list(self.trajectories.shape)}')
        if self.probabilities.shape[0] != self.trajectories.shape[0]:
            raise ValueError(f'Prediction {self.label!r}: {self.probabilities.shape[0]} probabilities for '
                             f'{self.trajectories.shape[0]} modes')


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def prediction_from_output(data: Any, output: Mapping[str, Any], agent_index: Optional[int] = None,
                           num_historical_steps: int = 50, label: str = '') -> Prediction:
    """World-frame :class:`Prediction` of one agent from a QCNet output dict.

    Args:
        data: the sample the model ran on (one scenario; agent indices are those of ``output``).
        output: dict with ``loc_refine_pos`` [A, K, F, >=2] (each agent's frame at the last history step) and
            ``pi`` [A, K] mixture logits.
        agent_index: row to convert; default the focal agent.
        num_historical_steps: the last history step is ``num_historical_steps - 1``.
    """
    if agent_index is None:
        agent_index = focal_agent_index(data)
    for key in ('loc_refine_pos', 'pi'):
        if key not in output:
            raise KeyError(f'model output has no {key!r} (got keys {sorted(output)})')
    local = _np(output['loc_refine_pos'])[agent_index, ..., :2]
    logits = _np(output['pi'])[agent_index].astype(np.float64)
    origin = _np(data['agent']['position'])[agent_index, num_historical_steps - 1, :2]
    theta = float(_np(data['agent']['heading'])[agent_index, num_historical_steps - 1])
    return Prediction(trajectories=agent_frame_to_world(local, origin, theta), probabilities=_softmax(logits),
                      label=label)


def ground_truth_future(data: Any, agent_index: int, num_historical_steps: int = 50
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """World x/y [F, 2] and validity bool[F] of an agent's future; F is 0 for the test split."""
    position = _np(data['agent']['position'])[agent_index, num_historical_steps:, :2].astype(np.float64)
    valid = _np(data['agent']['valid_mask'])[agent_index, num_historical_steps:].astype(bool)
    return position, valid


def min_ade_fde(prediction: Prediction, ground_truth: np.ndarray, valid: np.ndarray) -> Tuple[float, float]:
    """(minADE, minFDE) in metres as the official metrics define them for one agent.

    minFDE: smallest error over modes at the last valid future step. minADE: mean error over valid steps of the
    mode with the smallest final error (the official default ``min_criterion='FDE'``). NaN when nothing is valid.
    """
    valid = np.asarray(valid, dtype=bool)
    steps = min(prediction.trajectories.shape[1], ground_truth.shape[0])
    valid = valid[:steps]
    if not valid.any():
        return float('nan'), float('nan')
    errors = np.linalg.norm(prediction.trajectories[:, :steps] - ground_truth[None, :steps], axis=-1)  # [K, F]
    last = int(np.flatnonzero(valid)[-1])
    best = int(errors[:, last].argmin())
    return float(errors[best, valid].mean()), float(errors[best, last])


# ----------------------------------------------------------------------------------------------------------------------
# Drawing primitives (each draws onto a matplotlib Axes in world coordinates)
# ----------------------------------------------------------------------------------------------------------------------

Box = Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (world metres)


def square_box(points: np.ndarray, anchor: np.ndarray, min_half_size: float, margin: float = 0.12) -> Box:
    """Square view containing ``anchor`` [2] and all ``points`` [N, 2], at least ``2*min_half_size`` wide.

    Centred on the points' bounding box so that the space goes to where the motion is, not behind the agent.
    """
    points = np.concatenate([np.asarray(points, dtype=np.float64).reshape(-1, 2), anchor.reshape(1, 2)], axis=0)
    points = points[np.isfinite(points).all(axis=1)]
    low, high = points.min(axis=0), points.max(axis=0)
    center = (low + high) / 2.0
    half = max(min_half_size, float((high - low).max()) / 2.0 * (1.0 + margin))
    return center[0] - half, center[1] - half, center[0] + half, center[1] + half


def _intersects(bounds: Tuple[float, float, float, float], box: Box) -> bool:
    return not (bounds[2] < box[0] or bounds[0] > box[2] or bounds[3] < box[1] or bounds[1] > box[3])


def draw_map(ax: Any, polygons: Sequence[MapPolygon], box: Optional[Box] = None,
             draw_centerlines: bool = False) -> None:
    """Draws lanes (grey road, dark outer edge, painted markings) and crosswalks (light, hatched).

    Polygons without left/right boundaries (single-polyline map elements of other datasets) are drawn as lines.

    The outer road edge comes from a two-pass trick: every lane is first drawn with a thick dark outline, then all
    lanes are filled again without outline on top; shared boundaries get covered by the neighbours' fill and only
    the outline of the union survives, with no polygon-union library needed.
    """
    if box is not None:
        span = max(box[2] - box[0], box[3] - box[1])
        grown = (box[0] - 0.1 * span, box[1] - 0.1 * span, box[2] + 0.1 * span, box[3] + 0.1 * span)
        polygons = [p for p in polygons if _intersects(p.bounds(), grown)]
    lanes, crosswalks, polylines = [], [], []
    for polygon in polygons:
        if polygon.left is None or polygon.right is None:
            # no area to fill (e.g. Waymo-style lanes, road lines and road edges known by one polyline only)
            if polygon.center is not None:
                polylines.append(polygon)
            continue
        outline = np.concatenate([polygon.left, polygon.right[::-1]], axis=0)
        (crosswalks if polygon.polygon_type == 'PEDESTRIAN' else lanes).append((polygon, outline))
    for _, outline in lanes:
        ax.add_patch(Polygon(outline, closed=True, facecolor=ROAD_COLOR, edgecolor=ROAD_EDGE_COLOR, linewidth=1.6,
                             joinstyle='round', zorder=1))
    for _, outline in lanes:
        ax.add_patch(Polygon(outline, closed=True, facecolor=ROAD_COLOR, edgecolor=ROAD_COLOR, linewidth=0.3,
                             zorder=2))
    for _, outline in crosswalks:
        ax.add_patch(Polygon(outline, closed=True, facecolor=CROSSWALK_COLOR, edgecolor=CROSSWALK_HATCH_COLOR,
                             linewidth=0.4, hatch='////', zorder=3))
    for polygon, _ in lanes:
        for line, mark in ((polygon.left, polygon.left_mark), (polygon.right, polygon.right_mark)):
            if mark in ('NONE', 'UNKNOWN', 'CROSSWALK', 'CENTERLINE'):
                continue
            color = YELLOW_PAINT_COLOR if 'YELLOW' in mark else WHITE_PAINT_COLOR
            dashed = mark.startswith('DASHED') or mark.startswith('DOUBLE_DASH')
            ax.plot(line[:, 0], line[:, 1], color=color, linewidth=1.3 if mark.startswith('DOUBLE') else 0.9,
                    linestyle=(0, (5, 5)) if dashed else '-', solid_capstyle='butt', zorder=4)
        if draw_centerlines and polygon.center is not None:
            ax.plot(polygon.center[:, 0], polygon.center[:, 1], color=WHITE_PAINT_COLOR, linewidth=0.5,
                    linestyle=(0, (1, 3)), alpha=0.8, zorder=4)
    for polygon in polylines:
        line, mark = polygon.center, polygon.center_mark
        if polygon.polygon_type == 'ROAD_EDGE' or mark.startswith('ROAD_EDGE'):
            style = dict(color=ROAD_EDGE_COLOR, linewidth=1.2)
        elif polygon.polygon_type == 'ROAD_LINE':
            dashed = 'DASH' in mark and 'SOLID' not in mark
            style = dict(color='#d4b000' if 'YELLOW' in mark else '#9a9a9a', linewidth=0.8,
                         linestyle=(0, (5, 5)) if dashed else '-')
        elif polygon.polygon_type in ('VEHICLE', 'BIKE', 'BUS'):
            style = dict(color='#b0b0b0', linewidth=0.7, linestyle=(0, (1, 2)))  # lane known by its centreline
        else:  # stop signs, speed bumps, driveways, ...
            style = dict(color='#8c8c8c', linewidth=0.8)
        ax.plot(line[:, 0], line[:, 1], solid_capstyle='butt', zorder=3.5, **style)


def _agent_color(type_name: str, is_focal: bool, is_av: bool) -> str:
    if is_focal:
        return FOCAL_COLOR
    if is_av:
        return AV_COLOR
    if type_name in ('static', 'background', 'construction', 'unknown'):
        return STATIC_COLOR
    return AGENT_COLOR


def draw_agent_footprint(ax: Any, xy: np.ndarray, heading: float, type_name: str, color: str, zorder: float,
                         emphasised: bool = False) -> None:
    """Oriented box (or a disc for pedestrians) of an agent at world position ``xy`` [2], heading in rad."""
    edge_width = 1.4 if emphasised else 0.5
    if type_name == 'pedestrian':
        ax.add_patch(Circle((float(xy[0]), float(xy[1])), _PEDESTRIAN_RADIUS, facecolor=color, edgecolor='#202020',
                            linewidth=edge_width, zorder=zorder))
        return
    length, width = _AGENT_FOOTPRINT.get(type_name, _AGENT_FOOTPRINT['unknown'])
    placement = mtransforms.Affine2D().rotate(float(heading)).translate(float(xy[0]), float(xy[1])) + ax.transData
    ax.add_patch(Rectangle((-length / 2.0, -width / 2.0), length, width, facecolor=color, edgecolor='#202020',
                           linewidth=edge_width, transform=placement, zorder=zorder))


def draw_agents(ax: Any, data: Any, focal_index: int, num_historical_steps: int = 50, box: Optional[Box] = None
                ) -> None:
    """Agents' histories (thin lines, focal thicker) and their footprints at the last history step."""
    agent = data['agent']
    position = _np(_get(agent, 'position', 'agent'))[:, :num_historical_steps, :2].astype(np.float64)
    heading = _np(_get(agent, 'heading', 'agent'))[:, :num_historical_steps].astype(np.float64)
    valid = _np(_get(agent, 'valid_mask', 'agent'))[:, :num_historical_steps].astype(bool)
    agent_type = _np(_get(agent, 'type', 'agent')).astype(np.int64)
    av_index = int(_np(agent['av_index']).reshape(-1)[0]) if 'av_index' in agent else -1
    current = num_historical_steps - 1
    for index in range(position.shape[0]):
        if not valid[index].any():
            continue
        track = np.where(valid[index][:, None], position[index], np.nan)  # NaN breaks the line at gaps
        if box is not None:
            finite = track[np.isfinite(track).all(axis=1)]
            if not _intersects((finite[:, 0].min(), finite[:, 1].min(), finite[:, 0].max(), finite[:, 1].max()),
                               box):
                continue
        is_focal = index == focal_index
        type_name = AGENT_TYPES[agent_type[index]] if agent_type[index] < len(AGENT_TYPES) else 'unknown'
        color = _agent_color(type_name, is_focal, index == av_index)
        ax.plot(track[:, 0], track[:, 1], color=color, linewidth=2.0 if is_focal else 1.0,
                alpha=1.0 if is_focal else 0.75, solid_capstyle='round', zorder=7 if is_focal else 5)
        if valid[index, current]:
            draw_agent_footprint(ax, position[index, current], heading[index, current], type_name, color,
                                 zorder=8.5 if is_focal else 6, emphasised=is_focal)


def _arrow(ax: Any, path: np.ndarray, color: str, linewidth: float, head_length: float, zorder: float,
           alpha: float = 1.0) -> None:
    """Polyline [N, 2] ending in a filled arrow head ``head_length`` metres long (a dot for a standing agent).

    The line stops at the base of the head, so translucent arrows have no darker overlap.
    """
    path = path[np.isfinite(path).all(axis=1)]
    if path.shape[0] == 0:
        return
    end = path[-1]
    steps = np.linalg.norm(np.diff(path, axis=0), axis=1)
    length = float(steps.sum())
    if length < 0.5:
        ax.plot([end[0]], [end[1]], 'o', color=color, markersize=linewidth * 1.6, alpha=alpha, zorder=zorder)
        return
    head_length = min(head_length, 0.6 * length)
    # Walk back along the path to the point head_length before the tip: base of the head, and its direction.
    remaining_from_end = np.concatenate([np.cumsum(steps[::-1])[::-1], [0.0]])  # arc length from point i to tip
    base_segment = int(np.flatnonzero(remaining_from_end >= head_length)[-1])
    fraction = (remaining_from_end[base_segment] - head_length) / max(float(steps[base_segment]), 1e-9)
    base = path[base_segment] + np.clip(fraction, 0.0, 1.0) * (path[base_segment + 1] - path[base_segment])
    direction = end - base
    direction = direction / max(np.linalg.norm(direction), 1e-9)
    normal = np.array([-direction[1], direction[0]])
    line = np.concatenate([path[:base_segment + 1], base[None]], axis=0)
    ax.plot(line[:, 0], line[:, 1], color=color, linewidth=linewidth, alpha=alpha, solid_capstyle='butt',
            solid_joinstyle='round', zorder=zorder)
    half_width = 0.45 * head_length
    head = np.stack([end, base + half_width * normal, base - half_width * normal])
    ax.add_patch(Polygon(head, closed=True, facecolor=color, edgecolor='none', alpha=alpha, zorder=zorder))


def draw_ground_truth(ax: Any, future: np.ndarray, valid: np.ndarray, head_length: float = 3.0) -> None:
    """Ground-truth future [F, 2] (valid steps only) as a wide translucent pink arrow."""
    path = future[np.asarray(valid, dtype=bool)]
    if path.shape[0] >= 1:
        _arrow(ax, path, GT_COLOR, linewidth=5.0, head_length=head_length, zorder=8, alpha=0.6)


def draw_prediction(ax: Any, prediction: Prediction, box: Box, show_probabilities: bool = True) -> None:
    """K modes as blue arrows; each mode's probability written next to its endpoint without overlaps."""
    for trajectory in prediction.trajectories:
        _arrow(ax, trajectory, PRED_COLOR, linewidth=1.4, head_length=0.02 * (box[2] - box[0]), zorder=9)
    if not show_probabilities:
        return
    span = box[2] - box[0]
    offset, min_separation = 0.045 * span, 0.055 * span
    placed: List[np.ndarray] = []
    for mode in np.argsort(-prediction.probabilities):
        trajectory = prediction.trajectories[mode]
        end = trajectory[-1]
        direction = end - trajectory[max(0, trajectory.shape[0] - 6)]
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 1e-6 else np.array([1.0, 0.0])
        # Try ahead of the arrow first, then rotate around the endpoint until the label is clear of the others.
        spot = end + offset * direction
        for angle in (0, 45, -45, 90, -90, 135, -135, 180):
            radians = math.radians(angle)
            rotated = np.array([direction[0] * math.cos(radians) - direction[1] * math.sin(radians),
                                direction[0] * math.sin(radians) + direction[1] * math.cos(radians)])
            candidate = end + offset * rotated
            if all(np.linalg.norm(candidate - other) >= min_separation for other in placed):
                spot = candidate
                break
        placed.append(spot)
        ax.text(spot[0], spot[1], f'{prediction.probabilities[mode]:.2f}', fontsize=6.5, color=PRED_COLOR,
                ha='center', va='center', zorder=10, clip_on=True,
                bbox=dict(boxstyle='round,pad=0.12', facecolor='white', edgecolor='none', alpha=0.75))


def _nice_scale_length(span: float) -> float:
    target = span / 6.0
    for length in (1, 2, 5, 10, 20, 50, 100, 200, 500):
        if length >= target:
            return float(length)
    return 1000.0


def _finish_axes(ax: Any, box: Box, title: Optional[str]) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
    ax.set_xlim(box[0], box[2])
    ax.set_ylim(box[1], box[3])
    ax.set_aspect('equal', adjustable='box')
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.8)
    span = box[2] - box[0]
    length = _nice_scale_length(span)
    ax.add_artist(AnchoredSizeBar(ax.transData, length, f'{length:g} m', 'lower left', pad=0.4, frameon=False,
                                  size_vertical=span * 0.004, color='#202020', fontproperties={'size': 7}))
    if title:
        ax.set_title(title, fontsize=10)


# ----------------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------------

def _new_figure(num_panels: int, panel_inches: float = 5.0, extra_height: float = 0.9) -> Tuple[Figure, List[Any]]:
    figure = Figure(figsize=(panel_inches * num_panels, panel_inches + extra_height), facecolor='white',
                    layout='constrained')
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, num_panels, i + 1) for i in range(num_panels)]
    return figure, axes


def _scenario_heading(data: Any) -> str:
    city = ''
    try:
        city = f' ({data["city"]})'
    except (KeyError, AttributeError):
        pass
    return f'scenario {_scenario_name(data)}{city}'


def _prediction_legend(has_ground_truth: bool, has_predictions: bool) -> List[Any]:
    handles = [Line2D([], [], color=FOCAL_COLOR, linewidth=2.0, label='focal agent'),
               Line2D([], [], color=AGENT_COLOR, linewidth=1.0, label='other agents'),
               Line2D([], [], color=AV_COLOR, linewidth=1.0, label='ego vehicle (AV)')]
    if has_ground_truth:
        handles.append(Line2D([], [], color=GT_COLOR, linewidth=5.0, alpha=0.6, label='ground truth'))
    if has_predictions:
        handles.append(Line2D([], [], color=PRED_COLOR, linewidth=1.4, label='predicted modes'))
    return handles


def plot_scenario(data: Any, predictions: Sequence[Prediction] = (), agent_index: Optional[int] = None,
                  num_historical_steps: int = 50, view_radius: float = 60.0, show_probabilities: bool = True,
                  draw_centerlines: bool = False, title: Optional[str] = None) -> Figure:
    """Scenario figure: one panel per prediction (side by side, same view), or one ground-truth-only panel.

    Args:
        data: one HeteroData sample (world frame; T = 110 with future, 50 for the test split).
        predictions: world-frame predictions of ``agent_index``, e.g. one per checkpoint ("scratch", "pre-trained");
            each panel's title gives its minFDE/minADE when the ground truth is known.
        agent_index: target agent; default the focal agent (category 3).
        view_radius: minimum half-width (m) of the square view; the view grows to fit long predictions.
    Returns:
        a matplotlib Figure (Agg canvas); write it with :func:`save_figure`.
    """
    if agent_index is None:
        agent_index = focal_agent_index(data)
    num_agents = _np(data['agent']['valid_mask']).shape[0]
    if not 0 <= agent_index < num_agents:
        raise IndexError(f'scenario {_scenario_name(data)}: agent_index {agent_index} out of range [0, {num_agents})')
    position = _np(data['agent']['position'])
    if position.shape[1] < num_historical_steps:
        raise ValueError(f'scenario {_scenario_name(data)}: {position.shape[1]} time steps, fewer than '
                         f'num_historical_steps={num_historical_steps}')
    current = position[agent_index, num_historical_steps - 1, :2].astype(np.float64)
    future, future_valid = ground_truth_future(data, agent_index, num_historical_steps)
    has_ground_truth = bool(future_valid.any())
    history_valid = _np(data['agent']['valid_mask'])[agent_index, :num_historical_steps].astype(bool)
    history = position[agent_index, :num_historical_steps, :2][history_valid].astype(np.float64)
    content = [history, future[future_valid]] + [p.trajectories.reshape(-1, 2) for p in predictions]
    box = square_box(np.concatenate(content, axis=0), current, view_radius)
    polygons = map_polygons(data)

    figure, axes = _new_figure(max(1, len(predictions)))
    for panel, ax in enumerate(axes):
        draw_map(ax, polygons, box, draw_centerlines=draw_centerlines)
        draw_agents(ax, data, agent_index, num_historical_steps, box)
        if has_ground_truth:
            draw_ground_truth(ax, future, future_valid, 0.03 * (box[2] - box[0]))
        panel_title = None
        if predictions:
            prediction = predictions[panel]
            draw_prediction(ax, prediction, box, show_probabilities)
            panel_title = prediction.label or f'prediction {panel + 1}'
            if has_ground_truth:
                min_ade, min_fde = min_ade_fde(prediction, future, future_valid)
                panel_title += f'\nminFDE {min_fde:.2f} m   minADE {min_ade:.2f} m'
        elif not has_ground_truth:
            panel_title = 'history only (no future in this split)'
        _finish_axes(ax, box, panel_title)
    figure.suptitle(title if title is not None else _scenario_heading(data), fontsize=11)
    handles = _prediction_legend(has_ground_truth, bool(predictions))
    figure.legend(handles=handles, loc='outside lower center', ncol=len(handles) if len(axes) > 1 else 3,
                  fontsize=8, frameon=False)
    return figure


@dataclass
class ViewWindow:
    """One temporal pre-training view: steps ``start`` (inclusive) to ``end`` (exclusive) of the full scenario.

    agent_mask: optional bool[A], the agents that take part in the view (e.g. ``view_mask`` of ``SSLViews``);
    the others are drawn faintly inside the window.
    """
    label: str
    start: int
    end: int
    agent_mask: Optional[np.ndarray] = None


def windows_from_views(views: Mapping[str, Any]) -> List[ViewWindow]:
    """:class:`ViewWindow` list from a two-view dict of ``transforms.SSLViews`` (``{'anchor': ..., 'target': ...}``).

    Each view carries ``agent.view_start`` long[A] (absolute first step), ``agent.position`` [A, H, 3] (H = window
    length) and ``agent.view_mask`` bool[A] (participating agents).
    """
    windows = []
    for name, view in views.items():
        agent = view['agent']
        for key in ('view_start', 'position', 'view_mask'):
            if key not in agent:
                raise KeyError(f'view {name!r} has no agent.{key}; expected the output of transforms.SSLViews')
        starts = _np(agent['view_start']).reshape(-1)
        start = int(starts[0]) if starts.size else 0
        windows.append(ViewWindow(label=f'{name} view', start=start, end=start + int(agent['position'].shape[1]),
                                  agent_mask=_np(agent['view_mask']).astype(bool)))
    return windows


def plot_pretraining_views(data: Any, windows: Sequence[ViewWindow], agent_index: Optional[int] = None,
                           view_radius: float = 60.0, title: Optional[str] = None) -> Figure:
    """Map plus every agent's track, coloured per temporal view window (e.g. anchor vs. target view).

    Args:
        data: the full-length sample the views were cut from (world frame, T steps).
        windows: the views' time windows; steps outside every window are drawn thin, grey and dashed.
        agent_index: agent the plot is centred on (drawn thicker); default the focal agent.
        view_radius: minimum half-width (m) of the square view, which holds that agent's motion in all windows.
    """
    if not windows:
        raise ValueError('plot_pretraining_views needs at least one ViewWindow')
    agent = data['agent']
    position = _np(agent['position'])[:, :, :2].astype(np.float64)
    heading = _np(agent['heading']).astype(np.float64)
    valid = _np(agent['valid_mask']).astype(bool)
    agent_type = _np(agent['type']).astype(np.int64)
    num_agents, num_steps = position.shape[:2]
    for window in windows:
        if not 0 <= window.start < window.end <= num_steps:
            raise ValueError(f'scenario {_scenario_name(data)}: view window {window.label!r} '
                             f'[{window.start}, {window.end}) is outside the {num_steps} steps of the sample')
        if window.agent_mask is not None and np.asarray(window.agent_mask).shape != (num_agents,):
            raise ValueError(f'scenario {_scenario_name(data)}: view window {window.label!r} has an agent_mask of '
                             f'shape {list(np.asarray(window.agent_mask).shape)} for {num_agents} agents')
    if agent_index is None:
        agent_index = focal_agent_index(data)
    if not valid[agent_index].any():
        raise ValueError(f'scenario {_scenario_name(data)}: agent {agent_index} is never observed')
    center_step = windows[0].end - 1
    center = position[agent_index, center_step] if valid[agent_index, center_step] else \
        position[agent_index, np.flatnonzero(valid[agent_index])[-1]]
    in_windows = np.zeros(num_steps, dtype=bool)
    for window in windows:
        in_windows[window.start:window.end] = True
    # the centre agent's whole motion inside the windows stays in view (fast agents travel > 100 m)
    box = square_box(position[agent_index][in_windows & valid[agent_index]], center, view_radius)

    figure, axes = _new_figure(1, panel_inches=6.0)
    ax = axes[0]
    draw_map(ax, map_polygons(data), box)
    for index in range(num_agents):
        if not valid[index].any():
            continue
        is_focal = index == agent_index
        track = np.where(valid[index][:, None], position[index], np.nan)
        ax.plot(track[:, 0], track[:, 1], color=OUTSIDE_VIEW_COLOR, linewidth=0.8, alpha=0.7,
                linestyle=(0, (2, 2)), zorder=5)
        type_name = AGENT_TYPES[agent_type[index]] if agent_type[index] < len(AGENT_TYPES) else 'unknown'
        for number, window in enumerate(windows):
            color = VIEW_COLORS[number % len(VIEW_COLORS)]
            part = track[window.start:window.end]
            if window.agent_mask is not None and not window.agent_mask[index]:
                ax.plot(part[:, 0], part[:, 1], color=color, linewidth=0.9, alpha=0.35, zorder=5.5)
                continue
            ax.plot(part[:, 0], part[:, 1], color=color, linewidth=2.2 if is_focal else 1.3,
                    solid_capstyle='round', zorder=7 if is_focal else 6)
            last = window.end - 1
            if valid[index, last]:
                # Footprint at the view's own "current" step (its last step), as the encoder sees it.
                draw_agent_footprint(ax, position[index, last], heading[index, last], type_name, color,
                                     zorder=7.5 if is_focal else 6.5, emphasised=is_focal)
    _finish_axes(ax, box, None)
    handles = []
    for number, window in enumerate(windows):
        color = VIEW_COLORS[number % len(VIEW_COLORS)]
        text = f'{window.label}: steps {window.start}-{window.end - 1}'
        if window.agent_mask is not None:
            text += f' ({int(np.asarray(window.agent_mask).sum())} agents)'
        handles.append(Line2D([], [], color=color, linewidth=2.0, label=text))
    if any(window.agent_mask is not None for window in windows):
        handles.append(Line2D([], [], color=VIEW_COLORS[0], linewidth=0.9, alpha=0.35,
                              label='faint: agent not taking part in that view'))
    handles.append(Line2D([], [], color=OUTSIDE_VIEW_COLOR, linewidth=1.0, linestyle=(0, (2, 2)),
                          label='outside the windows'))
    figure.suptitle(title if title is not None else f'pre-training views, {_scenario_heading(data)}', fontsize=10)
    figure.legend(handles=handles, loc='outside lower center', ncol=2, fontsize=8, frameon=False)
    return figure


def save_figure(figure: Figure, path: Union[str, os.PathLike], dpi: int = 150) -> str:
    """Writes ``figure`` as PNG to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    with atomic_write(path, 'wb') as stream:
        figure.savefig(stream, format='png', dpi=dpi, facecolor='white')
    return path
