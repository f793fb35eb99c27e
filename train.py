"""Supervised training (or SmartPretrain fine-tuning) of a predictor on Argoverse 2.

--model picks the predictor (QCNet, the default, or ForecastMAE; backbone names such as forecast_mae work too);
`train.py --model ForecastMAE --help` lists that model's flags. Mirrors the official train_qcnet.py flags.
Extras: --pretrained_ckpt/--copy_refine (SmartPretrain fine-tuning), --precision, --resume, --log_dir/--exp_name,
--max_steps, --limit_*_batches, --seed.

Run directory <log_dir>/<exp_name>/ holds checkpoints/ (top-5 by val_minFDE + last.ckpt, written atomically),
tensorboard/version_N/ and csv/version_N/ (one version per start, so a resumed run never overwrites earlier logs).
last.ckpt is also rewritten every --save_every_n_steps optimiser steps and when SIGTERM stops the run (exit status
143); `--resume` continues from it with the same step count, epoch, optimizer and schedule (utils/resume.py).
Bad input (empty split, stale cache, wrong checkpoint, unwritable --log_dir, ...) ends the script with one line
`error: <file>: <problem> (<fix>)` and exit status 2.
"""
from argparse import ArgumentParser, Namespace
from functools import partial
from pathlib import Path
from typing import Any, List, Optional

# Only modules that import no torch before the flags are parsed: `--help` and flag errors come back at once.
from acceleration.options import add_speed_args, model_arguments, speed_options_from_args
from predictors.arguments import add_predictor_args
from predictors.names import model_names, normalise_model_name, resolve_model_name
from utils.cli import (CliError, HelpFormatter, bool_flag, ensure_output_dir, input_errors, int_or_float,
                       positive_int, run_main)
from utils.training_run import expect_existing_checkpoints, print_summary, resume_checkpoint

MONITOR = 'val_minFDE'
SUMMARY_METRICS = ('val_minADE', 'val_minFDE', 'val_MR', 'val_Brier', 'val_minAHE', 'val_minFHE')


def build_parser(model: str = 'QCNet') -> ArgumentParser:
    """Parser of the script with the flags of predictor ``model``."""
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('--model', type=str, default='QCNet',
                        help=f'predictor ({", ".join(model_names())}); its flags are listed below with --model <name> '
                             f'--help')
    data = parser.add_argument_group('data')
    data.add_argument('--root', type=str, required=True, help='dataset root with train/ val/ test/ splits')
    data.add_argument('--train_batch_size', type=positive_int, required=True, help='scenarios per batch and device')
    data.add_argument('--val_batch_size', type=positive_int, required=True)
    data.add_argument('--test_batch_size', type=positive_int, required=True)
    data.add_argument('--shuffle', **bool_flag(True))
    data.add_argument('--num_workers', type=int, default=8)
    data.add_argument('--pin_memory', **bool_flag(True))
    data.add_argument('--persistent_workers', **bool_flag(True))
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_raw_dir', type=str, default=None)
    for split in ('train', 'val', 'test'):
        data.add_argument(f'--{split}_processed_dir', type=str, default=None)

    trainer = parser.add_argument_group('trainer')
    trainer.add_argument('--accelerator', type=str, default='auto')
    trainer.add_argument('--devices', type=positive_int, default=1,
                         help='devices per node; DDP is used only when devices * num_nodes > 1')
    trainer.add_argument('--num_nodes', type=positive_int, default=1)
    trainer.add_argument('--max_epochs', type=int, default=64)
    trainer.add_argument('--max_steps', type=int, default=-1, help='stop after this many optimiser steps (-1: off)')
    trainer.add_argument('--limit_train_batches', type=int_or_float, default=1.0,
                         help='batches (int) or fraction (float) of the training data per epoch')
    trainer.add_argument('--limit_val_batches', type=int_or_float, default=1.0)
    trainer.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed'])
    trainer.add_argument('--log_every_n_steps', type=positive_int, default=50)
    trainer.add_argument('--num_sanity_val_steps', type=int, default=2,
                         help='validation batches run before training to catch errors early (0: off)')
    trainer.add_argument('--seed', type=int, default=2023)

    run = parser.add_argument_group('run directory')
    run.add_argument('--log_dir', type=str, default='lightning_logs')
    run.add_argument('--exp_name', type=str, default='qcnet')
    run.add_argument('--resume', nargs='?', const='last', default=None, metavar='CKPT',
                     help='continue training: without a value from <log_dir>/<exp_name>/checkpoints/last.ckpt, '
                          'or from the given checkpoint file; "--resume auto" continues last.ckpt when it exists and '
                          'starts fresh otherwise (one command for the first start and every restart)')
    run.add_argument('--save_every_n_steps', type=int, default=1000,
                     help='also rewrite checkpoints/last.ckpt every N optimiser steps (mid-epoch), so a killed job '
                          'loses at most N steps (0: only after each validation); SIGTERM always saves last.ckpt')

    finetune = parser.add_argument_group('fine-tuning from SmartPretrain')
    finetune.add_argument('--pretrained_ckpt', type=str, default=None,
                          help='SmartPretrain pre-training checkpoint whose encoder/decoder initialise the model')
    finetune.add_argument('--copy_refine', **bool_flag(False),
                          help='also initialise the refinement attention layers from the proposal ones')
    finetune.add_argument('--pretrained_branch', type=str, default='momentum',
                          choices=['momentum', 'online', 'supervised'],
                          help='which pre-training branch initialises the model: momentum (the method; its EMA '
                               'keeps much of its random start after short pre-training runs) or online; '
                               'supervised: --pretrained_ckpt is a train.py checkpoint of the same --model, all of '
                               'whose encoder and decoder is loaded (supervised pre-training; --copy_refine 0)')
    finetune.add_argument('--mode_noise_std', type=float, default=0.0,
                          help='deviation from the method (0: off): Gaussian noise of this std on each copy of the '
                               'one pre-training mode embedding repeated to --num_modes, so that the modes differ '
                               'when fine-tuning starts (fresh embeddings have std 0.02)')
    finetune.add_argument('--freeze_encoder', **bool_flag(False),
                          help='train only the decoder; the encoder (pre-trained or random) keeps its weights: the '
                               'linear-probe style check of what a pre-trained representation holds')

    add_predictor_args(parser, model)
    add_speed_args(parser)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> Namespace:
    """Two passes: --model first, then everything with that model's flags."""
    selector = ArgumentParser(add_help=False)
    selector.add_argument('--model', type=str, default='QCNet')
    try:
        model = resolve_model_name(selector.parse_known_args(argv)[0].model)
    except ValueError as error:
        build_parser().error(f'--model: {error}')
    args = build_parser(model).parse_args(argv)
    args.model = model
    return args


def resolve_resume_checkpoint(args: Namespace, checkpoint_dir: Path) -> Optional[str]:
    """Path to resume from, or None for a fresh run; refuses to silently mix a fresh run into an old one."""
    path = resume_checkpoint(args.resume, checkpoint_dir)
    if path is None:
        return None
    from predictors.trajectory_predictor import checkpoint_model_name
    stored = checkpoint_model_name(str(path))
    if normalise_model_name(stored) != normalise_model_name(args.model):
        raise CliError(f'{path}: --resume: a {stored} checkpoint, but --model is {args.model} (pass --model {stored})')
    return str(path)


def check_speed_options(args: Namespace, run_dir: Path) -> Any:
    """--speed and its overrides; a contradicting combination or --cuda_graphs without a CUDA device is a one-line
    flag error, not a silent fallback to the plain step."""
    with input_errors(ValueError):
        speed = speed_options_from_args(args, default_cache_dir=str(run_dir / 'compile_cache'))
    if speed.cuda_graphs:
        from acceleration.apply import check_cuda_device
        with input_errors(ValueError, fix='leave --cuda_graphs out, or pass --speed default'):
            check_cuda_device(args.accelerator)
    return speed


def main(argv: Optional[List[str]] = None) -> Any:
    """Trains as the flags say and returns the Lightning trainer."""
    args = parse_args(argv)
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from datasets import DATA_INPUT_ERRORS, ArgoverseV2DataModule
    from predictors.registry import model_class
    from transforms import TargetBuilder
    from utils.atomic_checkpoint_io import AtomicCheckpointIO
    from utils.checkpoint import CheckpointError
    from utils.cli import training_strategy
    from utils.resume import SigtermCheckpoint, StepCheckpoint, check_resume_checkpoint, fit_or_exit_on_sigterm

    # page-locked host memory only helps copies to a GPU (without one, the loader warns on every start)
    args.pin_memory = args.pin_memory and args.accelerator != 'cpu' and torch.cuda.is_available()

    run_dir = Path(args.log_dir) / args.exp_name
    speed = check_speed_options(args, run_dir)
    if args.mode_noise_std and args.pretrained_ckpt is None:
        raise CliError(f'--mode_noise_std {args.mode_noise_std:g}: needs --pretrained_ckpt (it changes how a '
                       f'pre-trained mode embedding is transferred)')
    pl.seed_everything(args.seed, workers=True)

    run_dir = ensure_output_dir(run_dir, '--log_dir')
    checkpoint_dir = run_dir / 'checkpoints'
    with input_errors(CheckpointError):
        resume_path = resolve_resume_checkpoint(args, checkpoint_dir)
    if resume_path is not None:
        expect_existing_checkpoints()

    model = model_class(args.model)(**model_arguments(args))
    graph_builder = None
    with input_errors(ValueError):
        from acceleration.apply import apply, options_for_model
        speed = options_for_model(model, speed, vars(args))
        if speed.edge_lists_in_workers:
            from acceleration.edge_lists_in_workers import EdgeListCollate, edge_list_builder_for
            graph_builder = edge_list_builder_for(model, args.num_workers)
        apply(model, speed)
    if resume_path is not None:
        with input_errors(CheckpointError):
            check_resume_checkpoint(resume_path, model)
    if args.pretrained_ckpt is not None:
        if resume_path is not None:
            print(f'--resume given: weights come from {resume_path}, --pretrained_ckpt is not loaded again')
        else:
            from utils.cli import check_checkpoint_file
            from utils.pretrained import load_pretrained
            check_checkpoint_file(args.pretrained_ckpt, '--pretrained_ckpt')
            print(f'fine-tuning from {args.pretrained_ckpt} ({args.model}, {args.pretrained_branch} branch, '
                  f'copy_refine={args.copy_refine})')
            with input_errors(ValueError, OSError):  # messages name the file: wrong kind, unreadable, other sizes
                load_pretrained(model, args.pretrained_ckpt, args.copy_refine, branch=args.pretrained_branch,
                                mode_noise_std=args.mode_noise_std)

    if args.freeze_encoder:
        frozen = sum(p.numel() for p in model.encoder.parameters())
        model.encoder.requires_grad_(False)
        print(f'--freeze_encoder 1: {frozen:,} encoder parameters frozen, '
              f'{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trained')

    datamodule = ArgoverseV2DataModule(
        collate_wrapper=None if graph_builder is None else partial(EdgeListCollate, builder=graph_builder),
        **{**vars(args),
           'train_transform': TargetBuilder(args.num_historical_steps, args.num_future_steps),
           'val_transform': TargetBuilder(args.num_historical_steps, args.num_future_steps),
           'test_transform': None})
    model_checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, monitor=MONITOR, mode='min', save_top_k=5,
                                       save_last=True, filename='epoch={epoch}-step={step}-val_minFDE={val_minFDE:.4f}',
                                       auto_insert_metric_name=False, enable_version_counter=False)
    sigterm_checkpoint = SigtermCheckpoint(checkpoint_dir)
    callbacks = [model_checkpoint, sigterm_checkpoint, LearningRateMonitor(logging_interval='epoch')]
    if args.save_every_n_steps > 0:
        callbacks.append(StepCheckpoint(checkpoint_dir, args.save_every_n_steps))
    loggers = [TensorBoardLogger(save_dir=run_dir, name='tensorboard'), CSVLogger(save_dir=run_dir, name='csv')]
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                         strategy=training_strategy(args.devices, args.num_nodes), precision=args.precision,
                         max_epochs=args.max_epochs, max_steps=args.max_steps,
                         limit_train_batches=args.limit_train_batches, limit_val_batches=args.limit_val_batches,
                         log_every_n_steps=args.log_every_n_steps, num_sanity_val_steps=args.num_sanity_val_steps,
                         # with --cuda_graphs the CUDA-graph step clips itself (Lightning's manual optimisation)
                         gradient_clip_val=(None if speed.cuda_graphs
                                            else getattr(args, 'gradient_clip_val', 0.0) or None),
                         callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()],
                         default_root_dir=str(run_dir))
    # bad data surfaces while the datasets are built inside fit: empty split, stale or foreign cache, ...
    fit_or_exit_on_sigterm('train.py', trainer, model, datamodule, resume_path, checkpoint_dir, sigterm_checkpoint,
                           DATA_INPUT_ERRORS)
    if trainer.is_global_zero:
        logged = trainer.callback_metrics
        derived = ([f'    {"brier-minFDE":<12} {float(logged["val_minFDE"]) + float(logged["val_Brier"]):.4f}']
                   if 'val_minFDE' in logged and 'val_Brier' in logged else [])
        print_summary('Training', trainer, model_checkpoint, run_dir, loggers, MONITOR,
                      [(name[4:], name) for name in SUMMARY_METRICS], extra=derived)
    return trainer


if __name__ == '__main__':
    run_main(main)
