"""Learnable Fourier-feature embedding of continuous scalars, summed with optional categorical embeddings."""
import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from utils.weight_init import weight_init

TWO_PI = 2 * math.pi


class _FourierFirstLayer(torch.autograd.Function):
    """hidden[i] = [cos(2 pi f_i s_i), sin(2 pi f_i s_i)] @ W_cs[i] + s_i * w_s[i] + b1[i] for every scalar i at once
    (= [cos, sin, s] @ W1[i] + b1[i] with W1[i] = [W_cs[i]; w_s[i]]).

    scalars [I, N, 1], freqs [I, F], w_cs [I, 2F, H] (contiguous), w_s [I, 1, H], b1 [I, 1, H] -> hidden [I, N, H].
    Same values as autograd on the plain expression, but only the inputs are kept for the backward pass: the angles
    and the [I, N, 2F] features (the bulk of an edge embedding's activations) are recomputed there with a few
    elementwise kernels, no matmul. The raw scalar's column is applied as a broadcast product rather than as a
    129th matmul row: every matmul operand then has a row length of 2F (a multiple of 8), which tensor-core kernels
    need to run at full speed (with 2F+1 = 129, bf16 fell back to an unaligned kernel that alone took 18 % of the
    H200 training step).
    """

    @staticmethod
    def forward(ctx, scalars: torch.Tensor, freqs: torch.Tensor, w_cs: torch.Tensor, w_s: torch.Tensor,
                b1: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scalars, freqs, w_cs, w_s)
        cos, sin = _FourierFirstLayer.angles(scalars, freqs)
        return torch.baddbmm(torch.addcmul(b1, scalars, w_s), torch.cat([cos, sin], dim=-1), w_cs)

    @staticmethod
    def angles(scalars: torch.Tensor, freqs: torch.Tensor):
        angles = scalars * freqs.unsqueeze(1) * TWO_PI  # [I, N, F]
        return angles.cos(), angles.sin()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden: torch.Tensor):
        scalars, freqs, w_cs, w_s = ctx.saved_tensors
        cos, sin = _FourierFirstLayer.angles(scalars, freqs)
        # Matmuls in the dtype of the incoming gradient, as autograd would (bf16 under autocast).
        compute = grad_hidden.dtype
        grad_scalars = grad_freqs = grad_w_cs = grad_w_s = grad_b1 = None
        if ctx.needs_input_grad[2]:
            feats = torch.cat([cos, sin], dim=-1).to(compute)
            grad_w_cs = torch.bmm(feats.transpose(1, 2), grad_hidden).to(w_cs.dtype)
        if ctx.needs_input_grad[3]:
            grad_w_s = (grad_hidden * scalars.to(compute)).sum(dim=1, keepdim=True).to(w_s.dtype)
        if ctx.needs_input_grad[4]:
            grad_b1 = grad_hidden.sum(dim=1, keepdim=True).to(w_cs.dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_feats = torch.bmm(grad_hidden, w_cs.to(compute).transpose(1, 2)).to(cos.dtype)
            grad_cos, grad_sin = grad_feats.chunk(2, dim=-1)
            grad_angles = (grad_sin * cos - grad_cos * sin) * TWO_PI  # d/d(f s) of the features
            if ctx.needs_input_grad[1]:
                grad_freqs = (grad_angles * scalars).sum(dim=1).to(freqs.dtype)
            if ctx.needs_input_grad[0]:
                grad_raw = (grad_hidden * w_s.to(compute)).sum(dim=-1, keepdim=True).to(cos.dtype)
                grad_scalars = (grad_raw + (grad_angles * freqs.unsqueeze(1)).sum(dim=-1, keepdim=True)
                                ).to(scalars.dtype)
        return grad_scalars, grad_freqs, grad_w_cs, grad_w_s, grad_b1


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

        Features are laid out scalar-major ([I, N, 2F+1]) so the I first layers run as one batched matmul (which
        recomputes its Fourier features for the backward pass instead of storing them, see _FourierFirstLayer) and
        each LayerNorm reads a contiguous block; the I second layers and the sum over scalars are one matmul with an
        [H, I*H] weight.
        """
        scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
        first = [mlp[0] for mlp in self.mlps]
        w1 = torch.stack([lin.weight for lin in first])  # [I, H, 2F+1]
        num_features = w1.size(-1) - 1
        w_cs = w1[..., :num_features].transpose(1, 2).contiguous()  # [I, 2F, H]
        w_s = w1[..., num_features].unsqueeze(1)  # [I, 1, H]
        b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)  # [I, 1, H]
        hidden = _FourierFirstLayer.apply(scalars, self.freqs.weight, w_cs, w_s, b1)  # [I, N, H]
        # unbind (not hidden[i]): one stacking backward instead of a zero-padded copy per scalar.
        normed = torch.cat([mlp[1](h) for h, mlp in zip(hidden.unbind(0), self.mlps)], dim=-1)  # [N, I*H]
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
