"""Preprocessing benchmark: per-core and all-core throughput, cache size, and load time through a DataLoader.

    python benchmarks/bench_preprocess.py --num 400 [--official_dir PATH_TO_OFFICIAL_QCNET] [--json out.json]

Scenarios: ``--num`` synthetic Argoverse 2 scenarios from ``python -m datasets.synthetic`` when that module exists,
otherwise the real training samples copied under new names (cycled), plus the real samples themselves.
``--official_dir`` also times the official QCNet processing (``get_agent_features`` + ``get_map_features`` + pickle)
on the same scenarios in a subprocess, single core, for comparison.
"""
import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from datasets import ArgoverseV2Dataset, preprocess_scenarios  # noqa: E402
from datasets.argoverse_v2 import list_argoverse_v2_scenarios  # noqa: E402
from datasets.storage import CACHE_SUFFIX  # noqa: E402
from utils.atomic_io import atomic_write_text  # noqa: E402

DEFAULT_REAL_DIR = ROOT / 'tests' / 'data' / 'av2'

# Runs in a subprocess whose sys.path starts with the official QCNet checkout (its package is also named
# `datasets`). The official __init__ would try to download the full split, so the object is built without it.
_OFFICIAL_TIMER = r'''
import os, sys, time, json, pickle
from pathlib import Path
from datasets.argoverse_v2_dataset import ArgoverseV2Dataset
raw_dir, out_dir, vocab = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ds = ArgoverseV2Dataset.__new__(ArgoverseV2Dataset)
ds.split, ds.dim, ds.num_historical_steps, ds.num_future_steps, ds.num_steps = 'train', 3, 50, 60, 110
ds.predict_unseen_agents, ds.vector_repr = False, True
for key, value in vocab.items():
    setattr(ds, key, value)
ds._raw_dir, ds._processed_dir = raw_dir, out_dir
ds._raw_file_names = sorted(os.listdir(raw_dir))
ds.process()  # warm-up pass (imports, caches)
start = time.perf_counter()
ds.process()
print(json.dumps({'seconds_per_scenario': (time.perf_counter() - start) / len(ds._raw_file_names)}))
'''


def _official_vocabularies():
    from datasets.scenario import (AGENT_TYPES, POINT_SIDES, POINT_TYPES, POLYGON_IS_INTERSECTIONS,
                                   POLYGON_TO_POLYGON_TYPES, POLYGON_TYPES)
    return {'_agent_types': list(AGENT_TYPES), '_polygon_types': list(POLYGON_TYPES),
            '_polygon_is_intersections': list(POLYGON_IS_INTERSECTIONS), '_point_types': list(POINT_TYPES),
            '_point_sides': list(POINT_SIDES), '_polygon_to_polygon_types': list(POLYGON_TO_POLYGON_TYPES)}


def make_raw(work: Path, num: int, seed: int, real_dir: Path) -> str:
    raw = work / 'raw'
    if importlib.util.find_spec('datasets.synthetic') is not None:
        subprocess.run([sys.executable, '-m', 'datasets.synthetic', '--out', str(work / 'synthetic'), '--split', 'train',
                        '--num', str(num), '--seed', str(seed)], check=True, cwd=ROOT)
        (work / 'synthetic' / 'train').rename(raw)
        return 'synthetic (datasets.synthetic)'
    sources = [real_dir / 'train' / name for name in list_argoverse_v2_scenarios(real_dir / 'train')]
    if not sources:
        raise SystemExit(f'no datasets.synthetic module and no real samples in {real_dir}/train')
    for i in range(num):
        source = sources[i % len(sources)]
        name = f'{source.name[:-6]}{i:06d}'
        (raw / name).mkdir(parents=True)
        shutil.copyfile(next(source.glob('scenario_*.parquet')), raw / name / f'scenario_{name}.parquet')
        shutil.copyfile(next(source.glob('log_map_archive_*.json')), raw / name / f'log_map_archive_{name}.json')
    return f'real training samples cycled ({len(sources)} distinct)'


def measure(raw: str, work: Path, num_workers: int, batch_size: int) -> dict:
    single = work / 'processed_1core'
    summary = preprocess_scenarios(raw, str(single), num_workers=1, progress=False)
    result = {'scenarios': summary.processed, 'failures': len(summary.failures),
              'seconds_per_scenario_1core': summary.wall_time_s / max(summary.processed, 1)}
    parallel = work / f'processed_{num_workers}cores'
    summary = preprocess_scenarios(raw, str(parallel), num_workers=num_workers, progress=False)
    result.update(wall_seconds_all_cores=summary.wall_time_s, num_workers=summary.num_workers,
                  seconds_per_scenario_per_core_all_cores=summary.seconds_per_scenario_per_core)
    sizes = [entry.stat().st_size for entry in os.scandir(parallel) if entry.name.endswith(CACHE_SUFFIX)]
    result['bytes_per_scenario'] = float(np.mean(sizes)) if sizes else float('nan')
    dataset = ArgoverseV2Dataset(str(work), 'train', raw_dir=raw, processed_dir=str(parallel), progress=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for _ in loader:  # warm-up (page cache, lazy imports)
        break
    start = time.perf_counter()
    count = sum(batch.num_graphs for batch in loader)
    result['load_seconds_per_sample_batch%d' % batch_size] = (time.perf_counter() - start) / count
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num', type=int, default=400, help='synthetic (or cycled real) scenarios to process')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num_workers', type=int, default=os.cpu_count() or 1, help='processes for the all-core run')
    parser.add_argument('--batch_size', type=int, default=32, help='DataLoader batch size for the load-time figure')
    parser.add_argument('--real_dir', type=Path, default=DEFAULT_REAL_DIR, help='real samples (<split>/<id>/...)')
    parser.add_argument('--official_dir', type=Path, default=None, help='official QCNet checkout to time as well')
    parser.add_argument('--workdir', type=Path, default=None, help='scratch directory (default: a temporary one)')
    parser.add_argument('--json', type=Path, default=None, help='also write the numbers to this JSON file')
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix='bench_preprocess_'))
    work.mkdir(parents=True, exist_ok=True)
    report = {'date': time.strftime('%Y-%m-%d'), 'machine': f'{platform.processor() or platform.machine()}, '
                                                             f'{os.cpu_count()} cores, {platform.platform()}',
              'command': ' '.join([Path(sys.executable).name] + sys.argv)}
    try:
        report['source'] = make_raw(work, args.num, args.seed, args.real_dir)
        report['synthetic_or_cycled'] = measure(str(work / 'raw'), work / 'main', args.num_workers, args.batch_size)
        for split in ('train', 'test'):
            real_raw = args.real_dir / split
            if real_raw.is_dir():
                # the handful of real samples, repeated so the timer is meaningful
                repeated = work / f'real_{split}'
                for name in list_argoverse_v2_scenarios(real_raw):
                    for i in range(20):
                        copy = repeated / 'raw' / f'{name[:-3]}{i:03d}'
                        copy.mkdir(parents=True)
                        shutil.copyfile(real_raw / name / f'scenario_{name}.parquet',
                                        copy / f'scenario_{copy.name}.parquet')
                        shutil.copyfile(next((real_raw / name).glob('log_map_archive_*.json')),
                                        copy / f'log_map_archive_{copy.name}.json')
                report[f'real_{split}'] = measure(str(repeated / 'raw'), repeated, args.num_workers, args.batch_size)
        if args.official_dir is not None:
            out = work / 'official_out'
            out.mkdir()
            env = dict(os.environ, PYTHONPATH=str(args.official_dir))
            timed = {}
            for name, raw in (('synthetic_or_cycled', work / 'raw'), ('real_train', work / 'real_train' / 'raw')):
                if raw.is_dir():
                    completed = subprocess.run([sys.executable, '-c', _OFFICIAL_TIMER, str(raw), str(out),
                                                json.dumps(_official_vocabularies())], env=env, cwd=str(work),
                                               check=True, capture_output=True, text=True)
                    timed[name] = json.loads(completed.stdout.strip().splitlines()[-1])['seconds_per_scenario']
            report['official_seconds_per_scenario_1core'] = timed
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        atomic_write_text(args.json, text + '\n')


if __name__ == '__main__':
    main()
