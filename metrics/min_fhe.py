"""minFHE: final heading error of the min-FDE mode."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, check_inputs, eval_agent_mask, final_displacement, last_valid_index, \
    masked_sum, top_modes
from utils.geometry import wrap_angle


class minFHE(AgentMeanMetric):
    """Mean over agents of the absolute wrapped heading error (radians) at the final valid step of the mode with
    the smallest final displacement. pred [N, K, T, D+1], target [N, T, D+1]: positions, then heading last."""

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True) -> None:
        valid_mask = check_inputs('minFHE', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, _ = top_modes(self.max_guesses, pred, prob)
        inds_last = last_valid_index(valid_mask)
        inds_best = final_displacement(pred_topk[..., :-1], target[..., :-1], inds_last).argmin(dim=-1)
        agents = torch.arange(pred.size(0), device=pred.device)
        fhe = wrap_angle(pred_topk[agents, inds_best, inds_last, -1] - target[agents, inds_last, -1]).abs()
        self.sum += masked_sum(fhe, keep)
        self.count += keep.sum()
