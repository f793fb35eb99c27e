"""Temporal InfoNCE of SmartPretrain with keys gathered from every process.

Each query is an agent seen in both views (online branch + predictor, anchor view). Its positive key is the momentum
embedding of the same agent in the target view; every other momentum key of either view, from every process, is a
negative, except the agent's own anchor-view key (masked out). Keys carry no gradient (momentum branch), so a plain
all-gather suffices. Losses are normalised by the GLOBAL number of queries: averaging the per-process losses (which
is what DDP does to gradients and what synchronised logging does to values) gives exactly the loss of one process
that saw the whole global batch.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over processes (no gradient; identity in a single process)."""
    value = value.detach().clone()
    if _distributed():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


@torch.no_grad()
def all_gather_rows(rows: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``rows`` [N_r, ...] of every process in rank order (N_r may differ between processes).

    Returns ``(gathered [sum_r N_r, ...], offset of this process's first row)``. No gradient flows through the
    result. Works with gloo and NCCL (tensors stay on their device) and in a single process (identity).
    """
    if not _distributed():
        return rows.detach(), 0
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    counts_list: List[int] = torch.cat(counts).tolist()  # one host sync: row counts decide the padding
    max_count = max(counts_list)
    padded = rows.new_zeros((max_count,) + tuple(rows.shape[1:]))
    padded[:rows.shape[0]] = rows.detach()
    gathered = [torch.empty_like(padded) for _ in counts_list]
    dist.all_gather(gathered, padded.contiguous())
    out = torch.cat([chunk[:n] for chunk, n in zip(gathered, counts_list)], dim=0)
    offset = sum(counts_list[:dist.get_rank()])
    return out, offset


@dataclass
class ContrastiveOutput:
    loss: torch.Tensor         # scalar, this process's share (see module docstring); differentiable w.r.t. queries
    accuracy: torch.Tensor     # scalar, global fraction of queries whose best key is their positive
    num_queries: torch.Tensor  # scalar long, queries in the global batch
    num_keys: torch.Tensor     # scalar long, keys in the global batch


class ContrastiveLoss(nn.Module):
    """InfoNCE over recurrences, scaled by ``2 * temperature`` like the official loss.

    forward(queries [Q, R, D], keys [K, R, D], positive_index [Q], self_index [Q]):
        queries: predictor outputs of this process's query agents (not normalised);
        keys: this process's momentum keys of both views, valid agents only (not normalised, no gradient);
        positive_index / self_index: row of each query's positive key / own anchor-view key in ``keys``.
    The loss of each recurrence is computed separately and the recurrences are averaged.
    """

    def __init__(self, temperature: float = 0.07, gather_keys: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'ContrastiveLoss: temperature must be positive, got {temperature}')
        self.temperature = temperature
        self.gather_keys = gather_keys

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, positive_index: torch.Tensor,
                self_index: torch.Tensor) -> ContrastiveOutput:
        if queries.dim() != 3 or keys.dim() != 3 or queries.shape[1:] != keys.shape[1:]:
            raise ValueError(f'ContrastiveLoss: expected queries [Q, R, D] and keys [K, R, D], got '
                             f'{tuple(queries.shape)} and {tuple(keys.shape)}')
        # Similarities in float32 even under mixed precision: logits / 0.07 overflow bf16 resolution.
        q = F.normalize(queries.float(), dim=-1)
        k = F.normalize(keys.detach().float(), dim=-1)
        if self.gather_keys:
            k, offset = all_gather_rows(k)
        else:
            offset = 0
        positive_index = positive_index + offset
        self_index = self_index + offset
        num_q, num_r = q.shape[0], q.shape[1]

        logits = torch.einsum('qrd,krd->rqk', q, k) / self.temperature           # [R, Q, K_global]
        self_mask = torch.zeros(num_q, k.shape[0], dtype=torch.bool, device=q.device)
        self_mask[torch.arange(num_q, device=q.device), self_index] = True
        logits = logits.masked_fill(self_mask.unsqueeze(0), float('-inf'))
        labels = positive_index.unsqueeze(0).expand(num_r, num_q)
        per_query = F.cross_entropy(logits.reshape(num_r * num_q, -1), labels.reshape(-1),
                                    reduction='none').view(num_r, num_q)

        num_queries = all_reduce_sum(torch.tensor(num_q, device=q.device, dtype=torch.long))
        num_keys = all_reduce_sum(torch.tensor(keys.shape[0], device=q.device, dtype=torch.long))
        denominator = num_queries.clamp(min=1).to(per_query.dtype)
        # Per recurrence: sum over local queries / global queries, times world size (DDP averages the processes).
        loss = per_query.sum(dim=1) / denominator * world_size()
        loss = loss.mean() * (2.0 * self.temperature)
        correct = (logits.detach().argmax(dim=-1) == labels).sum()
        accuracy = all_reduce_sum(correct).float() / (denominator.float() * num_r)
        return ContrastiveOutput(loss=loss, accuracy=accuracy, num_queries=num_queries, num_keys=num_keys)


def key_layout(anchor_mask: torch.Tensor, target_mask: torch.Tensor,
               query_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows of each query's own anchor key and positive target key when the keys are laid out as
    ``cat(anchor_keys[anchor_mask], target_keys[target_mask])``.

    anchor_mask, target_mask, query_mask: bool [A] (queries must be valid in both views).
    Returns ``(self_index [Q], positive_index [Q])`` for the agents ``query_mask.nonzero()`` in order.
    """
    anchor_row = torch.cumsum(anchor_mask.long(), 0) - 1
    target_row = torch.cumsum(target_mask.long(), 0) - 1 + anchor_mask.long().sum()
    return anchor_row[query_mask], target_row[query_mask]
