"""datasets/synthetic/observation.py: the focal candidates, checked object by object against the rule they follow
(road users inside the sensor range at every step, moving at the current step, moved during the history) on
simulated scenes of every profile."""
import math

import pytest

from datasets.synthetic.observation import DYNAMIC_TYPES, _candidates
from datasets.synthetic.profiles import get_profile
from datasets.synthetic.scenario import _scene_rng, build_road_map, scenario_seed
from datasets.synthetic.traffic import simulate_scene
from datasets.synthetic.trajectory import NUM_HISTORICAL_STEPS


def _by_rule(objects, sensor):
    av, now, out = objects[0].position, NUM_HISTORICAL_STEPS - 1, []
    for i, obj in enumerate(objects[1:], start=1):
        if not obj.dynamic or obj.object_type not in DYNAMIC_TYPES:
            continue
        farthest = max(math.dist(p, q) for p, q in zip(obj.position.tolist(), av.tolist()))
        moved = math.dist(obj.position[now].tolist(), obj.position[0].tolist())
        speed = math.hypot(*obj.velocity[now].tolist())
        if farthest <= sensor and speed >= 1.0 and moved >= (2.0 if obj.object_type == 'pedestrian' else 5.0):
            out.append(i)
    return out


@pytest.mark.parametrize('profile', ['default', 'highway', 'demo'])
def test_candidates_follow_the_rule_object_by_object(profile):
    prof = get_profile(profile)
    found = 0
    for k in range(3):
        rng = _scene_rng(scenario_seed(7, k), 'train', profile)
        objects = simulate_scene(rng, build_road_map(rng, prof), prof)
        for sensor in (prof.sensor_range[0], prof.sensor_range[1], 1e9):
            expected = _by_rule(objects, sensor)
            assert _candidates(objects, sensor) == expected
            found += len(expected)
    assert found > 0     # the scenes do hold candidates, so the comparison is not between empty lists


def test_parked_and_static_objects_are_never_candidates():
    rng = _scene_rng(scenario_seed(7, 0), 'train', 'default')
    prof = get_profile('default')
    objects = simulate_scene(rng, build_road_map(rng, prof), prof)
    assert _candidates(objects, 1e9)     # the scene has candidates ...
    standing = [objects[0]] + [obj for obj in objects[1:] if not obj.dynamic]
    assert len(standing) > 1 and _candidates(standing, 1e9) == []     # ... but none among what does not move
