"""Runs the points of a scaling sweep with the project's own CLIs (``train_ssl.py``, ``train.py``, ``val.py``), so a
sweep runs exactly the code path a user runs.

Under ``<work_dir>`` (the data folders: :mod:`benchmarks.scaling.data`)::

    runs/<run>/                     train_ssl.py / train.py run directories (+ sweep_run.json when finished)
    logs/<run>.log, logs/<run>_val.json
    flops.json                      FLOP measurements (per data mix and for fine-tuning)

The commands come from ``benchmarks/experiment_utils.py`` (``pretrain_cmd`` / ``finetune_cmd`` / ``val_cmd``): flags
that every run of the sweep gets belong there.
"""
import argparse
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

from benchmarks.experiment_utils import (atomic_write_json, finetune_cmd, pretrain_cmd, read_json, read_val_metrics,
                                         val_cmd)
from benchmarks.scaling.data import LABELLED_SEED, POOL_SEED, VAL_SEED, SweepData
from benchmarks.scaling.flops import FlopConfig, measure_sweep_flops
from benchmarks.scaling.plan import Point
from benchmarks.scaling.processes import ChildProcesses, loader_workers_per_run
from benchmarks.scaling.schedule import run_point


def _checkpoint_progress(path: str) -> Dict[str, int]:
    """{'epoch', 'global_step'} stored in a Lightning checkpoint."""
    import torch
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return {'epoch': int(ckpt.get('epoch', -1)), 'global_step': int(ckpt.get('global_step', -1))}


class CliRunner:
    """Runs points with the project's CLIs under ``args.work_dir`` through the steps the scheduler drives
    (:data:`benchmarks.scaling.schedule.RUNNER_STEPS`): ``pretrain`` (shared by the points of one pre-training run),
    ``finetune``, ``validate``; ``run(point)`` does all of them. Finished runs are reused and interrupted ones
    continue from their last checkpoint."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.py = sys.executable
        self.work = os.path.abspath(args.work_dir)
        self.runs = os.path.join(self.work, 'runs')
        self.logs = os.path.join(self.work, 'logs')
        self.cpus = os.cpu_count() or 1
        self.flops: Dict[str, dict] = {}
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
        self.data = SweepData(self.work, args.target_profile, args.mix_profiles, args.num_labelled, args.num_val,
                              self.children, self.logs)
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

    def _device_name(self) -> str:
        if self.args.accelerator in ('gpu', 'cuda', 'auto'):
            try:
                import torch
                if torch.cuda.is_available():
                    return f'{self.args.devices} x {torch.cuda.get_device_name(0)}'
            except Exception:  # noqa: BLE001 - only a label
                pass
        return f'{self.args.accelerator} ({self.cpus} cores)'

    # -------------------------------------------------------------- data and FLOPs
    def prepare(self, points: Sequence[Point]) -> None:
        """Generates and preprocesses every scenario the points need; measures FLOPs once per data mix."""
        for d in (self.runs, self.logs):
            os.makedirs(d, exist_ok=True)
        self.data.prepare(points)
        self._measure_flops(points)

    def _flop_device(self) -> str:
        if self.args.flop_device != 'auto':
            return self.args.flop_device
        import torch
        return 'cuda' if self.args.accelerator in ('gpu', 'cuda', 'auto') and torch.cuda.is_available() else 'cpu'

    def _measure_flops(self, points: Sequence[Point]) -> None:
        a = self.args
        mixes = {p.mix for p in points if p.kind == 'pretrained'}
        batch_sizes = {'finetune': a.finetune_batch_size, **{f'pretrain_{mix}': a.pretrain_batch_size for mix in mixes}}

        def config_of(name: str) -> FlopConfig:
            if name == 'finetune':
                return FlopConfig('finetune', self._finetune_cmd('flops', 0)[2:], self.data.labelled_raw,
                                  self.data.processed('labelled'), a.finetune_batch_size)
            mix = name[len('pretrain_'):]  # counted on the largest pre-training set of the mix
            largest = max(p.num_pretrain for p in points if p.kind == 'pretrained' and p.mix == mix)
            raw = self.data.subset_dir(mix, largest)
            return FlopConfig('pretrain', self._pretrain_cmd(raw, 'flops', 0)[2:], raw, self.data.processed('pool'),
                              a.pretrain_batch_size)

        self.flops = measure_sweep_flops(os.path.join(self.work, 'flops.json'), batch_sizes, config_of,
                                         a.flop_batches, self._flop_device())

    # -------------------------------------------------------------- runs
    def _pretrain_cmd(self, train_raw: str, name: str, seed: int, resume: bool = False) -> List[str]:
        a = self.args
        return pretrain_cmd(self.py, self.data.root, train_raw, self.data.processed('pool'), self.data.val_raw,
                            self.data.processed('val'), a.pretrain_batch_size, a.pretrain_epochs,
                            a.pretrain_warmup, self.run_workers, a.accelerator, a.devices, a.precision, seed,
                            self.runs, name, a.size, limit_val_batches='1', resume=resume, model=a.model)

    def _finetune_cmd(self, name: str, seed: int, pretrained: Optional[str] = None, resume: bool = False):
        a = self.args
        return finetune_cmd(self.py, self.data.root, self.data.labelled_raw, self.data.processed('labelled'),
                            self.data.val_raw, self.data.processed('val'), a.finetune_batch_size, a.finetune_epochs,
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
            self.children.run(val_cmd(self.py, self.data.root, self.data.val_raw, self.data.processed('val'), ckpt,
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
        return {'profiles': '+'.join(self.data.profiles_of(point.mix)) if point.mix else '', 'device': self.device_name,
                'precision': a.precision, 'run': point.run_name, 'pretrain_seed': '', 'pretrain_epochs': 0,
                'pretrain_steps': 0, 'pretrain_wall_s': 0.0, 'pretrain_gpu_s': 0.0,
                'pretrain_flops_per_scenario': 0.0, 'pretrain_flops': 0.0, 'num_pretrain_scenarios': 0,
                'pretrain_reused': False}

    def pretrain(self, point: Point) -> dict:
        """Runs (or reuses, or finishes) the pre-training of ``point``; its row columns."""
        a = self.args
        pretrain_seed = point.seed if a.pretrain_per_seed else a.pretrain_seed
        name = self.pretrain_name(point)
        train_raw = self.data.subset_dir(point.mix, point.num_pretrain)
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
