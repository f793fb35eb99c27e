"""The simulator's view of the lane graph: integer lane indices with cached geometry, plus virtual straight lanes
before map entries and after map exits (never written to the map) so that traffic can enter and leave."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, List, Tuple

import numpy as np

from datasets.synthetic.geometry import batch_arc, batch_headings
from datasets.synthetic.road_network import RoadMap

POST_EXTENSION = 450.0       # straight virtual road after lanes that leave the map


@dataclass
class LaneTable:
    """Simulator view of the lane graph: integer lane indices, and virtual lanes before map entries and after
    map exits (straight extensions, never written to the map) so traffic can enter and leave. Per lane it caches
    arc length, unwrapped heading and curvature of the centre line, so routes are cheap to assemble."""
    ids: List[int]
    index: Dict[int, int]
    points: List[np.ndarray]
    arc: List[np.ndarray]
    heading: List[np.ndarray]
    curvature: List[np.ndarray]
    lengths: List[float]
    tails: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]   # the above without the first point
    heading_ends: List[Tuple[float, float, float]]   # heading at the first, second and last point
    is_turn: List[bool]                              # a left or right turn through an intersection
    pre: Dict[int, int]           # real lane index -> virtual lane index feeding it
    post: Dict[int, int]          # real lane index -> virtual lane index it drains into
    gated: List[bool]
    needs_stop: List[bool]
    conflicts: List[Tuple[Tuple[int, float], ...]]   # (conflicting lane, arc length on it where paths meet)
    crosswalks: List[frozenset]                      # indices into `crossings` of the lane's crossings
    crossings: List[Tuple[int, float]]               # (crosswalk, position along it) where a lane crosses
    siblings: List[Tuple[Tuple[int, float], ...]]   # (overlapping lane, shift of its s onto this lane's s)
    # RoadMap.along_arterial of each lane of the table as built (map lanes and the virtual lanes before and after
    # them); lanes appended later by a scene have none (an IndexError, not a guess)
    arterial: List[bool]
    # (lane, lane type) -> (successors a road user may take, their weights), filled as routes are built
    successor_choices: Dict[Tuple[int, str], Tuple[List[int], List[float]]] = field(default_factory=dict)
    # other values worked out from the map's lanes alone (name -> value), shared by the copies like the above
    derived: Dict[str, object] = field(default_factory=dict)
    # the lanes' geometry as added, one (points [P, 2], arc [P], heading [P], curvature [P]) per `add_many`
    # call, and the index of each lane's first point in the concatenation of these blocks (`flat_geometry`)
    blocks: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    first_point: List[int] = field(default_factory=list)

    def copy(self) -> 'LaneTable':
        """A table that can grow (virtual lanes appended) without changing this one; the arrays per lane, the
        successor choices and the derived values (functions of the lane graph alone) are shared."""
        lists = {f.name: list(getattr(self, f.name)) for f in fields(self)
                 if isinstance(getattr(self, f.name), list)}
        return replace(self, pre=dict(self.pre), post=dict(self.post), **lists)

    @property
    def total(self) -> int:
        return len(self.points)

    def flat_geometry(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(points [P, 2], arc [P], heading [P], curvature [P]) of all lanes in one array each, lane i's points
        from first_point[i] on (the same values as points[i], arc[i], heading[i], curvature[i])."""
        if len(self.blocks) == 1:
            return self.blocks[0]
        return tuple(np.concatenate(column) for column in zip(*self.blocks))

    def add(self, pts: np.ndarray) -> int:
        """Append a lane (real or virtual) given its centre line [K, 2]; returns its index."""
        self.add_many([pts])
        return len(self.points) - 1

    def add_many(self, polylines: List[np.ndarray]) -> None:
        counts = np.array([len(p) for p in polylines])
        pts = np.concatenate(polylines)
        arc = batch_arc(pts, counts)
        heading = batch_headings(pts, counts)
        curvature = np.zeros(len(pts))
        curvature[1:-1] = np.abs(heading[2:] - heading[:-2]) / np.maximum(np.abs(arc[2:] - arc[:-2]), 1e-6)
        starts = np.cumsum(counts) - counts
        ends = starts + counts - 1
        curvature[starts] = 0.0      # the differences above straddle two polylines there
        curvature[ends] = 0.0
        bounds = list(zip(starts.tolist(), (ends + 1).tolist()))   # plain slices: np.split costs more per piece
        arcs = [arc[a:b] for a, b in bounds]
        heads = [heading[a:b] for a, b in bounds]
        curvs = [curvature[a:b] for a, b in bounds]
        n = len(polylines)
        first = (self.first_point[-1] + len(self.points[-1])) if self.points else 0
        self.first_point.extend((first + starts).tolist())
        self.blocks.append((pts, arc, heading, curvature))
        self.points.extend(polylines)
        self.arc.extend(arcs)
        self.heading.extend(heads)
        self.curvature.extend(curvs)
        self.lengths.extend(arc[ends].tolist())
        self.tails.extend([(p[1:], s[1:], h[1:], c[1:]) for p, s, h, c in zip(polylines, arcs, heads, curvs)])
        self.heading_ends.extend(zip(heading[starts].tolist(), heading[starts + 1].tolist(),
                                     heading[ends].tolist()))
        self.is_turn.extend([False] * n)
        self.gated.extend([False] * n)
        self.needs_stop.extend([False] * n)
        self.conflicts.extend([()] * n)
        self.crosswalks.extend([frozenset()] * n)
        self.siblings.extend([()] * n)


def straight(origin: np.ndarray, direction: np.ndarray, start: float, end: float) -> np.ndarray:
    t = np.linspace(start, end, int(abs(end - start) / 2.0) + 1)[:, None]
    return origin + t * (direction / np.hypot(*direction))


def straights(origins: np.ndarray, directions: np.ndarray, start: float, end: float) -> np.ndarray:
    """`straight` for many lanes at once: [n, K, 2] (the same points)."""
    t = np.linspace(start, end, int(abs(end - start) / 2.0) + 1)[None, :, None]
    units = directions / np.hypot(directions[:, 0], directions[:, 1])[:, None]
    return origins[:, None, :] + t * units[:, None, :]


def build_lane_table(road_map: RoadMap, upstream: float) -> LaneTable:
    ids = list(road_map.lanes)
    table = LaneTable(ids=ids, index={lid: i for i, lid in enumerate(ids)}, points=[], arc=[], heading=[],
                       curvature=[], lengths=[], tails=[], heading_ends=[], is_turn=[], pre={}, post={}, gated=[],
                       needs_stop=[], conflicts=[],
                       crosswalks=[], crossings=[], siblings=[], arterial=[])
    table.add_many([road_map.lanes[lid].center for lid in ids])
    lanes, index, lengths = road_map.lanes, table.index, table.lengths
    for i, lid in enumerate(ids):
        lane = lanes[lid]
        table.gated[i] = lane.gated
        table.needs_stop[i] = lane.needs_stop
        if lane.conflicts:
            table.conflicts[i] = tuple((index[c], lane.conflict_at.get(c, lengths[index[c]])) for c in lane.conflicts)
        if lane.crosswalks:
            first = len(table.crossings)
            table.crossings.extend((c, lane.crosswalk_at.get(c, 0.0)) for c in lane.crosswalks)
            table.crosswalks[i] = frozenset(range(first, len(table.crossings)))
        table.is_turn[i] = lane.turn in ('left', 'right')
        # lanes branching from one predecessor overlap at their start (aligned there); lanes merging into one
        # successor (a taper, a ramp, connectors into one exit lane) overlap at their end (aligned there)
        starts = {s for p in lane.predecessors for s in lanes[p].successors}
        starts.discard(lid)
        ends = {p for s in lane.successors for p in lanes[s].predecessors}
        ends.discard(lid)
        if starts or ends:
            ends -= starts
            table.siblings[i] = tuple([(index[x], 0.0) for x in sorted(starts)]
                                      + [(index[x], lengths[i] - lengths[index[x]]) for x in sorted(ends)])
    # straight virtual lanes: one before each lane without predecessors, one after each lane without successors
    pre = [i for i, lid in enumerate(ids) if not road_map.lanes[lid].predecessors]
    post = [i for i, lid in enumerate(ids) if not road_map.lanes[lid].successors]
    before = straights(np.array([table.points[i][0] for i in pre]).reshape(-1, 2),
                       np.array([table.points[i][1] - table.points[i][0] for i in pre]).reshape(-1, 2),
                       -upstream, 0.0)
    after = straights(np.array([table.points[i][-1] for i in post]).reshape(-1, 2),
                      np.array([table.points[i][-1] - table.points[i][-2] for i in post]).reshape(-1, 2),
                      0.0, POST_EXTENSION)
    # virtual lanes in lane order, the one before a lane ahead of the one after it
    virtual = sorted([(i, 0, k) for k, i in enumerate(pre)] + [(i, 1, k) for k, i in enumerate(post)])
    if virtual:
        first = table.total
        table.add_many([(before, after)[side][k] for _, side, k in virtual])
        for n, (lane_idx, side, _) in enumerate(virtual):
            (table.pre, table.post)[side][lane_idx] = first + n
    # spawning asks this of the same lanes in every scene on the map: worked out once here
    table.arterial = [road_map.along_arterial(pts) for pts in table.points]
    return table

