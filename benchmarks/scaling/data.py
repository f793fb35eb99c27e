"""The data of a scaling sweep: generated synthetic pools, the fixed labelled set and val split, their processed
samples, and the pre-training subset of every point (links into the pools).

Layout under ``<work_dir>``::

    raw/pool_<profile>/train/<id>   generated pools (+ order.json: scenario ids in generation order)
    raw/pool_all/<id>               links to every pool scenario (one preprocessing for all)
    raw/subsets/<mix>_n<N>/<id>     links: the pre-training set of one point
    raw/labelled/train, raw/val/val the fixed fine-tuning set and val split
    data/{pool,labelled,val}        processed samples (``data`` is the --root of the training CLIs)

Scenario k of a pool is the same whatever the pool's size, so a pool grows without changing its first scenarios.
"""
import os
import shutil
import sys
import threading
import time
from typing import Dict, List, Sequence

from benchmarks.experiment_utils import atomic_write_json, link_dir, read_json
from benchmarks.scaling.plan import Point
from benchmarks.scaling.processes import ChildProcesses

POOL_SEED, VAL_SEED, LABELLED_SEED = 0, 1, 2   # synthetic base seeds: pools, val split, labelled set


class SweepData:
    """Generates and preprocesses what the points need (:meth:`prepare`) and links their pre-training subsets
    (:meth:`subset_dir`, safe from several threads). ``children`` runs the preprocessing CLI."""

    def __init__(self, work_dir: str, target_profile: str, mix_profiles: Sequence[str], num_labelled: int,
                 num_val: int, children: ChildProcesses, logs: str) -> None:
        self.work = os.path.abspath(work_dir)
        self.raw = os.path.join(self.work, 'raw')
        self.root = os.path.join(self.work, 'data')
        self.labelled_raw = os.path.join(self.raw, 'labelled', 'train')
        self.val_raw = os.path.join(self.raw, 'val', 'val')
        self.target_profile = target_profile
        self.mix_profiles = list(mix_profiles)
        self.num_labelled = num_labelled
        self.num_val = num_val
        self.children = children
        self.logs = logs
        self.cpus = os.cpu_count() or 1
        self.pools: Dict[str, List[str]] = {}
        self._subset_lock = threading.Lock()  # concurrent pre-trainings of one (mix, N) link the same folder

    def processed(self, name: str) -> str:
        """Processed-sample folder 'pool', 'labelled' or 'val'."""
        return os.path.join(self.root, name)

    def profiles_of(self, mix: str) -> List[str]:
        return [self.target_profile] if mix == 'single' else list(self.mix_profiles)

    def subset_ids_by_profile(self, mix: str, n: int) -> Dict[str, int]:
        """How many of the first scenarios of each pool make up N scenarios of ``mix`` (even split)."""
        profiles = self.profiles_of(mix)
        if n < len(profiles):
            raise ValueError(f'N = {n} is smaller than the {len(profiles)} profiles of the {mix!r} mix')
        return {p: n // len(profiles) + (i < n % len(profiles)) for i, p in enumerate(profiles)}

    # -------------------------------------------------------------- generation and preprocessing
    def _generate(self, out: str, split: str, num: int, seed: int, profile: str) -> List[str]:
        from datasets.synthetic import generate_split
        t0 = time.perf_counter()
        ids = generate_split(out, split, num, seed, num_workers=self.cpus, profile=profile)
        print(f'  generated {num} {profile} scenarios ({split}, seed {seed}) in {time.perf_counter() - t0:.1f} s',
              flush=True)
        return ids

    def _pool(self, profile: str, need: int) -> List[str]:
        """Scenario ids of the ``profile`` pool in generation order, grown to at least ``need``."""
        out = os.path.join(self.raw, f'pool_{profile}')
        order_path = os.path.join(out, 'order.json')
        old = read_json(order_path, 'pool order')['ids'] if os.path.exists(order_path) else []
        if len(old) >= need:
            return old
        ids = self._generate(out, 'train', need, POOL_SEED, profile)
        if ids[:len(old)] != old:
            raise RuntimeError(f'{order_path}: regenerated pool does not start with the recorded scenarios '
                               f'(was the generator changed?); use a new --work_dir')
        atomic_write_json(order_path, {'profile': profile, 'seed': POOL_SEED, 'ids': ids})
        return ids

    def _fixed_split(self, out: str, split: str, num: int, seed: int) -> None:
        order_path = os.path.join(out, 'order.json')
        if os.path.exists(order_path) and len(read_json(order_path, 'split order')['ids']) == num:
            return
        shutil.rmtree(os.path.join(out, split), ignore_errors=True)
        ids = self._generate(out, split, num, seed, self.target_profile)
        atomic_write_json(order_path, {'profile': self.target_profile, 'seed': seed, 'ids': ids})

    def _preprocess(self, raw_dir: str, processed_dir: str, name: str) -> None:
        self.children.run([sys.executable, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir',
                           raw_dir, '--processed_dir', processed_dir, '--num_workers', str(self.cpus), '--strict',
                           '--no_progress'], os.path.join(self.logs, f'preprocess_{name}.log'))

    def prepare(self, points: Sequence[Point]) -> None:
        """Generates and preprocesses every scenario the points need."""
        for d in (self.raw, self.root, self.logs):
            os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        need: Dict[str, int] = {}
        for p in points:
            if p.kind == 'pretrained':
                for profile, count in self.subset_ids_by_profile(p.mix, p.num_pretrain).items():
                    need[profile] = max(need.get(profile, 0), count)
        self.pools = {profile: self._pool(profile, count) for profile, count in sorted(need.items())}
        self._fixed_split(os.path.join(self.raw, 'labelled'), 'train', self.num_labelled, LABELLED_SEED)
        self._fixed_split(os.path.join(self.raw, 'val'), 'val', self.num_val, VAL_SEED)
        all_links = {sid: os.path.join(self.raw, f'pool_{profile}', 'train', sid)
                     for profile, ids in self.pools.items() for sid in ids}
        if all_links:
            link_dir(os.path.join(self.raw, 'pool_all'), all_links)
            self._preprocess(os.path.join(self.raw, 'pool_all'), self.processed('pool'), 'pool')
        self._preprocess(self.labelled_raw, self.processed('labelled'), 'labelled')
        self._preprocess(self.val_raw, self.processed('val'), 'val')
        print(f'data ready in {time.perf_counter() - t0:.1f} s: pools '
              + ', '.join(f'{p}={len(ids)}' for p, ids in self.pools.items())
              + f', {self.num_labelled} labelled, {self.num_val} val', flush=True)

    # -------------------------------------------------------------- pre-training subsets
    def subset_dir(self, mix: str, n: int) -> str:
        """Raw folder of the first N scenarios of ``mix`` (links into the pools)."""
        with self._subset_lock:
            return self._subset_dir(mix, n)

    def _subset_dir(self, mix: str, n: int) -> str:
        counts = self.subset_ids_by_profile(mix, n)
        targets = {}
        for profile, count in counts.items():
            for sid in self.pools[profile][:count]:
                targets[sid] = os.path.join(self.raw, f'pool_{profile}', 'train', sid)
        if len(targets) != n:
            raise RuntimeError(f'{mix} N={n}: {len(targets)} distinct scenarios (duplicate ids across pools?)')
        directory = os.path.join(self.raw, 'subsets', f'{mix}_n{n}')
        link_dir(directory, targets)
        return directory
