"""Resume after a kill: a CPU training run (tiny model, synthetic AV2-format scenarios) is killed mid-epoch with a
signal, then `--resume` completes it with the step count, epoch, optimizer and schedule state of an uninterrupted run.

* train.py is killed with SIGKILL right after its first mid-epoch checkpoint (`--save_every_n_steps`): it resumes
  from that periodic last.ckpt.
* train_ssl.py receives SIGTERM: it finishes the running batch, writes last.ckpt at that exact step, says so in one
  line and exits with status 143; the resumed run ends at the same optimiser step as an uninterrupted one.
Checkpoints are written atomically, so the last.ckpt found after a kill always loads.

The killed runs are real subprocesses (signals); everything else runs in-process to keep the suite fast.
"""
import csv
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datasets import ArgoverseV2Dataset
from datasets.synthetic import generate_split
from predictors.registry import model_class

from tiny_configs import AV2_STEPS, TINY_QCNET_SIZES, TINY_QCNET_SYNTHETIC, as_flags

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL = 8, 1
MAX_EPOCHS = 2
STEPS_PER_EPOCH = NUM_TRAIN  # batch size 1
TOTAL_STEPS = MAX_EPOCHS * STEPS_PER_EPOCH
SAVE_EVERY = 1  # the first checkpoint comes after one step: the signal lands early in epoch 0
COMMON = ['--num_workers', '0', '--pin_memory', 'false', '--accelerator', 'cpu', '--devices', '1',
          '--log_every_n_steps', '1', '--max_epochs', str(MAX_EPOCHS), '--save_every_n_steps', str(SAVE_EVERY)]
TINY_MODEL = as_flags({**AV2_STEPS, **TINY_QCNET_SYNTHETIC})
KILL_TIMEOUT_S = 300


def load_script(name):
    """Imports <project>/<name>.py under a private module name (a plain `import test` could hit the stdlib)."""
    spec = importlib.util.spec_from_file_location(f'_resume_script_{name}', PROJECT_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread. Two threads cost ~4x the CPU time here
    (OpenMP workers spin while waiting), especially when other processes compete for the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """Synthetic train/val scenarios, processed once here so that the killed subprocesses only train."""
    root = tmp_path_factory.mktemp('resume_data')
    generate_split(str(root / 'raw'), 'train', NUM_TRAIN, seed=11)
    generate_split(str(root / 'raw'), 'val', NUM_VAL, seed=12)
    for split in ('train', 'val'):
        ArgoverseV2Dataset(str(root), split, raw_dir=str(root / 'raw' / split), num_workers=1, progress=False)
    return root


def data_flags(root):
    return ['--root', str(root), '--train_raw_dir', str(root / 'raw' / 'train'),
            '--val_raw_dir', str(root / 'raw' / 'val')]


def qcnet_args(root, log_dir, exp_name):
    return [*data_flags(root), '--train_batch_size', '1', '--val_batch_size', '2', '--test_batch_size', '1',
            '--num_sanity_val_steps', '0', '--log_dir', str(log_dir), '--exp_name', exp_name, *COMMON,
            '--dataset', 'argoverse_v2', '--T_max', str(MAX_EPOCHS), *TINY_MODEL]


def ssl_args(root, log_dir, exp_name):
    return [*data_flags(root), '--train_batch_size', '1', '--val_batch_size', '1', '--log_dir', str(log_dir),
            '--exp_name', exp_name, '--warmup', '1', '--seed', '5', *COMMON, *TINY_MODEL]


def start_and_wait_for_checkpoint(script, args, checkpoint, log_path):
    """Starts `python <script> args` and returns (process, log file) once `checkpoint` exists."""
    log = open(log_path, 'w')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    process = subprocess.Popen([sys.executable, str(PROJECT_ROOT / script), *args], cwd=str(PROJECT_ROOT),
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not checkpoint.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            log.close()
            pytest.fail(f'{script} ended (rc {process.returncode}) or timed out before writing {checkpoint}:\n'
                        f'{Path(log_path).read_text()[-3000:]}')
        time.sleep(0.01)
    return process, log


def adam_steps(optimizer):
    """Set of AdamW step counters over all parameters (one value when every parameter stepped alike)."""
    return {int(state['step']) for state in optimizer.state.values() if 'step' in state}


def file_tree(root):
    """{relative path: (size, mtime_ns)} of every file below root."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob('*')
            if p.is_file()}


def csv_columns(path):
    with open(path) as handle:
        return next(csv.reader(handle))


def test_train_py_killed_mid_epoch_resumes_to_the_uninterrupted_step_count(data_root, tmp_path):
    run_dir = tmp_path / 'killed'
    last = run_dir / 'checkpoints' / 'last.ckpt'
    process, log = start_and_wait_for_checkpoint('train.py', qcnet_args(data_root, tmp_path, 'killed'), last,
                                                 tmp_path / 'killed.log')
    process.send_signal(signal.SIGKILL)  # likely while it rewrites last.ckpt after the next step
    assert process.wait(timeout=60) == -signal.SIGKILL
    log.close()

    # Atomic writes: whatever the kill interrupted, last.ckpt is a complete checkpoint; it was written mid-epoch.
    saved = torch.load(last, map_location='cpu', weights_only=True)
    killed_at = saved['global_step']
    assert 0 < killed_at < STEPS_PER_EPOCH, f'checkpoint at step {killed_at} is not in the middle of epoch 0'

    train = load_script('train')
    resumed = train.main(qcnet_args(data_root, tmp_path, 'killed') + ['--resume'])
    # An uninterrupted run makes MAX_EPOCHS * STEPS_PER_EPOCH optimiser steps and steps the cosine schedule once
    # per epoch; the resumed run ends there too, with the optimizer state carried over (a fresh AdamW would count
    # only the steps made after the resume).
    assert resumed.global_step == TOTAL_STEPS and resumed.current_epoch == MAX_EPOCHS
    assert adam_steps(resumed.optimizers[0]) == {TOTAL_STEPS}
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == MAX_EPOCHS
    final = torch.load(last, map_location='cpu', weights_only=True)
    assert final['global_step'] == TOTAL_STEPS and final['epoch'] == MAX_EPOCHS - 1
    # One last.ckpt (no last-v1.ckpt from the two checkpoint callbacks) plus the top-k files of both starts.
    names = sorted(p.name for p in (run_dir / 'checkpoints').iterdir() if p.suffix == '.ckpt')
    assert names.count('last.ckpt') == 1 and not [n for n in names if n.startswith('last-')]
    assert any(n.startswith('epoch=0-') for n in names) and any(n.startswith('epoch=1-') for n in names)
    # Logs of both starts are kept: losses, learning rate and validation metrics in CSV, events for TensorBoard.
    for version in ('version_0', 'version_1'):
        assert any(p.name.startswith('events.out.tfevents') for p in (run_dir / 'tensorboard' / version).iterdir())
    columns = csv_columns(run_dir / 'csv' / 'version_1' / 'metrics.csv')
    for column in ('train_reg_loss_propose_step', 'train_reg_loss_refine_step', 'train_cls_loss_step',
                   'lr-AdamW/pg1', 'val_minFDE', 'val_minADE', 'val_MR', 'val_Brier'):
        assert column in columns, column


def test_train_ssl_py_stopped_by_sigterm_saves_that_step_and_resumes(data_root, tmp_path):
    import train_ssl
    run_dir = tmp_path / 'stopped'
    last = run_dir / 'checkpoints' / 'last.ckpt'
    process, log = start_and_wait_for_checkpoint('train_ssl.py', ssl_args(data_root, tmp_path, 'stopped'), last,
                                                 tmp_path / 'stopped.log')
    process.send_signal(signal.SIGTERM)
    return_code = process.wait(timeout=KILL_TIMEOUT_S)
    log.close()
    output = (tmp_path / 'stopped.log').read_text()
    assert return_code == 143, output[-3000:]
    message = [line for line in output.splitlines() if 'stopped by SIGTERM' in line]
    assert len(message) == 1 and '--resume' in message[0], output[-3000:]
    stopped_at = int(re.search(r'optimiser step (\d+)', message[0]).group(1))
    assert f'saved {last} at this step' in message[0]  # written when the signal was handled, not only periodically
    saved = torch.load(last, map_location='cpu', weights_only=True)
    assert saved['global_step'] == stopped_at and 0 < stopped_at < STEPS_PER_EPOCH
    schedule_at_stop = saved['ssl_schedule']
    assert schedule_at_stop['total_steps'] == TOTAL_STEPS and 'ssl_rng_states' in saved

    resumed = train_ssl.main(ssl_args(data_root, tmp_path, 'stopped') + ['--resume'])
    assert resumed.global_step == TOTAL_STEPS and resumed.current_epoch == MAX_EPOCHS
    model = resumed.lightning_module
    assert model.schedule.state_dict() == schedule_at_stop  # learning-rate / decay / momentum curves continue
    assert adam_steps(resumed.optimizers[0]) == {TOTAL_STEPS}
    assert resumed.optimizers[0].param_groups[0]['lr'] == pytest.approx(model.schedule.lr_at(TOTAL_STEPS - 1))
    final = torch.load(last, map_location='cpu', weights_only=True)
    assert final['global_step'] == TOTAL_STEPS
    columns = csv_columns(run_dir / 'csv' / 'version_1' / 'metrics.csv')
    for column in ('lr', 'momentum_m', 'loss_step', 'contra_acc_step', 'val_loss', 'val_contra_acc'):
        assert column in columns, column


def test_resume_refuses_a_checkpoint_of_another_run(data_root, tmp_path):
    """--resume with other model sizes than the checkpoint's, with a weights-only file or with a pre-training
    checkpoint fails in one line before any training; the run directory is left as it was."""
    from predictors.smartpretrain import SmartPretrain
    from utils.cli import CliError
    train = load_script('train')
    args = qcnet_args(data_root, tmp_path, 'run')
    model = model_class('QCNet')(**vars(train.parse_args(args)))
    checkpoint = {'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams), 'epoch': 0,
                  'global_step': 3, 'optimizer_states': [], 'loops': {}, 'pytorch-lightning_version': '2.6.0'}
    last = tmp_path / 'run' / 'checkpoints' / 'last.ckpt'
    last.parent.mkdir(parents=True)
    torch.save(checkpoint, last)
    before = file_tree(tmp_path / 'run')
    with pytest.raises(CliError) as info:
        train.main(args + ['--resume', '--hidden_dim', '32', '--head_dim', '16'])
    message = str(info.value)
    assert info.value.code == 2 and '\n' not in message and message.startswith(f'error: {last}: ')
    assert "hidden_dim=16 in the checkpoint vs 32 from the flags" in message and "checkpoint's values" in message

    graphs = tmp_path / 'graphs.ckpt'
    torch.save({**checkpoint, 'hyper_parameters': {**checkpoint['hyper_parameters'], 'cuda_graphs': True}}, graphs)
    with pytest.raises(CliError, match='trained with --cuda_graphs; resume it with --cuda_graphs'):
        train.main(args + ['--resume', str(graphs)])

    weights_only = tmp_path / 'released.ckpt'
    torch.save({key: checkpoint[key] for key in ('state_dict', 'hyper_parameters')}, weights_only)
    with pytest.raises(CliError) as info:
        train.main(args + ['--resume', str(weights_only)])
    assert str(info.value).startswith(f'error: {weights_only}: holds weights but no optimizer/loop state')

    pretraining = tmp_path / 'pretrain.ckpt'
    ssl = SmartPretrain(**TINY_QCNET_SIZES)
    torch.save({'state_dict': ssl.state_dict(), 'hyper_parameters': dict(ssl.hparams)}, pretraining)
    with pytest.raises(CliError) as info:
        train.main(args + ['--resume', str(pretraining)])
    message = str(info.value)
    assert message.startswith(f'error: {pretraining}: ') and 'pre-training checkpoint' in message
    assert f'--pretrained_ckpt {pretraining}' in message and '\n' not in message
    assert file_tree(tmp_path / 'run') == before  # nothing written, nothing lost


def test_supervised_checkpoints_carry_the_random_streams(data_root):
    """train.py checkpoints hold the Python / NumPy / torch RNG states; resuming training (a trainer attached)
    restores them, loading for evaluation (no trainer) leaves the caller's streams alone."""
    import pytorch_lightning as pl
    train = load_script('train')
    model = model_class('QCNet')(**vars(train.parse_args(qcnet_args(data_root, '/unused', 'x'))))
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    expected = torch.rand(4)
    model.on_load_checkpoint(checkpoint)  # evaluation: streams untouched
    assert not torch.equal(torch.rand(4), expected)
    model.trainer = pl.Trainer(accelerator='cpu', logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    model.on_load_checkpoint(checkpoint)  # resume: the saved streams continue
    assert torch.equal(torch.rand(4), expected)


def test_resume_auto_starts_fresh_then_continues(data_root, tmp_path):
    """`--resume auto`: one command line for the first start and every restart of a (pre-emptible) job."""
    from argparse import Namespace
    import train_ssl
    from utils.cli import CliError
    train = load_script('train')
    checkpoint_dir = tmp_path / 'run' / 'checkpoints'
    scripts = ((train, Namespace(resume='auto', model='QCNet')),
               (train_ssl, Namespace(resume='auto', resume_path='null', log_dir=str(tmp_path))))
    for script, args in scripts:
        assert script.resolve_resume_checkpoint(args, checkpoint_dir) is None  # nothing yet: fresh start
    checkpoint_dir.mkdir(parents=True)
    (checkpoint_dir / 'epoch=0-step=8-val_minFDE=1.0000.ckpt').write_bytes(b'')
    for script, args in scripts:  # checkpoints but no last.ckpt: never silently start over them
        with pytest.raises(CliError, match='already holds 1 checkpoint'):
            script.resolve_resume_checkpoint(args, checkpoint_dir)
    model = model_class('QCNet')(**vars(train.parse_args(qcnet_args(data_root, tmp_path, 'run'))))
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams)},
               checkpoint_dir / 'last.ckpt')
    for script, args in scripts:
        assert script.resolve_resume_checkpoint(args, checkpoint_dir) == str(checkpoint_dir / 'last.ckpt')
