"""Generation speed of the synthetic Argoverse 2 generator, per core.

    python benchmarks/synthetic_generation_speed.py [--num 50] [--repeats 3] [--profiles default highway demo]
        [--json out.json]

One process with OMP_NUM_THREADS=1. Per profile, the same ``--num`` scenarios (seeds ``scenario_seed(seed, k)``) are
generated twice: by ``generate_scenario`` alone (simulation, tracker, parquet table and map dict in memory), and by
``generate_split`` into a temporary directory (the full write path: parquet and map json files, atomic writes).
Times are CPU seconds of this process (``time.process_time``), so waiting for the disk is not counted; on a loaded
machine CPU time is still inflated by cache and frequency effects, so each mode is timed ``--repeats`` times and the
fastest pass is reported, and only numbers measured in one sitting should be compared.
"""
import argparse
import os
import sys
from pathlib import Path

os.environ['OMP_NUM_THREADS'] = '1'   # before numpy is imported: one core, as the per-core rate says

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import HelpFormatter, positive_int  # noqa: E402

PROFILE_NAMES = ('default', 'highway', 'demo')


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=HelpFormatter)
    parser.add_argument('--num', type=positive_int, default=50, help='scenarios per profile')
    parser.add_argument('--repeats', type=positive_int, default=3,
                        help='passes per mode; the fastest is reported (the one least slowed by other load)')
    parser.add_argument('--profiles', nargs='+', default=list(PROFILE_NAMES), choices=PROFILE_NAMES,
                        help='generator profiles to time')
    parser.add_argument('--seed', type=int, default=0, help='base seed of the scenarios')
    parser.add_argument('--split', default='train', choices=('train', 'val', 'test'),
                        help='split to generate (test: 50 history steps only)')
    parser.add_argument('--json', type=str, default=None, help='also write the results to this json file')
    return parser


def time_profile(profile: str, num: int, seed: int, split: str, repeats: int = 1) -> dict:
    """CPU seconds per scenario of `generate_scenario` and of `generate_split` (with file writes), the fastest of
    `repeats` passes each."""
    import tempfile
    import time

    from datasets.synthetic import generate_scenario, generate_split, scenario_seed

    generate_scenario(scenario_seed(seed, num), split, profile)   # imports and first-call costs out of the timing
    generate_s, write_s = [], []
    for _ in range(repeats):
        start = time.process_time()
        for k in range(num):
            generate_scenario(scenario_seed(seed, k), split, profile)
        generate_s.append(time.process_time() - start)
        with tempfile.TemporaryDirectory(prefix='synthetic-speed-') as out_dir:
            start = time.process_time()
            ids = generate_split(out_dir, split, num, seed, num_workers=1, profile=profile)
            write_s.append(time.process_time() - start)
            if len(ids) != num:
                raise RuntimeError(f'generate_split wrote {len(ids)} scenarios instead of {num}')
    best_generate, best_write = min(generate_s), min(write_s)
    return {'profile': profile, 'num': num, 'repeats': repeats,
            'generate_cpu_s_per_scenario': best_generate / num, 'generate_scenarios_per_s': num / best_generate,
            'write_cpu_s_per_scenario': best_write / num, 'write_scenarios_per_s': num / best_write,
            'generate_cpu_s_passes': generate_s, 'write_cpu_s_passes': write_s}


def markdown_table(results) -> str:
    lines = ['| profile | generate_scenario | with file writes (generate_split) |', '|---|---|---|']
    for r in results:
        lines.append(f"| {r['profile']} | {r['generate_scenarios_per_s']:.1f} scenarios/s "
                     f"({1000 * r['generate_cpu_s_per_scenario']:.1f} ms) | {r['write_scenarios_per_s']:.1f} "
                     f"scenarios/s ({1000 * r['write_cpu_s_per_scenario']:.1f} ms) |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    import json
    import platform

    import numpy as np
    import pyarrow as pa

    from utils.atomic_io import atomic_write_text

    results = [time_profile(profile, args.num, args.seed, args.split, args.repeats) for profile in args.profiles]
    print(f'{args.num} {args.split} scenarios per profile, seed {args.seed}, one process, OMP_NUM_THREADS=1; '
          f'CPU time per scenario, fastest of {args.repeats} passes; numpy {np.__version__}, pyarrow {pa.__version__}, '
          f'{platform.processor() or platform.machine()}')
    print(markdown_table(results))
    if args.json:
        atomic_write_text(args.json, json.dumps({'numpy': np.__version__, 'pyarrow': pa.__version__,
                                                 'split': args.split, 'seed': args.seed, 'results': results},
                                                indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
