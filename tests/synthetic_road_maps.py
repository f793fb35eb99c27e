"""Road networks of the synthetic generator for tests: one per seed, skipping the degenerate ones the generator
would redraw."""
from typing import Iterator, Tuple

import numpy as np

from datasets.synthetic.scenario import build_road_map


def road_maps(prof, num_seeds: int) -> Iterator[Tuple[np.random.Generator, object]]:
    """(rng after building, road map) for seeds 0 .. num_seeds - 1 whose random network is usable."""
    for seed in range(num_seeds):
        rng = np.random.default_rng(seed)
        try:
            yield rng, build_road_map(rng, prof)
        except RuntimeError:   # a degenerate random network; the generator draws another one
            continue
