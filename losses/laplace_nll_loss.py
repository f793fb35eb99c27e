"""Negative log-likelihood of a Laplace distribution."""
import torch
import torch.nn as nn


def _reduce(nll: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'mean':
        return nll.mean()
    if reduction == 'sum':
        return nll.sum()
    if reduction == 'none':
        return nll
    raise ValueError(f'{reduction} is not a valid value for reduction')


def floor_without_grad(value: torch.Tensor, min_value: float) -> torch.Tensor:
    """``max(value, min_value)`` in the forward pass with the gradient of the identity (never zeroed)."""
    with torch.no_grad():
        lift = (min_value - value).clamp(min=0)
    return value + lift


def laplace_nll(loc: torch.Tensor, scale: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Elementwise -log Laplace(target | loc, scale) = log(2 b) + |y - mu| / b, with b floored at ``eps``."""
    scale = floor_without_grad(scale, eps)
    return torch.log(2 * scale) + torch.abs(target - loc) / scale


class LaplaceNLLLoss(nn.Module):
    """pred [..., 2*D] = (loc [..., D], scale [..., D]); target [..., D]. Elementwise NLL, then ``reduction``."""

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean') -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loc, scale = pred.chunk(2, dim=-1)
        return _reduce(laplace_nll(loc, scale, target, self.eps), self.reduction)
