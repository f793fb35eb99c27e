"""Waymo Open Motion adapter: TFRecord files of ``Scenario`` protobufs -> :class:`ScenarioRecord` on the common canvas.

Reading needs neither TensorFlow nor generated protobuf code: ``datasets/tfrecord.py`` handles the framing (CRCs
checked) and this module decodes the protobuf wire format of the fields it uses (field numbers of the public
``scenario.proto`` / ``map.proto``). Unknown fields are skipped, so newer dataset versions (lidar, camera tokens)
still parse. Runs of fixed-layout sub-messages (map points: 3 doubles; valid object states: 9 numbers + flag) are
decoded with numpy; anything else goes through the generic decoder.

Canvas (10 Hz, ``H + F`` = 50 + 60 steps, current step ``H - 1`` = 49). A WOMD scenario has 91 steps, its current
step is index 10. Waymo step ``k`` lands on canvas step ``k + offset`` with ``offset = (H - 1) - (current + shift)``.
``shift = 0`` puts the 11 history steps on 39..49 and 60 of the 80 future steps on 50..109; the default (``None``)
takes the largest shift that keeps the whole recording on the canvas (20 for 91-step files: canvas 19..109 holds all
91 steps, Waymo step 30 sits at 49), as the published method shifts Waymo so that more of its future is used.
History-only files (the test split, 11 steps) get shift 0. Steps outside the recording are unobserved and the
record's ``time_base.span_start/span_end`` say which canvas steps the recording covers.

Scenario names of a raw directory: ``<tfrecord file name>#<record index, 6 digits>`` (many scenarios per file).
"""
from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from datasets.scenario import (AGENT_CATEGORIES, AGENT_TYPES, CROSSWALK_KIND, NUM_FUTURE_STEPS, NUM_HISTORICAL_STEPS,
                               POINT_TYPES, POLYGON_IS_INTERSECTIONS, POLYGON_KINDS, POLYGON_TO_POLYGON_TYPES,
                               POLYGON_TYPES, SAMPLING_RATE_HZ, AgentTracks, MapRecord, Polylines, ScenarioError,
                               ScenarioRecord, TimeBase)
from datasets.tfrecord import index_tfrecord, read_record

DATASET_NAME = 'waymo'
CITY = 'waymo'  # WOMD has no city; the official SmartPretrain code tags Waymo samples with this city
NAME_SEPARATOR = '#'
STOP_SIGN_LENGTH = 1.0  # metres: a stop sign becomes a short segment along the lane it controls

# Waymo enums -> union vocabularies (datasets/scenario.py)
WAYMO_OBJECT_TYPES = ('TYPE_UNSET', 'TYPE_VEHICLE', 'TYPE_PEDESTRIAN', 'TYPE_CYCLIST', 'TYPE_OTHER')
_AGENT_TYPE = {0: 'unknown', 1: 'vehicle', 2: 'pedestrian', 3: 'cyclist', 4: 'unknown'}
WAYMO_LANE_TYPES = ('TYPE_UNDEFINED', 'TYPE_FREEWAY', 'TYPE_SURFACE_STREET', 'TYPE_BIKE_LANE')
_LANE_POLYGON_TYPE = {0: 'VEHICLE', 1: 'VEHICLE', 2: 'VEHICLE', 3: 'BIKE'}
WAYMO_ROAD_LINE_TYPES = ('TYPE_UNKNOWN', 'TYPE_BROKEN_SINGLE_WHITE', 'TYPE_SOLID_SINGLE_WHITE',
                         'TYPE_SOLID_DOUBLE_WHITE', 'TYPE_BROKEN_SINGLE_YELLOW', 'TYPE_BROKEN_DOUBLE_YELLOW',
                         'TYPE_SOLID_SINGLE_YELLOW', 'TYPE_SOLID_DOUBLE_YELLOW', 'TYPE_PASSING_DOUBLE_YELLOW')
# Argoverse 2 mark types where one means the same thing (a passing double yellow is one solid + one dashed line)
_ROAD_LINE_POINT_TYPE = {0: 'UNKNOWN', 1: 'DASHED_WHITE', 2: 'SOLID_WHITE', 3: 'DOUBLE_SOLID_WHITE',
                         4: 'DASHED_YELLOW', 5: 'DOUBLE_DASH_YELLOW', 6: 'SOLID_YELLOW', 7: 'DOUBLE_SOLID_YELLOW',
                         8: 'DASH_SOLID_YELLOW'}
_ROAD_EDGE_POINT_TYPE = {0: 'ROAD_EDGE_UNKNOWN', 1: 'ROAD_EDGE_BOUNDARY', 2: 'ROAD_EDGE_MEDIAN'}
MAP_FEATURE_KINDS = ('lane', 'road_line', 'road_edge', 'stop_sign', 'crosswalk', 'speed_bump', 'driveway')
_FEATURE_FIELD = {3: 'lane', 4: 'road_line', 5: 'road_edge', 7: 'stop_sign', 8: 'crosswalk', 9: 'speed_bump',
                  10: 'driveway'}
_NO_INTERSECTION_INFO = POLYGON_IS_INTERSECTIONS.index(None)
_PRED, _SUCC, _LEFT, _RIGHT = (POLYGON_TO_POLYGON_TYPES.index(name) for name in ('PRED', 'SUCC', 'LEFT', 'RIGHT'))
_POLYLINE_KIND = POLYGON_KINDS.index('POLYLINE')


class DecodeError(ValueError):
    """Malformed protobuf bytes (converted to ScenarioError with the file name by the callers)."""


# ----------------------------------------------------------------------------------------------------------------------
# protobuf wire format
# ----------------------------------------------------------------------------------------------------------------------
_F64 = struct.Struct('<d')
_F32 = struct.Struct('<f')


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        try:
            byte = buf[pos]
        except IndexError:
            raise DecodeError(f'truncated varint at byte {pos}') from None
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError(f'varint longer than 10 bytes at byte {pos}')


def _signed(value: int) -> int:
    """int32/int64 fields: negative numbers are 10-byte two's complement varints."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes, start: int, end: int) -> Iterator[Tuple[int, int, int, int]]:
    """Fields of the message ``buf[start:end]``: (field number, wire type, a, b).

    varint: a = value; fixed64 / fixed32: a = offset of the 8 / 4 bytes; length-delimited: [a, b) is the payload.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError(f'field number 0 at byte {pos}')
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, wire, value, 0
        elif wire == 1:
            if pos + 8 > end:
                raise DecodeError(f'truncated fixed64 field {number} at byte {pos}')
            yield number, wire, pos, 0
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise DecodeError(f'field {number} at byte {pos} runs past the end of its message')
            yield number, wire, pos, pos + length
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise DecodeError(f'truncated fixed32 field {number} at byte {pos}')
            yield number, wire, pos, 0
            pos += 4
        else:  # groups (3/4) are not used by these protos
            raise DecodeError(f'unsupported wire type {wire} (field {number}) at byte {pos}')
    if pos != end:
        raise DecodeError(f'message overruns its length at byte {pos}')


def _packed_varints(buf: bytes, start: int, end: int) -> List[int]:
    values = []
    pos = start
    while pos < end:
        value, pos = _varint(buf, pos)
        values.append(_signed(value))
    if pos != end:
        raise DecodeError('packed varints overrun their field')
    return values


def _repeated_varint(out: List[int], buf: bytes, wire: int, a: int, b: int) -> None:
    """A repeated integer field element: packed (wire 2) or not (wire 0); both are valid encodings."""
    if wire == 0:
        out.append(_signed(a))
    elif wire == 2:
        out.extend(_packed_varints(buf, a, b))
    else:
        raise DecodeError(f'integer field with wire type {wire}')


def _double(buf: bytes, wire: int, a: int) -> float:
    if wire != 1:
        raise DecodeError(f'double field with wire type {wire}')
    return _F64.unpack_from(buf, a)[0]


def _float(buf: bytes, wire: int, a: int) -> float:
    if wire != 5:
        raise DecodeError(f'float field with wire type {wire}')
    return _F32.unpack_from(buf, a)[0]


# MapPoint {x=1, y=2, z=3 doubles}: fast path for runs of complete 27-byte points.
_POINT_BODY = 27


def _point_run(array: np.ndarray, pos: int, end: int, tag: int) -> Tuple[Optional[np.ndarray], int]:
    """Decode a run of ``tag, 27, 0x09 x 0x11 y 0x19 z`` records starting at ``pos`` -> (float64 [k, 3], new pos)."""
    record = 2 + _POINT_BODY
    count = (end - pos) // record
    if count <= 0:
        return None, pos
    block = array[pos:pos + count * record].reshape(count, record)
    ok = ((block[:, 0] == tag) & (block[:, 1] == _POINT_BODY) & (block[:, 2] == 0x09) & (block[:, 11] == 0x11)
          & (block[:, 20] == 0x19))
    run = count if ok.all() else int(np.argmin(ok))
    if run == 0:
        return None, pos
    block = block[:run]
    xyz = np.stack([block[:, 3 + 9 * k:11 + 9 * k].copy().view('<f8')[:, 0] for k in range(3)], axis=1)
    return xyz, pos + run * record


def _map_point(buf: bytes, a: int, b: int) -> Tuple[float, float, float]:
    xyz = [0.0, 0.0, 0.0]
    for number, wire, c, _ in _fields(buf, a, b):
        if 1 <= number <= 3:
            xyz[number - 1] = _double(buf, wire, c)
    return xyz[0], xyz[1], xyz[2]


def _polyline_field(buf: bytes, array: np.ndarray, start: int, end: int, polyline_field: int,
                    scalar_handler) -> np.ndarray:
    """Walk a message whose repeated MapPoint field is ``polyline_field``; other fields go to ``scalar_handler``."""
    tag = (polyline_field << 3) | 2
    chunks: List[np.ndarray] = []
    singles: List[Tuple[float, float, float]] = []
    pos = start
    while pos < end:
        if array[pos] == tag:
            xyz, new_pos = _point_run(array, pos, end, tag)
            if xyz is not None:
                if singles:
                    chunks.append(np.array(singles, dtype=np.float64).reshape(-1, 3))
                    singles = []
                chunks.append(xyz)
                pos = new_pos
                continue
        # one field through the generic decoder
        field_end = _field_end(buf, pos, end)
        number, wire, a, b = next(_fields(buf, pos, field_end))
        if number == polyline_field and wire == 2:
            singles.append(_map_point(buf, a, b))
        else:
            scalar_handler(number, wire, a, b)
        pos = field_end
    if singles:
        chunks.append(np.array(singles, dtype=np.float64).reshape(-1, 3))
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 3), dtype=np.float64)


def _field_end(buf: bytes, pos: int, end: int) -> int:
    """Byte after the field starting at ``pos``."""
    key, pos = _varint(buf, pos)
    wire = key & 7
    if wire == 0:
        return _varint(buf, pos)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        length, pos = _varint(buf, pos)
        if pos + length > end:
            raise DecodeError(f'field {key >> 3} at byte {pos} runs past the end of its message')
        return pos + length
    if wire == 5:
        return pos + 4
    raise DecodeError(f'unsupported wire type {wire} at byte {pos}')


# ----------------------------------------------------------------------------------------------------------------------
# decoded scenario (plain python / numpy, close to the protobuf)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class WaymoMapFeature:
    id: int
    kind: str                      # one of MAP_FEATURE_KINDS
    type: int = 0                  # lane / road line / road edge type enum value (0 otherwise)
    points: np.ndarray = None      # float64 [K, 3]: polyline, polygon outline or stop-sign position (K = 1)
    entry_lanes: List[int] = field(default_factory=list)
    exit_lanes: List[int] = field(default_factory=list)
    left_neighbors: List[int] = field(default_factory=list)
    right_neighbors: List[int] = field(default_factory=list)
    controlled_lanes: List[int] = field(default_factory=list)   # stop signs
    speed_limit_mph: float = 0.0
    interpolating: bool = False
    num_left_boundaries: int = 0
    num_right_boundaries: int = 0


@dataclass
class WaymoScenario:
    """The fields of one WOMD ``Scenario`` used here. States are [num_tracks, num_steps] arrays."""
    scenario_id: str
    timestamps_seconds: np.ndarray
    current_time_index: int
    sdc_track_index: int
    track_ids: np.ndarray          # int64 [N]
    object_types: np.ndarray       # int64 [N] (Track.ObjectType)
    states: Dict[str, np.ndarray]  # center_x/y/z, length, width, height, heading, velocity_x/y (float64), valid (bool)
    tracks_to_predict: List[Tuple[int, int]]   # (track index, difficulty)
    objects_of_interest: List[int]
    map_features: List[WaymoMapFeature]
    num_dynamic_map_states: int = 0

    @property
    def num_tracks(self) -> int:
        return len(self.track_ids)


_STATE_FIELDS = ('center_x', 'center_y', 'center_z', 'length', 'width', 'height', 'heading', 'velocity_x',
                 'velocity_y')  # ObjectState field numbers 2..10; valid = 11
# A fully populated ObjectState: tag bytes at fixed offsets, then the value bytes.
_STATE_BODY = 59
_STATE_TAG_OFFSETS = (0, 9, 18, 27, 32, 37, 42, 47, 52, 57)
_STATE_TAGS = (0x11, 0x19, 0x21, 0x2D, 0x35, 0x3D, 0x45, 0x4D, 0x55, 0x58)


def _decode_states(buf: bytes, array: np.ndarray, spans: List[Tuple[int, int]], out: Dict[str, np.ndarray]) -> None:
    """ObjectState messages at ``spans`` -> flat arrays in ``out`` (one entry per span)."""
    starts = np.array([a for a, _ in spans], dtype=np.int64)
    lengths = np.array([b - a for a, b in spans], dtype=np.int64)
    fast = np.flatnonzero(lengths == _STATE_BODY)
    if len(fast):
        block = array[starts[fast, None] + np.arange(_STATE_BODY)[None, :]]  # [S, 59]
        ok = np.ones(len(fast), dtype=bool)
        for offset, tag in zip(_STATE_TAG_OFFSETS, _STATE_TAGS):
            ok &= block[:, offset] == tag
        ok &= block[:, 58] <= 1
        rows, block = fast[ok], block[ok]
        for k, name in enumerate(('center_x', 'center_y', 'center_z')):
            out[name][rows] = block[:, 1 + 9 * k:9 + 9 * k].copy().view('<f8')[:, 0]
        for k, name in enumerate(_STATE_FIELDS[3:]):
            begin = 28 + 5 * k
            out[name][rows] = block[:, begin:begin + 4].copy().view('<f4')[:, 0]
        out['valid'][rows] = block[:, 58] == 1
        slow = np.setdiff1d(np.arange(len(spans)), rows)
    else:
        slow = np.arange(len(spans))
    for row in slow:
        a, b = spans[row]
        for number, wire, c, _ in _fields(buf, a, b):
            if 2 <= number <= 4:
                out[_STATE_FIELDS[number - 2]][row] = _double(buf, wire, c)
            elif 5 <= number <= 10:
                out[_STATE_FIELDS[number - 2]][row] = _float(buf, wire, c)
            elif number == 11:
                if wire != 0:
                    raise DecodeError(f'ObjectState.valid with wire type {wire}')
                out['valid'][row] = bool(c)


def _decode_track(buf: bytes, a: int, b: int) -> Tuple[int, int, List[Tuple[int, int]]]:
    track_id, object_type, states = 0, 0, []
    for number, wire, c, d in _fields(buf, a, b):
        if number == 1 and wire == 0:
            track_id = _signed(c)
        elif number == 2 and wire == 0:
            object_type = c
        elif number == 3 and wire == 2:
            states.append((c, d))
    return track_id, object_type, states


def _neighbor_id(buf: bytes, a: int, b: int) -> Optional[int]:
    for number, wire, c, _ in _fields(buf, a, b):
        if number == 1 and wire == 0:
            return _signed(c)
    return None


def _decode_map_feature(buf: bytes, array: np.ndarray, a: int, b: int) -> Optional[WaymoMapFeature]:
    feature_id, kind, span = 0, None, None
    for number, wire, c, d in _fields(buf, a, b):
        if number == 1 and wire == 0:
            feature_id = _signed(c)
        elif number in _FEATURE_FIELD and wire == 2:
            kind, span = _FEATURE_FIELD[number], (c, d)
    if kind is None:
        return None  # a feature kind this decoder does not know (future dataset versions): skipped
    feature = WaymoMapFeature(id=feature_id, kind=kind)
    c, d = span

    if kind == 'lane':
        def lane_scalar(number: int, wire: int, x: int, y: int) -> None:
            if number == 1:
                feature.speed_limit_mph = _double(buf, wire, x)
            elif number == 2 and wire == 0:
                feature.type = x
            elif number == 3 and wire == 0:
                feature.interpolating = bool(x)
            elif number == 9:
                _repeated_varint(feature.entry_lanes, buf, wire, x, y)
            elif number == 10:
                _repeated_varint(feature.exit_lanes, buf, wire, x, y)
            elif number in (11, 12) and wire == 2:
                neighbour = _neighbor_id(buf, x, y)
                if neighbour is not None:
                    (feature.left_neighbors if number == 11 else feature.right_neighbors).append(neighbour)
            elif number == 13 and wire == 2:
                feature.num_left_boundaries += 1
            elif number == 14 and wire == 2:
                feature.num_right_boundaries += 1
        feature.points = _polyline_field(buf, array, c, d, 8, lane_scalar)
    elif kind in ('road_line', 'road_edge'):
        def line_scalar(number: int, wire: int, x: int, y: int) -> None:
            if number == 1 and wire == 0:
                feature.type = x
        feature.points = _polyline_field(buf, array, c, d, 2, line_scalar)
    elif kind in ('crosswalk', 'speed_bump', 'driveway'):
        feature.points = _polyline_field(buf, array, c, d, 1, lambda *args: None)
    else:  # stop sign
        position = None
        for number, wire, x, y in _fields(buf, c, d):
            if number == 1:
                _repeated_varint(feature.controlled_lanes, buf, wire, x, y)
            elif number == 2 and wire == 2:
                position = _map_point(buf, x, y)
        feature.points = (np.array([position], dtype=np.float64) if position is not None
                          else np.zeros((0, 3), dtype=np.float64))
    return feature


def decode_scenario(payload: bytes) -> WaymoScenario:
    """Protobuf bytes of a WOMD ``Scenario`` -> :class:`WaymoScenario`. Raises :class:`DecodeError`."""
    buf = bytes(payload)
    array = np.frombuffer(buf, dtype=np.uint8)
    scenario_id = ''
    timestamps: List[float] = []
    current_time_index = -1
    sdc_track_index = -1
    tracks: List[Tuple[int, int, List[Tuple[int, int]]]] = []
    feature_spans: List[Tuple[int, int]] = []
    tracks_to_predict: List[Tuple[int, int]] = []
    objects_of_interest: List[int] = []
    num_dynamic = 0
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 5 and wire == 2:
            try:
                scenario_id = buf[a:b].decode('utf-8')
            except UnicodeDecodeError:
                raise DecodeError('scenario_id is not UTF-8') from None
        elif number == 1:
            if wire == 1:
                timestamps.append(_F64.unpack_from(buf, a)[0])
            elif wire == 2:
                if (b - a) % 8:
                    raise DecodeError('packed timestamps_seconds length is not a multiple of 8')
                timestamps.extend(np.frombuffer(buf[a:b], dtype='<f8').tolist())
            else:
                raise DecodeError(f'timestamps_seconds with wire type {wire}')
        elif number == 10 and wire == 0:
            current_time_index = _signed(a)
        elif number == 6 and wire == 0:
            sdc_track_index = _signed(a)
        elif number == 2 and wire == 2:
            tracks.append(_decode_track(buf, a, b))
        elif number == 8 and wire == 2:
            feature_spans.append((a, b))
        elif number == 4:
            _repeated_varint(objects_of_interest, buf, wire, a, b)
        elif number == 11 and wire == 2:
            index, difficulty = -1, 0
            for n2, w2, c, _ in _fields(buf, a, b):
                if n2 == 1 and w2 == 0:
                    index = _signed(c)
                elif n2 == 2 and w2 == 0:
                    difficulty = c
            tracks_to_predict.append((index, difficulty))
        elif number == 7:
            num_dynamic += 1
    num_tracks = len(tracks)
    state_counts = {len(states) for _, _, states in tracks}
    if len(state_counts) > 1:
        raise DecodeError(f'tracks have different numbers of states: {sorted(state_counts)}')
    num_steps = state_counts.pop() if state_counts else len(timestamps)
    spans = [span for _, _, states in tracks for span in states]
    flat = {name: np.zeros(num_tracks * num_steps, dtype=np.float64) for name in _STATE_FIELDS}
    flat['valid'] = np.zeros(num_tracks * num_steps, dtype=bool)
    if spans:
        _decode_states(buf, array, spans, flat)
    features = [_decode_map_feature(buf, array, a, b) for a, b in feature_spans]
    return WaymoScenario(
        scenario_id=scenario_id, timestamps_seconds=np.array(timestamps, dtype=np.float64),
        current_time_index=current_time_index, sdc_track_index=sdc_track_index,
        track_ids=np.array([t[0] for t in tracks], dtype=np.int64),
        object_types=np.array([t[1] for t in tracks], dtype=np.int64),
        states={name: value.reshape(num_tracks, num_steps) for name, value in flat.items()},
        tracks_to_predict=tracks_to_predict, objects_of_interest=objects_of_interest,
        map_features=[f for f in features if f is not None], num_dynamic_map_states=num_dynamic)


# ----------------------------------------------------------------------------------------------------------------------
# files and names
# ----------------------------------------------------------------------------------------------------------------------
def is_tfrecord_file(name: str) -> bool:
    return '.tfrecord' in name and not name.startswith('.')


@functools.lru_cache(maxsize=16)
def _cached_index(path: str, size: int, mtime_ns: int) -> Tuple[Tuple[Tuple[int, int], ...], Optional[str]]:
    records, problem = index_tfrecord(path)
    return tuple(records), problem


def tfrecord_index(path: Union[str, os.PathLike]) -> Tuple[Tuple[Tuple[int, int], ...], Optional[str]]:
    """(record offsets, framing problem) of a TFRecord file, cached per (path, size, mtime) in this process."""
    path = os.fspath(path)
    try:
        stat = os.stat(path)
    except OSError as error:
        raise ScenarioError(path, f'cannot read TFRecord file ({error.strerror or error})') from None
    return _cached_index(path, stat.st_size, stat.st_mtime_ns)


def scenario_name(file_name: str, record_index: int) -> str:
    return f'{file_name}{NAME_SEPARATOR}{record_index:06d}'


def list_waymo_scenarios(raw_dir: Union[str, os.PathLike]) -> List[str]:
    """Names ``<file>#<record>`` of every record of every ``*.tfrecord*`` file directly in ``raw_dir`` (sorted).

    Only the framing is read (length fields and their CRCs; payloads are skipped). A file whose framing breaks
    lists its good records plus one name for the broken record, whose loading then reports the problem.
    """
    if not os.path.isdir(raw_dir):
        return []
    names: List[str] = []
    with os.scandir(raw_dir) as entries:
        files = sorted(entry.name for entry in entries if entry.is_file() and is_tfrecord_file(entry.name))
    for file_name in files:
        records, problem = tfrecord_index(os.path.join(raw_dir, file_name))
        count = len(records) + (problem is not None)
        names.extend(scenario_name(file_name, index) for index in range(count))
    return names


def split_scenario_path(path: Union[str, os.PathLike]) -> Tuple[str, int]:
    """``<dir>/<file>#<index>`` -> (file path, record index)."""
    path = os.fspath(path)
    file_path, separator, index_text = path.rpartition(NAME_SEPARATOR)
    if not separator or not index_text.isdigit():
        raise ScenarioError(path, f'not a Waymo scenario name (expected <tfrecord file>{NAME_SEPARATOR}<record index>)')
    return file_path, int(index_text)


def read_waymo_payload(file_path: str, record_index: int) -> bytes:
    if not os.path.isfile(file_path):
        raise ScenarioError(file_path, 'TFRecord file does not exist')
    records, problem = tfrecord_index(file_path)
    if record_index >= len(records):
        raise ScenarioError(file_path, problem if problem is not None and record_index == len(records) else
                            f'record {record_index} does not exist (file has {len(records)} records)')
    offset, length = records[record_index]
    return read_record(file_path, offset, length, record_index)


def load_waymo_scenario(path: Union[str, os.PathLike],
                        num_historical_steps: int = NUM_HISTORICAL_STEPS,
                        num_future_steps: int = NUM_FUTURE_STEPS,
                        shift: Optional[int] = None) -> ScenarioRecord:
    """``<raw_dir>/<file>#<record index>`` (a name of :func:`list_waymo_scenarios`) -> validated record."""
    file_path, record_index = split_scenario_path(path)
    payload = read_waymo_payload(file_path, record_index)
    source = f'{file_path} (record {record_index})'
    return waymo_record_from_bytes(payload, source, num_historical_steps, num_future_steps, shift)


def read_waymo_tfrecord(path: Union[str, os.PathLike], num_historical_steps: int = NUM_HISTORICAL_STEPS,
                        num_future_steps: int = NUM_FUTURE_STEPS,
                        shift: Optional[int] = None) -> Iterator[ScenarioRecord]:
    """Every scenario of one TFRecord file, in file order."""
    path = os.fspath(path)
    records, problem = tfrecord_index(path)
    for index, (offset, length) in enumerate(records):
        payload = read_record(path, offset, length, index)
        yield waymo_record_from_bytes(payload, f'{path} (record {index})', num_historical_steps,
                                      num_future_steps, shift)
    if problem is not None:
        raise ScenarioError(path, problem)


def waymo_record_from_bytes(payload: bytes, source: str, num_historical_steps: int = NUM_HISTORICAL_STEPS,
                            num_future_steps: int = NUM_FUTURE_STEPS, shift: Optional[int] = None) -> ScenarioRecord:
    try:
        scenario = decode_scenario(payload)
    except DecodeError as error:
        raise ScenarioError(source, f'not a valid Scenario protobuf ({error})') from None
    return waymo_to_record(scenario, source, num_historical_steps, num_future_steps, shift)


# ----------------------------------------------------------------------------------------------------------------------
# scenario -> record
# ----------------------------------------------------------------------------------------------------------------------
def canvas_offset(num_steps: int, current_time_index: int, num_historical_steps: int, num_future_steps: int,
                  shift: Optional[int]) -> int:
    """Canvas step of Waymo step 0 (see module docstring)."""
    canvas_current = num_historical_steps - 1
    if shift is None:
        shift = max(0, min(num_steps - 1 - current_time_index - num_future_steps, canvas_current - current_time_index))
    if shift < 0:
        raise ValueError(f'shift must be >= 0, got {shift}')
    return canvas_current - (current_time_index + shift)


def waymo_to_record(scenario: WaymoScenario, source: str, num_historical_steps: int = NUM_HISTORICAL_STEPS,
                    num_future_steps: int = NUM_FUTURE_STEPS, shift: Optional[int] = None) -> ScenarioRecord:
    def fail(problem: str) -> None:
        raise ScenarioError(source, problem)

    num_steps = len(scenario.timestamps_seconds)
    if not scenario.scenario_id:
        fail('scenario has no scenario_id')
    if num_steps < 2:
        fail(f'scenario has {num_steps} timestamps')
    if scenario.num_tracks == 0:
        fail('scenario has no tracks')
    if scenario.states['valid'].shape[1] != num_steps:
        fail(f'tracks have {scenario.states["valid"].shape[1]} states but there are {num_steps} timestamps')
    step = np.diff(scenario.timestamps_seconds)
    if not np.all(np.abs(step - 1.0 / SAMPLING_RATE_HZ) < 0.02):
        fail(f'timestamps are not at {SAMPLING_RATE_HZ:g} Hz (steps between {step.min():.3f} and {step.max():.3f} s)')
    if not 0 <= scenario.current_time_index < num_steps:
        fail(f'current_time_index {scenario.current_time_index} outside [0, {num_steps - 1}]')
    if not 0 <= scenario.sdc_track_index < scenario.num_tracks:
        fail(f'sdc_track_index {scenario.sdc_track_index} outside [0, {scenario.num_tracks - 1}]')
    if len(set(scenario.track_ids.tolist())) != scenario.num_tracks:
        fail('duplicate track ids')
    unknown_types = sorted(set(scenario.object_types.tolist()) - set(_AGENT_TYPE))
    if unknown_types:
        fail(f'unknown object_type value(s) {unknown_types}')
    for index, _ in scenario.tracks_to_predict:
        if not 0 <= index < scenario.num_tracks:
            fail(f'tracks_to_predict index {index} outside [0, {scenario.num_tracks - 1}]')

    canvas_steps = num_historical_steps + num_future_steps
    offset = canvas_offset(num_steps, scenario.current_time_index, num_historical_steps, num_future_steps, shift)
    first, last = max(0, -offset), min(num_steps, canvas_steps - offset)  # Waymo steps that land on the canvas
    if first >= last:
        fail(f'no step of the scenario lands on the {canvas_steps}-step canvas (offset {offset})')
    states = scenario.states
    num_tracks = scenario.num_tracks
    observed = np.zeros((num_tracks, canvas_steps), dtype=bool)
    position = np.zeros((num_tracks, canvas_steps, 3), dtype=np.float64)
    velocity = np.zeros((num_tracks, canvas_steps, 3), dtype=np.float64)
    heading = np.zeros((num_tracks, canvas_steps), dtype=np.float64)
    window = slice(first + offset, last + offset)
    valid = states['valid'][:, first:last]
    observed[:, window] = valid
    for axis, name in enumerate(('center_x', 'center_y', 'center_z')):
        position[:, window, axis] = np.where(valid, states[name][:, first:last], 0.0)
    for axis, name in enumerate(('velocity_x', 'velocity_y')):
        velocity[:, window, axis] = np.where(valid, states[name][:, first:last], 0.0)
    heading[:, window] = np.where(valid, states['heading'][:, first:last], 0.0)
    for name, values in (('position', position), ('velocity', velocity), ('heading', heading)):
        if not np.isfinite(values).all():
            fail(f'track {name} contains NaN or infinite values')

    agent_type = np.array([AGENT_TYPES.index(_AGENT_TYPE[t]) for t in scenario.object_types.tolist()], dtype=np.uint8)
    # categories: tracks_to_predict are scored; others observed at Waymo's current step unscored; the rest fragments
    category = np.where(states['valid'][:, scenario.current_time_index], AGENT_CATEGORIES.index('UNSCORED_TRACK'),
                        AGENT_CATEGORIES.index('TRACK_FRAGMENT')).astype(np.uint8)
    for index, _ in scenario.tracks_to_predict:
        category[index] = AGENT_CATEGORIES.index('SCORED_TRACK')
    agents = AgentTracks(ids=[str(i) for i in scenario.track_ids.tolist()], type=agent_type, category=category,
                         observed=observed, position=position, heading=heading, velocity=velocity,
                         av_index=int(scenario.sdc_track_index), focal_index=-1)
    span_start, span_end = first + offset, last + offset
    time_base = TimeBase(num_historical_steps=num_historical_steps, num_future_steps=num_future_steps,
                         sampling_rate_hz=SAMPLING_RATE_HZ, future_observed=span_end > num_historical_steps,
                         span_start=span_start, span_end=span_end)
    map_record, dropped = waymo_map_record(scenario.map_features, source)
    record = ScenarioRecord(scenario_id=scenario.scenario_id, city=CITY, dataset=DATASET_NAME, time_base=time_base,
                            agents=agents, map=map_record, source=source,
                            extras={'waymo_current_time_index': scenario.current_time_index,
                                    'waymo_num_steps': num_steps, 'waymo_shift': (num_historical_steps - 1)
                                    - scenario.current_time_index - offset,
                                    'tracks_to_predict': [i for i, _ in scenario.tracks_to_predict],
                                    'dropped_map_features': dropped})
    return record.validate()


def _unit_direction(points: np.ndarray, near: np.ndarray) -> np.ndarray:
    """Direction (unit, xy) of the polyline segment closest to ``near``; +x if the polyline has < 2 points."""
    if len(points) < 2:
        return np.array([1.0, 0.0, 0.0])
    closest = int(np.argmin(((points[:, :2] - near[:2]) ** 2).sum(axis=1)))
    a, b = (closest, closest + 1) if closest + 1 < len(points) else (closest - 1, closest)
    vector = points[b] - points[a]
    norm = float(np.hypot(vector[0], vector[1]))
    return np.array([vector[0] / norm, vector[1] / norm, 0.0]) if norm > 0 else np.array([1.0, 0.0, 0.0])


def crosswalk_edges(outline: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Closed polygon outline float [K >= 3, 3] -> two opposite long edges (2 points each, same direction).

    The edges are the long sides of the polygon's minimum-area bounding rectangle (over the polygon's edge
    directions, which is exact for convex outlines such as WOMD's 4-point crosswalks); z is the mean height. This
    matches Argoverse 2, whose crossings are stored as two long edges along the walking direction.
    """
    xy = outline[:, :2]
    z = float(outline[:, 2].mean())
    best = None
    for k in range(len(xy)):
        direction = xy[(k + 1) % len(xy)] - xy[k]
        norm = float(np.hypot(*direction))
        if norm == 0:
            continue
        u = direction / norm
        v = np.array([-u[1], u[0]])
        pu, pv = xy @ u, xy @ v
        area = (pu.max() - pu.min()) * (pv.max() - pv.min())
        if best is None or area < best[0] - 1e-9:
            best = (area, u, v, pu.min(), pu.max(), pv.min(), pv.max())
    if best is None:
        raise ValueError('crosswalk outline has no extent')
    _, u, v, u0, u1, v0, v1 = best
    if u1 - u0 < v1 - v0:  # long axis along v
        u, v, u0, u1, v0, v1 = v, -u, v0, v1, -u1, -u0

    def corner(a: float, b: float) -> List[float]:
        point = a * u + b * v
        return [float(point[0]), float(point[1]), z]
    edge1 = np.array([corner(u0, v0), corner(u1, v0)])
    edge2 = np.array([corner(u0, v1), corner(u1, v1)])
    return edge1, edge2


def waymo_map_record(features: Sequence[WaymoMapFeature], source: str) -> Tuple[MapRecord, int]:
    """Map features -> (MapRecord, number of features dropped for degenerate geometry).

    Polygons, in feature order: lanes, road lines, road edges, stop signs, speed bumps, driveways as POLYLINE
    polygons (one polyline, stored as the centre line; its points typed by ``center_mark_type``), then crosswalks
    as CROSSWALK polygons (two long edges). Lane topology: entry lanes -> PRED, exit lanes -> SUCC, left / right
    neighbours -> LEFT / RIGHT. Features with fewer than 2 points (lanes, lines, edges) or fewer than 3 outline
    points (areas, crosswalks) are dropped; WOMD has a few such lanes.
    """
    lanes_by_id = {f.id: f for f in features if f.kind == 'lane'}
    polylines: List[Tuple[WaymoMapFeature, np.ndarray, str, str]] = []  # (feature, points, polygon type, point type)
    crosswalks: List[Tuple[WaymoMapFeature, np.ndarray, np.ndarray]] = []
    dropped = 0
    for feature in features:
        points = feature.points if feature.points is not None else np.zeros((0, 3))
        if not np.isfinite(points).all():
            raise ScenarioError(source, f'map feature {feature.id} ({feature.kind}) has NaN or infinite coordinates')
        if feature.kind == 'lane':
            if len(points) < 2:
                dropped += 1
                continue
            if feature.type not in _LANE_POLYGON_TYPE:
                raise ScenarioError(source, f'lane {feature.id}: unknown lane type {feature.type}')
            polylines.append((feature, points, _LANE_POLYGON_TYPE[feature.type], 'CENTERLINE'))
        elif feature.kind in ('road_line', 'road_edge'):
            table = _ROAD_LINE_POINT_TYPE if feature.kind == 'road_line' else _ROAD_EDGE_POINT_TYPE
            if feature.type not in table:
                raise ScenarioError(source, f'{feature.kind} {feature.id}: unknown type {feature.type}')
            if len(points) < 2:
                dropped += 1
                continue
            polylines.append((feature, points, feature.kind.upper(), table[feature.type]))
        elif feature.kind == 'stop_sign':
            if len(points) != 1:
                dropped += 1
                continue
            position = points[0]
            lane = next((lanes_by_id[i] for i in feature.controlled_lanes if i in lanes_by_id), None)
            direction = _unit_direction(lane.points, position) if lane is not None else np.array([1.0, 0.0, 0.0])
            polylines.append((feature, np.stack([position, position + STOP_SIGN_LENGTH * direction]),
                              'STOP_SIGN', 'STOP_SIGN'))
        elif feature.kind in ('speed_bump', 'driveway'):
            if len(points) < 3:
                dropped += 1
                continue
            outline = np.concatenate([points, points[:1]], axis=0)  # closed outline
            polylines.append((feature, outline, feature.kind.upper(), feature.kind.upper()))
        elif feature.kind == 'crosswalk':
            if len(points) < 3:
                dropped += 1
                continue
            try:
                edge1, edge2 = crosswalk_edges(points)
            except ValueError:
                dropped += 1
                continue
            crosswalks.append((feature, edge1, edge2))

    num_polylines, num_crosswalks = len(polylines), len(crosswalks)
    ids = [f.id for f, *_ in polylines] + [f.id for f, *_ in crosswalks]
    empty = np.zeros((0, 3), dtype=np.float64)
    pedestrian = POLYGON_TYPES.index('PEDESTRIAN')
    crosswalk_point = POINT_TYPES.index('CROSSWALK')
    none_point = POINT_TYPES.index('NONE')
    # topology (only lanes have relations); the first row wins if an id repeats
    row_of_id: Dict[int, int] = {}
    for row, polygon_id in enumerate(ids):
        row_of_id.setdefault(polygon_id, row)
    sources: List[int] = []
    targets: List[int] = []
    kinds: List[int] = []
    for row, (feature, *_rest) in enumerate(polylines):
        if feature.kind != 'lane':
            continue
        for neighbours, kind in ((feature.entry_lanes, _PRED), (feature.exit_lanes, _SUCC),
                                 (feature.left_neighbors, _LEFT), (feature.right_neighbors, _RIGHT)):
            for neighbour in neighbours:
                other = row_of_id.get(neighbour)
                if other is not None and other < num_polylines and polylines[other][0].kind == 'lane':
                    sources.append(other)
                    targets.append(row)
                    kinds.append(kind)
    map_record = MapRecord(
        ids=np.array(ids, dtype=np.int64),
        kind=np.array([_POLYLINE_KIND] * num_polylines + [CROSSWALK_KIND] * num_crosswalks, dtype=np.uint8),
        polygon_type=np.array([POLYGON_TYPES.index(p) for _, _, p, _ in polylines] + [pedestrian] * num_crosswalks,
                              dtype=np.uint8),
        is_intersection=np.full(num_polylines + num_crosswalks, _NO_INTERSECTION_INFO, dtype=np.uint8),
        left_mark_type=np.array([none_point] * num_polylines + [crosswalk_point] * num_crosswalks, dtype=np.uint8),
        right_mark_type=np.array([none_point] * num_polylines + [crosswalk_point] * num_crosswalks, dtype=np.uint8),
        left_boundary=Polylines.from_list([empty] * num_polylines + [e1 for _, e1, _ in crosswalks]),
        right_boundary=Polylines.from_list([empty] * num_polylines + [e2 for _, _, e2 in crosswalks]),
        centerline=Polylines.from_list([points for _, points, _, _ in polylines] + [empty] * num_crosswalks),
        topology_edge_index=np.array([sources, targets], dtype=np.int64).reshape(2, -1),
        topology_type=np.array(kinds, dtype=np.uint8),
        center_mark_type=np.array([POINT_TYPES.index(t) for _, _, _, t in polylines]
                                  + [POINT_TYPES.index('CENTERLINE')] * num_crosswalks, dtype=np.uint8))
    return map_record, dropped
