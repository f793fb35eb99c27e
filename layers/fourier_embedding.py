"""Learnable Fourier-feature embedding of continuous scalars, summed with optional categorical embeddings."""
import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from utils.weight_init import weight_init


class FourierEmbedding(nn.Module):
    """Embeds ``input_dim`` continuous scalars per row into one ``hidden_dim`` vector.

    Each scalar ``s_i`` becomes ``[cos(2*pi*f_i*s_i), sin(2*pi*f_i*s_i), s_i]`` with learnable frequencies
    ``f_i`` [num_freq_bands], goes through its own MLP (Linear -> LayerNorm -> ReLU -> Linear), the per-scalar
    results and the categorical embeddings are summed, and a LayerNorm -> ReLU -> Linear head finishes.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_freq_bands: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        # Parameter names (freqs, mlps.<i>.{0,1,3}, to_out.{0,2}) follow the official checkpoints.
        self.freqs = nn.Embedding(input_dim, num_freq_bands) if input_dim != 0 else None
        self.mlps = nn.ModuleList([
            nn.Sequential(
                nn.Linear(num_freq_bands * 2 + 1, hidden_dim),
                nn.LayerNorm(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, hidden_dim),
            )
            for _ in range(input_dim)
        ])
        self.to_out = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
        )
        self.recompute = False  # memory option, see forward()
        self.apply(weight_init)

    def _continuous(self, inputs: torch.Tensor) -> torch.Tensor:
        """[N, input_dim] -> [N, hidden_dim]: all per-scalar MLPs evaluated together.

        Features are laid out scalar-major ([I, N, 2F+1]) so the I first layers run as one batched matmul and each
        LayerNorm reads a contiguous block; the I second layers and the sum over scalars are one matmul with an
        [H, I*H] weight. Autograd keeps the same tensors as the per-scalar formulation.
        """
        scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
        angles = scalars * self.freqs.weight.unsqueeze(1) * (2 * math.pi)  # [I, N, F]
        feats = torch.cat([angles.cos(), angles.sin(), scalars], dim=-1)  # [I, N, 2F+1]
        first = [mlp[0] for mlp in self.mlps]
        w1 = torch.stack([lin.weight for lin in first]).transpose(1, 2)  # [I, 2F+1, H]
        b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)  # [I, 1, H]
        hidden = torch.baddbmm(b1, feats, w1)  # [I, N, H]
        normed = torch.cat([mlp[1](hidden[i]) for i, mlp in enumerate(self.mlps)], dim=-1)  # [N, I*H]
        normed = torch.relu_(normed)
        w2 = torch.cat([mlp[3].weight for mlp in self.mlps], dim=1)  # [H, I*H]
        b2 = torch.stack([mlp[3].bias for mlp in self.mlps]).sum(dim=0)
        return F.linear(normed, w2, b2)

    def forward(self, continuous_inputs: Optional[torch.Tensor] = None,
                categorical_embs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """continuous_inputs [N, input_dim] (or None when input_dim == 0); categorical_embs: list of [N, hidden_dim].

        Returns [N, hidden_dim]. With ``recompute`` set, a training call keeps only its inputs for the backward pass
        and recomputes the embedding there (torch.utils.checkpoint): the Fourier features and per-scalar MLP
        activations are ~input_dim x 450 floats per row, the largest activations of QCNet's edge embeddings.
        """
        if self.recompute and torch.is_grad_enabled() and continuous_inputs is not None:
            return torch.utils.checkpoint.checkpoint(self._embed, continuous_inputs, categorical_embs,
                                                     use_reentrant=False)
        return self._embed(continuous_inputs, categorical_embs)

    def _embed(self, continuous_inputs: Optional[torch.Tensor],
               categorical_embs: Optional[List[torch.Tensor]]) -> torch.Tensor:
        if continuous_inputs is None:
            if categorical_embs is None:
                raise ValueError('FourierEmbedding: both continuous_inputs and categorical_embs are None')
            x = torch.stack(categorical_embs).sum(dim=0)
        else:
            if continuous_inputs.dim() != 2 or continuous_inputs.size(-1) != self.input_dim:
                raise ValueError(f'FourierEmbedding: expected continuous_inputs of shape [N, {self.input_dim}], '
                                 f'got {tuple(continuous_inputs.shape)}')
            x = self._continuous(continuous_inputs)
            if categorical_embs is not None:
                x = x + torch.stack(categorical_embs).sum(dim=0)
        return self.to_out(x)
