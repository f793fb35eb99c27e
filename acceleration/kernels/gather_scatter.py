"""Custom autograd forms of the attention layer's gather-multiply-sum and sum-by-index (same values as the plain
forms of layers/layer_ops.py; each keeps one large [E, ...] tensor fewer for the backward pass)."""
import torch
from torch.autograd.function import once_differentiable


class GatherDot(torch.autograd.Function):
    """sim[e(, k), h] = sum_d q[index[e](, k), h, d] * key[e, h, d].

    q [Nd(, K), heads, dim] (per target node), key [E, heads, dim] (per edge), index [E] (target of each edge).
    Same values as gathering q per edge and multiplying, but the gathered [E(, K), heads, dim] copy is not kept for
    the backward pass (it is gathered again there): with K queries per target it is the largest tensor of the layer.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, key, index)
        key = key.unsqueeze(1) if q.dim() == 4 else key
        return (q.index_select(0, index) * key).sum(dim=-1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        q, key, index = ctx.saved_tensors
        multi_query = q.dim() == 4
        grad = grad.unsqueeze(-1)
        grad_q = grad_key = None
        if ctx.needs_input_grad[0]:
            per_edge = grad * (key.unsqueeze(1) if multi_query else key)
            grad_q = q.new_zeros(q.shape).index_add_(0, index, per_edge.to(q.dtype))
        if ctx.needs_input_grad[1]:
            per_edge = grad * q.index_select(0, index)
            grad_key = (per_edge.sum(dim=1) if multi_query else per_edge).to(key.dtype)
        return grad_q, grad_key, None


class SumByIndex(torch.autograd.Function):
    """out[i] = sum of src[e] over the e with index[e] == i; out has dim_size rows.

    ``Tensor.index_add_`` keeps ``src`` for its backward pass; this needs only ``index`` (the gradient of src is
    out's gradient gathered back), which frees one [E, ...] tensor per call.
    """

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add_(0, index, src)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None
