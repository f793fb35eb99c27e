"""Temporal InfoNCE of SmartPretrain with keys gathered from every process.

Each query is an agent seen in both views (online branch + predictor, anchor view). Its positive key is the momentum
embedding of the same agent in the target view; every other momentum key of either view, from every process, is a
negative, except the agent's own anchor-view key (masked out). Keys carry no gradient (momentum branch), so a plain
all-gather suffices. Losses are normalised by the GLOBAL number of queries: averaging the per-process losses (which
is what DDP does to gradients and what synchronised logging does to values) gives exactly the loss of one process
that saw the whole global batch.
"""
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

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


@torch.no_grad()
def all_gather_equal_rows(rows: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """``all_gather_rows`` for processes that all hold the same number of rows (fixed-shape batches padded to
    capacities agreed across processes): no count exchange and no host synchronisation, so it can run inside a
    captured CUDA graph (NCCL). Returns ``(gathered [world * N, ...], rank * N)``."""
    if not _distributed():
        return rows.detach(), 0
    gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, rows.detach().contiguous())
    return torch.cat(gathered, dim=0), dist.get_rank() * rows.shape[0]


@dataclass
class ContrastiveOutput:
    loss: torch.Tensor         # scalar, this process's share (see module docstring); differentiable w.r.t. queries
    accuracy: torch.Tensor     # scalar, global fraction of (query, recurrence) pairs whose best key is the positive
    num_queries: torch.Tensor  # scalar long, queries in the global batch
    num_keys: torch.Tensor     # scalar long, valid keys in the global batch


# Finite stand-in for -inf: exp() underflows to exactly 0 next to any real logit (|logit| <= 1 / temperature), yet a
# row with no valid key at all stays finite, so masked-out rows cannot turn gradients into NaN.
_MASKED_LOGIT = -1e9


class ContrastiveLoss(nn.Module):
    """InfoNCE over recurrences, scaled by ``2 * temperature`` like the official loss.

    forward(queries [N, R, D], query_mask [N], keys [M, R, D], key_mask [M], positive_index [N], self_index [N]):
        queries: predictor outputs (not normalised); only rows with ``query_mask`` count;
        keys: this process's momentum keys (not normalised, no gradient); rows without ``key_mask`` are ignored;
        positive_index / self_index: row in ``keys`` of each query's positive key / of its own anchor-view key
        (masked out of the negatives);
        query_group [N] / key_group [M] (optional, long, e.g. dataset ids): a query's negatives are then only the
        keys of its own group (SmartPretrain's per-dataset negatives for multi-dataset pre-training);
        gather: how keys are gathered from every process (``all_gather_rows``; ``all_gather_equal_rows`` for
        fixed-shape batches).
    Masks instead of boolean indexing keep the step free of host synchronisation in a single process (one small
    synchronisation per step under DDP, for the gathered key count). Each recurrence is a separate InfoNCE; the
    recurrences are averaged.
    """

    def __init__(self, temperature: float = 0.07, gather_keys: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'ContrastiveLoss: temperature must be positive, got {temperature}')
        self.temperature = temperature
        self.gather_keys = gather_keys

    def forward(self, queries: torch.Tensor, query_mask: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                positive_index: torch.Tensor, self_index: torch.Tensor, query_group: Optional[torch.Tensor] = None,
                key_group: Optional[torch.Tensor] = None,
                gather: Callable[[torch.Tensor], Tuple[torch.Tensor, int]] = all_gather_rows) -> ContrastiveOutput:
        if queries.dim() != 3 or keys.dim() != 3 or queries.shape[1:] != keys.shape[1:]:
            raise ValueError(f'ContrastiveLoss: expected queries [N, R, D] and keys [M, R, D], got '
                             f'{tuple(queries.shape)} and {tuple(keys.shape)}')
        # Similarities in float32 even under mixed precision: logits / 0.07 exceed bf16 resolution.
        q = F.normalize(queries.float(), dim=-1)
        k = F.normalize(keys.detach().float(), dim=-1)
        key_mask = key_mask.bool()
        grouped = query_group is not None
        if grouped != (key_group is not None):
            raise ValueError('ContrastiveLoss: give both query_group and key_group, or neither')
        # group ids ride along as an extra column (small integers are exact in float32)
        extra = [key_mask.to(k.dtype).unsqueeze(-1)] + ([key_group.to(k.dtype).unsqueeze(-1)] if grouped else [])
        if self.gather_keys:
            # One gather for keys and their validity (an extra column), so one count exchange per step.
            packed = torch.cat([k.reshape(k.shape[0], -1)] + extra, dim=-1)
            packed, offset = gather(packed)
            num_extra = len(extra)
            k, key_mask = packed[:, :-num_extra].view(-1, *keys.shape[1:]), packed[:, -num_extra] > 0.5
            if grouped:
                key_group = packed[:, -1].round().long()
        else:
            offset = 0
        num_q, num_r = q.shape[0], q.shape[1]

        logits = torch.einsum('nrd,mrd->rnm', q, k) / self.temperature           # [R, N, M_global]
        excluded = (~key_mask).unsqueeze(0).expand(num_q, -1).clone()             # [N, M_global]
        # scatter of a constant: no host-to-device copy, so it can run inside a captured CUDA graph
        excluded.scatter_(1, (self_index + offset).long().unsqueeze(1), True)
        if grouped:
            excluded |= query_group.long().unsqueeze(1) != key_group.long().unsqueeze(0)
        logits = logits.masked_fill(excluded.unsqueeze(0), _MASKED_LOGIT)
        labels = (positive_index + offset).unsqueeze(0).expand(num_r, num_q)
        per_query = F.cross_entropy(logits.reshape(num_r * num_q, -1), labels.reshape(-1),
                                    reduction='none').view(num_r, num_q)
        query_mask = query_mask.bool().unsqueeze(0)
        per_query = torch.where(query_mask, per_query, torch.zeros_like(per_query))

        num_queries = all_reduce_sum(query_mask.sum())
        num_keys = all_reduce_sum(key_mask.sum()) if not self.gather_keys else key_mask.sum()
        denominator = num_queries.clamp(min=1).to(per_query.dtype)
        # Per recurrence: sum over local queries / global queries, times world size (DDP averages the processes).
        loss = (per_query.sum(dim=1) / denominator * world_size()).mean() * (2.0 * self.temperature)
        correct = ((logits.detach().argmax(dim=-1) == labels) & query_mask).sum()
        accuracy = all_reduce_sum(correct).float() / (denominator.float() * num_r)
        return ContrastiveOutput(loss=loss, accuracy=accuracy, num_queries=num_queries, num_keys=num_keys)
