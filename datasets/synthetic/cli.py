"""Writing many scenarios: `generate_split` and the command line.

    python -m datasets.synthetic --out DIR --split train --num 100 --seed 0 [--num_workers 2] [--profile highway]
        [--scenes_per_map 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence

from datasets.synthetic.av2_writer import write_scenario
from datasets.synthetic.profiles import PROFILES, get_profile
from datasets.synthetic.scenario import SCENES_PER_MAP, SPLITS, generate_scenarios


def _check_writable(directory: str) -> None:
    """Create `directory` and probe it, so an unwritable --out fails before any work with one clear line."""
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if error.filename is not None and os.fspath(error.filename) != os.fspath(directory):
            reason += f': {error.filename}'
        raise OSError(f'{directory}: cannot write the output directory ({reason}); choose a writable --out') from None


def _generate_range(args) -> List[str]:
    out_dir, split, seed, profile, indices, scenes_per_map = args
    ids = []
    for _, scenario_id, table, city_map in generate_scenarios(seed, indices, split, profile, scenes_per_map):
        write_scenario(out_dir, split, scenario_id, table, city_map.json_bytes())
        ids.append(scenario_id)
    return ids


def _blocks_of(num: int, size: int, scenes_per_map: int) -> List[range]:
    """range(num) cut into consecutive pieces of about `size` indices that do not straddle two blocks of a shared
    map: whole blocks when `size` holds one, else parts of one block (each part then builds the block's map)."""
    if size >= scenes_per_map:
        size = size // scenes_per_map * scenes_per_map
        return [range(lo, min(num, lo + size)) for lo in range(0, num, size)]
    return [range(lo, min(num, block + scenes_per_map, lo + size))
            for block in range(0, num, scenes_per_map) for lo in range(block, min(num, block + scenes_per_map), size)]


def generate_split(out_dir: str, split: str, num: int, seed: int, num_workers: int = 1,
                   profile: str = 'default', progress: bool = False, scenes_per_map: int = SCENES_PER_MAP
                   ) -> List[str]:
    """Write `num` scenarios under out_dir/split; returns their ids in generation order.

    Scenario k uses seed scenario_seed(seed, k) and, with scenes_per_map > 1, the road network and city frame of
    road_seed(seed, k // scenes_per_map) (shared by the scenarios of that block), so the result does not depend on
    num_workers. ``progress`` shows a progress bar on stderr.
    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; expected one of {", ".join(SPLITS)}')
    get_profile(profile)
    if num < 0:
        raise ValueError(f'--num must be >= 0, got {num}')
    if num_workers < 1:
        raise ValueError(f'--num_workers must be >= 1, got {num_workers}')
    if scenes_per_map < 1:
        raise ValueError(f'--scenes_per_map must be >= 1, got {scenes_per_map}')
    _check_writable(os.path.join(out_dir, split))
    bar = None
    if progress and num > 0:
        from tqdm import tqdm
        bar = tqdm(total=num, desc=f'Generating {split} scenarios', unit='scenario', file=sys.stderr,
                   dynamic_ncols=True)
    try:
        if num_workers == 1 or num <= 1:
            chunk = 16 if bar is not None else max(num, 1)  # small chunks only to move the bar
            ids = []
            for indices in _blocks_of(num, chunk, scenes_per_map):
                ids += _generate_range((out_dir, split, seed, profile, indices, scenes_per_map))
                if bar is not None:
                    bar.update(len(indices))
        else:
            chunk = max(1, min(64, num // (num_workers * 4) or 1))
            jobs = [(out_dir, split, seed, profile, indices, scenes_per_map)
                    for indices in _blocks_of(num, chunk, scenes_per_map)]
            ids = []
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                for part in pool.map(_generate_range, jobs):  # in job order
                    ids += part
                    if bar is not None:
                        bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f'duplicate synthetic scenario ids for seed {seed} split {split}')
    return ids


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m datasets.synthetic',
        description='Write synthetic motion-forecasting scenarios in the Argoverse 2 layout '
                    '(<out>/<split>/<id>/scenario_<id>.parquet + log_map_archive_<id>.json).')
    parser.add_argument('--out', type=str, required=True, help='root directory (the AV2 "raw" root)')
    parser.add_argument('--split', type=str, required=True, choices=SPLITS,
                        help='train/val: 110 steps; test: the 50 history steps only')
    parser.add_argument('--num', type=int, required=True, help='number of scenarios')
    parser.add_argument('--seed', type=int, default=0, help='base seed; same seed gives byte-identical files')
    parser.add_argument('--num_workers', type=int, default=1, help='parallel worker processes')
    parser.add_argument('--profile', type=str, default='default', choices=sorted(PROFILES),
                        help='; '.join(f'{name}: {p.description}' for name, p in sorted(PROFILES.items())))
    parser.add_argument('--scenes_per_map', type=int, default=SCENES_PER_MAP,
                        help='consecutive scenarios that share one road network and city frame (their map json is '
                             'identical, as scenarios recorded on the same streets); 1: a map per scenario '
                             '(default: %(default)s)')
    parser.add_argument('--no_progress', dest='progress', action='store_false', help='no progress bar')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_arg_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        ids = generate_split(args.out, args.split, args.num, args.seed, args.num_workers, args.profile,
                             progress=args.progress, scenes_per_map=args.scenes_per_map)
    except (ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    rate = len(ids) / elapsed if elapsed > 0 else float('inf')
    print(f'wrote {len(ids)} {args.profile} scenarios to {os.path.join(args.out, args.split)} '
          f'in {elapsed:.1f} s ({rate:.1f} scenarios/s, {args.num_workers} worker(s))')
    return 0


if __name__ == '__main__':
    sys.exit(main())

