#!/usr/bin/env python
"""QCNet training and validation through Lightning, eager vs --cuda_graphs, on batches of varying size.

bench_qcnet_step.py times one fixed batch; this script runs the real loop (data loader, Lightning, varying batch
sizes, so several capacities are captured and padding costs what it costs) on synthetic Argoverse 2 scenarios
generated and preprocessed into --work_dir:

1. trains the same model (same seed) twice for --epochs epochs, eager and with cuda_graphs=True, and reports the
   median wall time of a training step (CUDA-synchronised, data loading excluded) of the epochs after the first
   (captures happen in the first), the captures and the padding;
2. validates the trained eager model with and without CUDA graphs: same metrics (the padded forward is exact),
   and the time of each validation pass.

Example (GPU):
  python benchmarks/cuda_graphs_training.py --work_dir /tmp/cg --num_train 960 --num_val 320 --batch_size 32
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_qcnet_step import AV2_CONFIG  # noqa: E402
from utils.atomic_io import atomic_write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', type=str, required=True, help='synthetic data is generated here (reused)')
    parser.add_argument('--num_train', type=int, default=960)
    parser.add_argument('--num_val', type=int, default=320)
    parser.add_argument('--profile', type=str, default='default', help='synthetic scene profile')
    parser.add_argument('--batch_size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed'])
    parser.add_argument('--accelerator', type=str, default='gpu')
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--hidden_dim', type=int, default=AV2_CONFIG['hidden_dim'])
    parser.add_argument('--compile', action='store_true',
                        help='the --cuda_graphs run also with --compile_attention --compile_embeddings --compile_gru '
                             '(the first steps compile for minutes)')
    parser.add_argument('--build_graph_in_workers', action='store_true',
                        help="both runs: the loader workers build each batch's edge lists (train.py flag)")
    parser.add_argument('--skip_eager_training', action='store_true',
                        help='train only with --cuda_graphs (the validation comparison still runs both ways)')
    parser.add_argument('--report', type=str, default=None, help='write the results as JSON here')
    return parser.parse_args(argv)


def prepare_data(args) -> dict:
    raw, processed = os.path.join(args.work_dir, 'raw'), os.path.join(args.work_dir, 'data')
    dirs = {}
    for split, num, seed in (('train', args.num_train, 0), ('val', args.num_val, 1)):
        out = os.path.join(processed, split, 'processed')
        if not os.path.isdir(out) or len(os.listdir(out)) < num:
            workers = str(max(1, (os.cpu_count() or 2) - 1))
            subprocess.run([sys.executable, '-m', 'datasets.synthetic', '--out', raw, '--split', split, '--num',
                            str(num), '--seed', str(seed), '--profile', args.profile, '--num_workers', workers,
                            '--no_progress'], check=True, cwd=ROOT)
            subprocess.run([sys.executable, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir',
                            os.path.join(raw, split), '--processed_dir', out, '--num_workers', workers,
                            '--no_progress'], check=True, cwd=ROOT)
        dirs[f'{split}_raw_dir'], dirs[f'{split}_processed_dir'] = os.path.join(raw, split), out
    return dirs


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer:
    """Lightning callback: CUDA-synchronised wall time of each training step, per epoch."""

    def __new__(cls):
        import pytorch_lightning as pl

        class _Timer(pl.Callback):
            def __init__(self):
                self.epochs, self._start = [], None

            def on_train_epoch_start(self, trainer, module):
                self.epochs.append([])

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                _sync()
                self._start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                _sync()
                self.epochs[-1].append(time.perf_counter() - self._start)
        return _Timer()


def datamodule(args, dirs):
    from functools import partial

    from acceleration.edge_lists_in_workers import EdgeListCollate
    from datasets import ArgoverseV2DataModule
    from predictors import QCNet
    from transforms import TargetBuilder
    target = TargetBuilder(AV2_CONFIG['num_historical_steps'], AV2_CONFIG['num_future_steps'])
    builder = QCNet(**dict(AV2_CONFIG, hidden_dim=args.hidden_dim)) if args.build_graph_in_workers else None
    return ArgoverseV2DataModule(root=args.work_dir, train_batch_size=args.batch_size,
                                 collate_wrapper=None if builder is None else partial(EdgeListCollate, builder=builder),
                                 val_batch_size=args.batch_size, test_batch_size=args.batch_size,
                                 shuffle=True, num_workers=args.num_workers, pin_memory=True,
                                 persistent_workers=args.num_workers > 0, train_transform=target,
                                 val_transform=target, test_transform=None, **dirs)


def train(args, dirs, cuda_graphs: bool):
    import pytorch_lightning as pl
    from predictors import QCNet
    pl.seed_everything(0, workers=True)
    compiled = args.compile and cuda_graphs
    from acceleration.apply import apply
    from acceleration.options import SpeedOptions
    model = QCNet(**dict(AV2_CONFIG, hidden_dim=args.hidden_dim))
    apply(model, SpeedOptions(cuda_graphs=cuda_graphs, compile_attention=compiled, compile_embeddings=compiled,
                              compile_gru=compiled))
    timer = StepTimer()
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, max_epochs=args.epochs, precision=args.precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule(args, dirs))
    wall = time.perf_counter() - start
    later = [t for epoch in timer.epochs[1:] for t in epoch] or timer.epochs[0]
    row = {'cuda_graphs': cuda_graphs, 'compiled': compiled, 'graphs_in_workers': args.build_graph_in_workers,
           'steps': sum(len(e) for e in timer.epochs), 'fit_wall_s': wall,
           'first_epoch_s': sum(timer.epochs[0]), 'median_step_s': statistics.median(later),
           'mean_step_s': statistics.mean(later), 'scenarios_per_s': args.batch_size / statistics.mean(later)}
    if cuda_graphs:
        runner = model.fixed_shape_step.training_runner
        row.update(captures=runner.num_captures, capacity_rungs=runner.capacity_rungs())
    print(json.dumps(row), flush=True)
    return model, row


def validate(args, dirs, model, cuda_graphs: bool):
    import pytorch_lightning as pl
    from acceleration.apply import apply
    from acceleration.options import SpeedOptions
    apply(model, SpeedOptions(cuda_graphs=cuda_graphs, tf32=False))
    trainer = pl.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, logger=False,
                         enable_progress_bar=False)
    dm = datamodule(args, dirs)
    times = []
    for _ in range(2):  # the first pass captures
        _sync()
        start = time.perf_counter()
        metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
        _sync()
        times.append(time.perf_counter() - start)
    row = {'cuda_graphs': cuda_graphs, 'first_pass_s': times[0], 'second_pass_s': times[1],
           'metrics': {k: float(v) for k, v in metrics.items()}}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.build_graph_in_workers and args.num_workers < 1:
        raise SystemExit('cuda_graphs_training: --build_graph_in_workers needs --num_workers >= 1')
    import warnings
    warnings.filterwarnings('ignore')
    dirs = prepare_data(args)
    report = {'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'args': vars(args)}
    if not args.skip_eager_training:
        _, report['train_eager'] = train(args, dirs, False)
    model, report['train_cuda_graphs'] = train(args, dirs, True)
    report['val_eager'] = validate(args, dirs, model, False)
    report['val_cuda_graphs'] = validate(args, dirs, model, True)
    eager, graphs = report['val_eager']['metrics'], report['val_cuda_graphs']['metrics']
    worst = max(abs(graphs[k] - v) / max(1.0, abs(v)) for k, v in eager.items())
    report['val_metrics_worst_relative_difference'] = worst
    eager_step = report['train_eager']['mean_step_s'] if 'train_eager' in report else float('nan')
    speed = eager_step / report['train_cuda_graphs']['mean_step_s']
    print(f'training step: eager {eager_step * 1000:.1f} ms, cuda graphs '
          f'{report["train_cuda_graphs"]["mean_step_s"] * 1000:.1f} ms ({speed:.2f}x); validation pass: eager '
          f'{report["val_eager"]["second_pass_s"]:.2f} s, cuda graphs {report["val_cuda_graphs"]["second_pass_s"]:.2f}'
          f' s; val metrics worst relative difference {worst:.2e}', flush=True)
    if args.report:
        atomic_write_text(args.report, json.dumps(report, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
