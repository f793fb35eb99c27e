"""minFDE: final displacement error of the best of the top-K modes."""
from typing import Optional

import torch

from metrics.agent_mean_metric import AgentMeanMetric
from metrics.utils import as_float, check_inputs, eval_agent_mask, final_displacement, last_valid_index, \
    masked_sum, top_modes


class minFDE(AgentMeanMetric):
    """Mean over agents of min_k ||pred_k(t_f) - target(t_f)||, t_f = the agent's last valid future step.

    update(pred [N, K, T, D], target [N, T, D], prob [N, K] or None, valid_mask bool[N, T] or None); positions in
    any common frame (D = 2 or 3). Only the max_guesses most probable modes compete.
    """

    def update(self,
               pred: torch.Tensor,
               target: torch.Tensor,
               prob: Optional[torch.Tensor] = None,
               valid_mask: Optional[torch.Tensor] = None,
               keep_invalid_final_step: bool = True) -> None:
        valid_mask = check_inputs('minFDE', pred, target, prob, valid_mask)
        pred, target = as_float(pred), as_float(target)
        keep = eval_agent_mask(valid_mask, keep_invalid_final_step)
        pred_topk, _ = top_modes(self.max_guesses, pred, prob)
        fde = final_displacement(pred_topk, target, last_valid_index(valid_mask)).min(dim=-1)[0]
        self.sum += masked_sum(fde, keep)
        self.count += keep.sum()
