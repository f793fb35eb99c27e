"""Relative-position graph attention block of QCNet (pre/post-norm, gated update, feed-forward)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax

from utils.weight_init import weight_init


class AttentionLayer(MessagePassing):
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
    """

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float, bipartite: bool,
                 has_pos_emb: bool, **kwargs) -> None:
        super().__init__(aggr='add', node_dim=0, **kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.has_pos_emb = has_pos_emb
        self.scale = head_dim ** -0.5
        inner_dim = head_dim * num_heads

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
        self.apply(weight_init)

    def forward(self, x: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], r: Optional[torch.Tensor],
                edge_index: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden] (self-attention) or (x_src [Ns, hidden], x_dst [Nd, hidden] or [Nd, K, hidden]);
        r: [E, hidden] or None; edge_index: [2, E] (row 0 source, row 1 target node).
        Returns the updated targets, shaped like x_dst."""
        if isinstance(x, torch.Tensor):
            x_src = x_dst = self.attn_prenorm_x_src(x)
            residual = x
        else:
            x_src = self.attn_prenorm_x_src(x[0])
            x_dst = self.attn_prenorm_x_dst(x[1])
            residual = x[1]
        if self.has_pos_emb and r is not None:
            r = self.attn_prenorm_r(r)
        else:
            r = None
        out = residual + self.attn_postnorm(self._attn_block(x_src, x_dst, r, edge_index))
        return out + self.ff_postnorm(self.ff_mlp(self.ff_prenorm(out)))

    def _attn_block(self, x_src: torch.Tensor, x_dst: torch.Tensor, r: Optional[torch.Tensor],
                    edge_index: torch.Tensor) -> torch.Tensor:
        q = self.to_q(x_dst).view(x_dst.shape[:-1] + (self.num_heads, self.head_dim))  # [Nd(, K), heads, dim]
        # Keys and values of the sources in one matmul (to_k has no bias).
        kv_bias = torch.cat([torch.zeros_like(self.to_v.bias), self.to_v.bias])
        k, v = F.linear(x_src, torch.cat([self.to_k.weight, self.to_v.weight]), kv_bias).view(
            -1, 2, self.num_heads, self.head_dim).unbind(dim=1)
        agg = self.propagate(edge_index=edge_index, x_dst=x_dst, q=q, k=k, v=v, r=r,
                             size=(x_src.size(0), x_dst.size(0)))
        return self.to_out(agg)

    def message(self, q_i: torch.Tensor, k_j: torch.Tensor, v_j: torch.Tensor, r: Optional[torch.Tensor],
                index: torch.Tensor, ptr: Optional[torch.Tensor], size_i: Optional[int]) -> torch.Tensor:
        """Per-edge weighted values [E, heads, head_dim] ([E, K, heads, head_dim] for multi-query targets)."""
        if r is not None:
            # Edge terms of keys and values in one matmul over the E edge embeddings (to_k_r has no bias).
            r_bias = torch.cat([torch.zeros_like(self.to_v_r.bias), self.to_v_r.bias])
            k_r, v_r = F.linear(r, torch.cat([self.to_k_r.weight, self.to_v_r.weight]), r_bias).view(
                -1, 2, self.num_heads, self.head_dim).unbind(dim=1)
            k_j = k_j + k_r
            v_j = v_j + v_r
        if q_i.dim() == 4:  # K queries per target share the edge's key and value
            k_j, v_j = k_j.unsqueeze(1), v_j.unsqueeze(1)
        sim = (q_i * k_j).sum(dim=-1) * self.scale  # [E(, K), heads]
        # num_nodes given explicitly so the softmax needs no host sync to size its buffers.
        attn = softmax(sim, index, ptr, num_nodes=size_i)
        attn = self.attn_drop(attn)
        return v_j * attn.unsqueeze(-1)

    def aggregate(self, inputs: torch.Tensor, index: torch.Tensor, ptr: Optional[torch.Tensor] = None,
                  dim_size: Optional[int] = None) -> torch.Tensor:
        """Sum of the incoming messages per target [Nd(, K), heads, head_dim] (index_add: faster than a broadcast
        scatter_add, same result)."""
        out = inputs.new_zeros((dim_size,) + tuple(inputs.shape[1:]))
        return out.index_add_(0, index, inputs)

    def update(self, inputs: torch.Tensor, x_dst: torch.Tensor) -> torch.Tensor:
        """Gated blend of the aggregated message [Nd(, K), heads, head_dim] with a projection of the target."""
        inputs = inputs.reshape(x_dst.shape[:-1] + (self.num_heads * self.head_dim,))
        gate = torch.sigmoid(self.to_g(torch.cat([inputs, x_dst], dim=-1)))
        return inputs + gate * (self.to_s(x_dst) - inputs)
