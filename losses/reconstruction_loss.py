"""Trajectory reconstruction loss of SmartPretrain.

The reconstruction head predicts one 2-D displacement per absolute time step of the scenario for every recurrence;
recurrence ``r`` supplies the displacements of its own segment of the target window (``recurrence_segments``). The
displacements are cumulated into positions (anchor agent frame, origin at the anchor's last step) and compared with
the true positions by a Smooth-L1 loss, summed over x/y, averaged over valid agents per step, then over steps.
Like the contrastive loss, the per-step agent count is global, so averaging the per-process losses equals the loss
of one process that saw the whole global batch.
"""
import math
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.contrastive_loss import all_reduce_sum, world_size


def recurrence_segments(window_steps: int, num_future_steps: int,
                        num_recurrent_steps: int) -> List[Tuple[int, int]]:
    """``[start, end)`` steps of the target window reconstructed by each recurrence.

    Each recurrence covers ``ceil(num_future_steps / num_recurrent_steps)`` steps (as in supervised QCNet), laid
    from the END of the window backwards; the first recurrence takes what is left. For the Argoverse 2 setting
    (window 50, future 60, 3 recurrences) this gives [0, 10), [10, 30), [30, 50).
    """
    if num_recurrent_steps <= 0 or window_steps <= 0:
        raise ValueError('recurrence_segments: window_steps and num_recurrent_steps must be positive')
    seg = math.ceil(num_future_steps / num_recurrent_steps)
    ends = [max(window_steps - seg * (num_recurrent_steps - 1 - r), 0) for r in range(num_recurrent_steps)]
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def gather_segment_displacements(displacements: torch.Tensor, step_index: torch.Tensor,
                                 segments: List[Tuple[int, int]]) -> torch.Tensor:
    """Displacements of the target window, each segment taken from its own recurrence.

    displacements: [A, R, T_all, 2] per-recurrence predictions for every absolute step of the scenario;
    step_index: [A, S] absolute step of each target-window step; segments: R ``[start, end)`` ranges covering S.
    Returns [A, S, 2].
    """
    parts = []
    for r, (start, end) in enumerate(segments):
        index = step_index[:, start:end].unsqueeze(-1).expand(-1, -1, displacements.shape[-1])
        parts.append(torch.gather(displacements[:, r], 1, index))
    return torch.cat(parts, dim=1)


class ReconstructionLoss(nn.Module):
    """forward(pred_position [A, S, 2], target_position [A, S, 2], mask bool [A, S]) -> scalar.

    Smooth-L1 (beta 1) summed over x/y; per step, the sum over valid agents divided by the global number of valid
    agents at that step (at least 1); the mean over the S steps.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pred_position: torch.Tensor, target_position: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        if pred_position.shape != target_position.shape or pred_position.shape[:2] != mask.shape:
            raise ValueError(f'ReconstructionLoss: shapes differ: pred {tuple(pred_position.shape)}, target '
                             f'{tuple(target_position.shape)}, mask {tuple(mask.shape)}')
        error = F.smooth_l1_loss(pred_position.float(), target_position.float(), reduction='none',
                                 beta=self.beta).sum(-1)                            # [A, S]
        error = torch.where(mask, error, torch.zeros_like(error))  # where, not *: masked rows may hold inf
        count = all_reduce_sum(mask.sum(dim=0)).clamp(min=1).to(error.dtype)        # [S], global
        return (error.sum(dim=0) / count * world_size()).mean()
