"""The low-label study (docs/LOW_LABEL.md): benchmarks/ssl_low_label.py end to end on CPU, its scheduler, and the
statistics / decision rule of benchmarks/low_label_report.py."""
import csv
import json
import math
import os
import threading
import time

import pytest

from benchmarks import low_label_report as report
from benchmarks import ssl_low_label as study
from benchmarks.experiment_utils import CommandFailed

from tiny_configs import TINY_QCNET_SYNTHETIC, as_flags

# tiny widths and short radii on top of the 'tiny' preset (argparse keeps the last value of a repeated flag)
TINY = ' '.join(as_flags({**TINY_QCNET_SYNTHETIC, 'num_t2m_steps': 10}))


def rows_for(gains_by_arm, scratch=(10.0, 11.0, 12.0), labelled=50, backbone='QCNet'):
    """runs.csv rows: scratch minFDE per seed; every arm's minFDE = scratch * (1 - gain_s) for its per-seed gains."""
    rows = []
    for seed, base in enumerate(scratch):
        rows.append({'backbone': backbone, 'arm': 'scratch', 'labelled': labelled, 'seed': seed, 'minADE': base / 2,
                     'minFDE': base, 'MR': 0.5, 'brier_minFDE': base + 0.6, 'pretrain_steps': 0, 'gpu_seconds': 10})
        for arm, per_seed in gains_by_arm.items():
            value = base * (1 - per_seed[seed])
            rows.append({'backbone': backbone, 'arm': arm, 'labelled': labelled, 'seed': seed, 'minADE': value / 2,
                         'minFDE': value, 'MR': 0.5, 'brier_minFDE': value + 0.6, 'pretrain_steps': 250,
                         'gpu_seconds': 10})
    return rows


def test_paired_gain_and_decision_rule():
    g = report.gains(rows_for({'pretrained': (0.06, 0.07, 0.08), 'oracle': (0.2, 0.2, 0.2)}))
    method = g[('QCNet', 50, 'pretrained')]
    diffs = [10 * 0.06, 11 * 0.07, 12 * 0.08]
    assert method['n'] == 3 and method['gain'] == pytest.approx(sum(diffs) / 3 / 11)
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert method['gain_se'] == pytest.approx(sd / math.sqrt(3) / 11)
    assert report.verdict(method, g[('QCNet', 50, 'oracle')]) == 'shown'
    noisy = report.gains(rows_for({'pretrained': (-0.05, 0.06, 0.17), 'oracle': (0.2, 0.2, 0.2)}))  # mean 6 %, SE big
    assert report.verdict(noisy[('QCNet', 50, 'pretrained')], noisy[('QCNet', 50, 'oracle')]) == 'inconclusive'
    refuted = report.gains(rows_for({'pretrained': (0.01, 0.02, 0.0), 'oracle': (0.12, 0.11, 0.13)}))
    assert report.verdict(refuted[('QCNet', 50, 'pretrained')], refuted[('QCNet', 50, 'oracle')]).startswith('refuted')
    flat = report.gains(rows_for({'pretrained': (0.01, 0.0, 0.02), 'oracle': (0.03, 0.04, 0.02)}))
    assert report.verdict(flat[('QCNet', 50, 'pretrained')], flat[('QCNet', 50, 'oracle')]).startswith('not testable')
    one_seed = report.gains(rows_for({'pretrained': (0.1,), 'oracle': (0.2,)}, scratch=(10.0,)))
    assert report.verdict(one_seed[('QCNet', 50, 'pretrained')], None).startswith('inconclusive')
    # unpaired seeds are left out of the difference
    partial = [r for r in rows_for({'pretrained': (0.06, 0.07, 0.08)}) if not (r['arm'] == 'pretrained'
                                                                              and r['seed'] == 2)]
    assert report.gains(partial)[('QCNet', 50, 'pretrained')]['seeds'] == [0, 1]


def test_plateau_check():
    curve = lambda values, arm: [{'backbone': 'QCNet', 'arm': arm, 'labelled': '50', 'seed': '0', 'epoch': str(e),
                                  'val_minFDE': str(v)} for e, v in enumerate(values)]
    flat = report.plateau(curve([9, 7, 6, 5.0, 5.01, 4.99, 5.0, 5.02], 'scratch'))[('QCNet', 'scratch', 50)]
    falling = report.plateau(curve([9, 8, 7, 6, 5, 4, 3, 2], 'oracle'))[('QCNet', 'oracle', 50)]
    assert flat < report.PLATEAU_TOLERANCE < falling


def test_report_files(tmp_path):
    rows = rows_for({'pretrained': (0.06, 0.07, 0.08), 'oracle': (0.2, 0.2, 0.2), 'mixed': (0.03, 0.05, 0.04)})
    rows += rows_for({'pretrained': (0.01, 0.02, 0.0), 'oracle': (0.05, 0.06, 0.04)}, labelled=200)
    study.write_csv(str(tmp_path / 'runs.csv'), report.RUN_COLUMNS, rows)
    (tmp_path / 'pretrain.json').write_text(json.dumps({'runs': {'QCNet_ssl_target': {
        'steps': 250, 'gpu_seconds': 120.0, 'data': '5000 default',
        'init_share': {'init_share': 0.05, 'init_share_standard_error': 0.001}}}}))
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / 'summary.md').read_text()
    decision = [line for line in text.splitlines() if line.startswith('| QCNet | 50 | +7.1 ± ')]
    assert decision and decision[0].endswith('| +20.0 ± 1.0 % (n=3) | shown |')
    assert '| QCNet | 200 |' in text and '250 steps, 120 GPU-s' in text and '5.0 % ± 0.1' in text
    assert 'Two profiles mixed vs the target profile alone' in text
    assert (tmp_path / 'gain_vs_labelled.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert not (tmp_path / 'pretrain_curves.png').exists()   # no pre-training curves logged
    assert 'One pretext task vs both' not in text
    # the one-task ablations are compared with the method, seed by seed
    study.write_csv(str(tmp_path / 'runs.csv'), report.RUN_COLUMNS,
                    rows + rows_for({'pretrained': (0.06, 0.07, 0.08), 'pretrained_contrastive': (0.06, 0.07, 0.08),
                                     'pretrained_reconstruction': (0.0, 0.0, 0.0)}, labelled=1000))
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / 'summary.md').read_text()
    assert '| pretrained_contrastive | QCNet | 1000 | +0.0 ± 0.0 % (n=3) |' in text
    worse = [line for line in text.splitlines() if line.startswith('| pretrained_reconstruction | QCNet | 1000 | -')]
    assert worse, text
    (tmp_path / 'runs.csv').write_text('backbone,arm\nQCNet,scratch\n')
    assert report.main([str(tmp_path)]) == 2  # one line naming the file, no traceback


class FakeExecutor:
    """Runs a job by sleeping the number of seconds its first step names; a step named 'fail' fails."""

    def __init__(self):
        self.active, self.peak, self.lock, self.stopped = 0, 0, threading.Lock(), 0

    def run(self, steps, log_path):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if steps[0]['module'] == 'fail':
                raise CommandFailed(f'fail exited with 1, see {log_path}')
            time.sleep(steps[0]['argv'][0])
            return steps[0]['argv'][0]
        finally:
            with self.lock:
                self.active -= 1

    def stop(self):
        self.stopped += 1
        return 0


def test_scheduler_runs_in_parallel_isolates_failures_and_keeps_the_deadline(tmp_path):
    done = []

    def job(name, seconds, module='sleep', group='g'):
        return study.Job(name=name, steps=lambda: [{'module': module, 'argv': [seconds]}],
                         done=lambda wall: done.append(name), group=group, log=str(tmp_path / f'{name}.log'))
    (tmp_path / 'bad.log').write_text('line 1\nValueError: scene_0007.parquet: no focal track\n')
    executor = FakeExecutor()
    jobs = [job('a', 0.3), job('bad', 0, 'fail'), job('b', 0.3), job('c', 0.3), job('late', 0.3)]
    started = time.time()
    result = study.run_jobs(jobs, executor, 3, deadline_s=0.45, started=started,
                            failures_log=str(tmp_path / 'failures.log'))
    assert executor.peak == 3 and set(result['failed']) == {'bad'}
    assert 'scene_0007.parquet: no focal track' in (tmp_path / 'failures.log').read_text()
    # 'late' would start after a 0.3 s run with the median 0.3 s estimate: past the 0.45 s deadline
    assert result['deferred'] == ['late'] and sorted(done) == ['a', 'b', 'c']


class MemoryBoundExecutor(FakeExecutor):
    """A device that holds ``capacity`` runs: a run started beyond that writes an out-of-memory error to its log
    and fails, as a CUDA run does."""

    def __init__(self, capacity):
        super().__init__()
        self.capacity, self.attempts = capacity, []

    def run(self, steps, log_path):
        with self.lock:
            over = self.active >= self.capacity
            self.attempts.append(os.path.basename(log_path))
        if over:
            with open(log_path, 'w') as log:
                log.write('Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to '
                          'allocate 106.00 MiB.\n')
            raise CommandFailed(f'job exited with 1, see {log_path}')
        return super().run(steps, log_path)


def test_scheduler_runs_a_job_that_ran_out_of_memory_again_with_fewer_beside_it(tmp_path):
    done = []
    jobs = [study.Job(name=n, steps=lambda: [{'module': 'sleep', 'argv': [0.5]}], done=lambda wall, n=n: done.append(n),
                      group='g', log=str(tmp_path / f'{n}.log')) for n in 'abcd']
    executor = MemoryBoundExecutor(capacity=2)
    result = study.run_jobs(jobs, executor, 3, deadline_s=None, started=time.time(),
                            failures_log=str(tmp_path / 'failures.log'))
    assert sorted(done) == ['a', 'b', 'c', 'd'] and result['failed'] == {}
    # the run started third at once ran out of memory and ran again later, with at most two at once
    assert result['parallel'] == 2 and len(executor.attempts) == 5
    assert [executor.attempts.count(f'{n}.log') for n in 'abcd'].count(2) == 1
    assert not (tmp_path / 'failures.log').exists()
    # a job that fails for another reason, or runs out of memory a second time, is a failure as before
    (tmp_path / 'x.log').write_text('torch.OutOfMemoryError: CUDA out of memory.\n')
    always = study.Job(name='x', steps=lambda: [{'module': 'fail', 'argv': []}], done=lambda wall: None, group='g',
                       log=str(tmp_path / 'x.log'))
    result = study.run_jobs([always], FakeExecutor(), 2, deadline_s=None, started=time.time(),
                            failures_log=str(tmp_path / 'failures.log'))
    assert set(result['failed']) == {'x'} and result['parallel'] == 1


def test_arguments_and_plan():
    args = study.parse_args(['finetune', '--work_dir', 'w', '--out', 'o', '--labelled', '50', '200', '--seeds', '0',
                             '1', '2', '--backbones', 'qcnet', 'forecast_mae'])
    assert args.backbones == ['QCNet', 'ForecastMAE'] and study.epochs_by_size(args) == {'50': 30, '200': 15}
    plan = study.plan_runs(args)
    assert len(plan) == 2 * (5 * 3 + 3 * 3)  # mixed and pretrained_sym only at the smallest size
    assert [p['arm'] for p in plan[:6]] == ['scratch'] * 2 + ['pretrained'] * 2 + ['oracle'] * 2
    assert {p['labelled'] for p in plan if p['arm'] in ('mixed', 'pretrained_sym')} == {50}
    assert max(i for i, p in enumerate(plan) if p['labelled'] == 50) < min(i for i, p in enumerate(plan)
                                                                             if p['labelled'] == 200)
    for argv, message in ((['--finetune_epochs', '1', '2', '3'], 'one value or one per --labelled'),
                          (['--labelled', '9999'], 'exceeds --num_pool'),
                          (['--executor', 'inprocess', '--parallel', '2'], 'use --parallel 1'),
                          (['--profile', 'nowhere'], 'unknown profile')):
        with pytest.raises(SystemExit):
            study.parse_args(['finetune', '--work_dir', 'w', '--out', 'o', *argv])


def read_rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_whole_pipeline_on_cpu(tmp_path, capsys):
    """generation -> three pre-trainings -> one fine-tune + val per arm -> runs.csv -> report; a second call runs
    nothing; another fine-tuning protocol in the same results folder is refused."""
    work, pre, out = tmp_path / 'work', tmp_path / 'pre', tmp_path / 'out'
    common = ['--work_dir', str(work), '--size', 'tiny', '--backbones', 'QCNet', '--profile', 'demo',
              '--mix_profile', 'highway', '--num_pool', '6', '--num_val', '2', '--accelerator', 'cpu',
              '--precision', '32', '--num_workers', '0', '--executor', 'inprocess', '--finetune_extra', TINY]
    assert study.main(['pretrain', *common, '--out', str(pre), '--pretrain_steps', '2', '--pretrain_batch_size', '2',
                       '--oracle_steps', '1', '--pretrain_extra', TINY + ' --log_every_n_steps 1']) == 0
    record = json.loads((pre / 'pretrain.json').read_text())
    assert set(record['runs']) == {'QCNet_ssl_target', 'QCNet_ssl_mixed', 'QCNet_oracle'}
    assert record['runs']['QCNet_ssl_target']['steps'] == 2 and record['runs']['QCNet_oracle']['steps'] == 1
    assert record['runs']['QCNet_ssl_mixed']['data'] == '3 demo + 3 highway'
    assert 0.5 < record['runs']['QCNet_ssl_target']['init_share']['init_share'] <= 1.0
    curves = read_rows(pre / 'pretrain_curves.csv')
    assert {c['run'] for c in curves} == {'QCNet_ssl_target', 'QCNet_ssl_mixed'} and any(c['contra_acc'] for c in curves)
    finetune = ['finetune', *common, '--out', str(out), '--pretrained_dir', str(pre), '--labelled', '2',
                '--seeds', '0', '--finetune_epochs', '1', '--finetune_batch_size', '2']
    assert study.main(finetune) == 0
    rows = read_rows(out / 'runs.csv')
    assert list(rows[0]) == report.RUN_COLUMNS
    assert sorted(r['arm'] for r in rows) == sorted(report.STUDY_ARMS)
    by_arm = {r['arm']: r for r in rows}
    assert by_arm['scratch']['pretrain_steps'] == '0' and by_arm['pretrained']['pretrain_steps'] == '2'
    assert by_arm['oracle']['pretrain_steps'] == '1' and all(float(r['minFDE']) > 0 for r in rows)
    logs = work / 'logs'
    assert 'mode symmetry broken' in (logs / 'QCNet_pretrained_sym_n2_s0.log').read_text()
    assert 'mode symmetry broken' not in (logs / 'QCNet_pretrained_n2_s0.log').read_text()
    assert 'supervised branch' in (logs / 'QCNet_oracle_n2_s0.log').read_text()
    for name in ('summary.md', 'gain_vs_labelled.png', 'finetune_curves.csv', 'pretrain.json', 'protocol.json'):
        assert (out / name).is_file(), name
    capsys.readouterr()
    assert study.main(finetune) == 0
    assert '5 runs in' in capsys.readouterr().out and len(read_rows(out / 'runs.csv')) == 5
    with pytest.raises(SystemExit, match='another fine-tuning protocol'):
        study.main(finetune[:-1] + ['4'])


def test_one_pretext_task_pretrainings_weight_the_other_task_zero(tmp_path):
    """The ablation sources pre-train with one loss only and feed the ablation arms."""
    work, pre = tmp_path / 'work', tmp_path / 'pre'
    assert study.main(['pretrain', '--work_dir', str(work), '--out', str(pre), '--size', 'tiny', '--backbones',
                       'QCNet', '--profile', 'demo', '--num_pool', '4', '--num_val', '2', '--accelerator', 'cpu',
                       '--precision', '32', '--num_workers', '0', '--executor', 'inprocess',
                       '--sources', 'ssl_contrastive', 'ssl_reconstruction', '--pretrain_steps', '1',
                       '--pretrain_batch_size', '2', '--pretrain_extra', TINY]) == 0
    assert set(json.loads((pre / 'pretrain.json').read_text())['runs']) == {'QCNet_ssl_contrastive',
                                                                             'QCNet_ssl_reconstruction'}
    import torch
    for name, weights in (('QCNet_ssl_contrastive', (1.0, 0.0)), ('QCNet_ssl_reconstruction', (0.0, 1.0))):
        hparams = torch.load(work / 'runs' / name / 'checkpoints' / 'last.ckpt', map_location='cpu',
                             weights_only=False)['hyper_parameters']
        assert (hparams['lambda_contra'], hparams['lambda_rec']) == weights, name
    assert {report.ARM_SOURCE[a] for a in ('pretrained_contrastive', 'pretrained_reconstruction')} == {
        'ssl_contrastive', 'ssl_reconstruction'}


def test_job_subcommand_runs_steps_in_one_process(tmp_path, capsys):
    """What each child process of ``--executor subprocess`` runs: the steps of a job file, in order; a failing step
    names its module."""
    from datasets.synthetic import generate_split
    generate_split(str(tmp_path / 'raw'), 'val', 2, 5, profile='demo')
    job = tmp_path / 'job.json'
    steps = [{'module': 'datasets.preprocess', 'argv': ['--dataset', 'argoverse_v2', '--raw_dir',
                                                        str(tmp_path / 'raw' / 'val'), '--processed_dir',
                                                        str(tmp_path / 'processed'), '--num_workers', '1',
                                                        '--no_progress']}]
    job.write_text(json.dumps({'steps': steps}))
    assert study.main(['job', str(job)]) == 0
    assert len(list((tmp_path / 'processed').glob('*.qcs'))) == 2
    steps[0]['argv'][3] = str(tmp_path / 'nowhere')
    job.write_text(json.dumps({'steps': steps}))
    capsys.readouterr()
    assert study.main(['job', str(job)]) == 1
    assert 'ssl_low_label job: datasets.preprocess returned 2' in capsys.readouterr().err


def test_mode_noise_needs_a_pretrained_checkpoint(tmp_path):
    import train
    from utils.cli import CliError
    with pytest.raises(CliError, match='--mode_noise_std 0.02: needs --pretrained_ckpt'):
        train.main(['--root', str(tmp_path), '--train_batch_size', '1', '--val_batch_size', '1',
                    '--test_batch_size', '1', '--mode_noise_std', '0.02', '--dataset', 'argoverse_v2',
                    '--num_historical_steps', '50', '--num_future_steps', '60', '--num_recurrent_steps', '3',
                    *as_flags({k: 20 for k in ('pl2pl_radius', 'pl2a_radius', 'a2a_radius', 'pl2m_radius',
                                               'a2m_radius')})])


def _append_rows_locked(out: str, tag: str, count: int) -> None:
    """One writer process: ``count`` read-modify-write updates of runs.csv under the rows lock."""
    path = os.path.join(out, study.RUNS_CSV)
    for seed in range(count):
        row = {'backbone': 'QCNet', 'arm': tag, 'labelled': 50, 'seed': seed}
        with study.rows_lock(out):
            rows = study.read_csv_rows(path)
            time.sleep(0.002)   # widen the window in which an unlocked writer would lose the other's row
            study.write_csv(path, list(row), rows + [row])


def test_two_finetune_processes_keep_each_others_rows(tmp_path):
    import multiprocessing
    context = multiprocessing.get_context('spawn')
    writers = [context.Process(target=_append_rows_locked, args=(str(tmp_path), arm, 25))
               for arm in ('scratch', 'pretrained')]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    rows = study.read_csv_rows(os.path.join(tmp_path, study.RUNS_CSV))
    assert sorted((r['arm'], int(r['seed'])) for r in rows) == sorted(
        (arm, seed) for arm in ('scratch', 'pretrained') for seed in range(25))



def test_deadline_estimates_runs_from_rows_another_call_finished(tmp_path):
    """A second finetune call (e.g. the pre-trained arms after the scratch ones ran beside the pre-training) must not
    start a run it cannot finish: it estimates its length from the rows already in runs.csv."""
    rows = [{'backbone': 'QCNet', 'labelled': '50', 'gpu_seconds': '170.0'},
            {'backbone': 'QCNet', 'labelled': '50', 'gpu_seconds': '174.0'},
            {'backbone': 'QCNet', 'labelled': '200', 'gpu_seconds': ''}]
    known = study.finished_durations(rows)
    assert known == {study.finetune_group('QCNet', 50): [170.0, 174.0]}
    ran = []
    job = study.Job(name='late', steps=lambda: [{'module': 'sleep', 'argv': [0]}], done=lambda wall: ran.append(wall),
                    group=study.finetune_group('QCNet', 50), log=str(tmp_path / 'late.log'))
    result = study.run_jobs([job], FakeExecutor(), 2, deadline_s=60, started=time.time(), known_durations=known)
    assert result['deferred'] == ['late'] and not ran
    # without the earlier rows nothing is known and the run starts
    result = study.run_jobs([job], FakeExecutor(), 2, deadline_s=60, started=time.time())
    assert result['deferred'] == [] and len(ran) == 1


def test_pretrain_curve_plot(tmp_path):
    columns = ['run', 'backbone', 'source', 'step', 'epoch', 'loss', 'contra_loss', 'rec_loss', 'contra_acc',
               'num_keys', 'momentum', 'val_loss', 'val_contra_acc']
    rows = [{'run': 'QCNet_ssl_target', 'backbone': 'QCNet', 'source': 'ssl_target', 'step': step, 'epoch': 0,
             'loss': 6 - step / 10, 'contra_loss': 0.8, 'rec_loss': 5 - step / 10, 'contra_acc': 0.01 * step / 10,
             'num_keys': 500, 'momentum': 0.9, 'val_loss': '' if step < 30 else 2.0, 'val_contra_acc': ''}
            for step in (10, 20, 30)]
    rows.append({'run': 'QCNet_oracle', 'backbone': 'QCNet', 'source': 'oracle', 'step': 10, 'epoch': 0, 'loss': 3.0,
                 **{c: '' for c in columns[6:]}})   # supervised: no contrastive term, no panel
    path = tmp_path / 'pretrain_curves.png'
    assert report.plot_pretrain_curves(rows, str(path))
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    from PIL import Image
    assert Image.open(path).size[1] < 500     # one row of panels: the oracle run has none
    assert not report.plot_pretrain_curves(rows[-1:], str(tmp_path / 'none.png'))
    # a short run may log only its validation rows: still a panel
    val_only = [{'run': 'r', 'step': 3, 'val_loss': 4.0, 'val_contra_acc': 0.02}]
    assert report.plot_pretrain_curves(val_only, str(tmp_path / 'val.png'))
    assert not (tmp_path / 'none.png').exists()
