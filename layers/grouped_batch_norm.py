"""BatchNorm over groups of rows of one tensor, each group with its own batch statistics; rows of no group ignored.

``nn.BatchNorm1d`` applied to row groups one after the other (rows [N, C]): in training mode each group is normalised
by its own mean and (biased) variance and the running statistics are updated group after group, as separate calls
would; in evaluation mode every row uses the running statistics. Rows whose group is -1 (padding of a fixed-shape
batch) take no part: their outputs are zero and they do not enter any statistics. The counts stay on the device, so
the function has no host synchronisation. A ``SyncBatchNorm`` sums its statistics over the processes (as its own
forward does), differentiably.
"""
import torch
import torch.distributed as dist
import torch.nn as nn


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce  # differentiable: gradients are summed back
    return all_reduce(value, op=dist.ReduceOp.SUM)


def grouped_batch_norm(norm: nn.modules.batchnorm._BatchNorm, rows: torch.Tensor, groups: torch.Tensor,
                       num_groups: int) -> torch.Tensor:
    """rows [N, C], groups long [N] (0 .. num_groups - 1, or -1: ignored) -> [N, C]."""
    if not (norm.training or norm.running_mean is None):
        return torch.where((groups >= 0).unsqueeze(1), norm(rows), torch.zeros_like(rows))
    synced = (isinstance(norm, nn.SyncBatchNorm) and dist.is_available() and dist.is_initialized()
              and dist.get_world_size() > 1)
    out = torch.zeros_like(rows)
    for group in range(num_groups):
        mask = (groups == group).unsqueeze(1).to(rows.dtype)                       # [N, 1]
        # count, sum and sum of squares (of rows centred on a local mean for accuracy) per channel
        count = mask.sum(dim=0)                                                    # [1]
        local_mean = (rows * mask).sum(dim=0) / count.clamp(min=1)
        centred = (rows - local_mean) * mask
        moments = torch.cat([count, centred.sum(dim=0), (centred * centred).sum(dim=0)])
        if synced:
            moments = _all_reduce_sum(moments)
        channels = rows.shape[1]
        total, shift, square = moments[:1], moments[1:1 + channels], moments[1 + channels:]
        denominator = total.clamp(min=1)
        shift = shift / denominator
        mean = local_mean + shift
        var = square / denominator - shift * shift                                 # biased, for normalising
        normalised = (rows - mean) * torch.rsqrt(var + norm.eps)
        if norm.affine:
            normalised = normalised * norm.weight + norm.bias
        out = torch.where(mask > 0, normalised, out)
        if norm.training and norm.track_running_stats:
            with torch.no_grad():
                # momentum None: cumulative average, as nn.BatchNorm1d
                norm.num_batches_tracked.add_(1)
                factor = (1.0 / norm.num_batches_tracked.to(rows.dtype) if norm.momentum is None
                          else float(norm.momentum))
                unbiased = var * total / (total - 1).clamp(min=1)
                norm.running_mean.lerp_(mean.detach().to(norm.running_mean.dtype), factor)
                norm.running_var.lerp_(unbiased.detach().to(norm.running_var.dtype), factor)
    return out


def mlp_with_grouped_norm(mlp: nn.Sequential, rows: torch.Tensor, groups: torch.Tensor,
                          num_groups: int) -> torch.Tensor:
    """An ``nn.Sequential`` (e.g. Linear -> BatchNorm1d -> ReLU -> Linear) whose BatchNorm layers run as
    ``grouped_batch_norm``; rows [N, C_in] -> [N, C_out]."""
    for layer in mlp:
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            rows = grouped_batch_norm(layer, rows, groups, num_groups)
        else:
            rows = layer(rows)
    return rows
