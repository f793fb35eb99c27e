"""The map json written with array operations (`points_text`, `map_json_bytes`) is exactly json.dumps' text."""
import json

import numpy as np
import pytest

from datasets.synthetic.av2_writer import encode_map_json, map_json_bytes
from datasets.synthetic.city_map import build_city_map, road_seed
from datasets.synthetic.points_text import point_lists_text
from datasets.synthetic.profiles import get_profile


def _reference(x, y, z, counts):
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()
    return [json.dumps([{'x': a, 'y': b, 'z': c} for a, b, c in zip(x[lo:hi].tolist(), y[lo:hi].tolist(),
                                                                     z[lo:hi].tolist())])
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def test_point_text_equals_json_for_centimetre_values():
    rng = np.random.default_rng(0)
    edge = [0.0, -0.0, 0.004, -0.004, 0.005, -0.015, 0.1, -0.5, 1.0, 10.0, 100.0, 1000.0, 1e6, 9999999.99,
            -9999999.99, 123.45, -100.05, 0.01, -0.09]
    values = np.round(np.concatenate([edge, rng.uniform(-1e5, 1e5, 20000), rng.uniform(-2, 2, 5000),
                                      10 ** rng.uniform(-3, 7, 5000) * rng.choice([-1, 1], 5000)]), 2)
    values = values[np.abs(values) < 1e7]
    # lists of random lengths, empty ones included
    counts = np.diff(np.concatenate([[0], np.sort(rng.integers(0, len(values) + 1, size=5000)), [len(values)]]))
    assert (counts == 0).any()
    y, z = np.roll(values, 1), -values
    assert point_lists_text(values, y, z, counts) == _reference(values, y, z, counts)


def test_point_text_rejects_what_it_cannot_write():
    for bad in (1e7, -2e7, np.nan, np.inf):
        with pytest.raises(ValueError):
            point_lists_text(np.array([bad]), np.zeros(1), np.zeros(1), np.array([1]))
    assert point_lists_text(np.zeros(0), np.zeros(0), np.zeros(0), np.array([0, 0])) == ['[]', '[]']


@pytest.mark.parametrize('profile', ['default', 'highway', 'demo'])
def test_map_json_bytes_equal_json_dumps_of_the_map_dict(profile):
    for block in range(3):
        city_map = build_city_map(road_seed(5, block), 'train', get_profile(profile))
        assert map_json_bytes(city_map.road_map, city_map.to_city) == encode_map_json(city_map.json_dict())
        assert city_map.json_bytes() == encode_map_json(city_map.json_dict())
