"""Learnable Fourier-feature embedding of continuous scalars, summed with optional categorical embeddings."""
import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

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
        self.apply(weight_init)

    def _continuous(self, inputs: torch.Tensor) -> torch.Tensor:
        """[N, input_dim] -> [N, hidden_dim]: all per-scalar MLPs evaluated together."""
        angles = inputs.unsqueeze(-1) * self.freqs.weight * (2 * math.pi)  # [N, I, F]
        feats = torch.cat([angles.cos(), angles.sin(), inputs.unsqueeze(-1)], dim=-1)  # [N, I, 2F+1]
        first = [mlp[0] for mlp in self.mlps]
        norm = [mlp[1] for mlp in self.mlps]
        last = [mlp[3] for mlp in self.mlps]
        # First layers as one batched matmul over the I scalars: [I, N, 2F+1] @ [I, 2F+1, H].
        w1 = torch.stack([lin.weight for lin in first]).transpose(1, 2)
        b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)
        hidden = torch.baddbmm(b1, feats.transpose(0, 1), w1)  # [I, N, H]
        gamma = torch.stack([ln.weight for ln in norm]).unsqueeze(1)
        beta = torch.stack([ln.bias for ln in norm]).unsqueeze(1)
        hidden = F.layer_norm(hidden, (self.hidden_dim,), eps=norm[0].eps) * gamma + beta
        hidden = torch.relu(hidden)
        # Second layers and the sum over scalars fused into one matmul: [N, I*H] @ [I*H, H].
        hidden = hidden.transpose(0, 1).reshape(inputs.size(0), -1)
        w2 = torch.cat([lin.weight for lin in last], dim=1)  # [H, I*H]
        b2 = torch.stack([lin.bias for lin in last]).sum(dim=0)
        return F.linear(hidden, w2, b2)

    def forward(self, continuous_inputs: Optional[torch.Tensor] = None,
                categorical_embs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """continuous_inputs [N, input_dim] (or None when input_dim == 0); categorical_embs: list of [N, hidden_dim].

        Returns [N, hidden_dim].
        """
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
