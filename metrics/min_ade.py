"""minADE: average displacement error of the best of the top-K modes."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, best_mode, check_inputs, eval_agent_mask, masked_sum, summed_displacement, \
    top_modes


class minADE(AgentMeanMetric):
    """Mean over agents of the ADE (over valid future steps) of the best mode.

    The best mode is the one with the smallest final displacement (min_criterion='FDE', the Argoverse 2
    convention: minADE is reported for the min-FDE mode) or the smallest ADE (min_criterion='ADE').
    update(pred [N, K, T, D], target [N, T, D], prob [N, K] or None, valid_mask bool[N, T] or None).
    """

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True,
               min_criterion: str = 'FDE') -> None:
        valid_mask = check_inputs('minADE', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, _ = top_modes(self.max_guesses, pred, prob)
        summed = summed_displacement(pred_topk, target, valid_mask)  # [N, K]
        inds_best = best_mode(pred_topk, target, valid_mask, min_criterion)
        ade = summed.gather(1, inds_best.unsqueeze(-1)).squeeze(-1) / valid_mask.sum(dim=-1)
        self.sum += masked_sum(ade, keep)
        self.count += keep.sum()
