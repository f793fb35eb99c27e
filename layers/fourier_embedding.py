"""Learnable Fourier-feature embedding of continuous scalars, summed with optional categorical embeddings."""
import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from layers.compile_switch import CompileSwitch
from layers.split_k_linear import batched_linear, linear, split_k_weight_grad
from utils.weight_init import weight_init

TWO_PI = 2 * math.pi


def aligned_width(num_features: int, multiple: int = 8) -> int:
    """num_features rounded up to a multiple of ``multiple``: tensor-core matmul kernels need row lengths that are
    multiples of 8 (16 bytes of bf16) to run at full speed."""
    return -(-num_features // multiple) * multiple


class _FourierFirstLayer(torch.autograd.Function):
    """hidden[i] = [cos(2 pi f_i s_i), sin(2 pi f_i s_i), s_i, 0, ..., 0] @ W1[i] + b1[i] for every scalar i at once.

    scalars [I, N, 1], freqs [I, F], w1 [I, K, H] with K >= 2F+1 (rows past 2F+1 multiply zero features: the caller
    pads W1 with zero rows to an aligned K), b1 [I, 1, H] -> hidden [I, N, H]. Same values as autograd on the plain
    expression, but only the inputs are kept for the backward pass: the angles and the [I, N, K] features (the bulk
    of an edge embedding's activations) are recomputed there with a few elementwise kernels, no matmul.
    Why K is padded: with K = 2F+1 = 129 every matmul operand had an odd row length, and under bf16 cuBLAS fell
    back to an unaligned kernel that alone took 18 % of the H200 training step at batch 32; zero columns up to 136
    cost 5 % more feature bytes and keep the kernels aligned.
    """

    @staticmethod
    def forward(ctx, scalars: torch.Tensor, freqs: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scalars, freqs, w1)
        return batched_linear(_FourierFirstLayer.features(scalars, freqs, w1.size(1))[0], w1, b1)

    @staticmethod
    def features(scalars: torch.Tensor, freqs: torch.Tensor, width: int):
        angles = scalars * freqs.unsqueeze(1) * TWO_PI  # [I, N, F]
        cos, sin = angles.cos(), angles.sin()
        parts = [cos, sin, scalars]
        padding = width - 2 * freqs.size(-1) - 1
        if padding > 0:
            parts.append(scalars.new_zeros(scalars.shape[:-1] + (padding,)))
        return torch.cat(parts, dim=-1), cos, sin

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_hidden: torch.Tensor):
        scalars, freqs, w1 = ctx.saved_tensors
        feats, cos, sin = _FourierFirstLayer.features(scalars, freqs, w1.size(1))
        # Matmuls in the dtype of the incoming gradient, as autograd would (bf16 under autocast).
        compute = grad_hidden.dtype
        grad_scalars = grad_freqs = grad_w1 = grad_b1 = None
        if ctx.needs_input_grad[2]:
            grad_w1 = split_k_weight_grad(feats.to(compute), grad_hidden).to(w1.dtype)
        if ctx.needs_input_grad[3]:
            grad_b1 = grad_hidden.sum(dim=1, keepdim=True).to(w1.dtype)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_feats = torch.bmm(grad_hidden, w1.to(compute).transpose(1, 2)).to(feats.dtype)
            num_bands = freqs.size(-1)
            grad_cos, grad_sin, grad_raw = grad_feats[..., :2 * num_bands + 1].split([num_bands, num_bands, 1],
                                                                                     dim=-1)
            grad_angles = (grad_sin * cos - grad_cos * sin) * TWO_PI  # d/d(f s) of the features
            if ctx.needs_input_grad[1]:
                grad_freqs = (grad_angles * scalars).sum(dim=1).to(freqs.dtype)
            if ctx.needs_input_grad[0]:
                grad_scalars = (grad_raw + (grad_angles * freqs.unsqueeze(1)).sum(dim=-1, keepdim=True)
                                ).to(scalars.dtype)
        return grad_scalars, grad_freqs, grad_w1, grad_b1


class FourierEmbedding(CompileSwitch, nn.Module):
    """Embeds ``input_dim`` continuous scalars per row into one ``hidden_dim`` vector.

    Each scalar ``s_i`` becomes ``[cos(2*pi*f_i*s_i), sin(2*pi*f_i*s_i), s_i]`` with learnable frequencies
    ``f_i`` [num_freq_bands], goes through its own MLP (Linear -> LayerNorm -> ReLU -> Linear), the per-scalar
    results and the categorical embeddings are summed, and a LayerNorm -> ReLU -> Linear head finishes.
    """

    compiled_method = '_embed'  # see CompileSwitch

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

    def compile_for_training(self) -> None:
        """CompileSwitch's, refused together with ``recompute``. Inductor fuses the Fourier features, the per-scalar LayerNorm + ReLU, the sum
        and the output norm into a few kernels around the matmuls (eager: ~10 elementwise/norm kernels per scalar,
        each a full pass over [N, hidden]) and chooses what to recompute in the backward pass itself."""
        if self.recompute:
            raise ValueError('FourierEmbedding: compile_for_training and recompute are exclusive (compiled '
                             'training already recomputes the cheap activations)')
        super().compile_for_training()

    def _continuous(self, inputs: torch.Tensor) -> torch.Tensor:
        """[N, input_dim] -> [N, hidden_dim]: all per-scalar MLPs evaluated together.

        Features are laid out scalar-major ([I, N, 2F+1]) so the I first layers run as one batched matmul (which
        recomputes its Fourier features for the backward pass instead of storing them, see _FourierFirstLayer) and
        each LayerNorm reads a contiguous block; the I second layers and the sum over scalars are one matmul with an
        [H, I*H] weight.
        """
        if torch.compiler.is_compiling():
            return self._continuous_traced(inputs)
        scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
        first = [mlp[0] for mlp in self.mlps]
        w1 = torch.stack([lin.weight for lin in first])  # [I, H, 2F+1]
        w1 = F.pad(w1, (0, aligned_width(w1.size(-1)) - w1.size(-1)))  # zero rows up to an aligned K
        w1 = w1.transpose(1, 2).contiguous()  # [I, K, H]
        b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)  # [I, 1, H]
        hidden = _FourierFirstLayer.apply(scalars, self.freqs.weight, w1, b1)  # [I, N, H]
        # unbind (not hidden[i]): one stacking backward instead of a zero-padded copy per scalar.
        normed = torch.cat([mlp[1](h) for h, mlp in zip(hidden.unbind(0), self.mlps)], dim=-1)  # [N, I*H]
        normed = torch.relu_(normed)
        return linear(normed, *self._second_layers())

    def _second_layers(self):
        """The I second layers and the sum over scalars as one map: weight [H, I*H], bias [H]."""
        weight = torch.cat([mlp[3].weight for mlp in self.mlps], dim=1)
        bias = torch.stack([mlp[3].bias for mlp in self.mlps]).sum(dim=0)
        return weight, bias

    def _continuous_traced(self, inputs: torch.Tensor) -> torch.Tensor:
        """The same function as _continuous in plain tensor operations, for torch.compile: no custom autograd
        (inductor decides what to keep for backward) and the per-scalar norms as one normalisation with stacked
        affine parameters, which it fuses with the ReLU and the layout change for the second matmul."""
        scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
        angles = scalars * self.freqs.weight.unsqueeze(1) * TWO_PI  # [I, N, F]
        feats = torch.cat([angles.cos(), angles.sin(), scalars], dim=-1)  # [I, N, 2F+1]
        w1 = torch.stack([mlp[0].weight for mlp in self.mlps]).transpose(1, 2)  # [I, 2F+1, H]
        b1 = torch.stack([mlp[0].bias for mlp in self.mlps]).unsqueeze(1)
        hidden = batched_linear(feats, w1, b1)  # [I, N, H]
        norms = [mlp[1] for mlp in self.mlps]
        gamma = torch.stack([n.weight for n in norms]).unsqueeze(1)
        beta = torch.stack([n.bias for n in norms]).unsqueeze(1)
        normed = torch.relu(F.layer_norm(hidden, hidden.shape[-1:], eps=norms[0].eps) * gamma + beta)
        normed = normed.permute(1, 0, 2).reshape(inputs.size(0), -1)  # [N, I*H]
        return linear(normed, *self._second_layers())

    def forward(self, continuous_inputs: Optional[torch.Tensor] = None,
                categorical_embs: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """continuous_inputs [N, input_dim] (or None when input_dim == 0); categorical_embs: list of [N, hidden_dim].

        Returns [N, hidden_dim]. With ``recompute`` set, a training call keeps only its inputs for the backward pass
        and recomputes the embedding there (torch.utils.checkpoint): the Fourier features and per-scalar MLP
        activations are ~input_dim x 450 floats per row, the largest activations of QCNet's edge embeddings.
        """
        if self._use_compiled():
            return self.run_compiled(continuous_inputs, categorical_embs)
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
        norm, _, out = self.to_out
        return linear(torch.relu(norm(x)), out.weight, out.bias)
