"""The allocator setting for bulk generation: made on glibc, once, without changing any generated value."""
import platform

from datasets.synthetic import allocator
from datasets.synthetic.scenario import generate_scenario, generate_scenarios, road_seed, scenario_seed


def test_keep_freed_memory_is_set_on_glibc_and_idempotent():
    expected = platform.libc_ver()[0] == 'glibc'
    assert allocator.keep_freed_memory() is expected
    assert allocator.keep_freed_memory() is expected


def test_scenes_after_the_setting_equal_scenes_generated_alone():
    allocator.keep_freed_memory()
    for index, scenario_id, table, city_map in generate_scenarios(5, range(2), 'train', 'highway', 2):
        alone_id, alone_table, alone_map = generate_scenario(scenario_seed(5, index), 'train', 'highway',
                                                             road_seed=road_seed(5, 0))
        assert scenario_id == alone_id and table.equals(alone_table) and city_map.json_dict() == alone_map
