"""Small Argoverse 1 forecasting data sets in the genuine file formats (for tests and experiments).

    python -m datasets.synthetic.av1 --out_dir DIR [--num_sequences 8] [--split train] [--city PIT] [--seed 0]

writes ``DIR/map_files/pruned_argoverse_<CITY>_<id>_vector_map.xml`` (a grid city: two-way roads with
``lanes_per_direction`` lanes each way, straight and right-turn connector lanes inside intersections flagged
``is_intersection``, traffic control at intersections, predecessor / successor / neighbour tags) and
``DIR/<split>/data/<sequence id>.csv`` (``TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME``; one AV, one AGENT and
some OTHERS driving lane routes at 10 Hz, 50 timestamps, or 20 for ``--split test``; some OTHERS enter late or
leave early). ``datasets/argoverse_v1.py`` finds the map folder from the CSV folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from datasets.argoverse_v1 import AV1_NUM_HISTORICAL_STEPS, AV1_NUM_STEPS, CITY_IDS, map_file_name

AV_TRACK_ID = '00000000-0000-0000-0000-000000000000'
FIRST_LANE_ID = 9600000


@dataclass
class SyntheticLane:
    lane_id: int
    points: np.ndarray                 # float [K, 2]
    is_intersection: bool = False
    turn_direction: str = 'NONE'
    has_traffic_control: bool = False
    left_neighbor: Optional[int] = None
    right_neighbor: Optional[int] = None
    predecessors: List[int] = field(default_factory=list)
    successors: List[int] = field(default_factory=list)


def _line(start: np.ndarray, end: np.ndarray, spacing: float = 5.0) -> np.ndarray:
    count = max(2, int(np.ceil(np.linalg.norm(end - start) / spacing)) + 1)
    return start[None, :] + np.linspace(0.0, 1.0, count)[:, None] * (end - start)[None, :]


def _bezier(start: np.ndarray, control: np.ndarray, end: np.ndarray, count: int = 8) -> np.ndarray:
    s = np.linspace(0.0, 1.0, count)[:, None]
    return (1 - s) ** 2 * start + 2 * (1 - s) * s * control + s ** 2 * end


def grid_city(num_blocks: int = 2, block_length: float = 80.0, lanes_per_direction: int = 2,
              lane_width: float = 3.6, origin: Tuple[float, float] = (2000.0, 1000.0)) -> List[SyntheticLane]:
    """Lanes of a grid city with (num_blocks + 1)^2 intersections (see module docstring)."""
    ox, oy = origin
    half = lanes_per_direction * lane_width + 2.0  # intersection half size
    lanes: List[SyntheticLane] = []
    # road lanes: key (orientation, line index, block index, direction, lane index) -> lane
    road: Dict[Tuple[str, int, int, int, int], SyntheticLane] = {}

    def new_lane(points: np.ndarray, **kwargs) -> SyntheticLane:
        lane = SyntheticLane(lane_id=FIRST_LANE_ID + len(lanes), points=points, **kwargs)
        lanes.append(lane)
        return lane

    for orientation in ('h', 'v'):
        along = np.array([1.0, 0.0]) if orientation == 'h' else np.array([0.0, 1.0])
        normal = np.array([0.0, 1.0]) if orientation == 'h' else np.array([-1.0, 0.0])  # left of +along
        for line in range(num_blocks + 1):
            for block in range(num_blocks):
                base = np.array([ox, oy]) + (line * block_length * (normal * (1 if orientation == 'h' else -1)))
                start = base + along * (block * block_length + half)
                end = base + along * ((block + 1) * block_length - half)
                for direction in (1, -1):  # +along / -along; right-hand traffic: lanes on the right of travel
                    for k in range(lanes_per_direction):
                        shift = -direction * (k + 0.5) * lane_width * normal
                        a, b = (start, end) if direction == 1 else (end, start)
                        road[(orientation, line, block, direction, k)] = new_lane(_line(a + shift, b + shift))
                    for k in range(lanes_per_direction):  # k = 0 is the innermost (leftmost) lane
                        lane = road[(orientation, line, block, direction, k)]
                        if k > 0:
                            lane.left_neighbor = road[(orientation, line, block, direction, k - 1)].lane_id
                        if k + 1 < lanes_per_direction:
                            lane.right_neighbor = road[(orientation, line, block, direction, k + 1)].lane_id

    def connect(incoming: SyntheticLane, outgoing: SyntheticLane, turn: str) -> None:
        a, b = incoming.points[-1], outgoing.points[0]
        if turn == 'NONE':
            points = _line(a, b, 4.0)
        else:  # control point: where the two lanes' lines cross
            d1 = incoming.points[-1] - incoming.points[-2]
            d2 = outgoing.points[1] - outgoing.points[0]
            t = np.linalg.solve(np.stack([d1, -d2], axis=1), b - a)[0]
            points = _bezier(a, a + t * d1, b)
        connector = new_lane(points, is_intersection=True, turn_direction=turn, has_traffic_control=True)
        connector.predecessors.append(incoming.lane_id)
        connector.successors.append(outgoing.lane_id)
        incoming.successors.append(connector.lane_id)
        outgoing.predecessors.append(connector.lane_id)

    outer = lanes_per_direction - 1
    for orientation in ('h', 'v'):
        other = 'v' if orientation == 'h' else 'h'
        for line in range(num_blocks + 1):
            for block in range(num_blocks):
                for direction in (1, -1):
                    nxt = block + direction
                    # straight through the intersection at the end of this block
                    if 0 <= nxt < num_blocks:
                        for k in range(lanes_per_direction):
                            connect(road[(orientation, line, block, direction, k)],
                                    road[(orientation, line, nxt, direction, k)], 'NONE')
                    # right turn from the outer lane into the crossing road
                    crossing_line = block + 1 if direction == 1 else block
                    # heading +x -> right is -y (h lines grow in +y, so the block below); similar for others
                    if orientation == 'h':
                        cross_block, cross_direction = (line - 1, -1) if direction == 1 else (line, 1)
                    else:
                        cross_block, cross_direction = (line, 1) if direction == 1 else (line - 1, -1)
                    key = (other, crossing_line, cross_block, cross_direction, outer)
                    if 0 <= cross_block < num_blocks and key in road:
                        connect(road[(orientation, line, block, direction, outer)], road[key], 'RIGHT')
    return lanes


def write_city_map(lanes: Sequence[SyntheticLane], path: os.PathLike) -> None:
    """Write lanes as an Argoverse 1 vector map XML (nodes first, then ways)."""
    root = ElementTree.Element('ArgoverseVectorMap')
    node_id = 0
    refs: List[List[int]] = []
    for lane in lanes:
        ids = []
        for x, y in lane.points:
            ElementTree.SubElement(root, 'node', {'id': str(node_id), 'x': repr(float(x)), 'y': repr(float(y))})
            ids.append(node_id)
            node_id += 1
        refs.append(ids)
    for lane, ids in zip(lanes, refs):
        way = ElementTree.SubElement(root, 'way', {'lane_id': str(lane.lane_id)})
        for key, value in (('has_traffic_control', str(lane.has_traffic_control)),
                           ('turn_direction', lane.turn_direction), ('is_intersection', str(lane.is_intersection)),
                           ('l_neighbor_id', str(lane.left_neighbor)), ('r_neighbor_id', str(lane.right_neighbor))):
            ElementTree.SubElement(way, 'tag', {'k': key, 'v': value})
        for ref in ids:
            ElementTree.SubElement(way, 'nd', {'ref': str(ref)})
        for key, values in (('predecessor', lane.predecessors), ('successor', lane.successors)):
            for value in values:
                ElementTree.SubElement(way, 'tag', {'k': key, 'v': str(value)})
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding='utf-8', xml_declaration=True)


def _route_points(lanes_by_id: Dict[int, SyntheticLane], start: SyntheticLane, rng: np.random.Generator,
                  min_length: float) -> np.ndarray:
    points = [start.points]
    lane, length = start, float(np.linalg.norm(np.diff(start.points, axis=0), axis=1).sum())
    while length < min_length:
        if not lane.successors:  # dead end: stop there (the agent then stands still)
            break
        lane = lanes_by_id[int(rng.choice(lane.successors))]
        points.append(lane.points[1:])
        length += float(np.linalg.norm(np.diff(lane.points, axis=0), axis=1).sum())
    return np.concatenate(points, axis=0)


def _along(route: np.ndarray, distances: np.ndarray) -> np.ndarray:
    segment = np.linalg.norm(np.diff(route, axis=0), axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(segment)])
    distances = np.clip(distances, 0.0, cumulative[-1])
    return np.stack([np.interp(distances, cumulative, route[:, 0]), np.interp(distances, cumulative, route[:, 1])],
                    axis=1)


def sequence_rows(lanes: Sequence[SyntheticLane], rng: np.random.Generator, city: str, num_others: int,
                  num_steps: int, start_time: float) -> List[Tuple[float, str, str, float, float, str]]:
    """Rows (TIMESTAMP, TRACK_ID, OBJECT_TYPE, X, Y, CITY_NAME) of one sequence, sorted by time."""
    road_lanes = [lane for lane in lanes if not lane.is_intersection]
    lanes_by_id = {lane.lane_id: lane for lane in lanes}
    times = start_time + 0.1 * np.arange(AV1_NUM_STEPS)
    tracks: List[Tuple[str, str, np.ndarray, np.ndarray]] = []  # (id, type, positions [T, 2], observed [T])
    for index in range(2 + num_others):
        object_type = ('AV', 'AGENT')[index] if index < 2 else 'OTHERS'
        track_id = AV_TRACK_ID if object_type == 'AV' else \
            f'00000000-0000-0000-0000-{int(rng.integers(1, 10 ** 12)):012d}'
        lane = road_lanes[int(rng.integers(len(road_lanes)))]
        speed = float(rng.uniform(4.0, 14.0)) if rng.random() > 0.15 or index < 2 else 0.0
        route = _route_points(lanes_by_id, lane, rng, speed * 5.0 + 30.0)
        travelled = float(rng.uniform(0.0, 10.0)) + speed * 0.1 * np.arange(AV1_NUM_STEPS)
        positions = _along(route, travelled) + rng.normal(0.0, 0.03, size=(AV1_NUM_STEPS, 2))
        observed = np.ones(AV1_NUM_STEPS, dtype=bool)
        if object_type == 'OTHERS' and rng.random() < 0.4:  # enters late or leaves early
            cut = int(rng.integers(5, AV1_NUM_STEPS - 5))
            if rng.random() < 0.5:
                observed[:cut] = False
            else:
                observed[cut:] = False
        tracks.append((track_id, object_type, positions, observed))
    rows = []
    for step in range(num_steps):
        for track_id, object_type, positions, observed in tracks:
            if observed[step]:
                rows.append((float(times[step]), track_id, object_type, float(positions[step, 0]),
                             float(positions[step, 1]), city))
    return rows


def write_sequence_csv(rows: Sequence[Tuple[float, str, str, float, float, str]], path: os.PathLike) -> None:
    with open(path, 'w') as handle:
        handle.write('TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME\n')
        for timestamp, track_id, object_type, x, y, city in rows:
            handle.write(f'{timestamp:.6f},{track_id},{object_type},{x:.6f},{y:.6f},{city}\n')


def generate_argoverse_v1(out_dir: os.PathLike, num_sequences: int = 8, split: str = 'train', city: str = 'PIT',
                          seed: int = 0, num_others: int = 6, num_blocks: int = 2,
                          lanes_per_direction: int = 2) -> Tuple[Path, Path]:
    """Write a map and ``num_sequences`` CSVs; returns (CSV folder, map folder)."""
    if city not in CITY_IDS:
        raise ValueError(f'unknown city {city!r}; known: {sorted(CITY_IDS)}')
    out_dir = Path(out_dir)
    map_dir = out_dir / 'map_files'
    csv_dir = out_dir / split / 'data'
    map_dir.mkdir(parents=True, exist_ok=True)
    csv_dir.mkdir(parents=True, exist_ok=True)
    lanes = grid_city(num_blocks=num_blocks, lanes_per_direction=lanes_per_direction)
    map_path = map_dir / map_file_name(city)
    if not map_path.exists():
        write_city_map(lanes, map_path)
    rng = np.random.default_rng(seed)
    num_steps = AV1_NUM_HISTORICAL_STEPS if split == 'test' else AV1_NUM_STEPS
    for index in range(num_sequences):
        sequence_id = 10000 + seed * 100000 + index
        rows = sequence_rows(lanes, rng, city, num_others, num_steps, start_time=315969000.0 + 10.0 * index)
        write_sequence_csv(rows, csv_dir / f'{sequence_id}.csv')
    return csv_dir, map_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m datasets.synthetic.av1', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out_dir', required=True)
    parser.add_argument('--num_sequences', type=int, default=8)
    parser.add_argument('--split', default='train', help="'test' writes the 20 history timestamps only")
    parser.add_argument('--city', default='PIT', choices=sorted(CITY_IDS))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num_others', type=int, default=6)
    parser.add_argument('--num_blocks', type=int, default=2)
    parser.add_argument('--lanes_per_direction', type=int, default=2)
    args = parser.parse_args(argv)
    csv_dir, map_dir = generate_argoverse_v1(args.out_dir, args.num_sequences, args.split, args.city, args.seed,
                                             args.num_others, args.num_blocks, args.lanes_per_direction)
    print(f'wrote {args.num_sequences} sequences to {csv_dir} and the {args.city} map to {map_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
