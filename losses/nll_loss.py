"""Per-dimension NLL of a factorised distribution (Laplace positions, optionally von Mises heading)."""
from typing import List, Union

import torch
import torch.nn as nn

from losses.laplace_nll_loss import _reduce, laplace_nll
from losses.von_mises_nll_loss import von_mises_nll

_NLL_FUNCTIONS = {'laplace': laplace_nll, 'von_mises': von_mises_nll}


def factorised_nll(pred: torch.Tensor, target: torch.Tensor, distributions: List[str], eps: float) -> torch.Tensor:
    """pred [..., 2*D] = (locations [..., D], scales/concentrations [..., D]); target [..., D] -> NLL [..., D]."""
    num_dims = target.size(-1)
    if pred.size(-1) != 2 * num_dims:
        raise ValueError(f'NLL: pred has {pred.size(-1)} channels, expected 2 x {num_dims} for the target')
    if len(distributions) != num_dims:
        raise ValueError(f'NLL: {len(distributions)} component distributions for a {num_dims}-D target')
    loc, spread = pred[..., :num_dims], pred[..., num_dims:]
    if len(set(distributions)) == 1:  # common case: one distribution for all dimensions, one vectorised call
        return _NLL_FUNCTIONS[distributions[0]](loc, spread, target, eps)
    return torch.cat([_NLL_FUNCTIONS[dist](loc[..., i:i + 1], spread[..., i:i + 1], target[..., i:i + 1], eps)
                      for i, dist in enumerate(distributions)], dim=-1)


def _distribution_list(component_distribution: Union[str, List[str]]) -> Union[str, List[str]]:
    names = [component_distribution] if isinstance(component_distribution, str) else list(component_distribution)
    for name in names:
        if name not in _NLL_FUNCTIONS:
            raise ValueError(f'unknown component distribution {name!r} (use one of {sorted(_NLL_FUNCTIONS)})')
    return component_distribution


class NLLLoss(nn.Module):
    """NLL of a factorised distribution, one named distribution per target dimension.

    ``component_distribution``: a name used for every dimension, or a list with one name per dimension, e.g.
    ['laplace', 'laplace', 'von_mises'] for (x, y, heading). pred [..., 2*D], target [..., D].
    """

    def __init__(self, component_distribution: Union[str, List[str]], eps: float = 1e-6,
                 reduction: str = 'mean') -> None:
        super().__init__()
        self.component_distribution = _distribution_list(component_distribution)
        self.eps = eps
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dists = self.component_distribution
        if isinstance(dists, str):
            dists = [dists] * target.size(-1)
        return _reduce(factorised_nll(pred, target, dists, self.eps), self.reduction)
