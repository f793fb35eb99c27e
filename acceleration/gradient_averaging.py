"""Gradient averaging across processes for training steps that bypass DistributedDataParallel's autograd hooks.

A step replayed as a CUDA graph (acceleration.cuda_graph_step) writes its gradients without running autograd, so DDP's
reducer never sees them. This averages them as DDP would (sum over processes / world size), outside the graph,
through one flat buffer: one collective per step instead of one per parameter.
"""
from typing import Iterable, Optional

import torch
import torch.distributed as dist


def average_gradients(params: Iterable[torch.nn.Parameter], group: Optional[object] = None) -> int:
    """Replaces each ``param.grad`` by its mean over the processes of ``group`` (default: the world).

    Parameters without a gradient are skipped; which ones have none must be the same on every process (true for a
    fixed model structure; a mismatch fails in the collective). Returns the number of gradient values reduced
    (0 when not distributed or a single process).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return 0
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(world_size)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset:offset + count].view_as(grad))  # in place: a replayed graph owns this memory
        offset += count
    return offset
