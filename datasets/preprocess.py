"""Parallel, resumable preprocessing: raw scenarios -> one cache file per scenario.

    python -m datasets.preprocess --dataset argoverse_v2|waymo|argoverse_v1 --raw_dir DIR --processed_dir DIR
                                  --num_workers N [--strict]

* ``num_workers`` processes, scenarios handed out in chunks, a tqdm progress bar on stderr;
* resumable: a scenario whose cache file already exists (current format version) is skipped;
* a corrupt or unsupported scenario is logged (file + reason), listed in ``<processed_dir>/failures.json`` and
  skipped; with ``strict=True`` the first one raises instead;
* writes are atomic (see ``datasets/storage.py``): killing a run never leaves a half-written cache file.

Each worker needs only numpy/pyarrow (no torch ops), so a worker costs ~4 ms per Argoverse 2 scenario.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from datasets.argoverse_v1 import list_argoverse_v1_scenarios, load_argoverse_v1_scenario
from datasets.argoverse_v2 import list_argoverse_v2_scenarios, load_argoverse_v2_scenario
from datasets.waymo import list_waymo_scenarios, load_waymo_scenario
from datasets.scenario import ScenarioError, ScenarioRecord
from datasets.storage import (CACHE_SUFFIX, FORMAT_VERSION, CacheError, atomic_write_bytes, ensure_writable_directory,
                              is_current_cache_file, read_header, save_features)
from utils.cli import HelpFormatter, bool_flag, configure_cpu_threads

logger = logging.getLogger(__name__)
FAILURES_FILE = 'failures.json'


@dataclass(frozen=True)
class DatasetAdapter:
    """How to enumerate and parse the raw scenarios of one dataset (adapters live in ``datasets/<dataset>.py``)."""
    list_scenarios: Callable[[str], List[str]]
    load_scenario: Callable[..., ScenarioRecord]
    num_historical_steps: int
    num_future_steps: int


# One adapter per dataset (``datasets/<dataset>.py``). Every dataset is placed on the same 50 + 60 step canvas.
ADAPTERS: Dict[str, DatasetAdapter] = {
    'argoverse_v2': DatasetAdapter(list_argoverse_v2_scenarios, load_argoverse_v2_scenario, 50, 60),
    # a raw dir of .tfrecord files; scenario names are '<file>#<record index>'
    'waymo': DatasetAdapter(list_waymo_scenarios, load_waymo_scenario, 50, 60),
    # a raw dir of <sequence>.csv files; city maps in map_files/ next to it (see datasets/argoverse_v1.py)
    'argoverse_v1': DatasetAdapter(list_argoverse_v1_scenarios, load_argoverse_v1_scenario, 50, 60),
}


@dataclass(frozen=True)
class ProcessingOptions:
    """Options of ``build_qcnet_features`` plus the time base; stored in every cache file's header."""
    dim: int = 3
    num_historical_steps: int = 50
    num_future_steps: int = 60
    predict_unseen_agents: bool = False
    vector_repr: bool = True
    include_ssl_mask: bool = True

    def as_meta(self, dataset: str) -> Dict[str, Any]:
        return {'dataset': dataset, **dataclasses.asdict(self)}


@dataclass
class Failure:
    scenario: str
    file: str
    reason: str


@dataclass
class PreprocessSummary:
    """What one preprocessing run did."""
    raw_dir: str
    processed_dir: str
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failures: List[Failure] = field(default_factory=list)
    bytes_written: int = 0
    wall_time_s: float = 0.0
    num_workers: int = 1

    @property
    def seconds_per_scenario_per_core(self) -> float:
        return self.wall_time_s * self.num_workers / self.processed if self.processed else float('nan')

    def format(self) -> str:
        lines = [f'raw dir        {self.raw_dir}',
                 f'processed dir  {self.processed_dir}',
                 f'scenarios      {self.total} found, {self.processed} processed, {self.skipped} already done '
                 f'(skipped), {len(self.failures)} failed',
                 f'time           {self.wall_time_s:.1f} s with {self.num_workers} worker(s)'
                 + (f', {self.seconds_per_scenario_per_core * 1000:.1f} ms per scenario per worker'
                    if self.processed else ''),
                 ]
        if self.processed:
            lines.append(f'output         {self.bytes_written / self.processed / 1024:.1f} KiB per scenario '
                         f'(cache format v{FORMAT_VERSION})')
        if self.failures:
            lines.append(f'failures       listed in {os.path.join(self.processed_dir, FAILURES_FILE)}; first ones:')
            lines.extend(f'  {failure.file}: {failure.reason}' for failure in self.failures[:10])
            if len(self.failures) > 10:
                lines.append(f'  ... and {len(self.failures) - 10} more')
            lines.append('               these scenarios are left out; fix or remove them and re-run to retry them '
                         '(finished scenarios are kept and skipped)')
        return '\n'.join(lines)


def processed_file_name(scenario_name: str) -> str:
    return scenario_name + CACHE_SUFFIX


def check_cache_options(processed_dir: str, names: Sequence[str], meta: Dict[str, Any],
                        skip_stale: bool = False) -> None:
    """Raise ValueError if the first existing cache file in ``processed_dir`` was built with other options.

    A file of another cache format version raises :class:`CacheVersionError`, unless ``skip_stale`` (the caller
    rebuilds such files from the raw scenarios): then the first current file is checked."""
    for name in names:
        path = os.path.join(processed_dir, processed_file_name(name))
        if skip_stale and not is_current_cache_file(path):
            continue
        if os.path.isfile(path):
            found = read_header(path)['meta']
            if found != meta:
                differing = {key: (found.get(key), meta.get(key)) for key in set(found) | set(meta)
                             if found.get(key) != meta.get(key)}
                raise ValueError(f'{processed_dir}: processed with other options (found, requested): {differing}; '
                                 f'use another processed_dir or delete this one')
            return


# ----------------------------------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _init_worker(raw_dir: str, processed_dir: str, dataset: str, options: ProcessingOptions, strict: bool) -> None:
    _WORKER.update(raw_dir=raw_dir, processed_dir=processed_dir, adapter=ADAPTERS[dataset], options=options,
                   meta=options.as_meta(dataset), strict=strict)


def _init_pool_worker(*args: Any) -> None:
    # one thread per worker process: N processes x M intra-op threads would oversubscribe the cores
    import torch
    torch.set_num_threads(1)
    _init_worker(*args)


def process_one(name: str) -> Tuple[str, Optional[int], Optional[Tuple[str, str]]]:
    """Worker: raw scenario ``name`` -> cache file. Returns (name, bytes written or None, (file, reason) or None)."""
    from datasets.processing import build_qcnet_features  # imported by the driver before the workers fork
    options: ProcessingOptions = _WORKER['options']
    scenario_dir = os.path.join(_WORKER['raw_dir'], name)
    try:
        record = _WORKER['adapter'].load_scenario(scenario_dir, num_historical_steps=options.num_historical_steps,
                                                  num_future_steps=options.num_future_steps)
        features = build_qcnet_features(record, dim=options.dim, predict_unseen_agents=options.predict_unseen_agents,
                                        vector_repr=options.vector_repr, include_ssl_mask=options.include_ssl_mask)
        size = save_features(os.path.join(_WORKER['processed_dir'], processed_file_name(name)), features,
                             _WORKER['meta'])
        return name, size, None
    except ScenarioError as error:
        if _WORKER['strict']:
            raise
        return name, None, (error.path, error.problem)
    except Exception as error:  # unexpected: a bug or data we do not support; report it and go on
        if _WORKER['strict']:
            raise
        return name, None, (scenario_dir, f'unexpected {type(error).__name__}: {error}')


# ----------------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------------
def preprocess_scenarios(raw_dir: str,
                         processed_dir: str,
                         dataset: str = 'argoverse_v2',
                         num_workers: int = 1,
                         strict: bool = False,
                         options: Optional[ProcessingOptions] = None,
                         names: Optional[Sequence[str]] = None,
                         progress: bool = True,
                         chunksize: Optional[int] = None) -> PreprocessSummary:
    """Process every scenario of ``raw_dir`` (or just ``names``) into ``processed_dir``; see module docstring."""
    import datasets.processing  # noqa: F401 (torch, PyG: once here, inherited by forked workers; not for --help)
    if dataset not in ADAPTERS:
        raise ValueError(f'unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}')
    adapter = ADAPTERS[dataset]
    if options is None:
        options = ProcessingOptions(num_historical_steps=adapter.num_historical_steps,
                                    num_future_steps=adapter.num_future_steps)
    if not os.path.isdir(raw_dir):
        raise FileNotFoundError(f'{raw_dir}: raw directory does not exist (check the raw dir / --root)')
    ensure_writable_directory(processed_dir)
    all_names = list(names) if names is not None else adapter.list_scenarios(raw_dir)
    # files of an older cache format are rebuilt from the raw scenarios (they are in `todo` below)
    check_cache_options(processed_dir, all_names, options.as_meta(dataset), skip_stale=True)
    todo = [name for name in all_names
            if not is_current_cache_file(os.path.join(processed_dir, processed_file_name(name)))]
    stale = sum(os.path.isfile(os.path.join(processed_dir, processed_file_name(name))) for name in todo)
    if stale:
        logger.warning('%s: rebuilding %d cache file(s) written by another cache format version', processed_dir,
                       stale)
    num_workers = max(1, min(int(num_workers), len(todo))) if todo else 1
    summary = PreprocessSummary(raw_dir=raw_dir, processed_dir=processed_dir, total=len(all_names),
                                skipped=len(all_names) - len(todo), num_workers=num_workers)
    start = time.perf_counter()
    init_args = (raw_dir, processed_dir, dataset, options, strict)
    if chunksize is None:  # big enough to amortise IPC, small enough to keep the bar moving and workers balanced
        chunksize = max(1, min(64, len(todo) // (num_workers * 8) if todo else 1))
    bar = _progress_bar(len(todo), progress)
    redirect = contextlib.nullcontext()
    if bar is not None:  # log lines above the bar instead of through it
        from tqdm.contrib.logging import logging_redirect_tqdm
        redirect = logging_redirect_tqdm()
    try:
        with redirect:
            _run(todo, num_workers, init_args, chunksize, summary, bar)
    finally:
        if bar is not None:
            bar.close()
        summary.wall_time_s = time.perf_counter() - start
        if todo:
            # keep earlier failures of scenarios this run did not retry, so the file lists every known bad scenario
            retried = set(todo)
            earlier = [failure for failure in read_failures(processed_dir) if failure.scenario not in retried and
                       not os.path.isfile(os.path.join(processed_dir, processed_file_name(failure.scenario)))]
            _write_failures(processed_dir, earlier + summary.failures)
    return summary


class PreprocessWorkerDied(ChildProcessError):
    """A worker process ended without returning (killed, e.g. out of memory, or crashed in native code)."""


def _process_chunk(names: List[str]) -> List[Tuple[str, Optional[int], Optional[Tuple[str, str]]]]:
    return [process_one(name) for name in names]


def _run(todo: List[str], num_workers: int, init_args: tuple, chunksize: int, summary: PreprocessSummary,
         bar) -> None:
    if num_workers == 1:
        _init_worker(*init_args)
        _collect(map(process_one, todo), summary, bar)
        return
    # fork: workers inherit the imported modules (no re-import of torch); they only use numpy/pyarrow.
    # A process pool of concurrent.futures (not multiprocessing.Pool): when a worker dies, multiprocessing.Pool
    # waits forever for its lost tasks, this one raises BrokenProcessPool.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
    chunks = [todo[start:start + chunksize] for start in range(0, len(todo), chunksize)]
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_init_pool_worker,
                             initargs=init_args) as pool:
        futures = [pool.submit(_process_chunk, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                _collect(future.result(), summary, bar)
        except BrokenProcessPool:
            done = summary.processed + len(summary.failures)
            raise PreprocessWorkerDied(
                f'{summary.raw_dir}: a preprocessing worker process died (killed, e.g. out of memory, or crashed) '
                f'after {done} of {len(todo)} scenarios; their cache files are kept: run again to continue (with '
                f'num_workers=1 to find the scenario that kills it)') from None
        except BaseException:  # strict mode's first bad scenario, Ctrl-C: do not start the remaining chunks
            pool.shutdown(cancel_futures=True)
            raise


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc='Processing scenarios', unit='scenario', dynamic_ncols=True, file=sys.stderr)


def _collect(results, summary: PreprocessSummary, bar) -> None:
    for name, size, failure in results:
        if failure is None:
            summary.processed += 1
            summary.bytes_written += size
        else:
            summary.failures.append(Failure(scenario=name, file=failure[0], reason=failure[1]))
            logger.warning('skipping scenario %s: %s: %s', name, failure[0], failure[1])
        if bar is not None:
            bar.update(1)


def _write_failures(processed_dir: str, failures: List[Failure]) -> None:
    blob = json.dumps([dataclasses.asdict(failure) for failure in sorted(failures, key=lambda f: f.scenario)],
                      indent=1).encode('utf-8')
    atomic_write_bytes(os.path.join(processed_dir, FAILURES_FILE), blob)


def read_failures(processed_dir: str) -> List[Failure]:
    """Failures recorded by the last preprocessing run of ``processed_dir`` (empty if none)."""
    path = os.path.join(processed_dir, FAILURES_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, 'rb') as handle:
        return [Failure(**item) for item in json.loads(handle.read())]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m datasets.preprocess', formatter_class=HelpFormatter,
        description='Turn raw scenarios into QCNet cache files (parallel, resumable; bad scenarios are listed in '
                    f'<processed_dir>/{FAILURES_FILE} and skipped unless --strict).')
    parser.add_argument('--dataset', choices=sorted(ADAPTERS), default='argoverse_v2')
    parser.add_argument('--raw_dir', required=True,
                        help='argoverse_v2: one sub-directory per scenario; waymo: .tfrecord files (many scenarios '
                             'each); argoverse_v1: <sequence>.csv files (city maps in map_files/ next to them)')
    parser.add_argument('--processed_dir', required=True, help='output directory (created if missing)')
    parser.add_argument('--num_workers', type=int, default=os.cpu_count() or 1, help='worker processes')
    parser.add_argument('--strict', **bool_flag(False), help='stop at the first bad scenario instead of skipping it')
    parser.add_argument('--dim', type=int, choices=(2, 3), default=3)
    parser.add_argument('--num_historical_steps', type=int, default=None, help='default: the dataset\'s (50 for AV2)')
    parser.add_argument('--num_future_steps', type=int, default=None, help='default: the dataset\'s (60 for AV2)')
    parser.add_argument('--predict_unseen_agents', **bool_flag(False),
                        help='keep agents that are not observed during the history')
    parser.add_argument('--vector_repr', **bool_flag(True),
                        help='history step t is valid when observed at t and t-1 (0: when observed at t)')
    parser.add_argument('--no_vector_repr', dest='vector_repr', action='store_false', help=argparse.SUPPRESS)
    parser.add_argument('--ssl_mask', dest='include_ssl_mask', **bool_flag(True),
                        help='store agent.predict_mask_ssl (SmartPretrain field)')
    parser.add_argument('--no_ssl_mask', dest='include_ssl_mask', action='store_false', help=argparse.SUPPRESS)
    parser.add_argument('--limit', type=int, default=None, help='process only the first N scenarios (sorted)')
    parser.add_argument('--progress', **bool_flag(True), help='show a progress bar')
    parser.add_argument('--no_progress', dest='progress', action='store_false', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
    adapter = ADAPTERS[args.dataset]
    options = ProcessingOptions(
        dim=args.dim,
        num_historical_steps=args.num_historical_steps or adapter.num_historical_steps,
        num_future_steps=args.num_future_steps if args.num_future_steps is not None else adapter.num_future_steps,
        predict_unseen_agents=args.predict_unseen_agents, vector_repr=args.vector_repr,
        include_ssl_mask=args.include_ssl_mask)
    try:
        if not os.path.isdir(args.raw_dir):
            raise FileNotFoundError(f'{args.raw_dir}: raw directory does not exist (check --raw_dir)')
        names = adapter.list_scenarios(args.raw_dir)
        if not names:
            raise FileNotFoundError(f'{args.raw_dir}: no {args.dataset} scenarios found (check --raw_dir and '
                                    f'--dataset)')
        if args.limit is not None:
            names = names[:args.limit]
        summary = preprocess_scenarios(args.raw_dir, args.processed_dir, dataset=args.dataset,
                                       num_workers=args.num_workers, strict=args.strict, options=options, names=names,
                                       progress=args.progress)
    except (ScenarioError, CacheError, OSError, ValueError) as error:
        print(f'error: {" ".join(str(error).split())}', file=sys.stderr)
        return 2
    print(summary.format())
    return 0 if not summary.failures else 2


if __name__ == '__main__':
    configure_cpu_threads()
    sys.exit(main())
