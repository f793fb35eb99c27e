"""SmartPretrain self-supervised pre-training of a backbone on Argoverse 2 (or the synthetic data set).

--backbone (alias --model) picks the backbone: qcnet (default) or forecast_mae (predictor names QCNet / ForecastMAE
work too); both go through the same pre-training module and losses. Mirrors the official train_qcnet_ssl.py flags.
Extras: --devices, --precision, --resume, --log_dir, --max_steps, --limit_*_batches, --lambda_rec, --lambda_contra, --backbone, --seed.
One device (or CPU) trains without DDP; DDP with synchronised BatchNorm is used only when devices * num_nodes > 1.

Run directory <log_dir>/<exp_name>/ holds checkpoints/ (top-5 by val_loss + last.ckpt, written atomically),
tensorboard/version_N/ and csv/version_N/. last.ckpt is also rewritten every --save_every_n_steps optimiser steps
and when SIGTERM stops the run (exit status 143); `--resume` continues from it (optimizer, schedules, momentum
branch, epoch, RNG; utils/resume.py). Bad input ends the script with one line `error: <file>: <problem> (<fix>)`
and exit status 2. Fine-tune from a checkpoint with
`train.py --model <backbone> --pretrained_ckpt <ckpt> --copy_refine 1` (the momentum branch's encoder and decoder are
transferred).
"""
from argparse import SUPPRESS, ArgumentParser, Namespace
from pathlib import Path
from functools import partial
from typing import Any, List, Optional

# Only modules that import no torch before the flags are parsed: `--help` and flag errors come back at once.
from acceleration.options import add_speed_args, model_arguments, speed_options_from_args
from datasets.mix_arguments import add_mix_arguments
from predictors.arguments import add_forecast_mae_backbone_args, add_smartpretrain_args
from predictors.names import backbone_name
from utils.cli import (CliError, HelpFormatter, bool_flag, check_checkpoint_file, ensure_output_dir, input_errors,
                       int_or_float, positive_int, run_main)
from utils.training_run import expect_existing_checkpoints, print_summary, resume_checkpoint

MONITOR = 'val_loss'
SUMMARY_METRICS = ('loss_epoch', 'component/contra_loss_epoch', 'component/rec_loss_epoch', 'contra_acc_epoch',
                   'val_loss', 'val_component/contra_loss', 'val_component/rec_loss', 'val_contra_acc')
DEFAULT_LOG_DIR = 'logs_pretrain'


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group('data')
    data.add_argument('--root', type=str, required=True, help='dataset root with train/ and val/ splits')
    data.add_argument('--train_batch_size', type=positive_int, default=4, help='scenarios per batch and device')
    data.add_argument('--val_batch_size', type=positive_int, default=4)
    data.add_argument('--test_batch_size', type=positive_int, default=4, help='accepted for compatibility (unused)')
    data.add_argument('--shuffle', **bool_flag(True))
    data.add_argument('--num_workers', type=int, default=8)
    data.add_argument('--pin_memory', **bool_flag(True))
    data.add_argument('--persistent_workers', **bool_flag(True))
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_raw_dir', type=str, default=None)
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_processed_dir', type=str, default=None)
    data.add_argument('--max_agents_per_batch', type=int, default=None,
                      help='cap on the agents of one batch (dense scenes form smaller batches)')
    data.add_argument('--max_polygons_per_batch', type=int, default=None)
    data.add_argument('--load_av1', **bool_flag(False), help='also pre-train on Argoverse 1')
    data.add_argument('--load_waymo', **bool_flag(False), help='also pre-train on Waymo Open Motion')
    data.add_argument('--is_pretrain', **bool_flag(True), help='accepted for compatibility (must be 1)')
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

    add_smartpretrain_args(parser)
    add_speed_args(parser)
    parser.add_argument('--model', dest='backbone', default=SUPPRESS,
                        help='same as --backbone (predictor names are accepted: QCNet, ForecastMAE)')
    add_forecast_mae_backbone_args(parser.add_argument_group('forecast_mae backbone'))
    return parser


def check_args(args: Namespace) -> None:
    args.backbone = backbone_name(args.backbone)  # 'ForecastMAE' -> 'forecast_mae'; other registered names as given
    if args.dataset != 'argoverse_v2':
        raise CliError(f'--dataset {args.dataset}: only argoverse_v2 is supported (mix in other data sets with '
                       f'--load_av1 / --load_waymo)')
    if args.resume is not None and args.resume_path not in (None, 'null'):
        raise CliError('--resume / --resume_path: both given (give one of them)')
    if not args.is_pretrain:
        raise CliError('--is_pretrain 0: this script only pre-trains (fine-tune with train.py)')


def resolve_resume_checkpoint(args: Namespace, checkpoint_dir: Path) -> Optional[str]:
    """Checkpoint to continue from, or None for a fresh run (which must not mix into an existing run)."""
    if args.resume_path not in (None, 'null'):
        candidate = Path(args.resume_path)
        path = candidate if candidate.is_file() else Path(args.log_dir) / args.resume_path / 'checkpoints' / 'last.ckpt'
    else:
        path = resume_checkpoint(args.resume, checkpoint_dir)
        return None if path is None else str(path)
    check_checkpoint_file(path, '--resume_path', fix='check the path, or pass --resume_path null')
    return str(path)


def main(argv: Optional[List[str]] = None) -> Any:
    """Pre-trains as the flags say and returns the Lightning trainer."""
    args = build_parser().parse_args(argv)
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from datasets import DATA_INPUT_ERRORS, ArgoverseV2DataModule
    from datasets.multi_dataset import (MultiDatasetDataModule, check_mix_arguments, mix_requested, mix_sources,
                                        union_vocabulary_hparams)
    from acceleration.view_pair_batch import ViewPairCollate, view_edge_list_builder
    from predictors.smartpretrain import SmartPretrain, ViewEpochCallback
    from transforms.ssl_views import SSLViews
    from utils.atomic_checkpoint_io import AtomicCheckpointIO
    from utils.checkpoint import CheckpointError
    from utils.cli import training_strategy
    from utils.resume import SigtermCheckpoint, StepCheckpoint, check_resume_checkpoint, fit_or_exit_on_sigterm

    # page-locked host memory only helps copies to a GPU (without one, the loader warns on every start)
    args.pin_memory = args.pin_memory and args.accelerator != 'cpu' and torch.cuda.is_available()

    check_mix_arguments(args)
    check_args(args)
    pl.seed_everything(args.seed, workers=True)  # same initial weights on every process

    run_dir = ensure_output_dir(Path(args.log_dir) / args.exp_name, '--log_dir')
    checkpoint_dir = run_dir / 'checkpoints'
    resume_path = resolve_resume_checkpoint(args, checkpoint_dir)
    if resume_path is not None:
        expect_existing_checkpoints()

    if mix_requested(args):  # union vocabularies: larger map type tables (Argoverse 2's rows first)
        vars(args).update(union_vocabulary_hparams())
    with input_errors(ValueError):  # contradicting speed flags, a flag the backbone cannot take
        speed = speed_options_from_args(args, default_cache_dir=str(run_dir / 'compile_cache'))
        model = SmartPretrain(**model_arguments(args))
        from acceleration.apply import apply, options_for_model
        speed = options_for_model(model, speed, vars(args))
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
    # the training loader starts with the views of the current epoch (also the first loader of a resumed run)
    if mix_requested(args):
        datamodule = MultiDatasetDataModule(
            sources=mix_sources(args), train_batch_size=args.train_batch_size, val_batch_size=args.val_batch_size,
            shuffle=args.shuffle, num_workers=args.num_workers, pin_memory=args.pin_memory,
            persistent_workers=args.persistent_workers, train_transform=train_views, val_transform=val_views,
            num_samples_per_epoch=args.num_samples_per_epoch, seed=args.seed, on_train_loader=view_callback.sync,
            collate_wrapper=view_pair_collate)
    else:
        datamodule = ArgoverseV2DataModule(**{**vars(args), 'train_transform': train_views, 'val_transform': val_views,
                                              'test_transform': None, 'on_train_loader': view_callback.sync,
                                              'collate_wrapper': view_pair_collate})
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
        backbone = trainer.lightning_module.hparams.get('backbone', 'qcnet')
        print_summary('Pre-training', trainer, model_checkpoint, run_dir, loggers, MONITOR,
                      [(name, name) for name in SUMMARY_METRICS],
                      extra=[f'  fine-tune     : python train.py --model {backbone} ... --pretrained_ckpt <ckpt> '
                             f'--copy_refine 1'])
    return trainer


if __name__ == '__main__':
    run_main(main)
