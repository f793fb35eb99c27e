"""Linear maps over many rows whose weight gradient is computed as a split-K sum.

Why: QCNet applies 128-wide linear maps to millions of edges. Their weight gradients are matmuls with a tiny output
(e.g. 128 x 128) and a huge reduction length (the row count); cuBLAS runs them as a handful of thread blocks on a
card with 132 SMs, and that kernel was the largest single item of the batch-32 training step on an H200
(docs/BENCHMARKS.md, "Training step"). Viewing the rows as ``SPLIT_CHUNKS`` batches of a batched matmul against the
broadcast weight gives the same function, and autograd's gradient of the broadcast is one batched matmul
([chunks, out, in], enough blocks for every SM) plus a sum over the chunks.
"""
from typing import Optional

import torch
import torch.nn.functional as F

SPLIT_CHUNKS = 32
# Below this many rows the plain matmul's weight gradient is not starved of blocks (or is too small to matter).
MIN_ROWS = 16384


def split_rows(rows: int) -> bool:
    """Whether a matmul over ``rows`` rows takes the split-K form (the rows must divide into the chunks: the
    fixed-shape step pads every count to a multiple of 32, so it always does there).

    Inside torch.compile the row count is symbolic and a threshold on it would be a guard: every compiled function
    would get one graph for small and one for large row counts. There the split form is taken whenever the rows
    divide, which holds for every shape of the fixed-shape step (for small row counts it costs a batched matmul of
    short chunks and a sum of 32 small weight gradients; not timed on the GPU yet)."""
    if torch.compiler.is_compiling():
        return rows % SPLIT_CHUNKS == 0
    return rows >= MIN_ROWS and rows % SPLIT_CHUNKS == 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``residual + x @ weight^T + bias`` for x [..., in], weight [out, in], bias [out], residual [..., out]
    (bias and residual optional); same values as ``F.linear`` up to float rounding."""
    rows = x.numel() // x.size(-1) if x.size(-1) > 0 else 0
    out_shape = x.shape[:-1] + (weight.size(0),)
    if not split_rows(rows):
        if residual is None:
            return F.linear(x, weight, bias)
        # addmm, not residual + linear: under autocast the sum stays in the matmul's dtype on both paths.
        base = residual.reshape(-1, weight.size(0))
        if bias is not None:
            base = base + bias
        return torch.addmm(base, x.reshape(-1, x.size(-1)), weight.t()).view(out_shape)
    chunks = x.reshape(SPLIT_CHUNKS, rows // SPLIT_CHUNKS, x.size(-1))
    w = weight.t().unsqueeze(0).expand(SPLIT_CHUNKS, -1, -1)
    if residual is not None:
        base = residual.reshape(SPLIT_CHUNKS, rows // SPLIT_CHUNKS, weight.size(0))
        if bias is not None:
            base = base + bias
        y = torch.baddbmm(base, chunks, w)
    elif bias is not None:
        y = torch.baddbmm(bias, chunks, w)
    else:
        y = torch.bmm(chunks, w)
    return y.view(out_shape)


def batched_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``bias + x @ weight`` for I independent maps: x [I, N, K], weight [I, K, H], bias [I, 1, H] -> [I, N, H],
    with the same split-K weight gradient over the N rows as :func:`linear`."""
    num_maps, rows = x.size(0), x.size(1)
    if not split_rows(rows):
        return torch.baddbmm(bias, x, weight)
    chunks = x.reshape(num_maps * SPLIT_CHUNKS, rows // SPLIT_CHUNKS, x.size(-1))
    w = weight.unsqueeze(1).expand(-1, SPLIT_CHUNKS, -1, -1).reshape(num_maps * SPLIT_CHUNKS, *weight.shape[1:])
    b = bias.unsqueeze(1).expand(-1, SPLIT_CHUNKS, -1, -1).reshape(num_maps * SPLIT_CHUNKS, 1, weight.size(-1))
    return torch.baddbmm(b, chunks, w).view(num_maps, rows, weight.size(-1))


def split_k_weight_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """sum_n x[i, n]^T grad[i, n] for x [I, N, K], grad [I, N, H] -> [I, K, H] (a custom backward's weight
    gradient of ``batched_linear``), split over the N rows when they allow it."""
    num_maps, rows = x.size(0), x.size(1)
    if not split_rows(rows):
        return torch.bmm(x.transpose(1, 2), grad)
    xs = x.reshape(num_maps, SPLIT_CHUNKS, rows // SPLIT_CHUNKS, x.size(-1))
    gs = grad.reshape(num_maps, SPLIT_CHUNKS, rows // SPLIT_CHUNKS, grad.size(-1))
    return torch.matmul(xs.transpose(-1, -2), gs).sum(dim=1)
