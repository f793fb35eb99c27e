"""SmartPretrain self-supervised pre-training of a backbone on Argoverse 2 (or the synthetic data set).

--backbone (alias --model) picks the backbone: qcnet (default) or forecast_mae (predictor names QCNet / ForecastMAE
work too); both go through the same pre-training module and losses. Mirrors the official train_qcnet_ssl.py flags.
Extras: --devices, --precision, --resume, --log_dir, --max_steps, --limit_*_batches, --lambda_rec, --backbone, --seed.
One device (or CPU) trains without DDP; DDP with synchronised BatchNorm is used only when devices * num_nodes > 1.

Run directory <log_dir>/<exp_name>/ holds checkpoints/ (top-5 by val_loss + last.ckpt, written atomically),
tensorboard/version_N/ and csv/version_N/. last.ckpt is also rewritten every --save_every_n_steps optimiser steps
and when SIGTERM stops the run (exit status 143); `--resume` continues from it (optimizer, schedules, momentum
branch, epoch, RNG; utils/resume.py). Bad input ends the script with one line `error: <file>: <problem> (<fix>)`
and exit status 2. Fine-tune from a checkpoint with
`train.py --model <backbone> --pretrained_ckpt <ckpt> --copy_refine 1` (the momentum branch's encoder and decoder are
transferred).
"""
from argparse import SUPPRESS, ArgumentDefaultsHelpFormatter, ArgumentParser, Namespace
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import BatchSampler, DataLoader

from datasets import DATA_INPUT_ERRORS, ArgoverseV2DataModule
from datasets.multi_dataset import (MultiDatasetDataModule, add_mix_arguments, check_mix_arguments, mix_requested,
                                    mix_sources, union_vocabulary_hparams)
from predictors.forecast_mae import add_backbone_specific_args
from predictors.registry import backbone_name
from acceleration.options import add_speed_args, model_arguments, speed_options_from_args
from acceleration.view_pair_batch import ViewPairCollate, view_edge_list_builder
from predictors.smartpretrain import SmartPretrain, ViewEpochCallback
from transforms.ssl_views import SSLViews
from utils.atomic_checkpoint_io import AtomicCheckpointIO
from utils.checkpoint import CheckpointError
from utils.cli import (CliError, ensure_output_dir, input_errors, int_or_float, positive_int, run_main, str2bool,
                       training_strategy)
from utils.resume import SigtermCheckpoint, StepCheckpoint, check_resume_checkpoint, fit_or_exit_on_sigterm

MONITOR = 'val_loss'
DEFAULT_LOG_DIR = 'logs_pretrain'


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('--root', type=str, required=True, help='dataset root with train/ and val/ splits')
    data.add_argument('--train_batch_size', type=positive_int, default=4, help='scenarios per batch and device')
    data.add_argument('--val_batch_size', type=positive_int, default=4)
    data.add_argument('--test_batch_size', type=positive_int, default=4, help='accepted for compatibility (unused)')
    data.add_argument('--shuffle', type=str2bool, default=True)
    data.add_argument('--num_workers', type=int, default=8)
    data.add_argument('--pin_memory', type=str2bool, default=True)
    data.add_argument('--persistent_workers', type=str2bool, default=True)
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_raw_dir', type=str, default=None)
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_processed_dir', type=str, default=None)
    data.add_argument('--max_agents_per_batch', type=int, default=None,
                      help='cap on the agents of one batch (dense scenes form smaller batches)')
    data.add_argument('--max_polygons_per_batch', type=int, default=None)
    data.add_argument('--load_av1', type=int, default=0, choices=[0, 1], help='also pre-train on Argoverse 1')
    data.add_argument('--load_waymo', type=int, default=0, choices=[0, 1], help='also pre-train on Waymo Open Motion')
    data.add_argument('--is_pretrain', type=int, default=1, choices=[1], help='accepted for compatibility')
    add_mix_arguments(data)

    trainer = parser.add_argument_group('trainer')
    trainer.add_argument('--accelerator', type=str, default='auto')
    trainer.add_argument('--devices', type=positive_int, default=1,
                         help='devices per node; DDP (+ synchronised BatchNorm) only when devices * num_nodes > 1')
    trainer.add_argument('--num_nodes', type=positive_int, default=1)
    trainer.add_argument('--max_epochs', type=int, default=32)
    trainer.add_argument('--max_steps', type=int, default=-1,
                         help='stop after this many optimiser steps (-1: off); the schedules then span these steps')
    trainer.add_argument('--limit_train_batches', type=int_or_float, default=1.0,
                         help='batches (int) or fraction (float) of the training data per epoch')
    trainer.add_argument('--limit_val_batches', type=int_or_float, default=1.0)
    trainer.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed', '16-mixed'])
    trainer.add_argument('--log_every_n_steps', type=positive_int, default=50)
    trainer.add_argument('--seed', type=int, default=2025,
                         help='seeds initialisation, per-process randomness and the view sampling')

    run = parser.add_argument_group('run directory')
    run.add_argument('--log_dir', type=str, default=DEFAULT_LOG_DIR)
    run.add_argument('--exp_name', type=str, default='smartpretrain')
    run.add_argument('--resume', nargs='?', const='last', default=None, metavar='CKPT',
                     help='continue training (optimizer, schedules, momentum branch, epoch, RNG): without a value '
                          'from <log_dir>/<exp_name>/checkpoints/last.ckpt, or from the given checkpoint file; '
                          '"--resume auto" continues last.ckpt when it exists and starts fresh otherwise (one command '
                          'for the first start and every restart)')
    run.add_argument('--resume_path', type=str, default='null',
                     help="official form of --resume: a run name under <log_dir> (continues its last.ckpt), "
                          "a checkpoint file, or 'null'")
    run.add_argument('--save_every_n_steps', type=int, default=1000,
                     help='also rewrite checkpoints/last.ckpt every N optimiser steps (mid-epoch), so a killed job '
                          'loses at most N steps (0: only after each validation); SIGTERM always saves last.ckpt')

    SmartPretrain.add_model_specific_args(parser)
    add_speed_args(parser)
    parser.add_argument('--model', dest='backbone', default=SUPPRESS,
                        help='same as --backbone (predictor names are accepted: QCNet, ForecastMAE)')
    add_backbone_specific_args(parser.add_argument_group('forecast_mae backbone'))
    return parser


def check_args(args: Namespace) -> None:
    args.backbone = backbone_name(args.backbone)  # 'ForecastMAE' -> 'forecast_mae'; other registered names as given
    check_mix_arguments(args)
    if args.dataset != 'argoverse_v2':
        raise CliError(f'--dataset {args.dataset}: only argoverse_v2 is supported (mix in other data sets with '
                       f'--load_av1 / --load_waymo)')
    if args.resume is not None and args.resume_path not in (None, 'null'):
        raise CliError('--resume / --resume_path: both given (give one of them)')


def fresh_run(checkpoint_dir: Path) -> None:
    """None (start from scratch) when ``checkpoint_dir`` holds no checkpoint; a fresh run never mixes into an old one."""
    existing = sorted(checkpoint_dir.glob('*.ckpt'))
    if existing:
        raise CliError(f'{checkpoint_dir}: already holds {len(existing)} checkpoint(s) (e.g. {existing[0].name}) '
                       f'(to continue that run pass --resume, else choose another --exp_name / --log_dir)')
    return None


def resolve_resume_checkpoint(args: Namespace, checkpoint_dir: Path) -> Optional[str]:
    """Checkpoint to continue from, or None for a fresh run (which must not mix into an existing run)."""
    if args.resume_path not in (None, 'null'):
        candidate = Path(args.resume_path)
        path = candidate if candidate.is_file() else Path(args.log_dir) / args.resume_path / 'checkpoints' / 'last.ckpt'
    elif args.resume is not None:
        path = checkpoint_dir / 'last.ckpt' if args.resume in ('last', 'auto') else Path(args.resume)
        if args.resume == 'auto' and not path.is_file():
            return fresh_run(checkpoint_dir)
    else:
        return fresh_run(checkpoint_dir)
    if not path.is_file():
        raise CliError(f'--resume: checkpoint {path} does not exist (check the path, or start without --resume)')
    return str(path)


def with_view_pair_collate(loader: DataLoader, make_collate: Optional[Callable]) -> DataLoader:
    """The same loader collating with ``make_collate(loader.collate_fn)`` (a ``ViewPairCollate`` factory; None: the
    loader unchanged). A new loader with the collate function among its constructor arguments, so that Lightning,
    which re-creates a loader from those to add its distributed sampler, keeps it."""
    if make_collate is None:
        return loader
    common = dict(num_workers=loader.num_workers, collate_fn=make_collate(loader.collate_fn),
                  pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                  worker_init_fn=loader.worker_init_fn, prefetch_factor=loader.prefetch_factor)
    if type(loader.batch_sampler) is BatchSampler:
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                          drop_last=loader.drop_last, **common)
    return DataLoader(loader.dataset, batch_sampler=loader.batch_sampler, **common)


class MixedPretrainingDataModule(MultiDatasetDataModule):
    """Several datasets mixed (``datasets/multi_dataset.py``), with the same view-epoch sync as below."""

    def __init__(self, view_callback: ViewEpochCallback, view_pair_collate: Optional[Callable] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.view_callback, self.view_pair_collate = view_callback, view_pair_collate

    def train_dataloader(self):
        self.view_callback.sync(self.trainer)
        return with_view_pair_collate(super().train_dataloader(), self.view_pair_collate)

    def val_dataloader(self):
        return with_view_pair_collate(super().val_dataloader(), self.view_pair_collate)


class PretrainingDataModule(ArgoverseV2DataModule):
    """Argoverse 2 data module whose training loader starts with the view transform set to the current epoch
    (the first loader of a run, resumed or not, is created before any epoch hook runs)."""

    def __init__(self, view_callback: ViewEpochCallback, view_pair_collate: Optional[Callable] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.view_callback, self.view_pair_collate = view_callback, view_pair_collate

    def train_dataloader(self):
        self.view_callback.sync(self.trainer)
        return with_view_pair_collate(super().train_dataloader(), self.view_pair_collate)

    def val_dataloader(self):
        return with_view_pair_collate(super().val_dataloader(), self.view_pair_collate)


def print_summary(trainer: pl.Trainer, checkpoint: ModelCheckpoint, run_dir: Path,
                  loggers: List[pl.loggers.Logger]) -> None:
    metrics = trainer.callback_metrics
    lines = ['', '=' * 78,
             f'Pre-training finished: epoch {trainer.current_epoch}, {trainer.global_step} optimiser steps',
             f'  run directory : {run_dir}']
    if checkpoint.best_model_path:
        score = checkpoint.best_model_score
        score_text = f' ({MONITOR} = {score.item():.4f})' if score is not None else ''
        lines.append(f'  best ckpt     : {checkpoint.best_model_path}{score_text}')
    last = Path(checkpoint.dirpath) / 'last.ckpt'
    if last.is_file():
        lines.append(f'  last ckpt     : {last}')
    for logger in loggers:
        lines.append(f'  {type(logger).__name__:<14}: {logger.log_dir}')
    lines.append(f'  tensorboard   : tensorboard --logdir {run_dir / "tensorboard"}')
    for name in ('loss_epoch', 'component/contra_loss_epoch', 'component/rec_loss_epoch', 'contra_acc_epoch',
                 'val_loss', 'val_component/contra_loss', 'val_component/rec_loss', 'val_contra_acc'):
        if name in metrics:
            lines.append(f'  {name:<28} {float(metrics[name]):.4f}')
    model = trainer.lightning_module.hparams.get('backbone', 'qcnet')
    lines.append(f'  fine-tune     : python train.py --model {model} ... --pretrained_ckpt <ckpt> --copy_refine 1')
    lines.append('=' * 78)
    print('\n'.join(lines), flush=True)


def main(argv: Optional[List[str]] = None) -> pl.Trainer:
    args = build_parser().parse_args(argv)
    check_args(args)
    pl.seed_everything(args.seed, workers=True)  # same initial weights on every process

    run_dir = ensure_output_dir(Path(args.log_dir) / args.exp_name, '--log_dir')
    checkpoint_dir = run_dir / 'checkpoints'
    resume_path = resolve_resume_checkpoint(args, checkpoint_dir)

    if mix_requested(args):  # union vocabularies: larger map type tables (Argoverse 2's rows first)
        vars(args).update(union_vocabulary_hparams())
    with input_errors(ValueError):  # contradicting speed flags, a flag the backbone cannot take
        speed = speed_options_from_args(args, default_cache_dir=str(run_dir / 'compile_cache'))
        model = SmartPretrain(**model_arguments(args))
        from acceleration.apply import apply
        apply(model, speed)
        # the loaders' collate: both views in one batch, edge lists of both views built in the workers
        builder = view_edge_list_builder(model, args.num_workers) if speed.edge_lists_in_workers else None
    if speed.cuda_graphs:  # no silent fallback to the plain step
        from acceleration.apply import check_cuda_device
        with input_errors(ValueError, fix='leave --cuda_graphs out, or pass --speed default'):
            check_cuda_device(args.accelerator)
    view_pair_collate = partial(ViewPairCollate, builder=builder, batch_views=speed.batch_views) \
        if speed.batch_views or builder is not None else None
    if resume_path is not None:
        with input_errors(CheckpointError):
            check_resume_checkpoint(resume_path, model)
    train_views = SSLViews(args.num_historical_steps, args.num_future_steps, seed=args.seed)
    # Validation views never change (epoch stays 0), so val_loss is comparable across epochs.
    val_views = SSLViews(args.num_historical_steps, args.num_future_steps, seed=args.seed + 1)
    view_callback = ViewEpochCallback(train_views)
    if mix_requested(args):
        datamodule = MixedPretrainingDataModule(
            view_callback=view_callback, view_pair_collate=view_pair_collate, sources=mix_sources(args), train_batch_size=args.train_batch_size,
            val_batch_size=args.val_batch_size, shuffle=args.shuffle, num_workers=args.num_workers,
            pin_memory=args.pin_memory, persistent_workers=args.persistent_workers, train_transform=train_views,
            val_transform=val_views, num_samples_per_epoch=args.num_samples_per_epoch, seed=args.seed)
    else:
        datamodule = PretrainingDataModule(view_callback=view_callback, view_pair_collate=view_pair_collate,
                                           **{**vars(args), 'train_transform': train_views, 'val_transform': val_views,
                                              'test_transform': None})
    model_checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor=MONITOR, mode='min', save_top_k=5,
                                       save_last=True, filename='epoch={epoch}-step={step}-val_loss={val_loss:.4f}',
                                       auto_insert_metric_name=False, enable_version_counter=False)
    sigterm_checkpoint = SigtermCheckpoint(checkpoint_dir)
    callbacks = [model_checkpoint, sigterm_checkpoint, view_callback]
    if args.save_every_n_steps > 0:
        callbacks.append(StepCheckpoint(checkpoint_dir, args.save_every_n_steps))
    loggers = [TensorBoardLogger(save_dir=run_dir, name='tensorboard'), CSVLogger(save_dir=run_dir, name='csv')]
    distributed = args.devices * args.num_nodes > 1
    # SyncBatchNorm runs on CUDA only; CPU (gloo) DDP keeps per-process BatchNorm statistics.
    on_cpu = args.accelerator == 'cpu' or (args.accelerator == 'auto' and not torch.cuda.is_available())
    sync_batchnorm = distributed and not on_cpu
    if distributed and on_cpu:
        print('note: DDP on CPU: BatchNorm statistics are per process (SyncBatchNorm needs CUDA)', flush=True)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                         strategy=training_strategy(args.devices, args.num_nodes), sync_batchnorm=sync_batchnorm,
                         precision=args.precision, max_epochs=args.max_epochs, max_steps=args.max_steps,
                         limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
                         log_every_n_steps=args.log_every_n_steps, callbacks=callbacks,
                         logger=loggers, plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    # bad data surfaces while the datasets are built inside fit: empty split, stale or foreign cache, ...
    fit_or_exit_on_sigterm('train_ssl.py', trainer, model, datamodule, resume_path, checkpoint_dir, sigterm_checkpoint,
                           DATA_INPUT_ERRORS)
    if trainer.is_global_zero:
        print_summary(trainer, model_checkpoint, run_dir, loggers)
    return trainer


if __name__ == '__main__':
    run_main(main)
