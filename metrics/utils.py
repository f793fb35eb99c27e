"""Shared pieces of the motion-forecasting metrics.

All helpers work on a batch of N agents with K predicted modes over T future steps:
pred [N, K, T, D], target [N, T, D], prob [N, K], valid_mask bool[N, T]. Nothing here moves data to the host,
so the metrics can be updated every validation step without synchronising the device.
"""
from typing import Optional, Tuple

import torch


def check_inputs(
        name: str,
        pred: torch.Tensor,
        target: torch.Tensor,
        prob: Optional[torch.Tensor],
        valid_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Checks shapes (no device sync) and returns a bool valid mask [N, T] (all True when None was given)."""
    if pred.dim() != 4:
        raise ValueError(f'{name}: pred must be [N, K, T, D], got shape {tuple(pred.shape)}')
    num_agents, _, num_steps, dim = pred.shape
    if tuple(target.shape) != (num_agents, num_steps, dim):
        raise ValueError(f'{name}: target must be [N, T, D] = {(num_agents, num_steps, dim)} to match pred '
                         f'{tuple(pred.shape)}, got {tuple(target.shape)}')
    if prob is not None and tuple(prob.shape) != tuple(pred.shape[:2]):
        raise ValueError(f'{name}: prob must be [N, K] = {tuple(pred.shape[:2])}, got {tuple(prob.shape)}')
    if valid_mask is None:
        return torch.ones(num_agents, num_steps, dtype=torch.bool, device=pred.device)
    if tuple(valid_mask.shape) != (num_agents, num_steps):
        raise ValueError(f'{name}: valid_mask must be [N, T] = {(num_agents, num_steps)}, '
                         f'got {tuple(valid_mask.shape)}')
    return valid_mask.bool()


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs (bf16-mixed runs) are promoted so that the accumulated sums stay exact enough."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def eval_agent_mask(valid_mask: torch.Tensor, keep_invalid_final_step: bool) -> torch.Tensor:
    """bool[N]: agents that count. With keep_invalid_final_step every agent with at least one valid future step
    counts (its 'final' step is then its last valid one); otherwise only agents valid at the last step."""
    return valid_mask.any(dim=-1) if keep_invalid_final_step else valid_mask[:, -1]


def last_valid_index(valid_mask: torch.Tensor) -> torch.Tensor:
    """long[N]: index of the last valid step of each agent (0 for agents without any valid step)."""
    steps = torch.arange(1, valid_mask.size(-1) + 1, device=valid_mask.device)
    return (valid_mask * steps).argmax(dim=-1)


def top_modes(max_guesses: int, pred: torch.Tensor,
              prob: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keeps the max_guesses most probable modes.

    Returns pred_topk [N, K', T, D] and prob_topk [N, K'] (renormalised to sum to 1), K' = min(max_guesses, K).
    Without prob the first K' modes are kept with uniform probability, as in the official QCNet metrics.
    """
    num_agents, num_modes = pred.shape[:2]
    max_guesses = min(max_guesses, num_modes)
    if prob is None:
        prob_topk = pred.new_full((num_agents, max_guesses), 1.0 / max_guesses)
        return pred[:, :max_guesses], prob_topk
    prob = as_float(prob)
    if max_guesses == num_modes:
        return pred, prob / prob.sum(dim=-1, keepdim=True)
    inds_topk = torch.topk(prob, k=max_guesses, dim=-1, largest=True, sorted=True)[1]
    pred_topk = torch.gather(pred, 1, inds_topk[:, :, None, None].expand(-1, -1, *pred.shape[2:]))
    prob_topk = torch.gather(prob, 1, inds_topk)
    return pred_topk, prob_topk / prob_topk.sum(dim=-1, keepdim=True)


def final_displacement(pred_pos: torch.Tensor, target_pos: torch.Tensor, inds_last: torch.Tensor) -> torch.Tensor:
    """[N, K] L2 distance between each mode and the target at the agent's final (last valid) step.

    pred_pos [N, K, T, D], target_pos [N, T, D], inds_last long[N].
    """
    agents = torch.arange(pred_pos.size(0), device=pred_pos.device)
    return torch.norm(pred_pos[agents, :, inds_last] - target_pos[agents, inds_last].unsqueeze(1), p=2, dim=-1)


def summed_displacement(pred_pos: torch.Tensor, target_pos: torch.Tensor, valid_mask: torch.Tensor) -> torch.Tensor:
    """[N, K] sum over valid steps of the L2 distance between each mode and the target."""
    return (torch.norm(pred_pos - target_pos.unsqueeze(1), p=2, dim=-1) * valid_mask.unsqueeze(1)).sum(dim=-1)


def best_mode(pred_pos: torch.Tensor, target_pos: torch.Tensor, valid_mask: torch.Tensor,
              min_criterion: str) -> torch.Tensor:
    """long[N]: the mode closest to the target by final ('FDE', Argoverse convention) or average ('ADE')
    displacement. Ties go to the lowest mode index, like numpy's argmin in the av2 evaluation."""
    if min_criterion == 'FDE':
        return final_displacement(pred_pos, target_pos, last_valid_index(valid_mask)).argmin(dim=-1)
    if min_criterion == 'ADE':
        return summed_displacement(pred_pos, target_pos, valid_mask).argmin(dim=-1)
    raise ValueError(f"min_criterion must be 'FDE' or 'ADE', got {min_criterion!r}")


def masked_sum(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Sum of values [N] over agents with keep[N] True; values of dropped agents (possibly NaN) never leak in."""
    return torch.where(keep, values, torch.zeros_like(values)).sum()
