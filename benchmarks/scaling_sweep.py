"""Scaling study: how the benefit of SmartPretrain pre-training grows with the amount of pre-training data.

Protocol (synthetic Argoverse 2-format scenarios from ``datasets.synthetic``; details in docs/SCALING.md):
  * pools of unlabelled pre-training scenarios, one per synthetic profile (scenario k of a pool is the same whatever
    the pool's size, so a pool grows without changing its first scenarios);
  * for every size N of ``--sizes`` (or the geometric series ``--min_size * --size_factor^i``, i < ``--num_sizes``)
    and every data mix of ``--mixes``: pre-train ``train_ssl.py`` on the first N scenarios ('single': all from
    ``--target_profile``; 'mixed': N split evenly over ``--mix_profiles``) for ``--pretrain_epochs`` epochs;
  * fine-tune ``train.py --pretrained_ckpt`` on one fixed labelled set (``--num_labelled`` scenarios of the target
    profile, disjoint from the pools) and evaluate ``val.py`` on one fixed val split; the same fine-tuning from scratch
    is the baseline; every point for every seed of ``--seeds``.

Per run the table records the pre-training scenarios, epochs, optimiser steps, wall-clock and GPU-seconds (wall x
devices) of pre-training and fine-tuning, a FLOP estimate (one training step's FLOPs counted with
torch.utils.flop_counter.FlopCounterMode on real batches, per scenario, x scenarios processed) and the val metrics.
``results.json`` / ``results.csv`` are rewritten atomically after every run; a re-run skips finished points and adds
new sizes, mixes or seeds. Interrupted training runs continue from their last checkpoint (``--resume``).
``--parallel K`` runs up to K CLIs at once on the one GPU (pre-trainings first, a fine-tune once its pre-training is
done; docs/SCALING.md). At the end
``benchmarks/scaling_plots.py`` draws the plots and fits the power laws (``--no_plots`` skips it).

Examples:
  # CPU smoke (minutes): tiny model, 3 sizes x 2 seeds
  python benchmarks/scaling_sweep.py --work_dir /tmp/scaling --size tiny --accelerator cpu --precision 32 \\
      --sizes 4 8 16 --seeds 0 1 --num_labelled 4 --num_val 4 --pretrain_epochs 1 --finetune_epochs 1 \\
      --pretrain_batch_size 4 --finetune_batch_size 4 --num_workers 0 --flop_batches 1
  # one GPU: see docs/SCALING.md for the recorded command and its device time
"""
import argparse
import csv
import io
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import (ALL_METRICS, MODEL_PRESETS, MODELS, CommandFailed,  # noqa: E402
                                         atomic_write_json, atomic_write_text, canonical_model, exit_on_sigterm,
                                         finetune_cmd, pretrain_cmd, read_json,
                                         read_val_metrics, val_cmd)

MIXES = ('single', 'mixed')
# what a later call needs to resume (results.json, flops.json) and what a reader wants (the rest): 8 small files
EXPORT_FILES = ('results.json', 'results.csv', 'flops.json', 'plots/summary.md', 'plots/fit.json',
                'plots/metric_vs_data.png', 'plots/gain_vs_data.png', 'plots/gain_vs_compute.png')
POOL_SEED, VAL_SEED, LABELLED_SEED = 0, 1, 2   # synthetic base seeds: pools, val split, labelled set
RESULTS_VERSION = 1
COLUMNS = ['key', 'kind', 'mix', 'profiles', 'num_pretrain_scenarios', 'seed', 'pretrain_seed',
           'pretrain_epochs', 'pretrain_steps', 'pretrain_wall_s', 'pretrain_gpu_s', 'pretrain_flops_per_scenario',
           'pretrain_flops', 'finetune_scenarios', 'finetune_epochs', 'finetune_steps', 'finetune_wall_s',
           'finetune_gpu_s', 'finetune_flops', 'val_scenarios'] + ALL_METRICS + \
          ['point_wall_s', 'pretrain_reused', 'device', 'precision', 'finished_at', 'run']


# ----------------------------------------------------------------------------------------------------------------------
# points and the results table (no model code: unit-testable with a fake runner)
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Point:
    """One fine-tuned model of the sweep: pre-trained on ``num_pretrain`` scenarios of data ``mix``, or from scratch
    (``kind='scratch'``, no mix, N = 0); ``seed`` seeds fine-tuning (and pre-training, see --pretrain_per_seed)."""
    kind: str
    seed: int
    mix: str = ''
    num_pretrain: int = 0

    def __post_init__(self) -> None:
        if self.kind == 'scratch':
            if self.mix or self.num_pretrain:
                raise ValueError('a scratch point has no data mix and no pre-training scenarios')
        elif self.kind == 'pretrained':
            if self.mix not in MIXES or self.num_pretrain <= 0:
                raise ValueError(f'a pre-trained point needs a mix in {MIXES} and N > 0, got {self.mix!r}, '
                                 f'{self.num_pretrain}')
        else:
            raise ValueError(f'unknown point kind {self.kind!r}')

    @property
    def key(self) -> str:
        return f'scratch/s{self.seed}' if self.kind == 'scratch' else f'{self.mix}/n{self.num_pretrain}/s{self.seed}'

    @property
    def run_name(self) -> str:
        return f'scratch_s{self.seed}' if self.kind == 'scratch' else f'ft_{self.mix}_n{self.num_pretrain}_s{self.seed}'

    def describe(self) -> str:
        if self.kind == 'scratch':
            return f'scratch baseline, seed {self.seed}'
        return f'pre-trained on {self.num_pretrain} {self.mix} scenarios, seed {self.seed}'


def geometric_sizes(min_size: int, factor: float, count: int) -> List[int]:
    """[min_size, min_size*factor, ...] rounded, ``count`` distinct sizes."""
    if min_size < 1 or factor <= 1 or count < 1:
        raise ValueError(f'geometric sizes need min_size >= 1, factor > 1, count >= 1 (got {min_size}, {factor}, '
                         f'{count})')
    sizes = sorted({int(round(min_size * factor ** i)) for i in range(count)})
    if len(sizes) != count:
        raise ValueError(f'sizes {sizes}: factor {factor} is too small to give {count} distinct sizes')
    return sizes


def plan_points(sizes: Sequence[int], mixes: Sequence[str], seeds: Sequence[int], baseline: bool = True) -> List[Point]:
    """Scratch baselines first (cheap, and every gain needs them), then sizes ascending (a partial sweep already
    spans the small end), mixes, seeds."""
    points = [Point('scratch', s) for s in seeds] if baseline else []
    points += [Point('pretrained', s, mix, n) for n in sorted(set(sizes)) for mix in mixes for s in seeds]
    return points


class ProtocolMismatch(SystemExit):
    pass


class ResultsTable:
    """``<work_dir>/results.json`` (protocol + rows, the source of truth) and ``results.csv`` (the same rows), both
    rewritten atomically after every added row. Rows are keyed by :attr:`Point.key`."""

    def __init__(self, work_dir: str) -> None:
        self.json_path = os.path.join(work_dir, 'results.json')
        self.csv_path = os.path.join(work_dir, 'results.csv')
        self.protocol: Optional[dict] = None
        self.extra: Dict[str, dict] = {}
        self.rows: Dict[str, dict] = {}
        if os.path.exists(self.json_path):
            data = read_json(self.json_path, 'scaling sweep results')
            if not isinstance(data, dict) or not isinstance(data.get('rows'), list):
                raise ValueError(f'{self.json_path}: no "rows" list (not a scaling_sweep.py results file)')
            self.protocol = data.get('protocol')
            self.extra = data.get('extra', {})
            for row in data['rows']:
                self.rows[row['key']] = row

    def check_protocol(self, protocol: dict) -> None:
        """First use stores ``protocol``; later runs must match it (rows of different protocols are not comparable)."""
        if self.protocol is None:
            self.protocol = dict(protocol)
            return
        changed = {k: (self.protocol.get(k), protocol.get(k)) for k in set(self.protocol) | set(protocol)
                   if self.protocol.get(k) != protocol.get(k)}
        if changed:
            detail = ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in sorted(changed.items()))
            raise ProtocolMismatch(f'scaling_sweep: {self.json_path} was recorded with another protocol ({detail}); '
                                   f'use the same flags to extend it or another --work_dir')

    def has(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        self.rows[row['key']] = row
        self.save()

    def sorted_rows(self) -> List[dict]:
        def order(row):
            return (row['kind'] != 'scratch', row.get('mix') or '', int(row.get('num_pretrain_scenarios') or 0),
                    int(row['seed']))
        return sorted(self.rows.values(), key=order)

    def save(self) -> None:
        rows = self.sorted_rows()
        atomic_write_json(self.json_path, {'version': RESULTS_VERSION, 'protocol': self.protocol,
                                           'extra': self.extra, 'rows': rows})
        columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, '') for k in columns})
        atomic_write_text(self.csv_path, buffer.getvalue())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
    return f'{seconds // 60}m{seconds % 60:02d}s'


def estimate_finetune_s(rows: Sequence[dict]) -> Optional[float]:
    """Expected seconds of one fine-tune + val: the median over the recorded rows of their wall time without the
    pre-training they ran. None when nothing is recorded yet."""
    timed = [r for r in rows if isinstance(r.get('point_wall_s'), (int, float))]
    if not timed:
        return None
    rest = sorted(r['point_wall_s'] - (0.0 if r.get('pretrain_reused') else float(r.get('pretrain_wall_s') or 0))
                  for r in timed)
    return rest[len(rest) // 2]


def estimate_pretrain_s(num_pretrain: int, rows: Sequence[dict]) -> Optional[float]:
    """Expected seconds of one pre-training run on ``num_pretrain`` scenarios: a straight line through the recorded
    (N x epochs, pre-training seconds) pairs, i.e. start-up plus seconds per scenario-epoch (with a single recorded
    size: that run's seconds per scenario-epoch, which includes its start-up and so errs on the long side). None when
    no pre-training is recorded yet."""
    runs = {(int(r['num_pretrain_scenarios']) * int(r['pretrain_epochs']), float(r['pretrain_wall_s']))
            for r in rows if float(r.get('pretrain_wall_s') or 0) > 0 and int(r.get('pretrain_epochs') or 0) > 0
            and int(r.get('num_pretrain_scenarios') or 0) > 0}
    if not runs:
        return None
    epochs = max(int(r['pretrain_epochs']) for r in rows if int(r.get('pretrain_epochs') or 0) > 0)
    work = num_pretrain * epochs
    xs, ys = [x for x, _ in runs], [y for _, y in runs]
    if len(set(xs)) < 2:
        rate = sorted(y / x for x, y in runs)[len(runs) // 2]
        return rate * work
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = max(0.0, sum((x - mx) * (y - my) for x, y in runs) / sum((x - mx) ** 2 for x in xs))
    intercept = max(0.0, my - slope * mx)
    return intercept + slope * work


def estimate_point_s(point: Point, rows: Sequence[dict], pretrain_done: bool = False) -> Optional[float]:
    """Expected seconds to run ``point``, from the wall times recorded in earlier rows (this call's and earlier
    calls'): :func:`estimate_finetune_s`, plus :func:`estimate_pretrain_s` when its pre-training still has to run.
    None when either part has nothing recorded yet."""
    base = estimate_finetune_s(rows)
    if base is None or point.kind == 'scratch' or pretrain_done:
        return base
    pretrain = estimate_pretrain_s(point.num_pretrain, rows)
    return None if pretrain is None else base + pretrain


def run_sweep(points: Sequence[Point], runner, table: ResultsTable, deadline_s: Optional[float] = None,
              log: Callable[[str], None] = print, started: Optional[float] = None, parallel: int = 1,
              parallel_pretrain: Optional[int] = None) -> dict:
    """Runs every point whose key is not in ``table`` through ``runner.run(point) -> row`` and adds the row (with the
    point's identity columns and its wall time) as soon as it is finished.

    With ``deadline_s`` a point starts only if it is expected to end within ``deadline_s`` seconds of the start
    (:func:`estimate_point_s`; a point without an estimate starts while time is left), so that a time-limited call
    ends cleanly and the next call resumes; the clock starts at ``started`` (a time.perf_counter() value, e.g. before
    data preparation) or now. ``runner.pretrain_done(point)``, when the runner has it, tells whether a
    point's pre-training run already exists (shared pre-training). Returns {'ran', 'skipped', 'remaining'} (keys).

    ``parallel`` > 1 runs up to that many jobs at once, at most ``parallel_pretrain`` of them pre-trainings
    (:func:`run_sweep_parallel`; the runner then needs the step interface of :class:`CliRunner`)."""
    if parallel > 1:
        return run_sweep_parallel(points, runner, table, parallel, deadline_s, log, started, parallel_pretrain)
    start = time.perf_counter() if started is None else started
    todo = [p for p in points if not table.has(p.key)]
    skipped = [p.key for p in points if table.has(p.key)]
    log(f'scaling sweep: {len(points)} points, {len(skipped)} already in {table.json_path}, {len(todo)} to run')
    pretrain_done = getattr(runner, 'pretrain_done', None)
    ran, deferred = [], []
    for i, point in enumerate(todo):
        elapsed = time.perf_counter() - start
        estimates = [estimate_point_s(p, list(table.rows.values()), bool(pretrain_done and pretrain_done(p)))
                     for p in todo[i:] if p.key not in deferred]
        known = [e for e in estimates if e is not None]
        eta = f', ETA {_duration(sum(known))}' if known and len(known) == len(estimates) else ''
        if deadline_s is not None:
            expected = estimates[0]
            left = deadline_s - elapsed
            if left <= 0 or (expected is not None and expected > left):
                reason = 'no time left' if left <= 0 else f'expected {_duration(expected)} > {_duration(left)} left'
                log(f'[{i + 1}/{len(todo)}] {point.describe()}: deferred to the next call ({reason})')
                deferred.append(point.key)
                continue
        log(f'[{i + 1}/{len(todo)}] {point.describe()} (elapsed {_duration(elapsed)}{eta})')
        t0 = time.perf_counter()
        row = dict(runner.run(point))
        row.update(key=point.key, kind=point.kind, mix=point.mix, num_pretrain_scenarios=row.get(
            'num_pretrain_scenarios', point.num_pretrain), seed=point.seed, point_wall_s=time.perf_counter() - t0,
            finished_at=time.strftime('%Y-%m-%dT%H:%M:%S'))
        table.add(row)
        ran.append(point.key)
        metric = f'minFDE {row["minFDE"]:.3f}' if isinstance(row.get('minFDE'), (int, float)) else 'no minFDE'
        log(f'    done in {_duration(row["point_wall_s"])}: {metric}; table: {len(table.rows)} rows')
    remaining = [p.key for p in points if not table.has(p.key)]
    if remaining:
        log(f'{len(remaining)} points left for the next call (the table resumes): {", ".join(remaining)}')
    return {'ran': ran, 'skipped': skipped, 'remaining': remaining}


# ----------------------------------------------------------------------------------------------------------------------
# concurrent jobs (--parallel K): one GPU is launch-overhead bound with one QCNet training process, so several share it
# ----------------------------------------------------------------------------------------------------------------------
RUNNER_STEPS = ('pretrain_name', 'pretrain_done', 'base_row', 'pretrain', 'finetune', 'validate')


def run_point(runner, point: Point) -> dict:
    """One point through the runner's steps, one after another (what ``runner.run`` does): the row without its
    identity columns. ``pretrain_reused``: the pre-training existed before this point asked for it."""
    row = dict(runner.base_row(point))
    if point.kind == 'pretrained':
        row['pretrain_reused'] = bool(runner.pretrain_done(point))
        row.update(runner.pretrain(point))
    row.update(runner.finetune(point))
    row.update(runner.validate(point))
    return row


@dataclass
class _Job:
    """A pre-training run (shared by ``points``) or one point's fine-tune + val (``needs``: its pre-training job)."""
    kind: str                    # 'pretrain' | 'point'
    name: str                    # pre-training run name, or the point's key
    point: Point                 # the point (for a pre-training: the first point that needs it)
    order: int                   # plan order, the last tie-break
    needs: Optional[str] = None
    points: Optional[List[Point]] = None
    done_before: bool = False    # pre-training: finished by an earlier call

    @property
    def priority(self) -> tuple:
        """Longest chain first: pre-trainings (largest N first), then fine-tunes of pre-trained points (largest N
        first); scratch points, the shortest chains, fill free slots."""
        rank = 0 if self.kind == 'pretrain' else (1 if self.point.kind == 'pretrained' else 2)
        return rank, -self.point.num_pretrain, self.order

    def describe(self) -> str:
        if self.kind == 'pretrain':
            return f'pre-training {self.name} ({self.point.num_pretrain} {self.point.mix} scenarios)'
        return f'{self.point.key}: fine-tune + val ({self.point.describe()})'


def run_sweep_parallel(points: Sequence[Point], runner, table: ResultsTable, parallel: int,
                       deadline_s: Optional[float] = None, log: Callable[[str], None] = print,
                       started: Optional[float] = None, parallel_pretrain: Optional[int] = None) -> dict:
    """:func:`run_sweep` with up to ``parallel`` jobs at once, each in a worker thread that drives one CLI at a time
    through the runner's steps (``pretrain(point)``, then ``finetune(point)`` + ``validate(point)``).

    A pre-training job runs once however many points share it (``runner.pretrain_name``); a point's job waits for its
    pre-training. Ready jobs start in :attr:`_Job.priority` order; at most ``parallel_pretrain`` (default: all K)
    pre-trainings run at once (they need the most GPU memory). Only this (the main) thread touches ``table``: a
    row is added as its point finishes, in any order. With ``deadline_s`` a job starts only if it is expected to end
    before the deadline (:func:`estimate_pretrain_s` / :func:`estimate_finetune_s`; unknown: while time is left);
    running jobs finish. A failed job is reported (its points, and the points waiting on it, stay to do) and the
    independent jobs go on. On an interruption in this thread (SIGTERM turned into SystemExit, Ctrl-C) the runner's
    ``stop()`` terminates the running CLIs, the rows that were finished are kept, and the interruption propagates.

    Returns {'ran', 'skipped', 'remaining', 'failed'} ('failed': one 'job: error' line per failed job)."""
    missing = [name for name in RUNNER_STEPS if not callable(getattr(runner, name, None))]
    if missing:
        raise TypeError(f'--parallel needs a runner with the steps {", ".join(RUNNER_STEPS)}; '
                        f'{type(runner).__name__} lacks {", ".join(missing)}')
    start = time.perf_counter() if started is None else started
    todo = [p for p in points if not table.has(p.key)]
    skipped = [p.key for p in points if table.has(p.key)]
    max_pretrain = parallel if parallel_pretrain is None else max(1, min(parallel, parallel_pretrain))
    log(f'scaling sweep: {len(points)} points, {len(skipped)} already in {table.json_path}, {len(todo)} to run, '
        f'up to {parallel} jobs at once ({max_pretrain} of them pre-trainings)')

    pretrain_jobs: Dict[str, _Job] = {}
    pending: List[_Job] = []
    for order, point in enumerate(todo):
        needs = None
        if point.kind == 'pretrained':
            needs = runner.pretrain_name(point)
            if needs not in pretrain_jobs:
                pretrain_jobs[needs] = _Job('pretrain', needs, point, order, points=[],
                                            done_before=bool(runner.pretrain_done(point)))
                pending.append(pretrain_jobs[needs])
            pretrain_jobs[needs].points.append(point)
        pending.append(_Job('point', point.key, point, order, needs=needs))

    finished_pretrain: Dict[str, tuple] = {}   # name -> (row columns, wall seconds of this call)
    running: Dict[str, tuple] = {}             # name -> (job, thread)
    results: 'queue.Queue[tuple]' = queue.Queue()
    ran: List[str] = []
    failed: List[str] = []

    def elapsed() -> float:
        return time.perf_counter() - start

    def expected_s(job: _Job) -> Optional[float]:
        rows = list(table.rows.values())
        if job.kind == 'pretrain':
            return 0.0 if job.done_before else estimate_pretrain_s(job.point.num_pretrain, rows)
        return estimate_finetune_s(rows)

    def drop_waiting_on(name: str, why: str) -> None:
        for job in [j for j in pending if j.needs == name]:
            pending.remove(job)
            log(f'    {job.point.key}: not run ({why})')

    def work(job: _Job) -> None:
        t0 = time.perf_counter()
        try:
            if job.kind == 'pretrain':
                result = dict(runner.pretrain(job.point))
            else:
                result = dict(runner.finetune(job.point))
                result.update(runner.validate(job.point))
            results.put((job, None, result, time.perf_counter() - t0))
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which decides
            results.put((job, error, None, time.perf_counter() - t0))

    def start_ready() -> None:
        while len(running) < parallel:
            pretraining = sum(1 for job, _ in running.values() if job.kind == 'pretrain')
            ready = sorted((j for j in pending if (j.needs is None or j.needs in finished_pretrain)
                            and (j.kind != 'pretrain' or pretraining < max_pretrain)), key=lambda j: j.priority)
            for job in ready:
                pending.remove(job)
                if deadline_s is not None:
                    expected, left = expected_s(job), deadline_s - elapsed()
                    if left <= 0 or (expected is not None and expected > left):
                        reason = 'no time left' if left <= 0 else \
                            f'expected {_duration(expected)} > {_duration(left)} left'
                        log(f'deferred to the next call: {job.describe()} ({reason})')
                        if job.kind == 'pretrain':
                            drop_waiting_on(job.name, 'its pre-training is deferred')
                        continue
                thread = threading.Thread(target=work, args=(job,), name=f'sweep:{job.name}', daemon=True)
                running[job.name] = (job, thread)
                estimates = [expected_s(j) for j in pending]
                eta = f', ETA of the queue ~{_duration(sum(estimates) / parallel)}' \
                    if estimates and None not in estimates else ''
                log(f'[start] {job.describe()} ({len(running)} running, {len(pending)} waiting, elapsed '
                    f'{_duration(elapsed())}{eta})')
                thread.start()
                break
            else:
                return  # nothing (more) can start now

    def finish(job: _Job, error: Optional[BaseException], result: Optional[dict], wall: float) -> None:
        running.pop(job.name, None)
        if error is not None:
            failed.append(f'{job.describe()}: {error}')
            log(f'[failed] {job.describe()}: {error}')
            if job.kind == 'pretrain':
                drop_waiting_on(job.name, 'its pre-training failed')
            return
        if job.kind == 'pretrain':
            finished_pretrain[job.name] = (result, wall)
            log(f'[done] {job.describe()} in {_duration(wall)}')
            return
        point = job.point
        row = dict(runner.base_row(point))
        point_wall = wall
        if job.needs is not None:
            pretrain = pretrain_jobs[job.needs]
            columns, pretrain_wall = finished_pretrain[job.needs]
            # as in a sequential sweep: the first point (plan order) that needs a pre-training runs it
            reused = pretrain.done_before or point != pretrain.points[0]
            row['pretrain_reused'] = reused
            row.update(columns)
            point_wall += 0.0 if reused else pretrain_wall
        row.update(result)
        row.update(key=point.key, kind=point.kind, mix=point.mix,
                   num_pretrain_scenarios=row.get('num_pretrain_scenarios', point.num_pretrain), seed=point.seed,
                   point_wall_s=point_wall, finished_at=time.strftime('%Y-%m-%dT%H:%M:%S'), parallel=parallel)
        table.add(row)
        ran.append(point.key)
        metric = f'minFDE {row["minFDE"]:.3f}' if isinstance(row.get('minFDE'), (int, float)) else 'no minFDE'
        log(f'[done] {job.describe()} in {_duration(wall)}: {metric}; table: {len(table.rows)} rows')

    try:
        start_ready()
        while running:
            try:
                job, error, result, wall = results.get(timeout=0.5)  # a timeout keeps signals deliverable here
            except queue.Empty:
                continue
            if error is not None and not isinstance(error, Exception):
                raise error  # an interruption inside a step (KeyboardInterrupt, SystemExit): stop everything
            finish(job, error, result, wall)
            start_ready()
    except BaseException:
        stop = getattr(runner, 'stop', None)
        log(f'interrupted: stopping {len(running)} running job(s); finished rows stay in {table.json_path}')
        if stop is not None:
            stop()
        for _, thread in list(running.values()):
            thread.join(timeout=60)
        while True:  # points that finished while this thread was being interrupted still get their rows
            try:
                job, error, result, wall = results.get_nowait()
            except queue.Empty:
                break
            if error is None and job.name in running and (job.needs is None or job.needs in finished_pretrain):
                finish(job, None, result, wall)
        raise
    remaining = [p.key for p in points if not table.has(p.key)]
    if remaining:
        log(f'{len(remaining)} points left for the next call (the table resumes): {", ".join(remaining)}')
    return {'ran': ran, 'skipped': skipped, 'remaining': remaining, 'failed': failed}


def loader_workers_per_run(num_workers: int, parallel: int) -> int:
    """Data-loader workers of each of ``parallel`` concurrent runs: ``num_workers`` split evenly, at least 1 each;
    0 stays 0 (loading inside the training process was asked for)."""
    if num_workers <= 0 or parallel <= 1:
        return num_workers
    return max(1, num_workers // parallel)


class ChildProcesses:
    """The project CLIs a runner has running, from any thread. :meth:`run` runs one to completion, like
    ``experiment_utils.run_logged``; :meth:`terminate_all` stops every running one (SIGTERM, which makes
    train.py / train_ssl.py save last.ckpt, then SIGKILL after ``grace_s``) and refuses new ones, so that an
    interrupted sweep leaves no orphaned GPU process behind. ``env``: variables set for the children on top of this
    process's environment."""

    def __init__(self, grace_s: float = 30.0, env: Optional[Dict[str, str]] = None) -> None:
        self.grace_s = grace_s
        self.env = dict(os.environ, **env) if env else None
        self._lock = threading.Lock()
        self._running: set = set()
        self._stopping = False

    def run(self, cmd: List[str], log_path: str) -> float:
        """Runs ``cmd`` (output to ``log_path``); its wall-clock seconds. :class:`CommandFailed` on a non-zero exit."""
        name = os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0]
        t0 = time.perf_counter()
        with self._lock:
            if self._stopping:
                raise CommandFailed(f'{name} not started: the sweep is stopping, see {log_path}')
            print('$ ' + ' '.join(cmd), flush=True)
            os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
            with open(log_path, 'w') as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            self._running.add(proc)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:  # the waiting thread was interrupted (Ctrl-C / SIGTERM of a sequential sweep)
                self._stop([proc])
            with self._lock:
                self._running.discard(proc)
        if code != 0:
            raise CommandFailed(f'{name} failed (exit {code}), see {log_path}')
        return time.perf_counter() - t0

    def running(self) -> List[int]:
        """Process ids of the running CLIs."""
        with self._lock:
            return [p.pid for p in self._running if p.poll() is None]

    def terminate_all(self) -> int:
        """Stops every running CLI and refuses new ones; returns how many were stopped."""
        with self._lock:
            self._stopping = True
            procs = [p for p in self._running if p.poll() is None]
        self._stop(procs)
        return len(procs)

    def _stop(self, procs: List[subprocess.Popen]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + self.grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------------------------------------------------
# the real runner: synthetic data, the project's CLIs, FLOP counts
# ----------------------------------------------------------------------------------------------------------------------
def _checkpoint_progress(path: str) -> Dict[str, int]:
    """{'epoch', 'global_step'} stored in a Lightning checkpoint."""
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return {'epoch': int(ckpt.get('epoch', -1)), 'global_step': int(ckpt.get('global_step', -1))}


def measure_step_flops(kind: str, cli_args: List[str], raw_dir: str, processed_dir: str, batch_size: int,
                       num_batches: int, device: str = 'cpu', seed: int = 0) -> dict:
    """FLOPs of training steps (forward + loss + backward, no optimiser update) of the model that
    ``train_ssl.py`` (kind 'pretrain') or ``train.py`` (kind 'finetune') builds from ``cli_args``, counted by
    torch.utils.flop_counter.FlopCounterMode on ``num_batches`` shuffled batches of real data.

    Returns {'flops_per_step' (mean), 'flops_per_scenario', 'scenarios', 'batches', 'by_op' (summed), 'device'}.
    FlopCounterMode counts matrix products (mm/addmm/bmm/baddbmm, convolutions, attention kernels) from their
    shapes; element-wise ops, gathers/scatters of message passing and the optimiser are not counted, so the estimate
    is a lower bound dominated by what dominates the GPU time of a QCNet step."""
    import warnings

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torch_geometric.loader import DataLoader

    from datasets.argoverse_v2_dataset import ArgoverseV2Dataset
    if kind == 'pretrain':
        import train_ssl
        from predictors.smartpretrain import SmartPretrain
        from transforms.ssl_views import SSLViews
        args = train_ssl.build_parser().parse_args(cli_args)
        train_ssl.check_args(args)  # as train_ssl.main: normalises the backbone name
        model = SmartPretrain(**vars(args))
        transform = SSLViews(args.num_historical_steps, args.num_future_steps, seed=args.seed)
    elif kind == 'finetune':
        import train
        from predictors.registry import model_class
        from transforms import TargetBuilder
        args = train.parse_args(cli_args)
        model = model_class(args.model)(**vars(args))
        transform = TargetBuilder(args.num_historical_steps, args.num_future_steps)
    else:
        raise ValueError(f'unknown kind {kind!r}')
    dataset = ArgoverseV2Dataset(args.root, 'train', raw_dir, processed_dir, transform=transform,
                                 num_workers=1, progress=False)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    model = model.to(device).train()
    total, scenarios, batches, by_op = 0, 0, 0, {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # self.log() without a trainer
        for batch in loader:
            batch = batch.to(device) if hasattr(batch, 'to') else {k: v.to(device) for k, v in batch.items()}
            model.zero_grad(set_to_none=True)
            with FlopCounterMode(display=False) as counter:
                loss = model.training_step(batch, 0)
                loss.backward()
            total += counter.get_total_flops()
            for op, count in counter.get_flop_counts().get('Global', {}).items():
                by_op[str(op)] = by_op.get(str(op), 0) + int(count)
            first = batch['anchor'] if isinstance(batch, dict) else batch
            scenarios += int(first.num_graphs)
            batches += 1
            if batches >= num_batches:
                break
    if not batches:
        raise ValueError(f'{raw_dir}: no batch to count FLOPs on')
    del model, batch, loss
    if device.startswith('cuda'):
        torch.cuda.empty_cache()  # the training subprocesses need the memory; this process keeps only its context
    return {'flops_per_step': total / batches, 'flops_per_scenario': total / scenarios, 'scenarios': scenarios,
            'batches': batches, 'batch_size': batch_size, 'by_op': by_op, 'device': device}


class CliRunner:
    """Runs points with the project's CLIs under ``work_dir``:

    raw/pool_<profile>/train/<id>   generated pools (+ order.json: scenario ids in generation order)
    raw/pool_all/<id>               links to every pool scenario (one preprocessing for all)
    raw/subsets/<mix>_n<N>/<id>     links: the pre-training set of one point
    raw/labelled/train, raw/val/val the fixed fine-tuning set and val split
    data/{pool,labelled,val}        processed samples
    runs/<run>/                     train_ssl.py / train.py run directories (+ sweep_run.json when finished)
    logs/<run>.log, logs/<run>_val.json
    flops.json                      FLOP measurements (per data mix and for fine-tuning)
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.py = sys.executable
        self.work = os.path.abspath(args.work_dir)
        self.raw = os.path.join(self.work, 'raw')
        self.data = os.path.join(self.work, 'data')
        self.runs = os.path.join(self.work, 'runs')
        self.logs = os.path.join(self.work, 'logs')
        self.labelled_raw = os.path.join(self.raw, 'labelled', 'train')
        self.val_raw = os.path.join(self.raw, 'val', 'val')
        self.cpus = os.cpu_count() or 1
        self.flops: Dict[str, dict] = {}
        self._subset_lock = threading.Lock()  # concurrent pre-trainings of one (mix, N) link the same folder
        # --parallel K: the concurrent runs share the CPU, so each gets its share of --num_workers and of the
        # intra-op threads (K processes of cpu_count threads each would oversubscribe the cores)
        parallel = getattr(args, 'parallel', 1)
        self.run_workers = loader_workers_per_run(args.num_workers, parallel)
        env = None
        if parallel > 1 and 'OMP_NUM_THREADS' not in os.environ:
            env = {'OMP_NUM_THREADS': str(max(1, self.cpus // parallel))}
        self.children = ChildProcesses(env=env)
        if parallel > 1:
            print(f'--parallel {parallel}: each run gets {self.run_workers} data-loader workers and '
                  f'OMP_NUM_THREADS={(env or os.environ)["OMP_NUM_THREADS"]}', flush=True)
        self.device_name = self._device_name()

    # -------------------------------------------------------------- protocol
    def protocol(self) -> dict:
        a = self.args
        return {'model': a.model, 'size': a.size, 'pretrain_epochs': a.pretrain_epochs,
                'pretrain_warmup': a.pretrain_warmup,
                'pretrain_batch_size': a.pretrain_batch_size, 'pretrain_per_seed': a.pretrain_per_seed,
                'finetune_epochs': a.finetune_epochs, 'finetune_batch_size': a.finetune_batch_size,
                'num_labelled': a.num_labelled, 'num_val': a.num_val, 'precision': a.precision,
                'target_profile': a.target_profile, 'mix_profiles': list(a.mix_profiles),
                'data_seeds': {'pool': POOL_SEED, 'val': VAL_SEED, 'labelled': LABELLED_SEED},
                # only when not the method's default, so tables recorded before the flag existed still extend
                **({'transfer_branch': a.transfer_branch} if a.transfer_branch != 'momentum' else {})}

    def profiles_of(self, mix: str) -> List[str]:
        return [self.args.target_profile] if mix == 'single' else list(self.args.mix_profiles)

    def subset_ids_by_profile(self, mix: str, n: int) -> Dict[str, int]:
        """How many of the first scenarios of each pool make up N scenarios of ``mix`` (even split)."""
        profiles = self.profiles_of(mix)
        if n < len(profiles):
            raise ValueError(f'N = {n} is smaller than the {len(profiles)} profiles of the {mix!r} mix')
        return {p: n // len(profiles) + (i < n % len(profiles)) for i, p in enumerate(profiles)}

    def _device_name(self) -> str:
        if self.args.accelerator in ('gpu', 'cuda', 'auto'):
            try:
                import torch
                if torch.cuda.is_available():
                    return f'{self.args.devices} x {torch.cuda.get_device_name(0)}'
            except Exception:  # noqa: BLE001 - only a label
                pass
        return f'{self.args.accelerator} ({self.cpus} cores)'

    # -------------------------------------------------------------- data
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
        ids = self._generate(out, split, num, seed, self.args.target_profile)
        atomic_write_json(order_path, {'profile': self.args.target_profile, 'seed': seed, 'ids': ids})

    def _preprocess(self, raw_dir: str, processed_dir: str, name: str) -> None:
        self.children.run([self.py, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir', raw_dir,
                           '--processed_dir', processed_dir, '--num_workers', str(self.cpus), '--strict',
                           '--no_progress'], os.path.join(self.logs, f'preprocess_{name}.log'))

    @staticmethod
    def _link_dir(directory: str, targets: Dict[str, str]) -> None:
        """Makes ``directory`` hold exactly the links name -> target (built aside, then renamed into place)."""
        if os.path.isdir(directory) and sorted(os.listdir(directory)) == sorted(targets):
            return
        tmp = directory + '.tmp'
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, target in targets.items():
            os.symlink(target, os.path.join(tmp, name))
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)

    def prepare(self, points: Sequence[Point]) -> None:
        """Generates and preprocesses every scenario the points need; measures FLOPs once per data mix."""
        a = self.args
        for d in (self.raw, self.data, self.runs, self.logs):
            os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        need: Dict[str, int] = {}
        for p in points:
            if p.kind == 'pretrained':
                for profile, count in self.subset_ids_by_profile(p.mix, p.num_pretrain).items():
                    need[profile] = max(need.get(profile, 0), count)
        self.pools = {profile: self._pool(profile, count) for profile, count in sorted(need.items())}
        self._fixed_split(os.path.join(self.raw, 'labelled'), 'train', a.num_labelled, LABELLED_SEED)
        self._fixed_split(os.path.join(self.raw, 'val'), 'val', a.num_val, VAL_SEED)
        all_links = {sid: os.path.join(self.raw, f'pool_{profile}', 'train', sid)
                     for profile, ids in self.pools.items() for sid in ids}
        if all_links:
            self._link_dir(os.path.join(self.raw, 'pool_all'), all_links)
            self._preprocess(os.path.join(self.raw, 'pool_all'), os.path.join(self.data, 'pool'), 'pool')
        self._preprocess(self.labelled_raw, os.path.join(self.data, 'labelled'), 'labelled')
        self._preprocess(self.val_raw, os.path.join(self.data, 'val'), 'val')
        print(f'data ready in {time.perf_counter() - t0:.1f} s: pools '
              + ', '.join(f'{p}={len(ids)}' for p, ids in self.pools.items())
              + f', {a.num_labelled} labelled, {a.num_val} val', flush=True)
        self._measure_flops(points)

    def subset_dir(self, mix: str, n: int) -> str:
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
        self._link_dir(directory, targets)
        return directory

    # -------------------------------------------------------------- FLOPs
    def _flop_device(self) -> str:
        if self.args.flop_device != 'auto':
            return self.args.flop_device
        import torch
        return 'cuda' if self.args.accelerator in ('gpu', 'cuda', 'auto') and torch.cuda.is_available() else 'cpu'

    def _measure_flops(self, points: Sequence[Point]) -> None:
        path = os.path.join(self.work, 'flops.json')
        stored = read_json(path, 'FLOP measurements') if os.path.exists(path) else {}
        wanted = {'finetune'} | {f'pretrain_{p.mix}' for p in points if p.kind == 'pretrained'}
        a = self.args
        for name in sorted(wanted):
            if name in stored and stored[name].get('batch_size') == (
                    a.finetune_batch_size if name == 'finetune' else a.pretrain_batch_size):
                continue
            t0 = time.perf_counter()
            if name == 'finetune':
                cmd = self._finetune_cmd('flops', 0)
                raw, processed, bs = self.labelled_raw, os.path.join(self.data, 'labelled'), a.finetune_batch_size
                kind = 'finetune'
            else:
                mix = name[len('pretrain_'):]
                largest = max(p.num_pretrain for p in points if p.kind == 'pretrained' and p.mix == mix)
                raw = self.subset_dir(mix, largest)
                processed, bs, kind = os.path.join(self.data, 'pool'), a.pretrain_batch_size, 'pretrain'
                cmd = self._pretrain_cmd(raw, 'flops', 0)
            stored[name] = measure_step_flops(kind, cmd[2:], raw, processed, bs, a.flop_batches, self._flop_device())
            atomic_write_json(path, stored)
            print(f'  FLOPs of one {name} step (batch {bs}, mean of {stored[name]["batches"]}): '
                  f'{stored[name]["flops_per_step"] / 1e9:.1f} GFLOP ({time.perf_counter() - t0:.1f} s)', flush=True)
        self.flops = stored

    # -------------------------------------------------------------- runs
    def _pretrain_cmd(self, train_raw: str, name: str, seed: int, resume: bool = False) -> List[str]:
        a = self.args
        return pretrain_cmd(self.py, self.data, train_raw, os.path.join(self.data, 'pool'), self.val_raw,
                            os.path.join(self.data, 'val'), a.pretrain_batch_size, a.pretrain_epochs,
                            a.pretrain_warmup, self.run_workers, a.accelerator, a.devices, a.precision, seed,
                            self.runs, name, a.size, limit_val_batches='1', resume=resume, model=a.model)

    def _finetune_cmd(self, name: str, seed: int, pretrained: Optional[str] = None, resume: bool = False):
        a = self.args
        return finetune_cmd(self.py, self.data, self.labelled_raw, os.path.join(self.data, 'labelled'),
                            self.val_raw, os.path.join(self.data, 'val'), a.finetune_batch_size, a.finetune_epochs,
                            self.run_workers, a.accelerator, 1, a.precision, seed, self.runs, name, a.size,
                            model=a.model, pretrained=pretrained, resume=resume,
                            extra=['--pretrained_branch', a.transfer_branch] if pretrained else None)

    def _train(self, name: str, make_cmd: Callable[[bool], List[str]], devices: int) -> dict:
        """Runs (or finishes) one training run; returns its record {'wall_s', 'gpu_s', 'epochs', 'steps'}.

        A finished run (``sweep_run.json``) is reused. An interrupted one continues from its last checkpoint with
        --resume; its wall time then counts, from each interrupted attempt, the part up to its last checkpoint
        (the work that was kept)."""
        run_dir = os.path.join(self.runs, name)
        record_path = os.path.join(run_dir, 'sweep_run.json')
        if os.path.exists(record_path):
            return read_json(record_path, 'run record')
        last = os.path.join(run_dir, 'checkpoints', 'last.ckpt')
        attempts_path = os.path.join(self.runs, f'{name}.attempts.json')
        attempts = read_json(attempts_path, 'run attempts') if os.path.exists(attempts_path) else []
        resume = os.path.isfile(last)
        if attempts and 'kept_s' not in attempts[-1]:  # the previous attempt was interrupted
            kept = max(0.0, os.path.getmtime(last) - attempts[-1]['start']) if resume else 0.0
            attempts[-1]['kept_s'] = kept
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
            attempts = [dict(a, kept_s=0.0) for a in attempts]
        attempts.append({'start': time.time(), 'resume': resume})
        atomic_write_json(attempts_path, attempts)
        wall = self.children.run(make_cmd(resume), os.path.join(self.logs, f'{name}.log'))
        attempts[-1]['kept_s'] = wall
        atomic_write_json(attempts_path, attempts)
        progress = _checkpoint_progress(last)
        total_wall = sum(a['kept_s'] for a in attempts)
        record = {'wall_s': total_wall, 'gpu_s': total_wall * devices, 'epochs': progress['epoch'] + 1,
                  'steps': progress['global_step'], 'attempts': len(attempts), 'checkpoint': last}
        atomic_write_json(record_path, record)
        return record

    def _validate(self, name: str) -> Dict[str, float]:
        out_json = os.path.join(self.logs, f'{name}_val.json')
        if not os.path.exists(out_json):
            ckpt = os.path.join(self.runs, name, 'checkpoints', 'last.ckpt')
            tmp = out_json + '.partial.json'
            self.children.run(val_cmd(self.py, self.data, self.val_raw, os.path.join(self.data, 'val'), ckpt,
                                      self.args.accelerator, tmp, num_workers=self.run_workers),
                              os.path.join(self.logs, f'{name}_val.log'))
            os.replace(tmp, out_json)  # val.py writes in place: publish only a complete file
        metrics = read_val_metrics(out_json)
        metrics['val_scenarios'] = read_json(out_json).get('num_scenarios')
        return metrics

    def pretrain_name(self, point: Point) -> str:
        seed = point.seed if self.args.pretrain_per_seed else self.args.pretrain_seed
        return f'pre_{point.mix}_n{point.num_pretrain}_s{seed}'

    def pretrain_done(self, point: Point) -> bool:
        """Whether the pre-training run of ``point`` has finished already (shared with another seed, or kept from an
        interrupted call)."""
        return point.kind == 'pretrained' and os.path.exists(
            os.path.join(self.runs, self.pretrain_name(point), 'sweep_run.json'))

    def base_row(self, point: Point) -> dict:
        """The row columns of ``point`` that no run decides (the pre-training ones stay 0 for a scratch point)."""
        a = self.args
        return {'profiles': '+'.join(self.profiles_of(point.mix)) if point.mix else '', 'device': self.device_name,
                'precision': a.precision, 'run': point.run_name, 'pretrain_seed': '', 'pretrain_epochs': 0,
                'pretrain_steps': 0, 'pretrain_wall_s': 0.0, 'pretrain_gpu_s': 0.0,
                'pretrain_flops_per_scenario': 0.0, 'pretrain_flops': 0.0, 'num_pretrain_scenarios': 0,
                'pretrain_reused': False}

    def pretrain(self, point: Point) -> dict:
        """Runs (or reuses, or finishes) the pre-training of ``point``; its row columns."""
        a = self.args
        pretrain_seed = point.seed if a.pretrain_per_seed else a.pretrain_seed
        name = self.pretrain_name(point)
        train_raw = self.subset_dir(point.mix, point.num_pretrain)
        record = self._train(name, lambda resume: self._pretrain_cmd(train_raw, name, pretrain_seed, resume),
                             a.devices)
        per_scenario = self.flops[f'pretrain_{point.mix}']['flops_per_scenario']
        return dict(pretrain_seed=pretrain_seed, pretrain_epochs=record['epochs'], pretrain_steps=record['steps'],
                    pretrain_wall_s=record['wall_s'], pretrain_gpu_s=record['gpu_s'],
                    pretrain_flops_per_scenario=per_scenario,
                    # every epoch processes each of the N scenarios once (both views, online + momentum branch)
                    pretrain_flops=per_scenario * point.num_pretrain * record['epochs'],
                    num_pretrain_scenarios=point.num_pretrain)

    def finetune(self, point: Point) -> dict:
        """Fine-tunes ``point`` (from its finished pre-training, or from scratch); its row columns."""
        a = self.args
        pretrained = None
        if point.kind == 'pretrained':
            record_path = os.path.join(self.runs, self.pretrain_name(point), 'sweep_run.json')
            if not os.path.exists(record_path):
                raise RuntimeError(f'{record_path}: missing, the pre-training of {point.key} has not finished')
            pretrained = read_json(record_path, 'run record')['checkpoint']
        record = self._train(point.run_name,
                             lambda resume: self._finetune_cmd(point.run_name, point.seed, pretrained, resume), 1)
        per_scenario = self.flops['finetune']['flops_per_scenario']
        return dict(finetune_scenarios=a.num_labelled, finetune_epochs=record['epochs'],
                    finetune_steps=record['steps'], finetune_wall_s=record['wall_s'], finetune_gpu_s=record['gpu_s'],
                    finetune_flops=per_scenario * a.num_labelled * record['epochs'])

    def validate(self, point: Point) -> dict:
        """val.py metrics of ``point``'s fine-tuned model (+ val_scenarios)."""
        return self._validate(point.run_name)

    def run(self, point: Point) -> dict:
        return run_point(self, point)

    def stop(self) -> int:
        """Terminates the running CLIs (an interrupted parallel sweep); returns how many."""
        return self.children.terminate_all()


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from datasets.synthetic.profiles import PROFILES
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='data, runs, logs, results.{json,csv} and plots/ go here')
    sizes = p.add_argument_group('pre-training data sizes (N = scenarios)')
    sizes.add_argument('--sizes', type=int, nargs='+', default=None, help='explicit sizes (overrides the series)')
    sizes.add_argument('--min_size', type=int, default=100, help='first size of the geometric series')
    sizes.add_argument('--size_factor', type=float, default=2.0, help='ratio of consecutive sizes')
    sizes.add_argument('--num_sizes', type=int, default=4, help='number of sizes of the series')
    data = p.add_argument_group('data')
    data.add_argument('--mixes', nargs='+', choices=MIXES, default=['single'],
                      help="'single': pre-train on --target_profile only; 'mixed': N split evenly over "
                           '--mix_profiles (same N, more diverse data)')
    data.add_argument('--target_profile', default='default', choices=sorted(PROFILES),
                      help='profile of the labelled set, the val split and single-mix pre-training')
    data.add_argument('--mix_profiles', nargs='+', default=['default', 'highway'], choices=sorted(PROFILES))
    data.add_argument('--num_labelled', type=int, default=150, help='fixed labelled fine-tuning scenarios')
    data.add_argument('--num_val', type=int, default=300, help='fixed val scenarios')
    train = p.add_argument_group('training')
    train.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    train.add_argument('--pretrain_per_seed', type=int, choices=[0, 1], default=1,
                       help='1: pre-train once per (N, seed), so the seed spread includes pre-training; 0: once per '
                            'N with --pretrain_seed, shared by the fine-tuning seeds (cheaper)')
    train.add_argument('--pretrain_seed', type=int, default=0, help='pre-training seed with --pretrain_per_seed 0')
    train.add_argument('--baseline', type=int, choices=[0, 1], default=1, help='run the from-scratch baseline')
    train.add_argument('--transfer_branch', choices=['momentum', 'online'], default='momentum',
                       help='pre-training branch the fine-tunes start from (train.py --pretrained_branch): momentum '
                            '(the method) or online (short pre-training runs leave the EMA momentum branch close to '
                            'its random start)')
    train.add_argument('--pretrain_epochs', type=int, default=10, help='same for every N (compute grows with N)')
    train.add_argument('--pretrain_warmup', type=int, default=1, help='pre-training learning-rate warm-up epochs')
    train.add_argument('--pretrain_batch_size', type=int, default=32)
    train.add_argument('--finetune_epochs', type=int, default=20)
    train.add_argument('--finetune_batch_size', type=int, default=16)
    train.add_argument('--model', default='QCNet',
                       help=f'predictor / pre-training backbone: {", ".join(MODELS)} (full / tiny are read as --size)')
    train.add_argument('--size', choices=sorted(MODEL_PRESETS), default=None,
                       help='width preset: full (the official configuration, default) or tiny (CPU smoke runs)')
    train.add_argument('--accelerator', default='gpu')
    train.add_argument('--devices', type=int, default=1, help='devices of each pre-training run (fine-tuning: 1)')
    train.add_argument('--precision', default='bf16-mixed', choices=['32', 'bf16-mixed'])
    train.add_argument('--num_workers', type=int, default=min(8, os.cpu_count() or 1))
    run = p.add_argument_group('running')
    run.add_argument('--flop_batches', type=int, default=3, help='batches whose FLOPs are counted (mean)')
    run.add_argument('--flop_device', default='auto', help="device for the FLOP count ('auto': cuda if used)")
    run.add_argument('--deadline_s', type=float, default=None,
                     help='time-limited calls: start a point only if it is expected (from the wall times recorded so '
                          'far) to end within this many seconds of the start; re-run to continue (exit code 3)')
    run.add_argument('--parallel', type=int, default=1, metavar='K',
                     help='run up to K training / val CLIs at once (one GPU is launch-overhead bound with one QCNet '
                          'process): pre-trainings (largest N first) and scratch runs start at once, a fine-tune when '
                          'its pre-training is done, val.py after its fine-tune; --num_workers is split over the K '
                          'runs (at least 1 each) and OMP_NUM_THREADS, when unset, to the cores / K. 1: one after '
                          'another')
    run.add_argument('--parallel_pretrain', type=int, default=None, metavar='P',
                     help='at most P of the K concurrent jobs are pre-trainings (the most GPU memory each); '
                          'default: K')
    run.add_argument('--dry_run', action='store_true', help='print the plan (done / to do, work estimate) and exit')
    run.add_argument('--no_plots', action='store_true', help='skip benchmarks/scaling_plots.py at the end')
    run.add_argument('--export_dir', default=None,
                     help='at the end (also after a deadline or a failure) copy the small result files flat into '
                          'this folder: ' + ', '.join(EXPORT_FILES) + ' (e.g. $OUT of a time-limited GPU call)')
    run.add_argument('--plot_metric', default='minFDE', help='metric of the gain plots and fits')
    return p


def check_args(args: argparse.Namespace) -> List[int]:
    """Returns the sizes (and normalises --model / --size); SystemExit with a one-line message on bad flags."""
    if args.model in MODEL_PRESETS:  # --model full|tiny: the size preset of QCNet (as ssl_low_label.py)
        if args.size is not None:
            raise SystemExit(f'scaling_sweep: error: --model {args.model} is a size; give it with --size')
        args.size, args.model = args.model, 'QCNet'
    try:
        args.model = canonical_model(args.model)
    except ValueError as error:
        raise SystemExit(f'scaling_sweep: error: --model: {error}')
    args.size = args.size or 'full'
    try:
        sizes = sorted(set(args.sizes)) if args.sizes else geometric_sizes(args.min_size, args.size_factor,
                                                                             args.num_sizes)
    except ValueError as error:
        raise SystemExit(f'scaling_sweep: error: {error}')
    if sizes[0] < 1:
        raise SystemExit(f'scaling_sweep: error: sizes must be >= 1, got {sizes}')
    if 'mixed' in args.mixes and (len(set(args.mix_profiles)) < 2 or len(set(args.mix_profiles)) !=
                                  len(args.mix_profiles)):
        raise SystemExit(f'scaling_sweep: error: the mixed data needs >= 2 distinct --mix_profiles, got '
                         f'{args.mix_profiles}')
    if 'mixed' in args.mixes and sizes[0] < len(args.mix_profiles):
        raise SystemExit(f'scaling_sweep: error: size {sizes[0]} is smaller than the {len(args.mix_profiles)} '
                         f'mixed profiles')
    for flag in ('num_labelled', 'num_val', 'pretrain_epochs', 'finetune_epochs', 'pretrain_batch_size',
                 'finetune_batch_size', 'flop_batches', 'devices', 'parallel'):
        if getattr(args, flag) < 1:
            raise SystemExit(f'scaling_sweep: error: --{flag} must be >= 1, got {getattr(args, flag)}')
    if args.parallel_pretrain is not None and not 1 <= args.parallel_pretrain <= args.parallel:
        raise SystemExit(f'scaling_sweep: error: --parallel_pretrain must be in 1..--parallel ({args.parallel}), '
                         f'got {args.parallel_pretrain}')
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f'scaling_sweep: error: repeated --seeds {args.seeds}')
    return sizes


def describe_plan(points: Sequence[Point], table: ResultsTable, args: argparse.Namespace) -> str:
    todo = [p for p in points if not table.has(p.key)]
    pre_runs = {(p.mix, p.num_pretrain, p.seed if args.pretrain_per_seed else args.pretrain_seed)
                for p in todo if p.kind == 'pretrained'}
    scen_epochs = sum(n for _, n, _ in pre_runs) * args.pretrain_epochs
    lines = [f'{len(points)} points ({len(points) - len(todo)} done, {len(todo)} to run): '
             f'{len(pre_runs)} pre-training runs ({scen_epochs} scenario-epochs), {len(todo)} fine-tuning runs '
             f'({len(todo) * args.num_labelled * args.finetune_epochs} scenario-epochs), {len(todo)} val passes']
    for p in points:
        lines.append(f'  [{"done" if table.has(p.key) else "todo"}] {p.key:<24} {p.describe()}')
    return '\n'.join(lines)


def main(argv=None, runner_factory: Optional[Callable[[argparse.Namespace], object]] = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = check_args(args)
    exit_on_sigterm()
    os.makedirs(args.work_dir, exist_ok=True)
    points = plan_points(sizes, args.mixes, args.seeds, bool(args.baseline))
    runner = (runner_factory or CliRunner)(args)
    table = ResultsTable(args.work_dir)
    table.check_protocol(runner.protocol())
    print(describe_plan(points, table, args), flush=True)
    if args.dry_run:
        return 0
    todo = [p for p in points if not table.has(p.key)]
    started = time.perf_counter()
    try:
        if todo:
            runner.prepare(todo)
            table.extra['flops'] = {k: {f: v[f] for f in ('flops_per_step', 'flops_per_scenario', 'batch_size',
                                                          'batches', 'device')}
                                    for k, v in getattr(runner, 'flops', {}).items()}
            table.save()
        outcome = run_sweep(points, runner, table, args.deadline_s, started=started, parallel=args.parallel,
                            parallel_pretrain=args.parallel_pretrain)
    except CommandFailed as error:
        print(f'scaling_sweep: error: {error}', file=sys.stderr)
        export_results(args.work_dir, args.export_dir)
        return 1
    except (SystemExit, KeyboardInterrupt):
        export_results(args.work_dir, args.export_dir)  # SIGTERM of a time-limited call: bring back finished rows
        raise
    if outcome.get('failed'):
        for line in outcome['failed']:
            print(f'scaling_sweep: error: {line}', file=sys.stderr)
        print(f'scaling_sweep: {len(outcome["failed"])} job(s) failed; {len(outcome["remaining"])} planned points '
              f'still to run; results so far in {table.json_path}', file=sys.stderr)
        export_results(args.work_dir, args.export_dir)
        return 1
    print(f'results: {table.json_path} and {table.csv_path} ({len(table.rows)} rows; '
          f'{len(outcome["remaining"])} planned points still to run)', flush=True)
    if not args.no_plots and table.rows:
        from benchmarks.scaling_plots import make_all
        make_all(table.json_path, os.path.join(os.path.abspath(args.work_dir), 'plots'), args.plot_metric)
    export_results(args.work_dir, args.export_dir)
    return 0 if not outcome['remaining'] else 3


def export_results(work_dir: str, export_dir: Optional[str]) -> None:
    """Copies the EXPORT_FILES that exist flat into ``export_dir`` (nothing without one)."""
    if not export_dir:
        return
    os.makedirs(export_dir, exist_ok=True)
    copied = []
    for name in EXPORT_FILES:
        source = os.path.join(work_dir, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(export_dir, os.path.basename(name)))
            copied.append(os.path.basename(name))
    print(f'exported to {export_dir}: {", ".join(copied) or "nothing yet"}', flush=True)


if __name__ == '__main__':
    sys.exit(main())
