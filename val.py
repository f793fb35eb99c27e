"""Validates a predictor checkpoint (QCNet: ours, official or SmartPretrain fine-tuned; ForecastMAE) on the
Argoverse 2 val split; the predictor class is read from the checkpoint (--model auto).

Prints minADE, minFDE, MR, Brier, brier-minFDE, minAHE and minFHE over the focal agents (K = 6, miss threshold 2 m,
best mode = smallest final displacement, as the AV2 leaderboard) and optionally writes them as JSON.
For exact numbers use one device: with several, Lightning's distributed sampler pads the split with repeats.
"""
import json
import os
from argparse import ArgumentParser
from pathlib import Path
from typing import Dict, List, Optional

# Only modules that import no torch before the flags are parsed: `--help` and flag errors come back at once.
from utils.atomic_io import atomic_write_text
from utils.cli import HelpFormatter, ensure_output_dir, int_or_float, run_main
from utils.evaluation import add_evaluation_args, evaluation_trainer, load_predictor, split_dataset, split_loader

# (table name, logged key); brier-minFDE is derived: minFDE + Brier are averaged over the same agents and best mode.
TABLE = (('minADE', 'val_minADE'), ('minFDE', 'val_minFDE'), ('MR', 'val_MR'), ('Brier', 'val_Brier'),
         ('brier-minFDE', None), ('minAHE', 'val_minAHE'), ('minFHE', 'val_minFHE'))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_evaluation_args(parser, 'val')
    parser.add_argument('--limit_val_batches', type=int_or_float, default=1.0,
                        help='batches (int) or fraction (float) of the split to evaluate (debugging)')
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
    if args.output_json is not None:  # before hours of validation, not after
        ensure_output_dir(Path(args.output_json).parent, '--output_json')
    import pytorch_lightning as pl
    from transforms import TargetBuilder
    model, graph_builder = load_predictor(args)
    pl.seed_everything(2023, workers=True)
    dataset = split_dataset(args, 'val', model, TargetBuilder(model.num_historical_steps, model.num_future_steps))
    loader = split_loader(args, dataset, args.val_batch_size, graph_builder)
    if args.devices > 1:
        print(f'note: {args.devices} devices: the distributed sampler repeats up to {args.devices - 1} scenarios to '
              f'even out the ranks, so the metrics can differ slightly from a one-device run', flush=True)
    trainer = evaluation_trainer(args, limit_val_batches=args.limit_val_batches)
    logged = trainer.validate(model, dataloaders=loader)[0]
    table = metric_table(logged)
    if trainer.is_global_zero:
        print(format_table(table, f'Argoverse 2 val: {args.ckpt_path} on {len(dataset)} scenarios'), flush=True)
        if args.output_json is not None:
            report = {'ckpt_path': os.path.abspath(args.ckpt_path), 'root': os.path.abspath(args.root),
                      'num_scenarios': len(dataset), 'limit_val_batches': args.limit_val_batches, 'metrics': table}
            atomic_write_text(args.output_json, json.dumps(report, indent=2))
            print(f'metrics written to {args.output_json}')
    return table


if __name__ == '__main__':
    run_main(main)
