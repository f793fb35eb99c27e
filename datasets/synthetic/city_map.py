"""A road network placed in a city: the map that a block of synthetic scenarios shares.

Real data sets record many scenarios on the same streets. A `CityMap` is one road network (scene frame, metres)
with its city and city frame (a rotation by `theta`, then a translation by `offset`, metres); the scenarios of a
block simulate their own traffic on it and carry the same map json, which is built and encoded once.
A city map is determined by its road seed (`road_seed(seed, block)`), split and profile alone.
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Optional

import numpy as np

from datasets.synthetic.av2_writer import map_json_bytes, map_to_av2_json, rotate
from datasets.synthetic.geometry import rotation
from datasets.synthetic.grid_roads import build_grid
from datasets.synthetic.highway_roads import build_highway
from datasets.synthetic.lane_graph import LaneTable, build_lane_table
from datasets.synthetic.profiles import SyntheticProfile
from datasets.synthetic.road_network import RoadMap

ROAD_BUILDERS = {'grid': build_grid, 'highway': build_highway}
MAX_NETWORK_DRAWS = 20     # random networks may be degenerate (e.g. a road shorter than its intersections)
_ROAD_STREAM = 0x524F4144  # keeps road seeds apart from the scenario seeds of the same (seed, index)


def stable_code(text: str) -> int:
    return zlib.crc32(text.encode('utf-8'))


def build_road_map(rng: np.random.Generator, prof: SyntheticProfile) -> RoadMap:
    """Road network of the profile's kind."""
    if prof.road_kind not in ROAD_BUILDERS:
        raise ValueError(f'profile {prof.name!r}: unknown road_kind {prof.road_kind!r} (expected grid or highway)')
    return ROAD_BUILDERS[prof.road_kind](rng, prof)


def road_seed(seed: int, block: int) -> int:
    """Seed of the road network of the `block`-th block of scenarios of a split generated with `seed`."""
    return int(np.random.SeedSequence([seed, block, _ROAD_STREAM]).generate_state(1, np.uint64)[0])


@dataclasses.dataclass
class CityMap:
    """A road network (scene frame) in `city`, placed by rotating by `theta` and adding `offset` [2]."""
    road_map: RoadMap
    city: str
    theta: float
    offset: np.ndarray
    _lane_table: Optional[LaneTable] = None
    _json: Optional[dict] = None
    _json_bytes: Optional[bytes] = None

    def __post_init__(self):
        self.rot = rotation(self.theta)

    def to_city(self, points: np.ndarray) -> np.ndarray:
        """Scene-frame points [K, 2] -> city frame [K, 2]."""
        # written out: a BLAS product for a 2x2 rotation spends more on threads than on arithmetic
        return rotate(points, self.rot) + self.offset

    def lane_table(self, upstream: float) -> LaneTable:
        """A scene's own simulator view of the lanes (a scene may append virtual lanes to it), copied from the one
        built for this map."""
        if self._lane_table is None:
            self._lane_table = build_lane_table(self.road_map, upstream)
        return self._lane_table.copy()

    def json_dict(self) -> dict:
        """The AV2 log_map_archive dict, built once and shared by every caller: read it, do not change it."""
        if self._json is None:
            self._json = map_to_av2_json(self.road_map, self.to_city)
        return self._json

    def json_bytes(self) -> bytes:
        """The map json file's bytes (exactly json.dumps of `json_dict`, which it does not need), encoded once."""
        if self._json_bytes is None:
            self._json_bytes = map_json_bytes(self.road_map, self.to_city)
        return self._json_bytes


def place_in_city(rng: np.random.Generator, road_map: RoadMap, prof: SyntheticProfile) -> CityMap:
    """`road_map` placed in one of the profile's cities by a random rotation and an offset of up to 3 km."""
    city = prof.cities[int(rng.integers(len(prof.cities)))]
    theta = float(rng.uniform(-math.pi, math.pi))
    offset = rng.uniform(-3000.0, 3000.0, size=2)
    return CityMap(road_map, city, theta, offset)


def build_city_map(seed: int, split: str, prof: SyntheticProfile) -> CityMap:
    """The city map of road seed `seed` (see `road_seed`) for `split` and profile `prof`.

    A degenerate random network is replaced by the next one drawn from the same generator, so the result depends
    on (seed, split, profile) only."""
    rng = np.random.default_rng(np.random.SeedSequence(
        [int(seed), stable_code(split), stable_code(prof.name), _ROAD_STREAM]))
    for _ in range(MAX_NETWORK_DRAWS):
        try:
            road_map = build_road_map(rng, prof)
        except RuntimeError:   # a degenerate random network
            continue
        return place_in_city(rng, road_map, prof)
    raise RuntimeError(f'synthetic road seed={seed} split={split} profile={prof.name}: no usable road network '
                       f'in {MAX_NETWORK_DRAWS} draws')
