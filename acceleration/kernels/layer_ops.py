"""Layer operations (the ``ops`` hook of layers/layer_ops.py) with fused kernels, torch.compile or recomputation.

Each class computes the same functions as ``layers.layer_ops.LayerOps``; acceleration.apply gives a layer one of them.
"""

import torch
import torch.utils.checkpoint

from acceleration.compiled import compiled, graph_input
from acceleration.kernels.fourier_embedding import fused_embedding, traced_embedding, traced_embedding_arguments
from acceleration.kernels.gather_scatter import GatherDot, SumByIndex
from acceleration.kernels.gru_loop import gru_final_state_loop
from acceleration.kernels.split_k_linear import linear as split_k_linear
from layers.layer_ops import LayerOps


class FusedOps(LayerOps):
    """Split-K linear maps (acceleration/kernels/split_k_linear.py), the custom autograd gather/scatter, and the
    batched Fourier embedding with its recomputing first layer."""

    def run(self, layer, *args):
        from layers.fourier_embedding import FourierEmbedding
        if isinstance(layer, FourierEmbedding):
            return fused_embedding(layer, *args)
        return layer.compute(*args)

    def linear(self, x, weight, bias=None, residual=None):
        return split_k_linear(x, weight, bias, residual)

    def gather_dot(self, q, key, index):
        return GatherDot.apply(q, key, index)

    def sum_by_index(self, src, index, dim_size):
        return SumByIndex.apply(src, index, dim_size)


def _compiled_attention(layer, *args):
    return layer.compute(*args)


class CompiledOps(FusedOps):
    """The layer's forward through torch.compile (dynamic shapes; one compiled function per layer class, shared by
    every instance): inductor fuses the many small elementwise and normalisation kernels. The primitives inside are
    ``FusedOps``' (dynamo traces custom autograd functions), except the Fourier embedding, which compiles its plain
    batched form so that inductor decides what to recompute.

    Each compiled graph is traced again in every new process, also when the compile cache holds its kernels, so the
    calls are shaped to need few graphs: one per kind of attention (self-attention with or without edge
    embeddings, bipartite with 2-D or 3-D targets) and per kind of embedding (one continuous input, several, each
    with or without categorical inputs), once with and once without gradients (the momentum branch). Embeddings
    without continuous inputs (a sum, a norm and a linear map) run the fused eager form."""

    def run(self, layer, *args):
        from layers.fourier_embedding import FourierEmbedding
        if isinstance(layer, FourierEmbedding):
            continuous_inputs, categorical_embs = args
            if continuous_inputs is None:
                return fused_embedding(layer, continuous_inputs, categorical_embs)
            return compiled(traced_embedding)(*traced_embedding_arguments(layer, continuous_inputs, categorical_embs))
        return compiled(_compiled_attention)(layer, *map(graph_input, args))


class RecomputedOps(FusedOps):
    """Calls with gradients keep only the layer's inputs for the backward pass and recompute the layer there
    (torch.utils.checkpoint; dropout masks are replayed)."""

    def run(self, layer, *args):
        if torch.is_grad_enabled() and layer.training:
            return torch.utils.checkpoint.checkpoint(super().run, layer, *args, use_reentrant=False)
        return super().run(layer, *args)


class GRULoopOps(FusedOps):
    """The GRU as an explicit step loop (acceleration/kernels/gru_loop.py) for calls with gradients while training,
    compiled unless ``compile`` is False (the uncompiled loop is the same code path, for tests)."""

    def __init__(self, compile: bool = True) -> None:
        self.compile = compile

    def gru_final_state(self, gru, inputs, h0):
        if not (torch.is_grad_enabled() and gru.training):  # evaluation keeps cuDNN's kernels (no compilation)
            return super().gru_final_state(gru, inputs, h0)
        loop = compiled(gru_final_state_loop) if self.compile else gru_final_state_loop
        return loop(inputs, h0, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
