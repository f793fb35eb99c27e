"""Pieces shared by the experiment scripts (``ssl_low_label.py``, ``scaling_sweep.py`` / ``benchmarks/scaling/``).

They drive the project's own CLIs (``train_ssl.py``, ``train.py``, ``val.py``) as subprocesses, so an experiment runs
exactly the code path a user runs. Everything here is about commands, run directories and result files; nothing
imports model code.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Dict, List, Optional

from utils.atomic_io import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_PRESETS = {
    # the official Argoverse 2 configuration
    'full': ['--hidden_dim', '128', '--num_freq_bands', '64', '--num_heads', '8', '--head_dim', '16',
             '--num_map_layers', '1', '--num_agent_layers', '2', '--num_dec_layers', '2',
             '--pl2pl_radius', '150', '--pl2a_radius', '50', '--a2a_radius', '50', '--pl2m_radius', '150',
             '--a2m_radius', '150'],
    # a quarter-width model for CPU smoke runs
    'tiny': ['--hidden_dim', '32', '--num_freq_bands', '16', '--num_heads', '2', '--head_dim', '16',
             '--num_map_layers', '1', '--num_agent_layers', '1', '--num_dec_layers', '1',
             '--pl2pl_radius', '50', '--pl2a_radius', '30', '--a2a_radius', '30', '--pl2m_radius', '50',
             '--a2m_radius', '50'],
}
COMMON_MODEL = ['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
                '--num_recurrent_steps', '3', '--time_span', '10', '--num_t2m_steps', '30']
# The second backbone (train.py / train_ssl.py --model ForecastMAE): same widths, its own depths, no QCNet radii.
FORECAST_MAE_PRESETS = {
    'full': ['--hidden_dim', '128', '--num_freq_bands', '64', '--num_heads', '8', '--head_dim', '16',
             '--num_temporal_layers', '2', '--num_scene_layers', '4', '--num_dec_layers', '2'],
    'tiny': ['--hidden_dim', '32', '--num_freq_bands', '16', '--num_heads', '2', '--head_dim', '16',
             '--num_temporal_layers', '1', '--num_scene_layers', '2', '--num_dec_layers', '1'],
}
FORECAST_MAE_COMMON = ['--model', 'ForecastMAE', '--dataset', 'argoverse_v2', '--num_historical_steps', '50',
                       '--num_future_steps', '60', '--num_recurrent_steps', '3']
MODELS = ('QCNet', 'ForecastMAE')  # names as the scripts' --model (case, '_' and '-' ignored)
# val.py's metric table, the four headline metrics first
METRICS = ['minADE', 'minFDE', 'MR', 'brier-minFDE']
ALL_METRICS = METRICS + ['Brier', 'minAHE', 'minFHE']


class CommandFailed(RuntimeError):
    """A CLI of the project exited with an error; the message names the command and its log."""


def canonical_model(model: str) -> str:
    """'forecast_mae' / 'ForecastMAE' / 'qcnet' ... -> the name of ``MODELS``."""
    for name in MODELS:
        if model.replace('_', '').replace('-', '').lower() == name.lower():
            return name
    raise ValueError(f'unknown model {model!r}; known: {", ".join(MODELS)}')


def model_flags(preset: str, model: str = 'QCNet') -> List[str]:
    """Model flags of train.py / train_ssl.py for a size preset of ``model``."""
    if preset not in MODEL_PRESETS:
        raise ValueError(f'unknown model preset {preset!r}; known: {sorted(MODEL_PRESETS)}')
    if canonical_model(model) == 'ForecastMAE':
        return FORECAST_MAE_COMMON + FORECAST_MAE_PRESETS[preset]
    return COMMON_MODEL + MODEL_PRESETS[preset]


def start_logged(cmd: List[str], log_path: str, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Starts one CLI of the project in the project root, stdout + stderr going to ``log_path``; ``env``: its whole
    environment (None: this process's)."""
    print('$ ' + ' '.join(cmd), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, 'w') as log:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def exit_on_sigterm() -> None:
    """Turns SIGTERM into SystemExit so that ``finally`` blocks (child termination, atomic writes) run."""
    def handler(signum, frame):
        raise SystemExit(f'{os.path.basename(sys.argv[0])}: terminated (signal {signum})')
    signal.signal(signal.SIGTERM, handler)


def prepare_run_dir(logs: str, name: str) -> bool:
    """True when run ``name`` still has to run. A finished run (its val JSON exists) is kept, so the experiment
    resumes; an unfinished one is removed so that train.py starts it cleanly."""
    if os.path.exists(os.path.join(logs, name + '_val.json')):
        return False
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)
    return True


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + '\n')


def read_json(path: str, what: str = 'file') -> dict:
    """Reads a JSON file; a broken one raises ValueError naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f'{path}: not valid JSON ({what}): {error}') from None


def read_val_metrics(path: str) -> Dict[str, float]:
    """The metric table of a ``val.py --output_json`` file: {'minADE': ..., 'minFDE': ..., ...}."""
    data = read_json(path, 'val.py output')
    metrics = data.get('metrics') if isinstance(data, dict) else None
    if not isinstance(metrics, dict) or 'minFDE' not in metrics:
        raise ValueError(f'{path}: no val.py metric table (expected a "metrics" object with minFDE)')
    return {name: float(value) for name, value in metrics.items()}


def pretrain_cmd(py: str, data_root: str, train_raw: str, train_processed: str, val_raw: str, val_processed: str,
                 batch_size: int, epochs: int, warmup: int, num_workers: int, accelerator: str, devices: int,
                 precision: str, seed: int, log_dir: str, exp_name: str, preset: str,
                 limit_val_batches: str = '2', resume: bool = False, extra: Optional[List[str]] = None,
                 model: str = 'QCNet') -> List[str]:
    """``train_ssl.py`` command of one pre-training run (val split only for its val_loss checkpoint ranking)."""
    cmd = [py, 'train_ssl.py', '--root', data_root,
           '--train_raw_dir', train_raw, '--train_processed_dir', train_processed,
           '--val_raw_dir', val_raw, '--val_processed_dir', val_processed,
           '--train_batch_size', str(batch_size), '--val_batch_size', '32',
           '--num_workers', str(num_workers), '--max_epochs', str(epochs),
           '--T_max', str(epochs), '--warmup', str(warmup), '--limit_val_batches', str(limit_val_batches),
           '--accelerator', accelerator, '--devices', str(devices), '--precision', precision, '--seed', str(seed),
           '--log_dir', log_dir, '--exp_name', exp_name] + model_flags(preset, model) + list(extra or [])
    if resume:
        cmd.append('--resume')
    return cmd


def finetune_cmd(py: str, data_root: str, train_raw: str, train_processed: str, val_raw: str, val_processed: str,
                 batch_size: int, epochs: int, num_workers: int, accelerator: str, devices: int, precision: str,
                 seed: int, log_dir: str, exp_name: str, preset: str, pretrained: Optional[str] = None,
                 limit_val_batches: str = '1', resume: bool = False, model: str = 'QCNet',
                 extra: Optional[List[str]] = None) -> List[str]:
    """``train.py`` command: supervised ``model`` from scratch, or fine-tuned from ``pretrained`` (copy_refine 1);
    ``extra``: further train.py flags (e.g. ``--freeze_encoder 1``)."""
    cmd = [py, 'train.py', '--root', data_root,
           '--train_raw_dir', train_raw, '--train_processed_dir', train_processed,
           '--val_raw_dir', val_raw, '--val_processed_dir', val_processed,
           '--train_batch_size', str(batch_size), '--val_batch_size', '32',
           '--test_batch_size', '32', '--num_workers', str(num_workers),
           '--max_epochs', str(epochs), '--T_max', str(epochs),
           '--limit_val_batches', str(limit_val_batches), '--num_sanity_val_steps', '0',
           '--accelerator', accelerator, '--devices', str(devices), '--precision', precision,
           '--seed', str(seed), '--log_dir', log_dir, '--exp_name', exp_name] + model_flags(preset, model)
    if canonical_model(model) == 'ForecastMAE':  # its recipe warms up 10 of 60 epochs: keep that share
        cmd += ['--warmup_epochs', str(max(1, round(epochs / 6)))]
    if pretrained:
        cmd += ['--pretrained_ckpt', pretrained, '--copy_refine', '1']
    cmd += list(extra or [])
    if resume:
        cmd.append('--resume')
    return cmd


def val_cmd(py: str, data_root: str, val_raw: str, val_processed: str, ckpt: str, accelerator: str,
            output_json: str, num_workers: Optional[int] = None) -> List[str]:
    """``val.py`` on the whole val split, one device (exact numbers), metrics to ``output_json``."""
    cmd = [py, 'val.py', '--root', data_root, '--val_raw_dir', val_raw, '--val_processed_dir', val_processed,
           '--val_batch_size', '32', '--ckpt_path', ckpt, '--accelerator', accelerator, '--devices', '1',
           '--output_json', output_json]
    if num_workers is not None:
        cmd += ['--num_workers', str(num_workers)]
    return cmd


def link_dir(directory: str, targets: Dict[str, str]) -> str:
    """Makes ``directory`` hold exactly the symbolic links name -> target, built in a side folder and renamed into
    place (a killed run never leaves a half-filled folder under the final name); returns ``directory``."""
    if os.path.isdir(directory) and sorted(os.listdir(directory)) == sorted(targets):
        return directory
    tmp = directory + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, target in targets.items():
        os.symlink(target, os.path.join(tmp, name))
    shutil.rmtree(directory, ignore_errors=True)
    os.rename(tmp, directory)
    return directory
