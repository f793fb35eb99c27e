"""Negative log-likelihood of a von Mises distribution (angles, radians)."""
import math

import torch
import torch.nn as nn

from losses.laplace_nll_loss import _reduce, floor_without_grad

# Polynomial approximations of log I0 (Abramowitz & Stegun 9.8.1/9.8.2), valid for kappa >= 0.
_I0_SMALL = (1.0, 3.5156229, 3.0899424, 1.2067492, 0.2659732, 0.360768e-1, 0.45813e-2)
_I0_LARGE = (0.39894228, 0.1328592e-1, 0.225319e-2, -0.157565e-2, 0.916281e-2, -0.2057706e-1, 0.2635537e-1,
             -0.1647633e-1, 0.392377e-2)


def _horner(y: torch.Tensor, coefficients) -> torch.Tensor:
    result = torch.full_like(y, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        result = c + y * result
    return result


def log_bessel_i0(kappa: torch.Tensor) -> torch.Tensor:
    """log I0(kappa), elementwise, for kappa > 0."""
    small = _horner((kappa / 3.75) ** 2, _I0_SMALL).log()
    large = kappa - 0.5 * kappa.log() + _horner(3.75 / kappa, _I0_LARGE).log()
    return torch.where(kappa < 3.75, small, large)


def von_mises_nll(loc: torch.Tensor, conc: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Elementwise -log VonMises(target | loc, conc) = -k cos(y - mu) + log(2 pi) + log I0(k), k floored at eps."""
    conc = floor_without_grad(conc, eps)
    return -conc * torch.cos(target - loc) + math.log(2 * math.pi) + log_bessel_i0(conc)


class VonMisesNLLLoss(nn.Module):
    """pred [..., 2*D] = (loc [..., D], concentration [..., D]); target [..., D]."""

    def __init__(self, eps: float = 1e-6, reduction: str = 'mean') -> None:
        super().__init__()
        self.eps = eps
        self.reduction = reduction

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loc, conc = pred.chunk(2, dim=-1)
        return _reduce(von_mises_nll(loc, conc, target, self.eps), self.reduction)
