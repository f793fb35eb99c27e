"""Scheduling the points of a sweep through a runner: one after another or up to K jobs at once, within a deadline.

A runner is anything with ``run(point) -> row`` (sequential) or the step interface of
:class:`~benchmarks.scaling.runner.CliRunner` (``RUNNER_STEPS``, for ``parallel`` > 1). Nothing here starts a process
or touches model code, so the scheduling is tested with fake runners.
"""
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks.scaling.plan import Point
from benchmarks.scaling.results import ResultsTable


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
