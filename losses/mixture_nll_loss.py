"""NLL of a mixture of factorised trajectory distributions (trains the mode probabilities)."""
from typing import List, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.laplace_nll_loss import _reduce
from losses.nll_loss import _distribution_list, factorised_nll


class MixtureNLLLoss(nn.Module):
    """-log sum_k softmax(prob)_k * prod_{t,d} p_k(target_td), per agent (or per scene with ``joint``).

    forward(pred [A, K, T, 2*D], target [A, T, D], prob [A, K] logits, mask [A, T] which steps count,
    ptr [S+1] optional scene offsets, joint: sum the component NLLs over the agents of each scene
    (all agents when ptr is None) before mixing) -> loss [A] (or [S]), then ``reduction``.
    """

    def __init__(self, component_distribution: Union[str, List[str]], eps: float = 1e-6,
                 reduction: str = 'mean') -> None:
        super().__init__()
        self.component_distribution = _distribution_list(component_distribution)
        self.eps = eps
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor,
                ptr: Optional[torch.Tensor] = None, joint: bool = False) -> torch.Tensor:
        dists = self.component_distribution
        if isinstance(dists, str):
            dists = [dists] * target.size(-1)
        nll = factorised_nll(pred, target.unsqueeze(1), dists, self.eps)  # [A, K, T, D]
        nll = (nll * mask.view(-1, 1, target.size(-2), 1)).sum(dim=(-2, -1))  # [A, K]
        if joint:
            if ptr is None:
                nll = nll.sum(dim=0, keepdim=True)
            else:
                nll = torch.segment_reduce(nll, 'sum', offsets=ptr, axis=0)
        log_pi = F.log_softmax(prob, dim=-1)
        loss = -torch.logsumexp(log_pi - nll, dim=-1)
        return _reduce(loss, self.reduction)
