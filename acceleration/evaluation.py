"""Speed options of val.py and test.py: applied to a loaded checkpoint before any data is processed."""
import argparse
from typing import Optional

import torch

from acceleration.options import speed_options_from_args


def prepare_model_for_evaluation(model: torch.nn.Module, args: argparse.Namespace) -> Optional[torch.nn.Module]:
    """Installs ``--speed`` and its overrides into ``model`` (ValueError, one line, for a flag the model or machine
    cannot take); returns the CPU edge-list builder for the loader workers (EdgeListCollate) or None.
    Training-only options (TF32, the fused optimiser) have no effect on evaluation."""
    from acceleration.apply import apply, check_cuda_device, options_for_model
    speed = options_for_model(model, speed_options_from_args(args).replace(tf32=False), vars(args))
    if speed.cuda_graphs:
        check_cuda_device(args.accelerator)
    builder = None
    if speed.edge_lists_in_workers:
        from acceleration.edge_lists_in_workers import edge_list_builder_for
        builder = edge_list_builder_for(model, args.num_workers)
    apply(model, speed)
    return builder
