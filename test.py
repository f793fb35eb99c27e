"""Writes the Argoverse 2 motion-forecasting leaderboard submission of a predictor checkpoint (QCNet or
ForecastMAE; the class is read from the checkpoint with --model auto).

Predicts the focal agent of every test scenario (6 modes, world frame) and writes ONE parquet,
<submission_dir>/<submission_file_name>.parquet, also with several devices (predictions are gathered on rank 0).
Before anything is written, the predicted scenarios are checked against every scenario directory of the test split:
a missing or unexpected scenario (e.g. one that failed preprocessing) is an error and no file is written.
"""
import os
import time
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser
from pathlib import Path
from typing import List, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch_geometric.loader import DataLoader

from datasets import DATA_INPUT_ERRORS, ArgoverseV2Dataset
from predictors.registry import AUTO, model_class_for_checkpoint, model_names
from utils.cli import CliError, ensure_output_dir, evaluation_strategy, input_errors, positive_int, run_main, str2bool
from acceleration.options import add_speed_args
from utils.submission import check_coverage



def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', type=str, default=AUTO,
                        help=f'predictor class of the checkpoint ({", ".join(model_names())}); auto: the one stored '
                             f'in the checkpoint (QCNet when none is, e.g. official checkpoints)')
    parser.add_argument('--root', type=str, required=True, help='dataset root holding the test/ split')
    parser.add_argument('--test_batch_size', '--batch_size', dest='test_batch_size', type=positive_int, default=32)
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--pin_memory', type=str2bool, default=True)
    parser.add_argument('--persistent_workers', type=str2bool, default=True)
    parser.add_argument('--test_raw_dir', type=str, default=None)
    parser.add_argument('--test_processed_dir', type=str, default=None)
    parser.add_argument('--accelerator', type=str, default='auto')
    parser.add_argument('--devices', type=positive_int, default=1)
    parser.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed'])
    add_speed_args(parser, evaluation=True)
    parser.add_argument('--ckpt_path', type=str, required=True)
    parser.add_argument('--submission_dir', type=str, default='./')
    parser.add_argument('--submission_file_name', type=str, default='submission', help='file name without .parquet')
    return parser


class SubmissionCoverageCheck(pl.Callback):
    """Fails the test run, before the model writes its submission (module hooks run after callback hooks),
    unless the focal predictions gathered from all ranks cover exactly the expected scenarios."""

    def __init__(self, expected_scenario_ids: Sequence[str], hint: str = '') -> None:
        self.expected_scenario_ids = list(expected_scenario_ids)
        self.hint = hint

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        predicted = list(pl_module.test_predictions)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: List[Optional[list]] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, predicted)
            predicted = [scenario_id for part in parts for scenario_id in part]
        try:  # same outcome on every rank: no rank waits for another
            check_coverage(predicted, self.expected_scenario_ids)
        except ValueError as error:
            raise ValueError(f'{error}; no submission written{self.hint}') from None


def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    pl.seed_everything(2023, workers=True)
    ensure_output_dir(args.submission_dir, '--submission_dir')  # before hours of inference, not after
    if not os.path.isfile(args.ckpt_path):
        raise CliError(f'{args.ckpt_path}: --ckpt_path does not exist (check the path)')
    # another model's or a pre-training checkpoint, an unreadable file, unknown --model, weights that do not fit
    with input_errors(ValueError):
        model = model_class_for_checkpoint(args.ckpt_path, args.model).load_from_checkpoint(
            checkpoint_path=args.ckpt_path, map_location='cpu')
    with input_errors(ValueError):  # speed flags the model or machine cannot take: before any data is processed
        from acceleration.evaluation import prepare_model_for_evaluation
        graph_builder = prepare_model_for_evaluation(model, args)
    model.submission_dir = args.submission_dir
    model.submission_file_name = args.submission_file_name
    path = Path(args.submission_dir) / f'{args.submission_file_name}.parquet'

    # Only the test split is built (a datamodule would also process any unprocessed train/val data).
    with input_errors(*DATA_INPUT_ERRORS):
        dataset = ArgoverseV2Dataset(args.root, 'test', args.test_raw_dir, args.test_processed_dir, transform=None,
                                     num_historical_steps=model.num_historical_steps,
                                     num_future_steps=model.num_future_steps, num_workers=max(1, args.num_workers))
    # Every raw scenario must be predicted, including any that failed preprocessing (the leaderboard wants all):
    # fail now rather than after hours of inference.
    expected = dataset.raw_file_names or dataset.scenario_names
    hint = f' (scenarios that failed preprocessing are listed in {Path(dataset.processed_dir) / "failures.json"})'
    try:
        check_coverage(dataset.scenario_names, expected)
    except ValueError as error:
        raise CliError(f'{dataset.raw_dir}: test split: {error}{hint}')
    loader = DataLoader(dataset, batch_size=args.test_batch_size, shuffle=False, num_workers=args.num_workers,
                        pin_memory=args.pin_memory, persistent_workers=args.persistent_workers and args.num_workers > 0)
    if graph_builder is not None:
        from acceleration.edge_lists_in_workers import EdgeListCollate
        loader.collate_fn = EdgeListCollate(loader.collate_fn, graph_builder)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices,
                         strategy=evaluation_strategy(args.devices), precision=args.precision, logger=False,
                         callbacks=[SubmissionCoverageCheck(expected, hint)])
    previous_mtime = path.stat().st_mtime_ns if path.exists() else None
    start = time.perf_counter()
    trainer.test(model, dataloaders=loader)
    if trainer.is_global_zero:
        if not path.is_file() or path.stat().st_mtime_ns == previous_mtime:
            raise RuntimeError(f'{path} was not written by {type(model).__name__}.on_test_end')
        size_kib = path.stat().st_size / 1024
        print('\n'.join(['', '=' * 78,
                         f'submission with {len(expected)} scenarios written to {path} ({size_kib:.0f} KiB)',
                         f'  model         : {type(model).__name__} from {args.ckpt_path}',
                         f'  test split    : {dataset.raw_dir} ({len(dataset)} scenarios)',
                         f'  inference     : {time.perf_counter() - start:.1f} s on {args.accelerator} x {args.devices}',
                         '  upload        : the file as is, to the Argoverse 2 motion-forecasting leaderboard',
                         '=' * 78]), flush=True)
    return path


if __name__ == '__main__':
    run_main(main)
