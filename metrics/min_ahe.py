"""minAHE: average heading error of the best of the top-K modes."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, best_mode, check_inputs, eval_agent_mask, masked_sum, top_modes
from utils.geometry import wrap_angle


class minAHE(AgentMeanMetric):
    """Mean over agents of the average absolute wrapped heading error (radians) of the best mode.

    pred [N, K, T, D+1] and target [N, T, D+1] carry positions in [..., :-1] and the heading in [..., -1], in the
    same frame. The best mode is chosen on positions only (min_criterion 'FDE' or 'ADE').
    """

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True,
               min_criterion: str = 'FDE') -> None:
        valid_mask = check_inputs('minAHE', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, _ = top_modes(self.max_guesses, pred, prob)
        inds_best = best_mode(pred_topk[..., :-1], target[..., :-1], valid_mask, min_criterion)
        agents = torch.arange(pred.size(0), device=pred.device)
        heading_error = wrap_angle(pred_topk[agents, inds_best, :, -1] - target[..., -1]).abs()  # [N, T]
        ahe = (heading_error * valid_mask).sum(dim=-1) / valid_mask.sum(dim=-1)
        self.sum += masked_sum(ahe, keep)
        self.count += keep.sum()
