"""QCNet's edge lists built in the data-loader workers, next to the batch, instead of inside the training step.

Why: ``QCNet.build_graph`` (radius searches, dense-to-sparse masks) is the data-dependent part of a QCNet step. On
the GPU it runs eagerly before the fixed-shape replay and waits for the host at every ``nonzero``; on the CPU it
takes longer than a fast step per batch on one core, so several loader workers build the edge lists of the coming
batches while the GPU trains on the current one. The edge lists travel with the batch (pinned and moved to the device
with it) as the attribute ``qcnet_edge_lists``; ``QCNet.forward`` and the CUDA-graph step use them instead of
building their own. Edge sets are those the model builds itself (same functions, run on the CPU).
"""
from typing import Callable, Dict, List, Optional

import torch

EDGE_LISTS_ATTRIBUTE = 'qcnet_edge_lists'


def attached_edge_lists(data) -> Optional[Dict[str, torch.Tensor]]:
    """The edge lists a loader worker attached to ``data`` (``build_graph`` of it), or None."""
    return getattr(data, EDGE_LISTS_ATTRIBUTE, None)


class EdgeListCollate:
    """Collate function of a loader: ``collate(items)``, then ``builder.build_graph(batch)`` attached to the batch.

    ``builder``: a model with ``build_graph(data)`` on the CPU (its weights are not read: a fresh model with the
    trained one's hyper-parameters will do). Picklable, so it also works with spawned workers.
    """

    def __init__(self, collate: Callable[[List], object], builder: torch.nn.Module) -> None:
        if not hasattr(builder, 'build_graph'):
            raise ValueError(f'{type(builder).__name__} has no build_graph(data): only QCNet builds its edge lists in '
                             'the loader workers')
        self.collate, self.builder = collate, builder

    def __call__(self, items: List):
        batch = self.collate(items)
        with torch.no_grad():
            setattr(batch, EDGE_LISTS_ATTRIBUTE, self.builder.build_graph(batch))
        return batch


def edge_list_builder_for(model: torch.nn.Module, num_workers: int) -> torch.nn.Module:
    """--build_graph_in_workers: a plain CPU model with ``model``'s hyper-parameters, whose build_graph the loader
    workers run (weights are never read). ValueError (a one-line flag error) without workers or for a
    model without edge-list construction; the scripts call it before any data is processed."""
    if num_workers < 1:
        raise ValueError('--build_graph_in_workers: needs --num_workers >= 1 (with 0 the edge lists would be built in '
                         'the main process, serially, on the CPU)')
    if not hasattr(model, 'build_graph'):
        raise ValueError(f'--build_graph_in_workers: {type(model).__name__} has no separate edge-list construction '
                         '(QCNet only)')
    return type(model)(**dict(model.hparams)).eval()  # same hyper-parameters, plain, on the CPU
