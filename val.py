"""Validates a predictor checkpoint (QCNet: ours, official or SmartPretrain fine-tuned; ForecastMAE) on the
Argoverse 2 val split; the predictor class is read from the checkpoint (--model auto).

Prints minADE, minFDE, MR, Brier, brier-minFDE, minAHE and minFHE over the focal agents (K = 6, miss threshold 2 m,
best mode = smallest final displacement, as the AV2 leaderboard) and optionally writes them as JSON.
For exact numbers use one device: with several, Lightning's distributed sampler pads the split with repeats.
"""
import json
import os
from argparse import ArgumentDefaultsHelpFormatter, ArgumentParser
from pathlib import Path
from typing import Dict, List, Optional

import pytorch_lightning as pl
from torch_geometric.loader import DataLoader

from datasets import DATA_INPUT_ERRORS, ArgoverseV2Dataset
from predictors.registry import AUTO, model_class_for_checkpoint, model_names
from transforms import TargetBuilder
from utils.cli import (CliError, ensure_output_dir, evaluation_strategy, input_errors, int_or_float, positive_int,
                       run_main, str2bool)
from acceleration.options import add_speed_args

# (table name, logged key); brier-minFDE is derived: minFDE + Brier are averaged over the same agents and best mode.
TABLE = (('minADE', 'val_minADE'), ('minFDE', 'val_minFDE'), ('MR', 'val_MR'), ('Brier', 'val_Brier'),
         ('brier-minFDE', None), ('minAHE', 'val_minAHE'), ('minFHE', 'val_minFHE'))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=ArgumentDefaultsHelpFormatter)
    parser.add_argument('--model', type=str, default=AUTO,
                        help=f'predictor class of the checkpoint ({", ".join(model_names())}); auto: the one stored '
                             f'in the checkpoint (QCNet when none is, e.g. official checkpoints)')
    parser.add_argument('--root', type=str, required=True, help='dataset root holding the val/ split')
    parser.add_argument('--val_batch_size', '--batch_size', dest='val_batch_size', type=positive_int, default=32)
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--pin_memory', type=str2bool, default=True)
    parser.add_argument('--persistent_workers', type=str2bool, default=True)
    parser.add_argument('--val_raw_dir', type=str, default=None)
    parser.add_argument('--val_processed_dir', type=str, default=None)
    parser.add_argument('--accelerator', type=str, default='auto')
    parser.add_argument('--devices', type=positive_int, default=1)
    parser.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed'])
    add_speed_args(parser, evaluation=True)
    parser.add_argument('--limit_val_batches', type=int_or_float, default=1.0,
                        help='batches (int) or fraction (float) of the split to evaluate (debugging)')
    parser.add_argument('--ckpt_path', type=str, required=True)
    parser.add_argument('--output_json', type=str, default=None, help='also write the metrics to this JSON file')
    return parser


def metric_table(logged: Dict[str, float]) -> Dict[str, float]:
    """Table name -> value from the keys logged by the model's validation_step."""
    missing = [key for _, key in TABLE if key is not None and key not in logged]
    if missing:
        raise RuntimeError(f'validation logged no {", ".join(missing)} (got {sorted(logged)}); did any scenario '
                           f'have a focal agent?')
    table = {name: float(logged[key]) for name, key in TABLE if key is not None}
    table['brier-minFDE'] = table['minFDE'] + table['Brier']
    return {name: table[name] for name, _ in TABLE}


def format_table(table: Dict[str, float], title: str) -> str:
    width = max(len(name) for name in table)
    rule = '-' * (width + 12)
    rows = [f'{name:<{width}}  {value:>10.4f}' for name, value in table.items()]
    return '\n'.join([title, rule, f'{"metric":<{width}}  {"value":>10}', rule, *rows, rule])


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    args = build_parser().parse_args(argv)
    pl.seed_everything(2023, workers=True)
    if args.output_json is not None:  # before hours of validation, not after
        ensure_output_dir(Path(args.output_json).parent, '--output_json')
    if not os.path.isfile(args.ckpt_path):
        raise CliError(f'{args.ckpt_path}: --ckpt_path does not exist (check the path)')
    # another model's or a pre-training checkpoint, an unreadable file, unknown --model, weights that do not fit
    with input_errors(ValueError):
        model = model_class_for_checkpoint(args.ckpt_path, args.model).load_from_checkpoint(
            checkpoint_path=args.ckpt_path, map_location='cpu')
    with input_errors(ValueError):  # speed flags the model or machine cannot take: before any data is processed
        from acceleration.evaluation import prepare_model_for_evaluation
        graph_builder = prepare_model_for_evaluation(model, args)
    # Only the val split is built (a datamodule would also process any unprocessed train/test data).
    with input_errors(*DATA_INPUT_ERRORS):
        dataset = ArgoverseV2Dataset(args.root, 'val', args.val_raw_dir, args.val_processed_dir,
                                     transform=TargetBuilder(model.num_historical_steps, model.num_future_steps),
                                     num_historical_steps=model.num_historical_steps,
                                     num_future_steps=model.num_future_steps, num_workers=max(1, args.num_workers))
    loader = DataLoader(dataset, batch_size=args.val_batch_size, shuffle=False, num_workers=args.num_workers,
                        pin_memory=args.pin_memory, persistent_workers=args.persistent_workers and args.num_workers > 0)
    if graph_builder is not None:
        from acceleration.edge_lists_in_workers import EdgeListCollate
        loader.collate_fn = EdgeListCollate(loader.collate_fn, graph_builder)
    if args.devices > 1:
        print(f'note: {args.devices} devices: the distributed sampler repeats up to {args.devices - 1} scenarios to '
              f'even out the ranks, so the metrics can differ slightly from a one-device run', flush=True)
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices,
                         strategy=evaluation_strategy(args.devices), precision=args.precision,
                         limit_val_batches=args.limit_val_batches, logger=False)
    logged = trainer.validate(model, dataloaders=loader)[0]
    table = metric_table(logged)
    if trainer.is_global_zero:
        print(format_table(table, f'Argoverse 2 val: {args.ckpt_path} on {len(dataset)} scenarios'), flush=True)
        if args.output_json is not None:
            report = {'ckpt_path': os.path.abspath(args.ckpt_path), 'root': os.path.abspath(args.root),
                      'num_scenarios': len(dataset), 'limit_val_batches': args.limit_val_batches, 'metrics': table}
            Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(args.output_json).with_name(f'.{Path(args.output_json).name}.tmp-{os.getpid()}')
            with open(temporary, 'w') as f:  # then renamed: an earlier file is replaced whole or not at all
                json.dump(report, f, indent=2)
            os.replace(temporary, args.output_json)
            print(f'metrics written to {args.output_json}')
    return table


if __name__ == '__main__':
    run_main(main)
