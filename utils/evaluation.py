"""What val.py and test.py share: their common flags, loading the checkpoint's predictor, the split's dataset and
loader, and the Lightning trainer. Imports no torch at module level (the scripts' ``--help``)."""
from argparse import ArgumentParser, Namespace
from typing import Any, Optional, Tuple

from predictors.names import AUTO, model_names
from utils.cli import (bool_flag, check_checkpoint_file, evaluation_strategy, input_errors, positive_int)
from acceleration.options import add_speed_args


def add_evaluation_args(parser: ArgumentParser, split: str) -> None:
    """Flags of an evaluation script on ``split`` ('val' or 'test'): model and checkpoint, data, devices, speed."""
    parser.add_argument('--model', type=str, default=AUTO,
                        help=f'predictor class of the checkpoint ({", ".join(model_names())}); auto: the one stored '
                             f'in the checkpoint (QCNet when none is, e.g. official checkpoints)')
    parser.add_argument('--root', type=str, required=True, help=f'dataset root holding the {split}/ split')
    parser.add_argument(f'--{split}_batch_size', '--batch_size', dest=f'{split}_batch_size', type=positive_int,
                        default=32)
    parser.add_argument('--num_workers', type=int, default=8)
    parser.add_argument('--pin_memory', **bool_flag(True))
    parser.add_argument('--persistent_workers', **bool_flag(True))
    parser.add_argument(f'--{split}_raw_dir', type=str, default=None)
    parser.add_argument(f'--{split}_processed_dir', type=str, default=None)
    parser.add_argument('--accelerator', type=str, default='auto')
    parser.add_argument('--devices', type=positive_int, default=1)
    parser.add_argument('--precision', type=str, default='32', choices=['32', 'bf16-mixed'])
    add_speed_args(parser, evaluation=True)
    parser.add_argument('--ckpt_path', type=str, required=True,
                        help='predictor checkpoint (e.g. <log_dir>/<exp_name>/checkpoints/last.ckpt)')


def load_predictor(args: Namespace) -> Tuple[Any, Optional[Any]]:
    """The predictor of ``--ckpt_path`` with the speed flags applied (errors before any data is processed), and the
    graph builder for the loader workers (or None)."""
    check_checkpoint_file(args.ckpt_path, '--ckpt_path')
    from predictors.registry import model_class_for_checkpoint
    # another model's or a pre-training checkpoint, an unreadable file, unknown --model, weights that do not fit
    with input_errors(ValueError):
        model = model_class_for_checkpoint(args.ckpt_path, args.model).load_from_checkpoint(
            checkpoint_path=args.ckpt_path, map_location='cpu')
    from acceleration.evaluation import prepare_model_for_evaluation
    with input_errors(ValueError):  # speed flags the model or machine cannot take: before any data is processed
        return model, prepare_model_for_evaluation(model, args)


def split_dataset(args: Namespace, split: str, model: Any, transform: Optional[Any]) -> Any:
    """The ``split`` dataset alone (a datamodule would also process any unprocessed data of the other splits)."""
    from datasets import DATA_INPUT_ERRORS, ArgoverseV2Dataset
    with input_errors(*DATA_INPUT_ERRORS):
        return ArgoverseV2Dataset(args.root, split, getattr(args, f'{split}_raw_dir'),
                                  getattr(args, f'{split}_processed_dir'), transform=transform,
                                  num_historical_steps=model.num_historical_steps,
                                  num_future_steps=model.num_future_steps, num_workers=max(1, args.num_workers))


def split_loader(args: Namespace, dataset: Any, batch_size: int, graph_builder: Optional[Any]) -> Any:
    """Loader over ``dataset`` in order; with a graph builder the workers also build each batch's edge lists."""
    import torch
    from torch_geometric.loader import DataLoader
    from acceleration.edge_lists_in_workers import EdgeListCollate
    # page-locked host memory only helps copies to a GPU (without one, the loader warns on every start)
    pin_memory = args.pin_memory and args.accelerator != 'cpu' and torch.cuda.is_available()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=args.num_workers,
                        pin_memory=pin_memory, persistent_workers=args.persistent_workers and args.num_workers > 0)
    if graph_builder is not None:
        loader.collate_fn = EdgeListCollate(loader.collate_fn, graph_builder)
    return loader


def evaluation_trainer(args: Namespace, **trainer_kwargs: Any) -> Any:
    """Lightning trainer on ``--accelerator`` / ``--devices`` (DDP only for several devices), no logger."""
    import pytorch_lightning as pl
    return pl.Trainer(accelerator=args.accelerator, devices=args.devices, strategy=evaluation_strategy(args.devices),
                      precision=args.precision, logger=False, **trainer_kwargs)
