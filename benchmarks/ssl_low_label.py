"""Low-label study: does SmartPretrain pre-training help when labels are scarce? (protocol: docs/LOW_LABEL.md)

Synthetic Argoverse 2-format scenarios (``datasets.synthetic``, profile ``--profile``):
  * an unlabelled pool of ``--num_pool`` scenarios (base seed 0); the labelled subsets of ``--labelled`` sizes are
    prefixes of its generation order; ``--num_val`` validation scenarios from another seed (1);
  * for ``--mix_profile``: a pool of the same size, half the target pool's first scenarios, half another profile's.

Three subcommands, each resumable (finished work is skipped), all through the project's own CLIs:

  pretrain   generate + preprocess the data; per backbone of ``--backbones`` run the pre-trainings
             ``ssl_target`` (train_ssl.py on the pool), ``ssl_mixed`` (on the mixed pool) and ``oracle`` (train.py,
             supervised, on the labelled pool), and on request (``--sources``) ``ssl_contrastive`` /
             ``ssl_reconstruction`` (train_ssl.py with one pretext task only: ``--lambda_rec 0`` /
             ``--lambda_contra 0``), several at once (``--parallel``); write into ``--out`` the slim
             checkpoints ``<backbone>_<source>.ckpt``, ``pretrain.json`` (steps, GPU-seconds, momentum branch's share
             of its initialisation, measured as benchmarks/momentum_init_share.py does) and ``pretrain_curves.csv``.
  finetune   generate the labelled prefixes + val split (if missing); for every backbone x arm x labelled size x seed
             fine-tune train.py and validate val.py on the whole val split, ``--parallel`` runs at once, and append
             one row to ``--out/runs.csv`` after each (atomically; rows already there are skipped). Arms:
               scratch         no pre-training;
               pretrained      the momentum branch of ssl_target (the method);
               pretrained_sym  the same with the mode symmetry broken at transfer (``--mode_noise_std``; deviation);
               oracle          the supervised oracle checkpoint, all of its encoder and decoder;
               mixed           the momentum branch of ssl_mixed (only at the smallest labelled size);
               scratch_frozen, pretrained_frozen  (on request) probes: only the decoder is trained, on a frozen
                               random / pre-trained encoder (train.py --freeze_encoder 1);
               pretrained_contrastive, pretrained_reconstruction  (on request) ablations: the momentum branch of
                               ssl_contrastive / ssl_reconstruction.
             Then the report (below) unless ``--no_report``.
  report     ``benchmarks/low_label_report.py`` on ``--out``: summary.md + gain_vs_labelled.png.

Fine-tune + val of one run is one Python process (``--executor subprocess``, the default: imports and CUDA start
once per run); ``--executor inprocess`` runs every step in this process, one after another (CPU smoke runs).
``--pretrain_extra`` / ``--finetune_extra`` pass further flags to train_ssl.py / train.py (e.g. speed options).

Example (CPU smoke, tiny models; the GPU commands are in docs/LOW_LABEL.md):
  python benchmarks/ssl_low_label.py pretrain --work_dir /tmp/ll --out /tmp/ll/out --size tiny --backbones QCNet \\
      --num_pool 16 --num_val 4 --pretrain_steps 2 --pretrain_batch_size 4 --oracle_steps 2 --accelerator cpu \\
      --precision 32 --num_workers 0 --profile demo --mix_profile highway --executor inprocess
  python benchmarks/ssl_low_label.py finetune --work_dir /tmp/ll --out /tmp/ll/out --size tiny --backbones QCNet \\
      --num_pool 16 --num_val 4 --labelled 4 8 --seeds 0 1 --finetune_epochs 1 --finetune_batch_size 4 \\
      --accelerator cpu --precision 32 --num_workers 0 --profile demo --executor inprocess
"""
import argparse
import contextlib
import csv
import fcntl
import hashlib
import importlib
import io
import math
import os
import shlex
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import (MODEL_PRESETS, CommandFailed, atomic_write_json,  # noqa: E402
                                         atomic_write_text, canonical_model, exit_on_sigterm, finetune_cmd, link_dir,
                                         pretrain_cmd, read_json, read_val_metrics, val_cmd)
from benchmarks.low_label_report import ARM_SOURCE, ARMS, RUN_COLUMNS, STUDY_ARMS, make_report  # noqa: E402
from benchmarks.scaling.processes import ChildProcesses, loader_workers_per_run  # noqa: E402

POOL_SEED, VAL_SEED = 0, 1          # synthetic base seeds: the pools (all profiles), the val split
SOURCES = ('ssl_target', 'ssl_mixed', 'oracle', 'ssl_contrastive', 'ssl_reconstruction')
STUDY_SOURCES = SOURCES[:3]   # the one-task pre-trainings (ablations) run when named
# pre-training flags of the one-task ablations: the other pretext task's loss weighted 0
PRETEXT_TASK_FLAGS = {'ssl_contrastive': ['--lambda_rec', '0'], 'ssl_reconstruction': ['--lambda_contra', '0']}
PRETRAIN_JSON, PRETRAIN_CURVES = 'pretrain.json', 'pretrain_curves.csv'
RUNS_CSV, FINETUNE_CURVES, PROTOCOL_JSON = 'runs.csv', 'finetune_curves.csv', 'protocol.json'
FAILURES_LOG = 'failures.log'   # --out: the last lines of each failed run's log (the logs themselves stay in work_dir)
PRETRAIN_CURVE_COLUMNS = ['run', 'backbone', 'source', 'step', 'epoch', 'loss', 'contra_loss', 'rec_loss',
                          'contra_acc', 'num_keys', 'momentum', 'val_loss', 'val_contra_acc']
# Lightning CSV column -> pretrain_curves.csv column
_SSL_LOG_COLUMNS = {'loss_step': 'loss', 'component/contra_loss_step': 'contra_loss',
                    'component/rec_loss_step': 'rec_loss', 'contra_acc_step': 'contra_acc',
                    'num_neg_sample_step': 'num_keys', 'momentum_m': 'momentum', 'val_loss': 'val_loss',
                    'val_contra_acc': 'val_contra_acc'}
FINETUNE_CURVE_COLUMNS = ['backbone', 'arm', 'labelled', 'seed', 'epoch', 'step', 'val_minFDE']


# ----------------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--work_dir', required=True, help='data, run directories and logs (large; stays here)')
    common.add_argument('--out', required=True, help='results folder: the few small files to keep')
    common.add_argument('--backbones', nargs='+', default=['QCNet', 'ForecastMAE'])
    common.add_argument('--size', choices=sorted(MODEL_PRESETS), default='full', help='model width preset')
    common.add_argument('--profile', default='default', help='synthetic profile of the target data')
    common.add_argument('--mix_profile', default='highway', help='second profile of the mixed pre-training pool')
    common.add_argument('--num_pool', type=int, default=5000, help='unlabelled pool (target profile)')
    common.add_argument('--num_val', type=int, default=500)
    common.add_argument('--finetune_extra', default='', help='further train.py flags (one string), e.g. speed options; '
                                                             'also used by the supervised oracle pre-training')
    common.add_argument('--accelerator', default='gpu')
    common.add_argument('--precision', default='bf16-mixed')
    common.add_argument('--parallel', type=int, default=1, help='runs at once on the one device')
    common.add_argument('--num_workers', type=int, default=min(16, os.cpu_count() or 1),
                        help='data-loader workers in all, split over the --parallel runs')
    common.add_argument('--deadline_s', type=float, default=None,
                        help='start no run expected to end later than this many seconds after the start (the '
                             'rest stays for the next call)')
    common.add_argument('--executor', choices=['subprocess', 'inprocess'], default='subprocess')

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    pre = sub.add_parser('pretrain', parents=[common], help='data + pre-trainings + slim checkpoints')
    pre.add_argument('--sources', nargs='+', choices=SOURCES, default=list(STUDY_SOURCES),
                     help='pre-trainings to run (ssl_contrastive / ssl_reconstruction: one pretext task only, '
                          'for the ablation arms pretrained_contrastive / pretrained_reconstruction)')
    pre.add_argument('--pretrain_steps', type=int, default=250, help='SmartPretrain optimiser steps')
    pre.add_argument('--pretrain_batch_size', type=int, default=32)
    pre.add_argument('--epoch_steps', type=int, default=50,
                     help='optimiser steps per training epoch of the pre-trainings (--limit_train_batches; shuffled '
                          'batches of the whole pool): the unit of the schedules, warm-up and val')
    pre.add_argument('--pretrain_warmup', type=int, default=1, help='learning-rate warm-up, in --epoch_steps epochs')
    pre.add_argument('--contra_momentum', type=float, default=0.976,
                     help='starting EMA momentum (the method: 0.996; lower for short runs is a documented deviation '
                          'so that the momentum branch keeps < 10 %% of its initialisation)')
    pre.add_argument('--pretrain_seed', type=int, default=0)
    pre.add_argument('--pretrain_extra', default='', help='further train_ssl.py flags (one string)')
    pre.add_argument('--oracle_steps', type=int, default=None, help='supervised oracle steps (default: '
                                                                   '--pretrain_steps)')
    pre.add_argument('--oracle_batch_size', type=int, default=None, help='(default: --pretrain_batch_size)')

    fin = sub.add_parser('finetune', parents=[common], help='fine-tunes + val of every arm, runs.csv, report')
    fin.add_argument('--pretrained_dir', default=None, help='folder with the slim checkpoints and pretrain.json of '
                                                            'the pretrain command (default: --out)')
    fin.add_argument('--arms', nargs='+', choices=ARMS, default=list(STUDY_ARMS))
    fin.add_argument('--smallest_only', nargs='*', choices=ARMS, default=['mixed', 'pretrained_sym'],
                     help='arms run only at the smallest labelled size')
    fin.add_argument('--labelled', type=int, nargs='+', default=[50, 200])
    fin.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    fin.add_argument('--finetune_epochs', type=int, nargs='+', default=[30, 15],
                     help='epochs per labelled size (one value for all, or one per --labelled)')
    fin.add_argument('--finetune_batch_size', type=int, default=16)
    fin.add_argument('--mode_noise_std', type=float, default=0.02, help='pretrained_sym: std of the noise on each '
                                                                         'copy of the mode embedding')
    fin.add_argument('--no_report', action='store_true')

    rep = sub.add_parser('report', help='summary.md + gain_vs_labelled.png from --out')
    rep.add_argument('--out', required=True)

    job = sub.add_parser('job', help=argparse.SUPPRESS)  # one run's steps in one process (used by the executor)
    job.add_argument('job_file')
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ('report', 'job'):
        return args
    try:
        args.backbones = [canonical_model(b) for b in args.backbones]
    except ValueError as error:
        parser.error(f'--backbones: {error}')
    from datasets.synthetic.profiles import PROFILES
    for flag in ('profile', 'mix_profile'):
        if getattr(args, flag) not in PROFILES:
            parser.error(f'--{flag} {getattr(args, flag)}: unknown profile; known: {", ".join(sorted(PROFILES))}')
    if args.parallel < 1:
        parser.error('--parallel must be >= 1')
    if args.executor == 'inprocess' and args.parallel > 1:
        parser.error('--executor inprocess runs one step at a time: use --parallel 1')
    if args.command == 'pretrain':
        args.oracle_steps = args.oracle_steps or args.pretrain_steps
        args.oracle_batch_size = args.oracle_batch_size or args.pretrain_batch_size
        if min(args.pretrain_steps, args.oracle_steps, args.epoch_steps) < 1:
            parser.error('--pretrain_steps / --oracle_steps / --epoch_steps must be >= 1')
        if 'ssl_mixed' in args.sources and args.mix_profile == args.profile:
            parser.error('--mix_profile must differ from --profile for the mixed pre-training')
    else:
        if len(args.finetune_epochs) not in (1, len(args.labelled)):
            parser.error(f'--finetune_epochs: give one value or one per --labelled size ({len(args.labelled)})')
        if max(args.labelled) > args.num_pool:
            parser.error(f'--labelled {max(args.labelled)} exceeds --num_pool {args.num_pool}')
        args.pretrained_dir = os.path.abspath(args.pretrained_dir or args.out)
    return args


def extra_flags(text: str) -> List[str]:
    return shlex.split(text) if text else []


# ----------------------------------------------------------------------------------------------------------------------
# running the project's CLIs: one job = a few steps (script module + argv) in one Python process
# ----------------------------------------------------------------------------------------------------------------------
def run_steps(steps: Sequence[dict]) -> None:
    """Runs each step's ``main(argv)`` (train, train_ssl, val, datasets.preprocess); an error names the step."""
    from utils.cli import CliError
    from utils.resume import SIGTERM_EXIT_CODE
    for step in steps:
        module = importlib.import_module(step['module'])
        try:
            result = module.main(list(step['argv']))
        except SystemExit as error:
            if error.code in (0, None):
                result = 0
            elif isinstance(error, CliError) or (isinstance(error.code, int) and error.code != SIGTERM_EXIT_CODE):
                raise CommandFailed(f'{step["module"]} exited with {error.code}: {error}') from None
            else:  # a stop (SIGTERM inside or outside a fit) ends the whole study, not just this run
                raise
        if isinstance(result, int) and not isinstance(result, bool) and result != 0:
            raise CommandFailed(f'{step["module"]} returned {result}')


class Executor:
    """Runs jobs: in a child process each (``subprocess``; :class:`ChildProcesses` stops them all on an
    interruption) or in this process (``inprocess``, output redirected to the job's log)."""

    def __init__(self, mode: str, env: Optional[Dict[str, str]] = None) -> None:
        self.mode = mode
        self.children = ChildProcesses(env=env)

    def run(self, steps: Sequence[dict], log_path: str) -> float:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        if self.mode == 'subprocess':
            job_file = log_path[:-len('.log')] + '.job.json' if log_path.endswith('.log') else log_path + '.job.json'
            atomic_write_json(job_file, {'steps': list(steps)})
            return self.children.run([sys.executable, os.path.abspath(__file__), 'job', job_file], log_path)
        t0 = time.perf_counter()
        print('$ ' + ' ; '.join(f'{s["module"]} {" ".join(s["argv"])}' for s in steps), flush=True)
        with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                run_steps(steps)
            except CommandFailed as error:
                raise CommandFailed(f'{error}, see {log_path}') from None
            except Exception as error:  # noqa: BLE001 - reported with the log, like a failed child process
                import traceback
                traceback.print_exc()
                raise CommandFailed(f'{steps[-1]["module"]} failed ({type(error).__name__}: '
                                    f'{str(error).splitlines()[0] if str(error) else ""}), see {log_path}') from None
        return time.perf_counter() - t0

    def stop(self) -> int:
        return self.children.terminate_all()


@dataclass
class Job:
    """One run: ``steps`` in one process, then ``done(wall_s)`` in the main thread. ``group``: runs of like cost
    (their median wall time estimates the next one's for ``--deadline_s``)."""
    name: str
    steps: Callable[[], List[dict]]
    done: Callable[[float], None]
    group: str
    log: str
    prepare: Optional[Callable[[], None]] = None


# What a run's log says when the device ran out of memory (PyTorch's error, or cuBLAS failing to allocate its
# workspace) - a sign of too many runs at once rather than of a broken run.
OUT_OF_MEMORY_MARKERS = ('CUDA out of memory', 'OutOfMemoryError', 'CUBLAS_STATUS_ALLOC_FAILED')


def ran_out_of_memory(log_path: str) -> bool:
    """Whether the last lines of a run's log report an out-of-memory error."""
    if not os.path.exists(log_path):
        return False
    tail = '\n'.join(open(log_path, errors='replace').read().splitlines()[-40:])
    return any(marker in tail for marker in OUT_OF_MEMORY_MARKERS)


def run_jobs(jobs: Sequence[Job], executor: Executor, parallel: int, deadline_s: Optional[float],
             started: float, failures_log: Optional[str] = None,
             known_durations: Optional[Dict[str, List[float]]] = None) -> dict:
    """Runs ``jobs`` in their order, up to ``parallel`` at once; a failed job is reported and the others go on.
    A job that ran out of device memory while others ran beside it is not a failure yet: it runs once more, first
    in the queue, and from then on one run fewer shares the device. Returns {'done': [...], 'failed': {name:
    message}, 'deferred': [...], 'parallel': the limit at the end}. ``known_durations``: wall times of runs of each
    group finished before this call (e.g. by another process), the deadline's estimate until runs here finish."""
    durations: Dict[str, List[float]] = {group: list(walls) for group, walls in (known_durations or {}).items()}
    result = {'done': [], 'failed': {}, 'deferred': [], 'parallel': parallel}
    retried = set()

    def fits(job: Job) -> bool:
        if deadline_s is None or not durations.get(job.group):
            return deadline_s is None or time.time() - started < deadline_s
        return time.time() - started + statistics.median(durations[job.group]) <= deadline_s

    def execute(job: Job) -> float:
        if job.prepare:
            job.prepare()
        return executor.run(job.steps(), job.log)

    def finish(job: Job, wall: Optional[float], error: Optional[BaseException]) -> None:
        if error is None:
            try:
                job.done(wall)
                durations.setdefault(job.group, []).append(wall)
                result['done'].append(job.name)
                print(f'[{time.time() - started:6.0f} s] {job.name} done ({wall:.0f} s)', flush=True)
                return
            except (OSError, ValueError, KeyError) as post_error:
                error = post_error
        elif result['parallel'] > 1 and job.name not in retried and ran_out_of_memory(job.log):
            retried.add(job.name)
            result['parallel'] -= 1
            pending.insert(0, job)
            print(f'[{time.time() - started:6.0f} s] {job.name} ran out of device memory: it runs again, and at most '
                  f'{result["parallel"]} runs share the device from now on', flush=True)
            return
        result['failed'][job.name] = str(error)
        print(f'[{time.time() - started:6.0f} s] {job.name} FAILED: {error}', flush=True)
        if failures_log:
            tail = open(job.log, errors='replace').read().splitlines()[-30:] if os.path.exists(job.log) else []
            old = open(failures_log).read() if os.path.exists(failures_log) else ''
            atomic_write_text(failures_log, old + f'=== {job.name}: {error}\n' + '\n'.join(tail) + '\n')

    pending = list(jobs)
    if parallel == 1:
        for job in pending:
            if not fits(job):
                result['deferred'].append(job.name)
                continue
            try:
                wall = execute(job)
            except (CommandFailed, OSError) as error:
                finish(job, None, error)
            else:
                finish(job, wall, None)
        return result
    running = {}
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        while pending or running:
            while pending and len(running) < result['parallel']:
                job = pending.pop(0)
                if not fits(job):
                    result['deferred'].append(job.name)
                    continue
                running[pool.submit(execute, job)] = job
            if not running:
                break
            finished, _ = wait(list(running), timeout=5.0, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                error = future.exception()
                finish(job, None if error else future.result(), error)
    except BaseException:
        stopped = executor.stop()
        print(f'interrupted: {stopped} running run(s) stopped; finished rows are kept', flush=True)
        raise
    finally:
        pool.shutdown(wait=True)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------------
class Workspace:
    """Layout of --work_dir:

    raw/pool_<profile>/train/<id> (+ order.json)   generated pools, scenario k the same whatever the pool's size
    raw/val_<profile>/val/<id> (+ order.json)      the val split
    raw/labelled_<n>/, raw/mixed_<n>/              links: labelled prefixes, the mixed pre-training pool
    data/pool, data/val                            processed scenarios (one cache for every subset of the pools)
    runs/<run>/                                    train_ssl.py / train.py run directories
    logs/<run>.log (+ .job.json, _val.json)
    """

    def __init__(self, work_dir: str, executor: Executor) -> None:
        self.work = os.path.abspath(work_dir)
        self.raw, self.data = os.path.join(self.work, 'raw'), os.path.join(self.work, 'data')
        self.runs, self.logs = os.path.join(self.work, 'runs'), os.path.join(self.work, 'logs')
        for d in (self.raw, self.data, self.runs, self.logs):
            os.makedirs(d, exist_ok=True)
        self.cpus = os.cpu_count() or 1
        self.executor = executor
        self.pool_dir = os.path.join(self.data, 'pool')
        self.val_processed = os.path.join(self.data, 'val')

    def _generated(self, out: str, split: str, num: int, seed: int, profile: str) -> List[str]:
        """Ids (generation order) of ``num`` scenarios at out/split, generated unless already there."""
        order_path = os.path.join(out, 'order.json')
        if os.path.exists(order_path):
            ids = read_json(order_path, 'scenario order')['ids']
            if len(ids) >= num:
                return ids[:num]
        from datasets.synthetic import generate_split
        t0 = time.perf_counter()
        ids = generate_split(out, split, num, seed, num_workers=self.cpus, profile=profile)
        atomic_write_json(order_path, {'profile': profile, 'seed': seed, 'split': split, 'ids': ids})
        print(f'  generated {num} {profile} scenarios ({split}, seed {seed}) in {time.perf_counter() - t0:.1f} s',
              flush=True)
        return ids

    def pool(self, profile: str, num: int) -> List[str]:
        return self._generated(os.path.join(self.raw, f'pool_{profile}'), 'train', num, POOL_SEED, profile)

    def pool_path(self, profile: str, scenario_id: str) -> str:
        return os.path.join(self.raw, f'pool_{profile}', 'train', scenario_id)

    def val(self, profile: str, num: int) -> str:
        out = os.path.join(self.raw, f'val_{profile}')
        self._generated(out, 'val', num, VAL_SEED, profile)
        return os.path.join(out, 'val')

    def link_dir(self, name: str, targets: Dict[str, str]) -> str:
        """raw/<name> holding exactly the links id -> scenario directory (built aside, renamed into place)."""
        return link_dir(os.path.join(self.raw, name), targets)

    def preprocess(self, raw_dir: str, processed_dir: str, name: str) -> None:
        steps = [{'module': 'datasets.preprocess',
                  'argv': ['--dataset', 'argoverse_v2', '--raw_dir', raw_dir, '--processed_dir', processed_dir,
                           '--num_workers', str(self.cpus), '--strict', '--no_progress']}]
        self.executor.run(steps, os.path.join(self.logs, f'preprocess_{name}.log'))

    @staticmethod
    def fingerprint(directories: Sequence[str]) -> str:
        """sha256 over the files of scenario directories: regenerated data must equal the pre-training's."""
        digest = hashlib.sha256()
        for directory in directories:
            for name in sorted(os.listdir(directory)):
                digest.update(name.encode())
                with open(os.path.join(directory, name), 'rb') as f:
                    digest.update(f.read())
        return digest.hexdigest()[:16]

    def data_fingerprints(self, profile: str, pool_ids: Sequence[str], val_dir: str) -> dict:
        """Fingerprints of the pool's first scenario (every labelled subset holds it) and of the val split's first."""
        return {'pool': self.fingerprint([self.pool_path(profile, pool_ids[0])]),
                'val': self.fingerprint([os.path.join(val_dir, sorted(os.listdir(val_dir))[0])])}


def device_name(accelerator: str) -> str:
    if accelerator in ('gpu', 'cuda', 'auto'):
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - only a label
            pass
    return f'{accelerator} ({os.cpu_count()} cores)'


def newest_metrics_csv(run_dir: str) -> Optional[str]:
    csv_dir = os.path.join(run_dir, 'csv')
    if not os.path.isdir(csv_dir):
        return None
    versions = sorted((d for d in os.listdir(csv_dir) if d.startswith('version_') and d[8:].isdigit()),
                      key=lambda d: int(d[8:]))
    path = os.path.join(csv_dir, versions[-1], 'metrics.csv') if versions else None
    return path if path and os.path.isfile(path) else None


def read_csv_rows(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_csv(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def replace_rows(path: str, columns: Sequence[str], keep: Callable[[dict], bool], new_rows: Sequence[dict]) -> None:
    """Rewrites the CSV at ``path`` with its rows that ``keep`` accepts plus ``new_rows`` (atomically)."""
    write_csv(path, columns, [r for r in read_csv_rows(path) if keep(r)] + list(new_rows))


@contextlib.contextmanager
def rows_lock(out: str):
    """Holds an exclusive lock on ``out``'s result tables: two finetune calls (e.g. the scratch arm running while the
    pre-training runs, and the pre-trained arms after it) may then write rows into the same folder."""
    with open(os.path.join(out, '.rows.lock'), 'a') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def workers_env(args: argparse.Namespace) -> Optional[Dict[str, str]]:
    """Each of the --parallel runs gets cores / K intra-op threads (unless OMP_NUM_THREADS is set already)."""
    if args.parallel > 1 and 'OMP_NUM_THREADS' not in os.environ:
        return {'OMP_NUM_THREADS': str(max(1, (os.cpu_count() or 1) // args.parallel))}
    return None


# ----------------------------------------------------------------------------------------------------------------------
# pretrain
# ----------------------------------------------------------------------------------------------------------------------
def pretrain_protocol(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ('size', 'profile', 'mix_profile', 'num_pool', 'num_val', 'pretrain_steps',
                                          'pretrain_batch_size', 'epoch_steps', 'pretrain_warmup', 'contra_momentum',
                                          'pretrain_seed', 'pretrain_extra', 'oracle_steps', 'oracle_batch_size',
                                          'finetune_extra', 'precision')}


def slim_name(backbone: str, source: str) -> str:
    return f'{backbone}_{source}.ckpt'


def ssl_curves(run_dir: str, name: str, backbone: str, source: str) -> List[dict]:
    path = newest_metrics_csv(run_dir)
    rows = []
    for row in read_csv_rows(path) if path else []:
        values = {new: row[old] for old, new in _SSL_LOG_COLUMNS.items() if row.get(old) not in (None, '')}
        if values:
            rows.append({'run': name, 'backbone': backbone, 'source': source, 'step': row.get('step', ''),
                         'epoch': row.get('epoch', ''), **values})
    return rows


def pretrain(args: argparse.Namespace) -> int:
    started = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    record_path = os.path.join(out, PRETRAIN_JSON)
    record = read_json(record_path, 'pre-training record') if os.path.exists(record_path) else {}
    protocol = pretrain_protocol(args)
    if record.get('protocol') not in (None, protocol):
        sys.exit(f'ssl_low_label: {record_path} was written with another protocol ({record["protocol"]}); use a new '
                 f'--out (or the same flags)')
    executor = Executor(args.executor, workers_env(args))
    ws = Workspace(args.work_dir, executor)
    t0 = time.perf_counter()
    pool_ids = ws.pool(args.profile, args.num_pool)
    targets = {i: ws.pool_path(args.profile, i) for i in pool_ids}
    mixed_dir = None
    if 'ssl_mixed' in args.sources:
        half = args.num_pool // 2
        other = ws.pool(args.mix_profile, args.num_pool - half)
        mixed = {i: ws.pool_path(args.profile, i) for i in pool_ids[:half]}
        mixed.update({i: ws.pool_path(args.mix_profile, i) for i in other})
        if len(mixed) != args.num_pool:
            raise SystemExit(f'ssl_low_label: the mixed pool has {len(mixed)} distinct ids, not {args.num_pool} '
                             f'(scenario ids shared between the profiles?)')
        mixed_dir = ws.link_dir(f'mixed_{args.num_pool}', mixed)
        targets.update(mixed)
    val_dir = ws.val(args.profile, args.num_val)
    ws.preprocess(ws.link_dir('pool_all', targets), ws.pool_dir, 'pool')
    ws.preprocess(val_dir, ws.val_processed, 'val')
    data_s = time.perf_counter() - t0
    pool_dir = ws.link_dir(f'pool_{args.profile}_{args.num_pool}', {i: targets[i] for i in pool_ids})
    record.update(protocol=protocol, device=device_name(args.accelerator),
                  data=ws.data_fingerprints(args.profile, pool_ids, val_dir))
    record.setdefault('data_seconds', round(data_s, 1))
    record.setdefault('runs', {})
    atomic_write_json(record_path, record)
    print(f'data ready in {data_s:.0f} s: pool {len(pool_ids)} {args.profile}'
          + (f', mixed {args.num_pool} ({args.profile} + {args.mix_profile})' if mixed_dir else '')
          + f', val {args.num_val}', flush=True)
    workers = loader_workers_per_run(args.num_workers, args.parallel)
    py = sys.executable
    jobs = []
    lock = threading.Lock()
    for source in [s for s in SOURCES if s in args.sources]:
        for backbone in args.backbones:
            name = f'{backbone}_{source}'
            slim_path = os.path.join(out, slim_name(backbone, source))
            if name in record['runs'] and os.path.exists(slim_path):
                print(f'{name}: done already ({slim_path})', flush=True)
                continue
            jobs.append(pretrain_job(args, ws, py, name, backbone, source, mixed_dir if source == 'ssl_mixed'
                                     else pool_dir, val_dir, workers, slim_path, record, record_path, lock))
    result = run_jobs(jobs, executor, args.parallel, args.deadline_s, started, os.path.join(out, FAILURES_LOG))
    print(f'pre-training: {len(result["done"])} done, {len(result["failed"])} failed, '
          f'{len(result["deferred"])} deferred ({", ".join(result["deferred"]) or "-"}); '
          f'{time.time() - started:.0f} s in all; files in {out}', flush=True)
    return 1 if result['failed'] else (3 if result['deferred'] else 0)


def pretrain_job(args, ws: Workspace, py: str, name: str, backbone: str, source: str, train_raw: str, val_dir: str,
                 workers: int, slim_path: str, record: dict, record_path: str, lock: threading.Lock) -> Job:
    run_dir = os.path.join(ws.runs, name)
    oracle = source == 'oracle'
    batch = args.oracle_batch_size if oracle else args.pretrain_batch_size
    steps = args.oracle_steps if oracle else args.pretrain_steps
    epochs = max(1, math.ceil(steps / args.epoch_steps))
    per_epoch = ['--limit_train_batches', str(args.epoch_steps), '--max_steps', str(steps),
                 '--log_every_n_steps', '10']

    def commands() -> List[dict]:
        if oracle:
            cmd = finetune_cmd(py, ws.data, train_raw, ws.pool_dir, val_dir, ws.val_processed, batch, epochs, workers,
                               args.accelerator, 1, args.precision, args.pretrain_seed, ws.runs, name, args.size,
                               model=backbone, extra=per_epoch + extra_flags(args.finetune_extra))
            return [{'module': 'train', 'argv': cmd[2:]}]
        cmd = pretrain_cmd(py, ws.data, train_raw, ws.pool_dir, val_dir, ws.val_processed, batch, epochs,
                           args.pretrain_warmup, workers, args.accelerator, 1, args.precision, args.pretrain_seed,
                           ws.runs, name, args.size, limit_val_batches='1', model=backbone,
                           extra=per_epoch + ['--contra_momentum', str(args.contra_momentum)]
                           + PRETEXT_TASK_FLAGS.get(source, []) + extra_flags(args.pretrain_extra))
        return [{'module': 'train_ssl', 'argv': cmd[2:]}]

    def done(wall: float) -> None:
        from utils.export_pretrained import export_pretrained
        from benchmarks.scaling.runner import _checkpoint_progress
        last = os.path.join(run_dir, 'checkpoints', 'last.ckpt')
        progress = _checkpoint_progress(last)
        summary = export_pretrained(last, slim_path, 'float16', 'supervised' if oracle else 'momentum')
        entry = {'backbone': backbone, 'source': source, 'steps': progress['global_step'], 'batch_size': batch,
                 'scenarios_seen': progress['global_step'] * batch, 'gpu_seconds': round(wall, 1),
                 'data': (f'{args.num_pool} {args.profile}, labelled' if oracle else
                          f'{args.num_pool // 2} {args.profile} + {args.num_pool - args.num_pool // 2} '
                          f'{args.mix_profile}' if source == 'ssl_mixed' else f'{args.num_pool} {args.profile}'),
                 'slim_checkpoint': os.path.basename(slim_path),
                 'slim_mib': round(summary.output_bytes / 2 ** 20, 2)}
        if not oracle:
            entry['contra_momentum'] = args.contra_momentum
            entry['init_share'] = measure_init_share(last)
            curves = ssl_curves(run_dir, name, backbone, source)
            replace_rows(os.path.join(os.path.dirname(record_path), PRETRAIN_CURVES), PRETRAIN_CURVE_COLUMNS,
                         lambda r: r.get('run') != name, curves)
        with lock:
            record['runs'][name] = entry
            atomic_write_json(record_path, record)

    def prepare() -> None:
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run starts again cleanly

    return Job(name=name, steps=commands, done=done, group=name, log=os.path.join(ws.logs, f'{name}.log'),
               prepare=prepare)


def measure_init_share(ckpt: str):
    """benchmarks/momentum_init_share.py on the full checkpoint: its numbers, or the reason it could not measure."""
    from benchmarks import momentum_init_share
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = momentum_init_share.main([ckpt])
    except (SystemExit, Exception) as error:  # noqa: BLE001 - recorded, the run itself is fine
        return f'not measured: {error}'
    return {k: result[k] for k in ('init_share', 'init_share_standard_error', 'online_share', 'distance_ratio')}


# ----------------------------------------------------------------------------------------------------------------------
# finetune
# ----------------------------------------------------------------------------------------------------------------------
def check_pretrained_ckpt(path: str, model: str, branch: str = 'momentum') -> None:
    """Fails now (not minutes later inside a fine-tune) on a checkpoint that does not fit ``model``: a pre-training
    one of another backbone or without ``branch``, or (``branch='supervised'``) no supervised ``model`` checkpoint;
    the message names the file."""
    from predictors import model_class
    from utils.pretrained import (SUPERVISED, _check_pretraining_layout, _check_supervised_layout,
                                  read_pretraining_checkpoint)
    try:
        state_dict, hparams = read_pretraining_checkpoint(path)
        if branch == SUPERVISED:
            _check_supervised_layout(path, state_dict, hparams, model_class(model))
            return
        _check_pretraining_layout(path, state_dict, hparams, branch)
    except (OSError, ValueError) as error:
        sys.exit(f'ssl_low_label: --pretrained_ckpt {str(error).splitlines()[0]}')
    expected = model_class(model).SSL_BACKBONE
    found = str(hparams.get('backbone') or 'qcnet') if hparams else expected  # bare state dicts: train.py checks
    if found != expected:
        sys.exit(f'ssl_low_label: --pretrained_ckpt {path}: pre-trained with backbone {found!r}, but --model {model} '
                 f'takes {expected!r} weights')


def finetune_protocol(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ('size', 'profile', 'num_pool', 'num_val', 'finetune_batch_size',
                                          'mode_noise_std', 'finetune_extra', 'precision')} | {
        'epochs_by_size': epochs_by_size(args)}


def epochs_by_size(args: argparse.Namespace) -> Dict[str, int]:
    epochs = args.finetune_epochs * len(args.labelled) if len(args.finetune_epochs) == 1 else args.finetune_epochs
    return {str(n): e for n, e in zip(args.labelled, epochs)}


def plan_runs(args: argparse.Namespace) -> List[dict]:
    """Every (backbone, arm, labelled, seed) of the study in the order they run: smaller labelled sets first,
    within one the arms of the decision rule (scratch, pretrained, oracle) seed by seed, then the other arms."""
    smallest = min(args.labelled)
    core = [a for a in ('scratch', 'pretrained', 'oracle') if a in args.arms]
    rest = [a for a in ARMS if a in args.arms and a not in core]
    plan = []
    for n in sorted(set(args.labelled)):
        for arms in (core, rest):
            for seed in args.seeds:
                for arm in arms:
                    if arm in args.smallest_only and n != smallest:
                        continue
                    for backbone in args.backbones:
                        plan.append({'backbone': backbone, 'arm': arm, 'labelled': n, 'seed': seed})
    return plan


def finetune_group(backbone: str, labelled) -> str:
    """Fine-tunes of one backbone and labelled size take about as long: the deadline's estimates pool them."""
    return f'{backbone}_n{labelled}'


def finished_durations(rows: Sequence[dict]) -> Dict[str, List[float]]:
    """{group: wall seconds} of the runs.csv rows, so that a call that starts after other calls (or beside one)
    estimates its runs from theirs."""
    durations: Dict[str, List[float]] = {}
    for row in rows:
        if row.get('gpu_seconds') not in (None, ''):
            durations.setdefault(finetune_group(row['backbone'], row['labelled']), []).append(
                float(row['gpu_seconds']))
    return durations


def run_key(row: dict) -> tuple:
    return (row['backbone'], row['arm'], int(row['labelled']), int(row['seed']))


def finetune(args: argparse.Namespace) -> int:
    started = time.time()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    pre_path = os.path.join(args.pretrained_dir, PRETRAIN_JSON)
    needs_pretraining = any(ARM_SOURCE[a] for a in args.arms)
    pre = read_json(pre_path, 'pre-training record') if os.path.exists(pre_path) else {}
    if needs_pretraining and not pre:
        sys.exit(f'ssl_low_label: {pre_path}: no such file; run `ssl_low_label.py pretrain` first (or --arms scratch)')
    for key in ('size', 'profile', 'num_val'):
        if pre and pre['protocol'][key] != getattr(args, key):
            sys.exit(f'ssl_low_label: --{key} {getattr(args, key)} differs from the pre-training\'s '
                     f'{pre["protocol"][key]!r} ({pre_path})')
    protocol_path = os.path.join(out, PROTOCOL_JSON)
    protocol = read_json(protocol_path, 'protocol') if os.path.exists(protocol_path) else {}
    mine = finetune_protocol(args)
    if protocol.get('finetune') and {k: v for k, v in protocol['finetune'].items() if k != 'device'} != mine:
        old = protocol['finetune']
        if any(old.get(k) != v for k, v in mine.items() if k != 'epochs_by_size') or any(
                old['epochs_by_size'].get(n, e) != e for n, e in mine['epochs_by_size'].items()):
            sys.exit(f'ssl_low_label: {protocol_path} holds rows of another fine-tuning protocol ({old}); use a new '
                     f'--out (or the same flags)')
        mine['epochs_by_size'] = {**old['epochs_by_size'], **mine['epochs_by_size']}
    if args.pretrained_dir != out:  # the report reads every file from --out
        for name in (PRETRAIN_JSON, PRETRAIN_CURVES):
            source = os.path.join(args.pretrained_dir, name)
            if os.path.exists(source):
                atomic_write_text(os.path.join(out, name), open(source).read())
    executor = Executor(args.executor, workers_env(args))
    ws = Workspace(args.work_dir, executor)
    t0 = time.perf_counter()
    pool_ids = ws.pool(args.profile, max(args.labelled))
    val_dir = ws.val(args.profile, args.num_val)
    fingerprints = ws.data_fingerprints(args.profile, pool_ids, val_dir)
    if pre.get('data') and pre['data'] != fingerprints:
        sys.exit(f'ssl_low_label: the regenerated scenarios differ from those of the pre-training ({pre_path}: '
                 f'{pre["data"]}, here {fingerprints}); was the generator changed? Pre-train again')
    labelled_dirs = {n: ws.link_dir(f'labelled_{n}', {i: ws.pool_path(args.profile, i) for i in pool_ids[:n]})
                     for n in sorted(set(args.labelled))}
    ws.preprocess(labelled_dirs[max(args.labelled)], ws.pool_dir, 'labelled')
    ws.preprocess(val_dir, ws.val_processed, 'val')
    atomic_write_json(protocol_path, {**protocol, 'finetune': {**mine, 'device': device_name(args.accelerator)},
                                      'pretrain': pre.get('protocol')})
    print(f'data ready in {time.perf_counter() - t0:.0f} s', flush=True)

    runs_path = os.path.join(out, RUNS_CSV)
    finished = {run_key(r) for r in read_csv_rows(runs_path)}
    plan = [p for p in plan_runs(args) if run_key(p) not in finished]
    missing = sorted({slim_name(p['backbone'], ARM_SOURCE[p['arm']]) for p in plan if ARM_SOURCE[p['arm']]
                      and not os.path.exists(os.path.join(args.pretrained_dir,
                                                          slim_name(p['backbone'], ARM_SOURCE[p['arm']])))})
    if missing:
        sys.exit(f'ssl_low_label: {args.pretrained_dir}: no {", ".join(missing)} (pre-trainings not finished?); '
                 f'run the pretrain command again, or leave those arms out with --arms')
    for backbone, source in sorted({(p['backbone'], ARM_SOURCE[p['arm']]) for p in plan if ARM_SOURCE[p['arm']]}):
        check_pretrained_ckpt(os.path.join(args.pretrained_dir, slim_name(backbone, source)), backbone,
                              'supervised' if source == 'oracle' else 'momentum')
    print(f'{len(finished)} runs in {runs_path} already, {len(plan)} to run', flush=True)
    lock = threading.Lock()
    workers = loader_workers_per_run(args.num_workers, args.parallel)
    jobs = [finetune_job(args, ws, p, labelled_dirs[p['labelled']], val_dir, workers, out, pre, lock) for p in plan]
    result = run_jobs(jobs, executor, args.parallel, args.deadline_s, started, os.path.join(out, FAILURES_LOG),
                      known_durations=finished_durations(read_csv_rows(runs_path)))
    print(f'fine-tuning: {len(result["done"])} done, {len(result["failed"])} failed, {len(result["deferred"])} '
          f'deferred to the next call; {time.time() - started:.0f} s in all', flush=True)
    for name, message in result['failed'].items():
        print(f'  failed: {name}: {message}', flush=True)
    if not args.no_report and os.path.exists(runs_path):
        report(out)
    return 1 if result['failed'] else (3 if result['deferred'] else 0)


def finetune_job(args, ws: Workspace, plan: dict, labelled_dir: str, val_dir: str, workers: int, out: str,
                 pre: dict, lock: threading.Lock) -> Job:
    backbone, arm, n, seed = plan['backbone'], plan['arm'], plan['labelled'], plan['seed']
    name = f'{backbone}_{arm}_n{n}_s{seed}'
    run_dir = os.path.join(ws.runs, name)
    source = ARM_SOURCE[arm]
    epochs = epochs_by_size(args)[str(n)]
    val_json = os.path.join(ws.logs, f'{name}_val.json')
    py = sys.executable

    def commands() -> List[dict]:
        pretrained = os.path.join(args.pretrained_dir, slim_name(backbone, source)) if source else None
        extra = []
        if arm == 'pretrained_sym':
            extra += ['--mode_noise_std', str(args.mode_noise_std)]
        if arm == 'oracle':
            extra += ['--pretrained_branch', 'supervised', '--copy_refine', '0']
        if arm.endswith('_frozen'):
            extra += ['--freeze_encoder', '1']
        cmd = finetune_cmd(py, ws.data, labelled_dir, ws.pool_dir, val_dir, ws.val_processed,
                           args.finetune_batch_size, epochs, workers, args.accelerator, 1, args.precision, seed,
                           ws.runs, name, args.size, pretrained=pretrained, model=backbone,
                           extra=extra + extra_flags(args.finetune_extra))
        val = val_cmd(py, ws.data, val_dir, ws.val_processed, os.path.join(run_dir, 'checkpoints', 'last.ckpt'),
                      args.accelerator, val_json, num_workers=workers)
        return [{'module': 'train', 'argv': cmd[2:]}, {'module': 'val', 'argv': val[2:]}]

    def prepare() -> None:
        shutil.rmtree(run_dir, ignore_errors=True)
        if os.path.exists(val_json):
            os.remove(val_json)

    def done(wall: float) -> None:
        metrics = read_val_metrics(val_json)
        steps = pre.get('runs', {}).get(f'{backbone}_{source}', {}).get('steps', 0) if source else 0
        row = {'backbone': backbone, 'arm': arm, 'labelled': n, 'seed': seed,
               **{k: f'{metrics[m]:.4f}' for k, m in (('minADE', 'minADE'), ('minFDE', 'minFDE'), ('MR', 'MR'),
                                                      ('brier_minFDE', 'brier-minFDE'))},
               'pretrain_steps': steps, 'gpu_seconds': f'{wall:.1f}'}
        path = newest_metrics_csv(run_dir)
        curve = [{'backbone': backbone, 'arm': arm, 'labelled': n, 'seed': seed, 'epoch': r.get('epoch', ''),
                  'step': r.get('step', ''), 'val_minFDE': r['val_minFDE']}
                 for r in (read_csv_rows(path) if path else []) if r.get('val_minFDE') not in (None, '')]
        with lock, rows_lock(out):
            key = run_key(row)
            replace_rows(os.path.join(out, FINETUNE_CURVES), FINETUNE_CURVE_COLUMNS,
                         lambda r: run_key(r) != key, curve)
            replace_rows(os.path.join(out, RUNS_CSV), RUN_COLUMNS, lambda r: run_key(r) != key, [row])

    return Job(name=name, steps=commands, done=done, group=finetune_group(backbone, n),
               log=os.path.join(ws.logs, f'{name}.log'), prepare=prepare)


# ----------------------------------------------------------------------------------------------------------------------
def report(out: str) -> int:
    verdicts = make_report(out)
    for backbone, by_size in verdicts.items():
        for n, text in sorted(by_size.items()):
            print(f'{backbone}, {n} labelled: {text}', flush=True)
    plots = [os.path.join(out, name) for name in ('gain_vs_labelled.png', 'pretrain_curves.png')
             if os.path.exists(os.path.join(out, name))]
    print(f'summary: {os.path.join(out, "summary.md")}, plots: {", ".join(plots)}', flush=True)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == 'job':
        from utils.cli import CliError
        try:
            run_steps(read_json(args.job_file, 'job')['steps'])
        except CliError as error:
            print(str(error), file=sys.stderr, flush=True)
            return error.code
        except CommandFailed as error:  # the step's own output above says why
            print(f'ssl_low_label job: {error}', file=sys.stderr, flush=True)
            return 1
        return 0
    if args.command == 'report':
        try:
            return report(os.path.abspath(args.out))
        except (OSError, ValueError) as error:
            print(f'ssl_low_label: error: {error}', file=sys.stderr)
            return 2
    exit_on_sigterm()
    return pretrain(args) if args.command == 'pretrain' else finetune(args)


if __name__ == '__main__':
    sys.exit(main())
