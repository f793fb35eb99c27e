"""Scenario record -> QCNet features (the official ``HeteroData`` sample), vectorised with numpy.

``build_qcnet_features`` returns the official QCNet sample as a nested dict of numpy arrays (what the on-disk cache
stores); ``to_hetero_data`` turns it into the ``HeteroData`` the models consume. Field names, dtypes, shapes and values
follow the official QCNet Argoverse 2 processing exactly (float32 arithmetic in the same order), plus one field of the
official SmartPretrain processing, ``agent.predict_mask_ssl`` (raw observations; future cleared for agents not
observed at the current step), which its two-view sampling needs.

Frames: everything stays in the map (global) frame; per-agent frames are built later by transforms.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple, Union

import numpy as np
import torch
from torch_geometric.data import HeteroData

from datasets.scenario import (CROSSWALK_KIND, POINT_SIDES, POINT_TYPES, POLYGON_IS_INTERSECTIONS,
                               POLYGON_TYPES, SCORED_CATEGORY, ScenarioError, ScenarioRecord)

# the reference implementation of the crosswalk centre line (also used by the official code)
from av2.geometry.interpolate import compute_midpoint_line

FeatureDict = Dict[Union[str, Tuple[str, str, str]], Any]
POINT_TO_POLYGON = ('map_point', 'to', 'map_polygon')
POLYGON_TO_POLYGON = ('map_polygon', 'to', 'map_polygon')
_LEFT, _RIGHT, _CENTER = (POINT_SIDES.index(name) for name in ('LEFT', 'RIGHT', 'CENTER'))
_CROSSWALK_POINT = POINT_TYPES.index('CROSSWALK')
_CENTERLINE_POINT = POINT_TYPES.index('CENTERLINE')
_PEDESTRIAN = POLYGON_TYPES.index('PEDESTRIAN')
_NOT_A_LANE = POLYGON_IS_INTERSECTIONS.index(None)


def build_qcnet_features(record: ScenarioRecord,
                         dim: int = 3,
                         predict_unseen_agents: bool = False,
                         vector_repr: bool = True,
                         include_ssl_mask: bool = True) -> FeatureDict:
    """QCNet sample of one scenario as numpy arrays (see module docstring).

    Args mirror the official dataset: ``dim`` 2 or 3 (drops z and the height fields when 2);
    ``predict_unseen_agents`` keeps agents not observed in the history; ``vector_repr`` makes history step t valid
    only if t-1 is valid too. A record whose future is not observed (test split) gets the official test rule:
    ``predict_mask`` is True over the whole future for agents observed at the current step and scored/focal agents.
    """
    if dim not in (2, 3):
        raise ValueError(f'dim must be 2 or 3, got {dim}')
    span_start, span_end = record.time_base.observable_span
    # data_set: dataset id (official SmartPretrain name; AV1 0, AV2 1, Waymo 2); span_start / span_end: the steps
    # the source recording covers on the common canvas (pre-training views use them, see transforms/ssl_views.py)
    features: FeatureDict = {'scenario_id': record.scenario_id, 'city': record.city,
                             'data_set': record.dataset_id, 'span_start': int(span_start), 'span_end': int(span_end),
                             'agent': _agent_features(record, dim, predict_unseen_agents, vector_repr,
                                                      include_ssl_mask)}
    features.update(_map_features(record, dim))
    return features


def to_hetero_data(features: FeatureDict) -> HeteroData:
    """Nested dict of numpy arrays (``build_qcnet_features`` / cache) -> ``HeteroData`` of torch tensors."""
    def convert(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            # bool/uint8/int64/float32 map 1:1 onto torch dtypes; from_numpy shares memory (no copy)
            return torch.from_numpy(value if value.flags.writeable else value.copy())
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        return value
    return HeteroData(convert(features))


def process_scenario(record: ScenarioRecord, **kwargs: Any) -> HeteroData:
    """Record -> official QCNet ``HeteroData`` (``build_qcnet_features`` + ``to_hetero_data``)."""
    return to_hetero_data(build_qcnet_features(record, **kwargs))


# ----------------------------------------------------------------------------------------------------------------------
# agents
# ----------------------------------------------------------------------------------------------------------------------
def _agent_features(record: ScenarioRecord, dim: int, predict_unseen_agents: bool, vector_repr: bool,
                    include_ssl_mask: bool) -> Dict[str, Any]:
    tracks, time_base = record.agents, record.time_base
    num_historical_steps = time_base.num_historical_steps
    if predict_unseen_agents:
        keep = np.arange(tracks.num_agents)
    else:  # agents never observed during the history are dropped (QCNet cannot encode them)
        keep = np.flatnonzero(tracks.observed[:, :num_historical_steps].any(axis=1))
    av_rows = np.flatnonzero(keep == tracks.av_index)
    if len(av_rows) == 0:
        raise ScenarioError(record.source or record.scenario_id,
                            'the AV (ego) track is not observed during the history steps')
    observed = tracks.observed[keep]
    category = tracks.category[keep]
    current_valid = observed[:, num_historical_steps - 1].copy()

    valid_mask = observed.copy()
    if vector_repr:  # a history step is a displacement vector: it needs the previous step too
        valid_mask[:, 1:num_historical_steps] &= observed[:, :num_historical_steps - 1]
        valid_mask[:, 0] = False
    predict_mask = observed.copy()
    predict_mask[:, :num_historical_steps] = False
    predict_mask[~current_valid, num_historical_steps:] = False
    if not time_base.future_observed:  # official test-split rule: predict every agent the benchmark may score
        predict_mask[current_valid | (category >= SCORED_CATEGORY), num_historical_steps:] = True

    agent = {
        'num_nodes': int(len(keep)),
        'av_index': int(av_rows[0]),
        'valid_mask': valid_mask,
        'predict_mask': predict_mask,
        'id': [tracks.ids[i] for i in keep],
        'type': tracks.type[keep].astype(np.uint8),
        'category': category.astype(np.uint8),
        'position': tracks.position[keep, :, :dim].astype(np.float32),
        'heading': tracks.heading[keep].astype(np.float32),
        'velocity': tracks.velocity[keep, :, :dim].astype(np.float32),
    }
    if include_ssl_mask:
        predict_mask_ssl = observed.copy()
        predict_mask_ssl[~current_valid, num_historical_steps:] = False
        agent['predict_mask_ssl'] = predict_mask_ssl
    return agent


# ----------------------------------------------------------------------------------------------------------------------
# map
# ----------------------------------------------------------------------------------------------------------------------
def _slices(points: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Gather polylines ``rows`` of a ragged (points, offsets) pair -> (points, offsets) of just those rows."""
    lengths = offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    index = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return points[index], new_offsets


def _reverse(points: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Reverse every polyline of a ragged array in place order (offsets unchanged)."""
    lengths = np.diff(offsets)
    position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return points[np.repeat(offsets[1:] - 1, lengths) - position]


def _crosswalk_geometry(edge1: np.ndarray, edge1_offsets: np.ndarray, edge2: np.ndarray, edge2_offsets: np.ndarray,
                        source: str):
    """Orient crosswalks and build their centre lines (float32, as QCNet does).

    Returns start/end float32 [C, 3], left/right/centre ragged float32 polylines.
    """
    num_crosswalks = len(edge1_offsets) - 1
    e1_first, e1_last = edge1[edge1_offsets[:-1]], edge1[edge1_offsets[1:] - 1]
    e2_first, e2_last = edge2[edge2_offsets[:-1]], edge2[edge2_offsets[1:] - 1]
    start = (e1_first + e2_first) / np.float32(2)
    end = (e1_last + e2_last) / np.float32(2)
    query = (e1_first + e1_last) / np.float32(2)
    # which side of the directed start->end line edge1 lies on (2-D cross product, float32 like the official code)
    cross = ((end[:, 0] - start[:, 0]) * (query[:, 1] - start[:, 1]) -
             (end[:, 1] - start[:, 1]) * (query[:, 0] - start[:, 0]))
    edge1_is_left = cross > 0
    length = np.sqrt(((end - start) ** 2).sum(axis=-1, dtype=np.float32))
    lefts, rights, centers = [], [], []
    for c in range(num_crosswalks):
        e1 = edge1[edge1_offsets[c]:edge1_offsets[c + 1]]
        e2 = edge2[edge2_offsets[c]:edge2_offsets[c + 1]]
        left, right = (e1, e2) if edge1_is_left[c] else (e2, e1)
        num_centerline_points = math.ceil(float(length[c]) / 2.0) + 1
        center = compute_midpoint_line(left_ln_boundary=left, right_ln_boundary=right,
                                       num_interp_pts=int(num_centerline_points))[0]
        if center.ndim != 2 or center.shape[1] != 3:
            raise ScenarioError(source, f'crosswalk {c}: cannot build a 3-D centre line from its edges')
        lefts.append(left)
        rights.append(right)
        centers.append(center.astype(np.float32))
    return start, end, lefts, rights, centers


def _ragged(polylines) -> Tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(polylines) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in polylines], out=offsets[1:])
    points = np.concatenate(polylines, axis=0) if polylines else np.zeros((0, 3), dtype=np.float32)
    return points.astype(np.float32, copy=False), offsets


def _map_features(record: ScenarioRecord, dim: int) -> FeatureDict:
    map_record = record.map
    source = record.source or record.scenario_id
    # lanes and single-polyline features (empty left/right sides) share the lane path, in record order
    lane_rows = np.flatnonzero(map_record.kind != CROSSWALK_KIND)
    crosswalk_rows = np.flatnonzero(map_record.kind == CROSSWALK_KIND)
    num_lanes, num_crosswalks = len(lane_rows), len(crosswalk_rows)
    num_polygons = num_lanes + 2 * num_crosswalks  # each crosswalk is used in both directions

    def gather(polylines, rows):
        points, offsets = _slices(polylines.points, polylines.offsets, rows)
        return points.astype(np.float32), offsets

    lane_left, lane_left_off = gather(map_record.left_boundary, lane_rows)
    lane_right, lane_right_off = gather(map_record.right_boundary, lane_rows)
    lane_center, lane_center_off = gather(map_record.centerline, lane_rows)
    edge1, edge1_off = gather(map_record.left_boundary, crosswalk_rows)
    edge2, edge2_off = gather(map_record.right_boundary, crosswalk_rows)
    start, end, cw_left, cw_right, cw_center = _crosswalk_geometry(edge1, edge1_off, edge2, edge2_off, source)
    cw_left, cw_left_off = _ragged(cw_left)
    cw_right, cw_right_off = _ragged(cw_right)
    cw_center, cw_center_off = _ragged(cw_center)

    def concat(*parts):
        points = np.concatenate([p for p, _ in parts], axis=0)
        offsets = [np.zeros(1, dtype=np.int64)]
        shift = 0
        for p, o in parts:
            offsets.append(o[1:] + shift)
            shift += len(p)
        return points, np.concatenate(offsets)

    # polygon order: lanes, crosswalks (forward), crosswalks (reversed: right edge becomes left and vice versa)
    sides = (
        concat((lane_left, lane_left_off), (cw_left, cw_left_off), (_reverse(cw_right, cw_right_off), cw_right_off)),
        concat((lane_right, lane_right_off), (cw_right, cw_right_off), (_reverse(cw_left, cw_left_off), cw_left_off)),
        concat((lane_center, lane_center_off), (cw_center, cw_center_off),
               (_reverse(cw_center, cw_center_off), cw_center_off)),
    )
    crosswalk_types = np.full(2 * num_crosswalks, _CROSSWALK_POINT, dtype=np.uint8)
    center_types = (np.full(num_lanes, _CENTERLINE_POINT, dtype=np.uint8) if map_record.center_mark_type is None
                    else map_record.center_mark_type[lane_rows].astype(np.uint8))
    side_point_types = (
        np.concatenate([map_record.left_mark_type[lane_rows], crosswalk_types]),
        np.concatenate([map_record.right_mark_type[lane_rows], crosswalk_types]),
        np.concatenate([center_types, np.full(2 * num_crosswalks, _CENTERLINE_POINT, dtype=np.uint8)]),
    )

    # one point per polyline segment (its start point); segments ordered polygon-major, then left/right/centre
    segment_counts = np.stack([np.maximum(np.diff(offsets) - 1, 0) for _, offsets in sides], axis=1)  # [P, 3]
    polygon_start = np.zeros(num_polygons + 1, dtype=np.int64)
    np.cumsum(segment_counts.sum(axis=1), out=polygon_start[1:])
    side_start = polygon_start[:-1, None] + np.cumsum(segment_counts, axis=1) - segment_counts  # [P, 3]
    num_points = int(polygon_start[-1])
    point_start = np.empty((num_points, 3), dtype=np.float32)
    point_vector = np.empty((num_points, 3), dtype=np.float32)
    point_type = np.empty(num_points, dtype=np.uint8)
    point_side = np.empty(num_points, dtype=np.uint8)
    for side, ((points, offsets), types, side_code) in enumerate(zip(sides, side_point_types,
                                                                     (_LEFT, _RIGHT, _CENTER))):
        counts = segment_counts[:, side]
        polygon = np.repeat(np.arange(num_polygons), counts)
        first_segment = np.cumsum(counts) - counts
        local = np.arange(int(counts.sum())) - np.repeat(first_segment, counts)
        source_index = offsets[:-1][polygon] + local       # start point of each segment
        destination = side_start[polygon, side] + local
        point_start[destination] = points[source_index]
        point_vector[destination] = points[source_index + 1] - points[source_index]
        point_type[destination] = types[polygon]
        point_side[destination] = side_code

    # transcendental ops through torch: bit-identical to the official torch code
    vectors = torch.from_numpy(point_vector)
    point_orientation = torch.atan2(vectors[:, 1], vectors[:, 0]).numpy()
    point_magnitude = torch.norm(vectors[:, :2], p=2, dim=-1).numpy()

    polygon_position = np.zeros((num_polygons, dim), dtype=np.float32)
    polygon_direction = np.zeros((num_polygons, 3), dtype=np.float32)  # vector whose angle is the orientation
    center, center_offsets = sides[2]
    lane_first = center[center_offsets[:num_lanes]]
    lane_second = center[center_offsets[:num_lanes] + 1]
    polygon_position[:num_lanes] = lane_first[:, :dim]
    polygon_direction[:num_lanes] = lane_second - lane_first
    polygon_position[num_lanes:num_lanes + num_crosswalks] = start[:, :dim]
    polygon_position[num_lanes + num_crosswalks:] = end[:, :dim]
    polygon_direction[num_lanes:num_lanes + num_crosswalks] = end - start
    polygon_direction[num_lanes + num_crosswalks:] = start - end
    directions = torch.from_numpy(polygon_direction)
    polygon_orientation = torch.atan2(directions[:, 1], directions[:, 0]).numpy()

    polygon_type = np.concatenate([map_record.polygon_type[lane_rows],
                                   np.full(2 * num_crosswalks, _PEDESTRIAN, dtype=np.uint8)]).astype(np.uint8)
    polygon_is_intersection = np.concatenate([map_record.is_intersection[lane_rows],
                                              np.full(2 * num_crosswalks, _NOT_A_LANE, dtype=np.uint8)])

    # topology: record rows -> QCNet polygon indices (lanes first, then forward crosswalks)
    polygon_of_row = np.full(map_record.num_polygons, -1, dtype=np.int64)
    polygon_of_row[lane_rows] = np.arange(num_lanes)
    polygon_of_row[crosswalk_rows] = num_lanes + np.arange(num_crosswalks)
    topology = polygon_of_row[map_record.topology_edge_index]

    polygon = {'num_nodes': num_polygons, 'position': polygon_position, 'orientation': polygon_orientation}
    if dim == 3:
        polygon['height'] = polygon_direction[:, 2].copy()
    polygon['type'] = polygon_type
    polygon['is_intersection'] = polygon_is_intersection.astype(np.uint8)
    point = {'num_nodes': num_points, 'position': point_start[:, :dim].copy(), 'orientation': point_orientation,
             'magnitude': point_magnitude}
    if dim == 3:
        point['height'] = point_vector[:, 2].copy()
    point['type'] = point_type
    point['side'] = point_side
    point_to_polygon = np.stack([np.arange(num_points, dtype=np.int64),
                                 np.repeat(np.arange(num_polygons, dtype=np.int64), segment_counts.sum(axis=1))])
    return {
        'map_polygon': polygon,
        'map_point': point,
        POINT_TO_POLYGON: {'edge_index': point_to_polygon},
        POLYGON_TO_POLYGON: {'edge_index': topology.reshape(2, -1).astype(np.int64),
                             'type': map_record.topology_type.astype(np.uint8)},
    }
