"""Scaling-study tool (benchmarks/scaling_sweep.py = benchmarks/scaling/, benchmarks/scaling_plots.py).

The real CLIs take minutes per point, so the sweep logic (resume, extension, protocol check, deadline, interruption)
runs here with a fake runner injected into the command line's ``main``; the pieces of the real runner that are cheap
(run-directory resumption, FLOP counting on generated Argoverse 2-format scenarios) are tested on their own. The
end-to-end CPU smoke command with the real CLIs is in docs/SCALING.md.
"""
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from benchmarks import scaling_plots
from benchmarks.experiment_utils import ROOT, CommandFailed, read_val_metrics
from benchmarks.scaling import cli as sweep_cli
from benchmarks.scaling.flops import measure_step_flops
from benchmarks.scaling.plan import Point, geometric_sizes, plan_points
from benchmarks.scaling.processes import ChildProcesses
from benchmarks.scaling.results import EXPORT_FILES, ResultsTable
from benchmarks.scaling.runner import CliRunner
from benchmarks.scaling.schedule import estimate_point_s, run_point, run_sweep

TRUE_EXPONENT = 0.3


def fake_metrics(point):
    """Deterministic metrics whose minFDE gain over scratch follows 0.02 * N^0.3, with a +-1 % seed wobble."""
    gain = 0.0 if point.kind == 'scratch' else 0.02 * point.num_pretrain ** TRUE_EXPONENT
    wobble = 1.0 + 0.01 * (1 if point.seed % 2 else -1)
    if point.mix == 'mixed':
        gain *= 1.2
    fde = 4.0 * (1.0 - gain * wobble) if gain else 4.0 * wobble
    return {'minADE': fde / 2, 'minFDE': fde, 'MR': min(1.0, fde / 8), 'brier-minFDE': fde + 0.6,
            'pretrain_flops': 3e9 * point.num_pretrain, 'pretrain_gpu_s': 0.5 * point.num_pretrain}


class FakeRunner:
    instances = []

    def __init__(self, args, fail_on=None):
        self.args = args
        self.fail_on = fail_on
        self.calls = []
        self.prepared = []
        FakeRunner.instances.append(self)

    def protocol(self):
        return {'model': self.args.model, 'finetune_epochs': self.args.finetune_epochs}

    def prepare(self, points):
        self.prepared.append([p.key for p in points])

    def run(self, point):
        if point.key == self.fail_on:
            raise KeyboardInterrupt  # what Ctrl-C / a time limit does in the middle of a run
        self.calls.append(point.key)
        return fake_metrics(point)


def sweep(work, *extra, fail_on=None, plots=False):
    argv = ['--work_dir', str(work), '--model', 'tiny', '--accelerator', 'cpu', *extra]
    if not plots:
        argv.append('--no_plots')
    code = sweep_cli.main(argv, runner_factory=lambda args: FakeRunner(args, fail_on))
    return code, FakeRunner.instances[-1]


def stored_rows(work):
    with open(work / 'results.json') as f:
        return json.load(f)['rows']


def test_resume_skips_finished_points_and_adds_new_ones(tmp_path):
    code, first = sweep(tmp_path, '--sizes', '10', '20', '--seeds', '0')
    assert code == 0
    assert first.calls == ['scratch/s0', 'single/n10/s0', 'single/n20/s0']
    # extend: one more size, one more seed, the mixed data
    code, second = sweep(tmp_path, '--sizes', '10', '20', '40', '--seeds', '0', '1', '--mixes', 'single', 'mixed')
    assert code == 0
    assert not set(second.calls) & set(first.calls)          # finished points are never run again
    assert len(second.calls) == 2 + 3 * 2 * 2 - 3             # 2 scratch + 3 sizes x 2 mixes x 2 seeds, minus done
    assert set(second.prepared[0]) == set(second.calls)       # only what is missing is prepared
    rows = stored_rows(tmp_path)
    assert len(rows) == 14
    assert {r['key'] for r in rows} == set(first.calls) | set(second.calls)
    with open(tmp_path / 'results.csv') as f:
        lines = f.read().splitlines()
    assert len(lines) == 15 and lines[0].startswith('key,kind,mix,profiles,num_pretrain_scenarios,seed')
    row = next(r for r in rows if r['key'] == 'mixed/n40/s1')
    assert row['kind'] == 'pretrained' and row['mix'] == 'mixed' and row['num_pretrain_scenarios'] == 40
    assert row['minFDE'] == pytest.approx(fake_metrics(Point('pretrained', 1, 'mixed', 40))['minFDE'])
    # nothing left: a third call runs nothing
    code, third = sweep(tmp_path, '--sizes', '10', '20', '40', '--seeds', '0', '1', '--mixes', 'single', 'mixed')
    assert code == 0 and third.calls == [] and third.prepared == []


def test_interrupted_sweep_keeps_finished_rows(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, '--sizes', '10', '20', '--seeds', '0', fail_on='single/n20/s0')
    assert [r['key'] for r in stored_rows(tmp_path)] == ['scratch/s0', 'single/n10/s0']
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]     # atomic writes leave no debris
    code, resumed = sweep(tmp_path, '--sizes', '10', '20', '--seeds', '0')
    assert code == 0 and resumed.calls == ['single/n20/s0']


def test_changed_protocol_is_refused(tmp_path):
    sweep(tmp_path, '--sizes', '10', '--seeds', '0', '--finetune_epochs', '3')
    with pytest.raises(SystemExit, match='finetune_epochs: 3 -> 4'):
        sweep(tmp_path, '--sizes', '10', '--seeds', '0', '--finetune_epochs', '4')


def test_deadline_leaves_points_for_the_next_call(tmp_path):
    code, runner = sweep(tmp_path, '--sizes', '10', '--seeds', '0', '--deadline_s', '0')
    assert code == 3 and runner.calls == []   # exit 3: planned points remain


def test_deadline_defers_points_expected_to_overrun(tmp_path):
    table = ResultsTable(str(tmp_path))
    # recorded earlier: fine-tune + val takes 10 s, pre-training 10 s per scenario-epoch
    table.add({'key': 'scratch/s0', 'kind': 'scratch', 'mix': '', 'num_pretrain_scenarios': 0, 'seed': 0,
               'pretrain_wall_s': 0.0, 'pretrain_epochs': 0, 'point_wall_s': 10.0, 'minFDE': 4.0})
    table.add({'key': 'single/n10/s0', 'kind': 'pretrained', 'mix': 'single', 'num_pretrain_scenarios': 10,
               'seed': 0, 'pretrain_wall_s': 100.0, 'pretrain_epochs': 1, 'point_wall_s': 110.0, 'minFDE': 3.9})
    big = Point('pretrained', 0, 'single', 20)
    assert estimate_point_s(big, list(table.rows.values())) == pytest.approx(210.0)
    assert estimate_point_s(big, list(table.rows.values()), pretrain_done=True) == 10.0
    # with two recorded sizes: start-up + seconds per scenario-epoch from a straight line (20 s + 8 s x N)
    two_sizes = list(table.rows.values()) + [
        {'kind': 'pretrained', 'num_pretrain_scenarios': 20, 'pretrain_wall_s': 180.0, 'pretrain_epochs': 1,
         'point_wall_s': 190.0}]
    rows_line = [dict(r, pretrain_wall_s=100.0) if r.get('num_pretrain_scenarios') == 10 else r for r in two_sizes]
    estimate = estimate_point_s(Point('pretrained', 0, 'single', 40), rows_line)
    assert estimate == pytest.approx(10.0 + 20.0 + 8.0 * 40)
    runner = FakeRunner(sweep_cli.build_parser().parse_args(['--work_dir', str(tmp_path)]))
    points = plan_points([10, 20], ['single'], [0, 1])
    outcome = run_sweep(points, runner, table, deadline_s=100.0, log=lambda line: None)
    # scratch/s1 is expected to take 10 s; single/n10/s1 10 s + 100 s of pre-training, over the deadline
    assert runner.calls == ['scratch/s1']
    assert outcome['remaining'] == ['single/n10/s1', 'single/n20/s0', 'single/n20/s1']
    assert isinstance(table.rows['scratch/s1']['point_wall_s'], float)


def test_bad_flags_give_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match='smaller than the 2 mixed profiles'):
        sweep(tmp_path, '--sizes', '1', '4', '--mixes', 'mixed')
    with pytest.raises(SystemExit, match='distinct --mix_profiles'):
        sweep(tmp_path, '--sizes', '4', '--mixes', 'mixed', '--mix_profiles', 'default', 'default')
    with pytest.raises(SystemExit, match='factor'):
        sweep(tmp_path, '--min_size', '10', '--size_factor', '1.01', '--num_sizes', '4')
    assert geometric_sizes(100, 2, 4) == [100, 200, 400, 800]


def test_help_lists_the_sweep_flags():
    # the script users run (benchmarks/scaling_sweep.py) in a fresh interpreter
    help_text = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'scaling_sweep.py'), '--help'],
                               capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert help_text.startswith('usage: scaling_sweep.py')
    for flag in ('--sizes', '--mixes', '--seeds', '--pretrain_epochs', '--deadline_s', '--flop_batches'):
        assert flag in help_text
    with pytest.raises(SystemExit) as excinfo:
        scaling_plots.main(['--help'])
    assert excinfo.value.code == 0


# ----------------------------------------------------------------------------------------------------------------------
# power-law fits
# ----------------------------------------------------------------------------------------------------------------------
def seed_points(sizes, gain_of, rel=(-0.03, 0.01, 0.02)):
    """aggregate()-style points: three seeds per size around gain_of(N)."""
    points = []
    for n in sizes:
        gains = [gain_of(n) * (1 + r) for r in rel]
        stats = {'values': gains, 'n': len(gains), 'mean': statistics.fmean(gains), 'std': statistics.stdev(gains),
                 'sem': statistics.stdev(gains) / math.sqrt(len(gains))}
        metric = dict(stats, values=[4 * (1 - g) for g in gains], mean=4 * (1 - stats['mean']))
        points.append({'num_pretrain_scenarios': n, 'gain': stats, 'metric': metric})
    return points


def test_power_law_fit_recovers_a_known_exponent():
    rng = np.random.default_rng(0)
    sizes = [50, 100, 200, 400, 800, 1600]
    noisy = [0.01 * n ** 0.42 * math.exp(rng.normal(0, 0.02)) for n in sizes]
    fit = scaling_plots.fit_power_law(sizes, noisy)
    assert fit['b'] == pytest.approx(0.42, abs=0.03)
    assert fit['b_se'] < 0.03 and fit['r2'] > 0.99 and fit['n'] == 6
    exact = scaling_plots.fit_power_law(sizes, [3.0 * n ** -0.25 for n in sizes])
    assert exact['b'] == pytest.approx(-0.25, abs=1e-9) and exact['a'] == pytest.approx(3.0, rel=1e-9)
    with pytest.raises(ValueError, match='positive'):
        scaling_plots.fit_power_law([1, 2, 3], [1, 0, 2])

    info = scaling_plots.fit_scaling(seed_points(sizes, lambda n: 0.01 * n ** 0.42))
    assert info['fit']['b'] == pytest.approx(0.42, abs=0.01)
    assert (info['holds_from'], info['holds_to']) == (50, 1600)
    assert 'N^0.42' in info['verdict'] and 'N = 50..1600' in info['verdict']


def test_law_range_stops_where_the_gain_saturates():
    sizes = [100, 200, 400, 800, 1600, 3200]
    info = scaling_plots.fit_scaling(seed_points(sizes, lambda n: 0.01 * min(n, 800) ** 0.3))
    assert (info['holds_from'], info['holds_to']) == (100, 800)
    assert info['fit']['b'] == pytest.approx(0.3, abs=0.01)
    assert info['fit_all']['b'] < 0.25                           # the all-point fit is dragged down by the plateau


def test_fit_says_when_points_are_too_few_or_noise():
    two = scaling_plots.fit_scaling(seed_points([100, 200], lambda n: 0.01 * n ** 0.3))
    assert two['fit'] is None and 'too few points' in two['verdict']
    noise = scaling_plots.fit_scaling(seed_points([100, 200, 400], lambda n: 0.002, rel=(-3.0, 0.5, 2.6)))
    assert noise['noise_dominated'] and noise['verdict'].startswith('Every gain is within two standard errors')
    negative = scaling_plots.fit_scaling(seed_points([100, 200, 400, 800], lambda n: -0.01 if n == 200 else 0.05))
    assert negative['excluded_sizes'] == [200] and negative['fit'] is None
    assert 'Excluded' in negative['verdict']


def test_plots_are_written_and_show_the_data(tmp_path):
    import matplotlib.image as mpimg
    code, _ = sweep(tmp_path, '--sizes', '10', '20', '40', '80', '--seeds', '0', '1', '--mixes', 'single', 'mixed',
                    '--export_dir', str(tmp_path / 'export'), plots=True)
    assert code == 0
    # what a time-limited GPU call brings back: 8 flat files (flops.json exists only with the real runner)
    assert sorted(os.listdir(tmp_path / 'export')) == sorted(
        os.path.basename(f) for f in EXPORT_FILES if f != 'flops.json')
    plots = tmp_path / 'plots'
    for name in ('metric_vs_data.png', 'gain_vs_data.png', 'gain_vs_compute.png'):
        image = mpimg.imread(plots / name)
        assert image.shape[0] > 300 and image.shape[1] > 600
        rgb = image[..., :3].reshape(-1, 3)
        assert (rgb.min(axis=1) < 0.9).mean() > 0.02                   # not a blank canvas
        colours = {tuple(c) for c in np.round(rgb[::7], 2)}
        assert len(colours) > 30                                        # lines, markers and bands, not one colour
        # both data mixes are drawn in their colours (blue / orange)
        for colour in ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05)):
            assert (np.abs(rgb - colour).max(axis=1) < 0.06).sum() > 50, (name, colour)
    with open(plots / 'fit.json') as f:
        fits = json.load(f)['fits']
    # the fake gain is 0.02 N^0.3 (x 1.2 for the mixed data): the fit finds the exponent on both
    for mix in ('single', 'mixed'):
        assert fits[mix]['gain']['fit']['b'] == pytest.approx(TRUE_EXPONENT, abs=0.02)
    summary = (plots / 'summary.md').read_text()
    assert '| scratch | 0 | 2 |' in summary and '| mixed | 80 | 2 |' in summary and 'N^0.30' in summary


# ----------------------------------------------------------------------------------------------------------------------
# pieces of the real runner
# ----------------------------------------------------------------------------------------------------------------------
def test_interrupted_training_run_continues_from_its_checkpoint(tmp_path):
    import torch
    args = sweep_cli.build_parser().parse_args(['--work_dir', str(tmp_path), '--accelerator', 'cpu'])
    runner = CliRunner(args)
    assert runner.data.subset_ids_by_profile('mixed', 5) == {'default': 3, 'highway': 2}
    os.makedirs(runner.runs)
    name = 'pre_single_n8_s0'
    checkpoints = tmp_path / 'runs' / name / 'checkpoints'
    checkpoints.mkdir(parents=True)
    torch.save({'epoch': 1, 'global_step': 12}, checkpoints / 'last.ckpt')
    # an attempt that started 100 s ago, wrote its last checkpoint 40 s ago and was killed
    now = time.time()
    os.utime(checkpoints / 'last.ckpt', (now - 40, now - 40))
    with open(tmp_path / 'runs' / f'{name}.attempts.json', 'w') as f:
        json.dump([{'start': now - 100, 'resume': False}], f)
    seen = []

    def command(resume):
        seen.append(resume)
        torch.save({'epoch': 3, 'global_step': 24}, checkpoints / 'last.ckpt')   # what the resumed run writes
        return [sys.executable, '-c', 'pass']

    record = runner._train(name, command, devices=2)
    assert seen == [True]                                            # continued with --resume, not restarted
    assert (record['epochs'], record['steps'], record['attempts']) == (4, 24, 2)
    assert 60 <= record['wall_s'] < 90                               # 60 s kept from the killed attempt + this one
    assert record['gpu_s'] == pytest.approx(2 * record['wall_s'])
    assert runner._train(name, command, devices=2) == record and seen == [True]   # finished: reused

    # a run directory without a checkpoint is started afresh
    stale = tmp_path / 'runs' / 'ft_single_n8_s0'
    (stale / 'tensorboard').mkdir(parents=True)
    (stale / 'tensorboard' / 'junk').write_text('x')

    def fresh(resume):
        seen.append(resume)
        assert not (stale / 'tensorboard' / 'junk').exists()
        (stale / 'checkpoints').mkdir(parents=True)
        torch.save({'epoch': 0, 'global_step': 3}, stale / 'checkpoints' / 'last.ckpt')
        return [sys.executable, '-c', 'pass']

    assert runner._train('ft_single_n8_s0', fresh, devices=1)['steps'] == 3 and seen[-1] is False


def test_val_metrics_reader_names_bad_files(tmp_path):
    good = tmp_path / 'val.json'
    good.write_text(json.dumps({'num_scenarios': 4, 'metrics': {'minADE': 1.0, 'minFDE': 2.0, 'MR': 0.5}}))
    assert read_val_metrics(str(good))['minFDE'] == 2.0
    flat = tmp_path / 'flat.json'
    flat.write_text(json.dumps({'minFDE': 2.0}))
    with pytest.raises(ValueError, match='flat.json: no val.py metric table'):
        read_val_metrics(str(flat))


@pytest.mark.slow
def test_fine_tuning_flops_add_up_over_scenarios(tmp_path):
    """The FLOP estimate scales a per-scenario count: for supervised QCNet the matmul FLOPs of a batch are the sum of
    its scenarios' (every product is per agent, polygon or edge) except for the decoder's one shared query slot of the
    agents without a target, which a batch has once, not once per scenario; checked on generated AV2-format scenes."""
    from datasets.synthetic import generate_split
    generate_split(str(tmp_path / 'raw'), 'train', 2, seed=5)
    model = ['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
             '--num_recurrent_steps', '3', '--pl2pl_radius', '30', '--time_span', '10', '--pl2a_radius', '20',
             '--a2a_radius', '20', '--num_t2m_steps', '30', '--pl2m_radius', '30', '--a2m_radius', '30',
             '--hidden_dim', '8', '--num_heads', '1', '--head_dim', '8', '--num_freq_bands', '2',
             '--num_map_layers', '1', '--num_agent_layers', '1', '--num_dec_layers', '1']
    cli = ['--root', str(tmp_path), '--train_batch_size', '1', '--val_batch_size', '1', '--test_batch_size', '1',
           *model]
    raw, processed = str(tmp_path / 'raw' / 'train'), str(tmp_path / 'processed')
    single = measure_step_flops('finetune', cli, raw, processed, batch_size=1, num_batches=2)
    pair = measure_step_flops('finetune', cli, raw, processed, batch_size=2, num_batches=1)
    assert single['batches'] == 2 and pair['scenarios'] == 2
    assert single['flops_per_step'] > 1e6
    # two single-scene batches decode two shared slots, the pair one: a little less, and far less than one scene
    shared_slot = 2 * single['flops_per_step'] - pair['flops_per_step']
    assert 0 < shared_slot < 0.02 * single['flops_per_step']
    assert abs(pair['flops_per_scenario'] - single['flops_per_scenario']) <= shared_slot / 2
    assert {'aten.mm', 'aten.addmm'} <= set(pair['by_op'])


# ----------------------------------------------------------------------------------------------------------------------
# concurrent jobs (--parallel K), with a fake runner whose steps sleep
# ----------------------------------------------------------------------------------------------------------------------
class StepRunner:
    """Fake runner with CliRunner's step interface: every step sleeps ``step_s`` and records (step, name, start, end);
    a finished pre-training leaves a marker file in the work dir (as sweep_run.json does); steps named in ``fail``
    raise CommandFailed naming a log, as a CLI with a non-zero exit does."""
    instances = []

    def __init__(self, args, step_s=0.2, fail=(), child_for=None):
        self.args, self.step_s, self.fail, self.child_for = args, step_s, set(fail), child_for
        self.markers = os.path.join(args.work_dir, 'fake_runs')
        os.makedirs(self.markers, exist_ok=True)
        self.events, self.lock = [], threading.Lock()
        self.children = ChildProcesses(grace_s=5)
        self.child_started = threading.Event()
        StepRunner.instances.append(self)

    def protocol(self):
        return {'model': self.args.model, 'pretrain_per_seed': self.args.pretrain_per_seed}

    def prepare(self, points):
        pass

    def _step(self, step, name):
        start = time.perf_counter()
        if name in self.fail:
            raise CommandFailed(f'train.py failed (exit 1), see /fake/logs/{name}.log')
        if name == self.child_for:   # a real child process that only SIGTERM ends
            self.children.run([sys.executable, '-c', 'import time; time.sleep(120)'],
                              os.path.join(self.args.work_dir, 'child.log'))
        time.sleep(self.step_s)
        with self.lock:
            self.events.append((step, name, start, time.perf_counter()))

    def pretrain_name(self, point):
        seed = point.seed if self.args.pretrain_per_seed else self.args.pretrain_seed
        return f'pre_{point.mix}_n{point.num_pretrain}_s{seed}'

    def pretrain_done(self, point):
        return os.path.exists(os.path.join(self.markers, self.pretrain_name(point)))

    def base_row(self, point):
        return {'run': point.run_name, 'pretrain_reused': False, 'pretrain_wall_s': 0.0, 'pretrain_epochs': 0,
                'num_pretrain_scenarios': 0}

    def pretrain(self, point):
        name = self.pretrain_name(point)
        if not self.pretrain_done(point):   # a finished pre-training is reused (CliRunner: sweep_run.json)
            self._step('pretrain', name)
            open(os.path.join(self.markers, name), 'w').close()
        return {'pretrain_seed': int(name.rsplit('_s', 1)[1]), 'pretrain_wall_s': 0.5 * point.num_pretrain,
                'pretrain_epochs': 1, 'pretrain_flops': 3e9 * point.num_pretrain,
                'num_pretrain_scenarios': point.num_pretrain}

    def finetune(self, point):
        if point.kind == 'pretrained':
            assert self.pretrain_done(point), f'{point.key} fine-tuned before its pre-training'
        self._step('finetune', point.key)
        return {'finetune_steps': 10}

    def validate(self, point):
        self._step('validate', point.key)
        return {k: v for k, v in fake_metrics(point).items() if not k.startswith('pretrain')}

    def run(self, point):
        return run_point(self, point)

    def stop(self):
        return self.children.terminate_all()

    def intervals(self, step):
        return {name: (start, end) for s, name, start, end in self.events if s == step}


def step_sweep(work, *extra, **runner_kwargs):
    argv = ['--work_dir', str(work), '--model', 'tiny', '--accelerator', 'cpu', '--no_plots', *extra]
    code = sweep_cli.main(argv, runner_factory=lambda args: StepRunner(args, **runner_kwargs))
    return code, StepRunner.instances[-1]


def max_overlap(intervals):
    """Most intervals (start, end) open at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    depth = best = 0
    for _, step in edges:
        depth += step
        best = max(best, depth)
    return best


def comparable(rows):
    """Rows without what depends on timing and concurrency."""
    return {r['key']: {k: v for k, v in r.items() if k not in ('point_wall_s', 'finished_at', 'parallel')}
            for r in rows}


def test_parallel_jobs_overlap_respect_dependencies_and_match_a_sequential_sweep(tmp_path, capsys):
    flags = ('--sizes', '10', '20', '--seeds', '0', '1', '--pretrain_per_seed', '0')
    code, runner = step_sweep(tmp_path / 'k3', *flags, '--parallel', '3')
    assert code == 0
    out = capsys.readouterr().out
    pre, ft, val = runner.intervals('pretrain'), runner.intervals('finetune'), runner.intervals('validate')
    # shared pre-training: once per N for the two seeds
    assert [e[1] for e in runner.events if e[0] == 'pretrain'].count('pre_single_n20_s0') == 1
    assert sorted(pre) == ['pre_single_n10_s0', 'pre_single_n20_s0']
    # the longest chains start first: N = 20, N = 10 pre-training, then a scratch run fills the third slot
    starts = [line.split('[start] ')[1] for line in out.splitlines() if line.startswith('[start] ')]
    assert starts[0].startswith('pre-training pre_single_n20_s0')
    assert starts[1].startswith('pre-training pre_single_n10_s0') and starts[2].startswith('scratch/s0')
    # jobs overlap in time, never more than K at once (a job: pre-training, or fine-tune + val of one point)
    jobs = list(pre.values()) + [(ft[k][0], val[k][1]) for k in ft]
    assert max_overlap(jobs) == 3
    for n in (10, 20):
        for seed in (0, 1):
            key = f'single/n{n}/s{seed}'
            assert ft[key][0] >= pre[f'pre_single_n{n}_s0'][1]     # fine-tune after its pre-training ended
            assert val[key][0] >= ft[key][1]                        # val after its fine-tune
    # the same sweep one point after another gives the same table
    code, sequential = step_sweep(tmp_path / 'k1', *flags)
    assert code == 0
    assert max_overlap(sequential.intervals('finetune').values()) == 1
    parallel_rows, sequential_rows = stored_rows(tmp_path / 'k3'), stored_rows(tmp_path / 'k1')
    assert [r['key'] for r in parallel_rows] == [r['key'] for r in sequential_rows]   # same row order on disk
    assert comparable(parallel_rows) == comparable(sequential_rows)
    reused = {r['key']: r['pretrain_reused'] for r in parallel_rows if r['kind'] == 'pretrained'}
    assert reused == {'single/n10/s0': False, 'single/n10/s1': True, 'single/n20/s0': False, 'single/n20/s1': True}
    assert {r['parallel'] for r in parallel_rows} == {3} and 'parallel' not in sequential_rows[0]
    # a re-run with more seeds resumes: only the new points run, the done pre-training is not run again
    code, third = step_sweep(tmp_path / 'k3', '--sizes', '10', '20', '--seeds', '0', '1', '2',
                             '--pretrain_per_seed', '0', '--parallel', '3')
    assert code == 0 and sorted(third.intervals('finetune')) == ['scratch/s2', 'single/n10/s2', 'single/n20/s2']
    assert third.intervals('pretrain') == {}
    assert all(r['pretrain_reused'] for r in stored_rows(tmp_path / 'k3') if r['key'].endswith('/s2')
               and r['kind'] == 'pretrained')


def test_parallel_pretrain_caps_concurrent_pre_trainings(tmp_path):
    code, runner = step_sweep(tmp_path, '--sizes', '10', '20', '40', '--seeds', '0', '--parallel', '3',
                              '--parallel_pretrain', '1', step_s=0.1)
    assert code == 0 and len(stored_rows(tmp_path)) == 4
    assert max_overlap(runner.intervals('pretrain').values()) == 1      # one pre-training at a time
    ft, val = runner.intervals('finetune'), runner.intervals('validate')
    assert max_overlap(list(runner.intervals('pretrain').values()) + [(ft[k][0], val[k][1]) for k in ft]) >= 2
    with pytest.raises(SystemExit, match='--parallel_pretrain must be in 1..--parallel'):
        step_sweep(tmp_path, '--sizes', '10', '--parallel', '2', '--parallel_pretrain', '3')


def test_parallel_failed_job_does_not_stop_the_others(tmp_path, capsys):
    code, runner = step_sweep(tmp_path, '--sizes', '10', '20', '--seeds', '0', '1', '--parallel', '2',
                              fail=['pre_single_n20_s1', 'scratch/s0'])
    assert code == 1
    err = capsys.readouterr().err
    assert 'pre_single_n20_s1' in err and '/fake/logs/pre_single_n20_s1.log' in err
    assert 'scratch/s0' in err and '/fake/logs/scratch/s0.log' in err
    keys = {r['key'] for r in stored_rows(tmp_path)}
    # everything that does not depend on a failed job finished
    assert keys == {'scratch/s1', 'single/n10/s0', 'single/n10/s1', 'single/n20/s0'}
    assert 'single/n20/s1' not in runner.intervals('finetune')


def test_parallel_deadline_defers_jobs_expected_to_overrun(tmp_path):
    table = ResultsTable(str(tmp_path))
    # recorded earlier: fine-tune + val takes 10 s, pre-training 10 s per scenario-epoch
    table.add({'key': 'scratch/s0', 'kind': 'scratch', 'mix': '', 'num_pretrain_scenarios': 0, 'seed': 0,
               'pretrain_wall_s': 0.0, 'pretrain_epochs': 0, 'point_wall_s': 10.0, 'minFDE': 4.0})
    table.add({'key': 'single/n10/s0', 'kind': 'pretrained', 'mix': 'single', 'num_pretrain_scenarios': 10,
               'seed': 0, 'pretrain_wall_s': 100.0, 'pretrain_epochs': 1, 'point_wall_s': 110.0, 'minFDE': 3.9})
    args = sweep_cli.build_parser().parse_args(['--work_dir', str(tmp_path), '--pretrain_per_seed', '0'])
    runner = StepRunner(args, step_s=0.05)
    points = plan_points([10, 20], ['single'], [0, 1])
    lines = []
    outcome = run_sweep(points, runner, table, deadline_s=100.0, log=lines.append, parallel=3)
    # the scratch run fits (10 s); the shared pre-trainings (N = 10: 100 s, N = 20: 200 s) do not, and their points
    # wait with them
    assert sorted(runner.intervals('finetune')) == ['scratch/s1'] and runner.intervals('pretrain') == {}
    assert outcome['remaining'] == ['single/n10/s1', 'single/n20/s0', 'single/n20/s1'] and not outcome['failed']
    assert any(line.startswith('deferred to the next call: pre-training pre_single_n20_s0') and '> 1m40s left'
               in line for line in lines)
    assert any('single/n20/s1: not run (its pre-training is deferred)' in line for line in lines)
    # once the N = 10 pre-training exists (kept from an earlier call), its point's fine-tune + val (10 s) fits
    open(os.path.join(runner.markers, 'pre_single_n10_s0'), 'w').close()
    outcome = run_sweep(points, runner, table, deadline_s=100.0, log=lines.append, parallel=3)
    assert outcome['ran'] == ['single/n10/s1'] and runner.intervals('pretrain') == {}
    assert outcome['remaining'] == ['single/n20/s0', 'single/n20/s1']
    # no time at all: nothing starts, main() exits 3 (points remain)
    code, late = step_sweep(tmp_path / 'late', '--sizes', '10', '--seeds', '0', '--deadline_s', '0', '--parallel', '2')
    assert code == 3 and late.events == []


def test_parallel_sigterm_terminates_running_children_and_keeps_finished_rows(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    runners = []

    def factory(args):
        runners.append(StepRunner(args, step_s=0.05, child_for='single/n10/s0'))
        return runners[-1]

    def send_sigterm():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # once the child runs and the scratch point is in the table
            rows = stored_rows(tmp_path) if (tmp_path / 'results.json').exists() else []
            if runners and runners[0].children.running() and any(r['key'] == 'scratch/s0' for r in rows):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=send_sigterm, daemon=True)
    killer.start()
    try:
        with pytest.raises(SystemExit, match='terminated'):
            sweep_cli.main(['--work_dir', str(tmp_path), '--model', 'tiny', '--accelerator', 'cpu', '--no_plots',
                                '--sizes', '10', '--seeds', '0', '--parallel', '2'], runner_factory=factory)
    finally:
        signal.signal(signal.SIGTERM, previous)
    killer.join(timeout=5)
    runner = runners[0]
    assert runner.children.running() == []                       # no orphaned child
    assert [r['key'] for r in stored_rows(tmp_path)] == ['scratch/s0']
    assert 'single/n10/s0' not in runner.intervals('validate')
