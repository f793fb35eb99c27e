"""Learnable Fourier-feature embedding of continuous scalars, summed with optional categorical embeddings."""
import math
from typing import List, Optional

import torch
import torch.nn as nn

from layers.layer_ops import PLAIN_OPS
from utils.weight_init import weight_init

TWO_PI = 2 * math.pi


class FourierEmbedding(nn.Module):
    """Embeds ``input_dim`` continuous scalars per row into one ``hidden_dim`` vector.

    Each scalar ``s_i`` becomes ``[cos(2*pi*f_i*s_i), sin(2*pi*f_i*s_i), s_i]`` with learnable frequencies
    ``f_i`` [num_freq_bands], goes through its own MLP (Linear -> LayerNorm -> ReLU -> Linear), the per-scalar
    results and the categorical embeddings are summed, and a LayerNorm -> ReLU -> Linear head finishes.
    ``ops``: see layers/layer_ops.py (acceleration/kernels/fourier_embedding.py holds the faster forms).
    """

    ops = PLAIN_OPS

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
        self.apply(weight_init)

    def forward(self, continuous_inputs: Optional[torch.Tensor] = None,
                categorical_embs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """continuous_inputs [N, input_dim] (or None when input_dim == 0); categorical_embs: list of [N, hidden_dim].
        Returns [N, hidden_dim]."""
        if continuous_inputs is None and categorical_embs is None:
            raise ValueError('FourierEmbedding: both continuous_inputs and categorical_embs are None')
        if continuous_inputs is not None and (continuous_inputs.dim() != 2
                                              or continuous_inputs.size(-1) != self.input_dim):
            raise ValueError(f'FourierEmbedding: expected continuous_inputs of shape [N, {self.input_dim}], '
                             f'got {tuple(continuous_inputs.shape)}')
        return self.ops.run(self, continuous_inputs, categorical_embs)

    def compute(self, continuous_inputs: Optional[torch.Tensor],
                categorical_embs: Optional[List[torch.Tensor]]) -> torch.Tensor:
        if continuous_inputs is None:
            x = torch.stack(categorical_embs).sum(dim=0)
        else:
            angles = continuous_inputs.unsqueeze(-1) * self.freqs.weight * TWO_PI  # [N, input_dim, F]
            features = torch.cat([angles.cos(), angles.sin(), continuous_inputs.unsqueeze(-1)], dim=-1)
            x = torch.stack([mlp(features[:, i]) for i, mlp in enumerate(self.mlps)]).sum(dim=0)
            if categorical_embs is not None:
                x = x + torch.stack(categorical_embs).sum(dim=0)
        return self.to_out(x)
