"""Which parameters get weight decay: the rule of the official QCNet and SmartPretrain optimisers.

Weights of linear, convolution, attention and recurrent layers decay; biases, weights of normalisation layers and
embeddings, and free parameters (e.g. ``temp_emb``, ``traj_emb_h0``) do not. A weight of any other module type is
an error (a new layer must be placed in one of the lists), as is a parameter placed in both groups.
"""
from typing import List, Tuple

import torch.nn as nn

DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, nn.LSTM, nn.LSTMCell, nn.GRU,
                   nn.GRUCell)
NOT_DECAYED_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.Embedding)


def weight_decay_groups(model: nn.Module) -> Tuple[List[str], List[str]]:
    """(names of the parameters with weight decay, names without), each sorted; every parameter of ``model``
    (trainable or not) is in exactly one. RuntimeError naming the parameters the rule cannot place."""
    decay, no_decay, unplaced = set(), set(), set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f'{module_name}.{param_name}' if module_name else param_name
            if 'bias' in param_name or 'weight' not in param_name:
                no_decay.add(full_name)
            elif isinstance(module, DECAYED_MODULES):
                decay.add(full_name)
            elif isinstance(module, NOT_DECAYED_MODULES):
                no_decay.add(full_name)
            else:
                unplaced.add(full_name)
    if unplaced or decay & no_decay:
        raise RuntimeError(f'{type(model).__name__}: weight decay rule: parameters of unlisted module types '
                           f'{sorted(unplaced)}, in both groups {sorted(decay & no_decay)}')
    return sorted(decay), sorted(no_decay)
