"""Synthetic motion-forecasting scenarios written in the genuine Argoverse 2 file format.

Each scenario is a small world: a road network (`grid_roads`: urban intersections, `highway_roads`: a multi-lane
curved road with ramps), traffic simulated on it (`traffic`: drivers with their own style following lanes with
IDM car following, signals, stop signs and right of way, lane changes and turns; pedestrians and static
objects), and an AV whose tracker turns the objects into AV2 tracks (`observation`: fragments, unscored, scored
and one focal track). `av2_writer` writes the official parquet and map json; `av1` writes small Argoverse 1
data sets. Profiles (`profiles`) make different data sets from the same machinery.

    python -m datasets.synthetic --out DIR --split train --num 100 --seed 0 [--num_workers 2] [--profile highway]
        [--scenes_per_map 8]

Consecutive scenarios of a split share one road network and city frame (`--scenes_per_map`, `city_map`), as
real logs are recorded on the same streets; traffic, focal agent and tracker are each scenario's own.
"""
from datasets.synthetic.av2_writer import write_scenario
from datasets.synthetic.cli import build_arg_parser, generate_split, main
from datasets.synthetic.profiles import AV2_CITIES, PROFILES, SyntheticProfile, get_profile
from datasets.synthetic.city_map import CityMap, road_seed
from datasets.synthetic.scenario import SCENES_PER_MAP, SPLITS, generate_scenario, generate_scenarios, scenario_seed
from datasets.synthetic.trajectory import NUM_HISTORICAL_STEPS, NUM_STEPS

__all__ = ['AV2_CITIES', 'CityMap', 'NUM_HISTORICAL_STEPS', 'NUM_STEPS', 'PROFILES', 'SCENES_PER_MAP', 'SPLITS',
           'SyntheticProfile', 'build_arg_parser', 'generate_scenario', 'generate_scenarios', 'generate_split',
           'get_profile', 'main', 'road_seed', 'scenario_seed', 'write_scenario']
