"""The one hook of the layers for run-time speed options: the operations a layer runs, in plain PyTorch.

A layer with faster forms calls its forward and its primitive operations through its ``ops`` attribute: this module's
``PLAIN_OPS`` unless ``acceleration.apply`` gave it another object with the same methods computing the same
functions (fused custom-autograd kernels, torch.compile'd or recomputed forms; acceleration/kernels/). The plain forms
here are the reference the fast ones are tested against. ``ops`` is not a parameter or buffer: never saved.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerOps:
    """Plain forms. Subclasses in acceleration.kernels override some of them."""

    def run(self, layer: nn.Module, *args):
        """The layer's whole forward: ``layer.compute(*args)`` (compiled or recomputed forms wrap it)."""
        return layer.compute(*args)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``residual + x @ weight^T + bias`` (bias and residual optional)."""
        out = F.linear(x, weight, bias)
        return out if residual is None else residual + out

    def gather_dot(self, q: torch.Tensor, key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """sim[e(, k), h] = sum_d q[index[e](, k), h, d] * key[e, h, d].
        q [Nd(, K), heads, dim] (per target node), key [E, heads, dim] (per edge), index [E] (target of each edge)."""
        if q.dim() == 4:
            key = key.unsqueeze(1)
        return (q.index_select(0, index) * key).sum(dim=-1)

    def sum_by_index(self, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        """out[i] = sum of src[e] over the e with index[e] == i; out has dim_size rows."""
        return src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add(0, index, src)

    def gru_final_state(self, gru: nn.GRU, inputs: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """Final hidden state [N, H] of the one-layer, time-major ``gru`` over inputs [T, N, in] from h0 [N, H]."""
        return gru(inputs, h0.unsqueeze(0).contiguous())[1][0]


PLAIN_OPS = LayerOps()
