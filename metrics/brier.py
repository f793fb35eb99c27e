"""Brier: (1 - p)^2 of the best mode, the probability part of Argoverse's brier-minFDE."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, best_mode, check_inputs, eval_agent_mask, masked_sum, top_modes


class Brier(AgentMeanMetric):
    """Mean over agents of (1 - p_best)^2, p_best = renormalised top-K probability of the best mode
    (min-FDE mode by default). brier-minFDE = minFDE + Brier when both use the same agents and criterion.

    update(pred [N, K, T, D], target [N, T, D], prob [N, K] or None (uniform), valid_mask bool[N, T] or None).
    """

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True,
               min_criterion: str = 'FDE') -> None:
        valid_mask = check_inputs('Brier', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, prob_topk = top_modes(self.max_guesses, pred, prob)
        inds_best = best_mode(pred_topk, target, valid_mask, min_criterion)
        prob_best = prob_topk.gather(1, inds_best.unsqueeze(-1)).squeeze(-1)
        self.sum += masked_sum((1.0 - prob_best).pow(2), keep)
        self.count += keep.sum()
