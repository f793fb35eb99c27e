"""Writes the Argoverse 2 motion-forecasting leaderboard submission of a predictor checkpoint (QCNet or
ForecastMAE; the class is read from the checkpoint with --model auto).

Predicts the focal agent of every test scenario (6 modes, world frame) and writes ONE parquet,
<submission_dir>/<submission_file_name>.parquet, also with several devices (predictions are gathered on rank 0).
Before anything is written, the predicted scenarios are checked against every scenario directory of the test split:
a missing or unexpected scenario (e.g. one that failed preprocessing) is an error and no file is written.
"""
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any, List, Optional, Sequence

# Only modules that import no torch before the flags are parsed: `--help` and flag errors come back at once.
from utils.cli import CliError, HelpFormatter, ensure_output_dir, run_main
from utils.evaluation import add_evaluation_args, evaluation_trainer, load_predictor, split_dataset, split_loader


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_evaluation_args(parser, 'test')
    parser.add_argument('--submission_dir', type=str, default='./')
    parser.add_argument('--submission_file_name', type=str, default='submission', help='file name without .parquet')
    return parser


def submission_coverage_check(expected_scenario_ids: Sequence[str], hint: str = '') -> Any:
    """Lightning callback that fails the test run, before the model writes its submission (module hooks run after
    callback hooks), unless the focal predictions gathered from all ranks cover exactly the expected scenarios."""
    import pytorch_lightning as pl
    import torch
    from utils.submission import check_coverage
    expected = list(expected_scenario_ids)

    class SubmissionCoverageCheck(pl.Callback):
        def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            predicted = list(pl_module.test_predictions)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                parts: List[Optional[list]] = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(parts, predicted)
                predicted = [scenario_id for part in parts for scenario_id in part]
            try:  # same outcome on every rank: no rank waits for another
                check_coverage(predicted, expected)
            except ValueError as error:
                raise ValueError(f'{error}; no submission written{hint}') from None

    return SubmissionCoverageCheck()


def main(argv: Optional[List[str]] = None) -> Path:
    args = build_parser().parse_args(argv)
    ensure_output_dir(args.submission_dir, '--submission_dir')  # before hours of inference, not after
    import pytorch_lightning as pl
    from utils.submission import check_coverage
    model, graph_builder = load_predictor(args)
    pl.seed_everything(2023, workers=True)
    model.submission_dir = args.submission_dir
    model.submission_file_name = args.submission_file_name
    path = Path(args.submission_dir) / f'{args.submission_file_name}.parquet'

    dataset = split_dataset(args, 'test', model, transform=None)
    # Every raw scenario must be predicted, including any that failed preprocessing (the leaderboard wants all):
    # fail now rather than after hours of inference.
    expected = dataset.raw_file_names or dataset.scenario_names
    hint = f' (scenarios that failed preprocessing are listed in {Path(dataset.processed_dir) / "failures.json"})'
    try:
        check_coverage(dataset.scenario_names, expected)
    except ValueError as error:
        raise CliError(f'{dataset.raw_dir}: test split: {error}{hint}')
    loader = split_loader(args, dataset, args.test_batch_size, graph_builder)
    trainer = evaluation_trainer(args, callbacks=[submission_coverage_check(expected, hint)])
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
