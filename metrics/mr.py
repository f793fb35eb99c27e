"""MR: miss rate of the top-K modes."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, check_inputs, eval_agent_mask, final_displacement, last_valid_index, \
    masked_sum, top_modes


class MR(AgentMeanMetric):
    """Fraction of agents whose best mode still misses the target by more than miss_threshold metres.

    miss_criterion='FDE' (Argoverse): displacement at the final valid step; 'MAXDE': largest displacement over
    the valid steps. update(pred [N, K, T, D], target [N, T, D], prob [N, K] or None, valid_mask bool[N, T] or None).
    """

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True,
               miss_criterion: str = 'FDE',
               miss_threshold: float = 2.0) -> None:
        valid_mask = check_inputs('MR', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, _ = top_modes(self.max_guesses, pred, prob)
        if miss_criterion == 'FDE':
            error = final_displacement(pred_topk, target, last_valid_index(valid_mask))  # [N, K]
        elif miss_criterion == 'MAXDE':
            error = (torch.norm(pred_topk - target.unsqueeze(1), p=2, dim=-1) * valid_mask.unsqueeze(1)).max(dim=-1)[0]
        else:
            raise ValueError(f"MR: miss_criterion must be 'FDE' or 'MAXDE', got {miss_criterion!r}")
        missed = (error.min(dim=-1)[0] > miss_threshold).float()
        self.sum += masked_sum(missed, keep)
        self.count += keep.sum()
