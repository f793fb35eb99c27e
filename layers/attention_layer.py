"""Relative-position graph attention block of QCNet (pre/post-norm, gated update, feed-forward)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.layer_ops import PLAIN_OPS
from utils.weight_init import weight_init

# Added to each softmax denominator (as torch_geometric.utils.softmax does in the official model).
SOFTMAX_EPS = 1e-16
# nn.LayerNorm's default epsilon, used by every norm of the layer.
LAYER_NORM_EPS = 1e-5


def normalize_edge_embedding(r: torch.Tensor, eps: float = LAYER_NORM_EPS) -> torch.Tensor:
    """Edge embeddings [E, hidden] normalised over the last dimension without scale/shift: the part of the
    layers' edge pre-norm that does not depend on the layer, computed once for all layers that share r."""
    return F.layer_norm(r, r.shape[-1:], eps=eps)


class AttentionLayer(nn.Module):
    """Multi-head attention of target nodes over their in-edges, with edge (relative-position) embeddings.

    For an edge j -> i with embedding r_ji: key = W_k x_j + W_kr r_ji, value = W_v x_j + W_vr r_ji, query = W_q x_i.
    The softmax runs over the in-edges of each target; the aggregated message m_i is blended with a skip term
    through a sigmoid gate g_i = sigma(W_g [m_i, x_i]):  m_i + g_i * (W_s x_i - m_i). Then
    ``x_i <- x_i + PostNorm(W_out m_i)`` and ``x_i <- x_i + PostNorm(FF(PreNorm(x_i)))``.

    ``bipartite``: source and target nodes have separate input norms (else one norm is shared and registered under
    both names, as in the official checkpoints). ``has_pos_emb``: whether edge embeddings r are used.

    Multi-query targets: a bipartite call may pass x_dst as [Nd, K, hidden] (K queries per target node, e.g. the K
    mode queries of an agent) with edges indexing the Nd nodes. Every query of node i attends over the same in-edges,
    so keys, values and edge terms are computed once per edge and shared by the K queries: the same attention as K
    copies of each edge, without materialising them.

    Computation (same function as the official layer, fewer and larger kernels): the projections of one input are
    one matmul with the weights concatenated at run time (parameters and checkpoint names unchanged): targets
    -> [query, skip, gate's target half], sources -> [key, value]; the self-attention layers, whose sources are
    the targets, do all five in one matmul. The value biases are added per source node instead of per edge, the
    edge terms are added by one ``addmm`` onto the gathered keys/values, and the softmax normalisation is applied
    after aggregating (sum_e w_e v_e / sum_e w_e): one division per target instead of one per edge.
    The edge pre-norm is split: the normalisation (``normalize_edge_embedding``) can be computed once for all
    layers that use the same edge embedding (``r_normalized=True``), and the norm's scale and shift fold into the
    edge projection's weight and per-channel bias. Bipartite layers expose their query-independent work
    (``edge_keys_values``) so that repeated attention over the same sources (the decoder's recurrences) reuses it.
    """

    ops = PLAIN_OPS  # the primitive operations (layers/layer_ops.py; fused forms: acceleration/kernels/)

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float, bipartite: bool,
                 has_pos_emb: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.has_pos_emb = has_pos_emb
        self.bipartite = bipartite
        self.scale = head_dim ** -0.5
        inner_dim = head_dim * num_heads
        self.inner_dim = inner_dim

        # Registration order and names match the official state dict.
        self.to_q = nn.Linear(hidden_dim, inner_dim)
        self.to_k = nn.Linear(hidden_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(hidden_dim, inner_dim)
        if has_pos_emb:
            self.to_k_r = nn.Linear(hidden_dim, inner_dim, bias=False)
            self.to_v_r = nn.Linear(hidden_dim, inner_dim)
        self.to_s = nn.Linear(hidden_dim, inner_dim)
        self.to_g = nn.Linear(inner_dim + hidden_dim, inner_dim)
        self.to_out = nn.Linear(inner_dim, hidden_dim)
        self.attn_drop = nn.Dropout(dropout)
        self.ff_mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim * 4),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim * 4, hidden_dim),
        )
        self.attn_prenorm_x_src = nn.LayerNorm(hidden_dim)
        self.attn_prenorm_x_dst = nn.LayerNorm(hidden_dim) if bipartite else self.attn_prenorm_x_src
        if has_pos_emb:
            self.attn_prenorm_r = nn.LayerNorm(hidden_dim)
        self.attn_postnorm = nn.LayerNorm(hidden_dim)
        self.ff_prenorm = nn.LayerNorm(hidden_dim)
        self.ff_postnorm = nn.LayerNorm(hidden_dim)
        # Zero bias of the key projections (to_k / to_k_r have none) in the concatenated bias vectors; not saved.
        self.register_buffer('_zero_bias', torch.zeros(inner_dim), persistent=False)
        self.apply(weight_init)

    def forward(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], r: Optional[torch.Tensor],
                edge_index: torch.Tensor, source_kv: Optional[torch.Tensor] = None,
                r_normalized: bool = False) -> torch.Tensor:
        """x: [N, hidden] (self-attention) or (x_src [Ns, hidden], x_dst [Nd, hidden] or [Nd, K, hidden]);
        r: [E, hidden] or None; edge_index: [2, E] (row 0 source, row 1 target node).
        Returns the updated targets, shaped like x_dst.

        ``r_normalized``: r is already ``normalize_edge_embedding(r)`` (shared by the layers that use the same edge
        embedding; this layer applies its own norm's scale and shift). ``source_kv`` (bipartite only): the result of
        ``edge_keys_values(x_src, r, edge_index)`` for these very inputs, for callers that attend with new queries
        over unchanged sources and edges (x_src and r are then not read again).
        """
        return self.ops.run(self, x, r, edge_index, source_kv, r_normalized)

    def compute(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], r: Optional[torch.Tensor],
                 edge_index: torch.Tensor, source_kv: Optional[torch.Tensor], r_normalized: bool) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            if source_kv is not None:
                raise ValueError('AttentionLayer: source_kv is for bipartite attention (sources != targets)')
            residual = x
            x_dst = self.attn_prenorm_x_src(x)
            msg = self._attn_block(x_dst, None, r, edge_index, None, r_normalized)
        else:
            residual = x[1]
            x_dst = self.attn_prenorm_x_dst(x[1])
            msg = self._attn_block(x_dst, x[0], r, edge_index, source_kv, r_normalized)
        out = residual + self.attn_postnorm(msg)
        return out + self.ff_postnorm(self._feed_forward(self.ff_prenorm(out)))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """ff_mlp (Linear -> ReLU -> Dropout -> Linear) through ``ops.linear``."""
        first, _, drop, second = self.ff_mlp
        linear = self.ops.linear
        return linear(self._dropout(torch.relu(linear(x, first.weight, first.bias)), drop), second.weight,
                      second.bias)

    def _dropout(self, x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
        return module(x) if self.training and module.p > 0 else x

    def _source_projection(self, with_edges: bool
                           ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(W [2*inner, hidden], b [2*inner], W_r [2*inner, hidden] or None) such that the keys and values of an
        edge j -> i are ``W LN_src(x_j) + b + W_r r_hat_ji`` (keys first), r_hat = r normalised without affine.

        The edge norm's scale folds into W_r, its shift and the value biases into b (per output channel: added
        once per source node instead of once per edge): LN(r) W^T = r_hat (W * gamma)^T + W beta.
        """
        weight = torch.cat([self.to_k.weight, self.to_v.weight])
        bias = torch.cat([self._zero_bias, self.to_v.bias])
        if not with_edges:
            return weight, bias, None
        weight_r = torch.cat([self.to_k_r.weight, self.to_v_r.weight])
        norm = self.attn_prenorm_r
        bias = bias + weight_r @ norm.bias + torch.cat([self._zero_bias, self.to_v_r.bias])
        return weight, bias, weight_r * norm.weight

    def _edge_input(self, r: Optional[torch.Tensor], r_normalized: bool) -> Optional[torch.Tensor]:
        if not self.has_pos_emb or r is None:
            return None
        return r if r_normalized else normalize_edge_embedding(r, self.attn_prenorm_r.eps)

    def edge_keys_values(self, x_src: torch.Tensor, r: Optional[torch.Tensor], edge_index: torch.Tensor,
                         r_normalized: bool = False) -> torch.Tensor:
        """Keys and values of every edge, [E, 2 * heads * head_dim] (keys first), from the raw sources x_src
        [Ns, hidden] and edge embeddings r [E, hidden]: all of a bipartite layer's work that does not depend on
        the targets."""
        return self._edge_kv(x_src, self._edge_input(r, r_normalized), edge_index)

    def _edge_kv(self, x_src: torch.Tensor, r_hat: Optional[torch.Tensor], edge_index: torch.Tensor
                 ) -> torch.Tensor:
        weight, bias, weight_r = self._source_projection(r_hat is not None)
        kv = self.ops.linear(self.attn_prenorm_x_src(x_src), weight, bias)
        return self._add_edge_terms(kv.index_select(0, edge_index[0]), r_hat, weight_r)

    def _add_edge_terms(self, kv: torch.Tensor, r_hat: Optional[torch.Tensor], weight_r: Optional[torch.Tensor]
                        ) -> torch.Tensor:
        return kv if r_hat is None else self.ops.linear(r_hat, weight_r, residual=kv)

    def _attn_block(self, x_dst: torch.Tensor, x_src: Optional[torch.Tensor], r: Optional[torch.Tensor],
                    edge_index: torch.Tensor, source_kv: Optional[torch.Tensor], r_normalized: bool
                    ) -> torch.Tensor:
        """Aggregated, gated, projected message [Nd(, K), hidden]; x_dst normalised, x_src raw (None: self-attention
        over x_dst)."""
        heads, dim, inner = self.num_heads, self.head_dim, self.inner_dim
        # split (not slicing): its backward is one concatenation instead of a zero-padded copy per slice.
        gate_msg_weight, gate_dst_weight = self.to_g.weight.split([inner, x_dst.size(-1)], dim=1)
        dst_weight = torch.cat([self.to_q.weight, self.to_s.weight, gate_dst_weight])
        dst_bias = torch.cat([self.to_q.bias, self.to_s.bias, self.to_g.bias])
        src, dst = edge_index[0], edge_index[1]
        if x_src is None:  # self-attention: one matmul for query, skip, gate half, key and value
            r_hat = self._edge_input(r, r_normalized)
            src_weight, src_bias, weight_r = self._source_projection(r_hat is not None)
            proj = self.ops.linear(x_dst, torch.cat([dst_weight, src_weight]), torch.cat([dst_bias, src_bias]))
            q, skip, gate_dst, kv = proj.split([inner, inner, inner, 2 * inner], dim=-1)
            kv = self._add_edge_terms(kv.index_select(0, src), r_hat, weight_r)
        else:
            q, skip, gate_dst = self.ops.linear(x_dst, dst_weight, dst_bias).split(inner, dim=-1)
            kv = source_kv if source_kv is not None else self.edge_keys_values(x_src, r, edge_index, r_normalized)
        q = q.reshape(x_dst.shape[:-1] + (heads, dim))  # [Nd(, K), heads, dim]
        key, value = kv.view(-1, 2, heads, dim).unbind(dim=1)  # [E, heads, dim] each
        num_targets = x_dst.size(0)

        sim = self.ops.gather_dot(q, key, dst) * self.scale  # [E(, K), heads]
        if sim.dtype in (torch.float16, torch.bfloat16):
            # Mixed precision: softmax and message sums in float32 (sums over up to hundreds of edges).
            sim = sim.float()
        # Softmax over each target's in-edges, shifted by the per-target maximum for stability.
        index = dst.view((-1,) + (1,) * (sim.dim() - 1)).expand_as(sim)
        sim_max = sim.new_zeros((num_targets,) + tuple(sim.shape[1:])).scatter_reduce_(
            0, index, sim.detach(), reduce='amax', include_self=False)
        weight = (sim - sim_max.index_select(0, dst)).exp()
        denom = self.ops.sum_by_index(weight, dst, num_targets) + SOFTMAX_EPS  # [Nd(, K), heads]
        # Dropout of the normalised weights equals dropout of the unnormalised ones (the normalisation is linear).
        weight = self._dropout(weight, self.attn_drop)
        if weight.dim() == 3:  # K queries per target share the edge's value
            value = value.unsqueeze(1)
        msg = self.ops.sum_by_index(value * weight.unsqueeze(-1), dst, num_targets)  # [Nd(, K), heads, dim]
        msg = (msg / denom.unsqueeze(-1)).reshape(x_dst.shape[:-1] + (inner,)).to(skip.dtype)

        # Gate sigma(W_g [msg, x_dst] + b): the x_dst half came with the target projections.
        gate = torch.sigmoid(self.ops.linear(msg.reshape(-1, inner), gate_msg_weight,
                                    residual=gate_dst.reshape(-1, inner)).view_as(msg))
        # msg + gate * (skip - msg)
        return self.ops.linear(torch.lerp(msg, skip, gate), self.to_out.weight, self.to_out.bias)
