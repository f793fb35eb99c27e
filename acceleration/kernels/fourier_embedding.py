"""Faster forms of layers.fourier_embedding.FourierEmbedding (same function, same parameters).

``fused_embedding``: the input_dim per-scalar MLPs as batched matmuls, the first layer a custom autograd function
that recomputes its Fourier features in the backward pass (:class:`FourierFirstLayer`), the second layers and the sum
over scalars one matmul. ``traced_embedding``: the same batched layout in plain tensor operations, for torch.compile
(no custom autograd: inductor fuses features, norms and sums and decides what to recompute), taking the per-scalar
parameters stacked (``scalar_weights``) so that one compiled graph serves embeddings of different input_dim.
"""
import math
from typing import List, NamedTuple, Optional

import torch
import torch.nn.functional as F

from acceleration.compiled import graph_input
from acceleration.kernels.split_k_linear import batched_linear, linear, split_k_weight_grad

TWO_PI = 2 * math.pi


def aligned_width(num_features: int, multiple: int = 8) -> int:
    """num_features rounded up to a multiple of ``multiple``: tensor-core matmul kernels need row lengths that are
    multiples of 8 (16 bytes of bf16) to run at full speed."""
    return -(-num_features // multiple) * multiple


class FourierFirstLayer(torch.autograd.Function):
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
        return batched_linear(FourierFirstLayer.features(scalars, freqs, w1.size(1))[0], w1, b1)

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
        feats, cos, sin = FourierFirstLayer.features(scalars, freqs, w1.size(1))
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


def _second_layers(layer):
    """The I second layers and the sum over scalars as one map: weight [H, I*H], bias [H]."""
    weight = torch.cat([mlp[3].weight for mlp in layer.mlps], dim=1)
    bias = torch.stack([mlp[3].bias for mlp in layer.mlps]).sum(dim=0)
    return weight, bias


def fused_continuous(layer, inputs: torch.Tensor) -> torch.Tensor:
    """[N, input_dim] -> [N, hidden_dim]: all per-scalar MLPs evaluated together.

    Features are laid out scalar-major ([I, N, 2F+1]) so the I first layers run as one batched matmul (which
    recomputes its Fourier features for the backward pass instead of storing them) and each LayerNorm reads a
    contiguous block; the I second layers and the sum over scalars are one matmul with an [H, I*H] weight.
    """
    scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
    first = [mlp[0] for mlp in layer.mlps]
    w1 = torch.stack([lin.weight for lin in first])  # [I, H, 2F+1]
    w1 = F.pad(w1, (0, aligned_width(w1.size(-1)) - w1.size(-1)))  # zero rows up to an aligned K
    w1 = w1.transpose(1, 2).contiguous()  # [I, K, H]
    b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)  # [I, 1, H]
    hidden = FourierFirstLayer.apply(scalars, layer.freqs.weight, w1, b1)  # [I, N, H]
    # unbind (not hidden[i]): one stacking backward instead of a zero-padded copy per scalar.
    normed = torch.cat([mlp[1](h) for h, mlp in zip(hidden.unbind(0), layer.mlps)], dim=-1)  # [N, I*H]
    normed = torch.relu_(normed)
    return linear(normed, *_second_layers(layer))


class ScalarWeights(NamedTuple):
    """The per-scalar parameters of a FourierEmbedding stacked along a leading scalar dimension I (plain tensors
    built from the parameters, so gradients reach them): freqs [I, F], w1 [I, 2F+1, H], b1 / gamma / beta
    [I, 1, H], w2 [H, I*H] (the second layers side by side), b2 [H] (their biases summed)."""
    freqs: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


def scalar_weights(layer) -> ScalarWeights:
    """``layer``'s per-scalar parameters stacked (:class:`ScalarWeights`). Only their I-dependent dimension is left
    dynamic for torch.compile: an embedding of 3 scalars and one of 4 then share one compiled graph (parameters
    themselves would be compiled with static shapes, one graph per I); every other dimension stays static."""
    first, norms = [mlp[0] for mlp in layer.mlps], [mlp[1] for mlp in layer.mlps]
    freqs = graph_input(layer.freqs.weight.view(layer.freqs.weight.shape))  # a plain tensor, not a Parameter
    w1 = torch.stack([lin.weight for lin in first]).transpose(1, 2)
    b1 = torch.stack([lin.bias for lin in first]).unsqueeze(1)
    gamma = torch.stack([n.weight for n in norms]).unsqueeze(1)
    beta = torch.stack([n.bias for n in norms]).unsqueeze(1)
    w2, b2 = _second_layers(layer)
    weights = ScalarWeights(*map(graph_input, (freqs, w1, b1, gamma, beta, w2, b2)))
    from torch._dynamo import mark_static
    for tensor, dynamic in zip(weights, (0, 0, 0, 0, 0, 1, None)):
        for dim in range(tensor.dim()):
            if dim != dynamic:
                mark_static(tensor, dim)
    return weights


def traced_continuous(inputs: torch.Tensor, weights: ScalarWeights, eps: float) -> torch.Tensor:
    """The function of fused_continuous in plain tensor operations, for torch.compile: the per-scalar norms as one
    normalisation with stacked affine parameters, fused by inductor with the ReLU and the layout change."""
    scalars = inputs.t().unsqueeze(-1)  # [I, N, 1]
    angles = scalars * weights.freqs.unsqueeze(1) * TWO_PI  # [I, N, F]
    feats = torch.cat([angles.cos(), angles.sin(), scalars], dim=-1)  # [I, N, 2F+1]
    hidden = batched_linear(feats, weights.w1, weights.b1)  # [I, N, H]
    normed = torch.relu(F.layer_norm(hidden, hidden.shape[-1:], eps=eps) * weights.gamma + weights.beta)
    normed = normed.permute(1, 0, 2).reshape(inputs.size(0), -1)  # [N, I*H]
    return linear(normed, weights.w2, weights.b2)


def categorical_sum(categorical_embs: Optional[List[torch.Tensor]]) -> Optional[torch.Tensor]:
    """The sum of the categorical embeddings ([N, hidden] each), None for none."""
    if categorical_embs is None:
        return None
    return categorical_embs[0] if len(categorical_embs) == 1 else torch.stack(categorical_embs).sum(dim=0)


def fused_embedding(layer, continuous_inputs: Optional[torch.Tensor],
                    categorical_embs: Optional[List[torch.Tensor]]) -> torch.Tensor:
    """FourierEmbedding's function through fused_continuous and split-K output layer."""
    if continuous_inputs is None:
        x = categorical_sum(categorical_embs)
    else:
        x = fused_continuous(layer, continuous_inputs)
        if categorical_embs is not None:
            x = x + categorical_sum(categorical_embs)
    norm, _, out = layer.to_out
    return linear(torch.relu(norm(x)), out.weight, out.bias)


def traced_embedding(layer, continuous_inputs: torch.Tensor, categorical: Optional[torch.Tensor], eps: float,
                     *weights: torch.Tensor) -> torch.Tensor:
    """FourierEmbedding's function in plain batched operations, what torch.compile compiles: continuous_inputs
    [N, I], categorical [N, hidden] (the summed categorical embeddings, ``categorical_sum``) or None, eps of the
    per-scalar norms, weights ``scalar_weights(layer)``. Nothing here reads the per-scalar modules of ``layer`` (their
    count would be a guard): one compiled graph serves every embedding with the same presence of categorical inputs
    and I = 1 or any I > 1 (a size of 1 is always a graph of its own)."""
    x = traced_continuous(continuous_inputs, ScalarWeights(*weights), eps)
    if categorical is not None:
        x = x + categorical
    norm, _, out = layer.to_out
    return linear(torch.relu(norm(x)), out.weight, out.bias)


def traced_embedding_arguments(layer, continuous_inputs: torch.Tensor,
                               categorical_embs: Optional[List[torch.Tensor]]) -> tuple:
    """The arguments of ``traced_embedding`` for the arguments of ``layer``'s forward."""
    return (layer, graph_input(continuous_inputs), graph_input(categorical_sum(categorical_embs)),
            layer.mlps[0][1].eps, *scalar_weights(layer))
