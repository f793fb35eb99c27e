"""Dense multi-head attention and pre-norm transformer blocks of the Forecast-MAE-style backbone.

Everything runs on dense, padded tensors through ``torch.nn.functional.scaled_dot_product_attention`` (flash /
memory-efficient kernels on GPU). Shapes use a free leading batch shape ``*``: queries [*, Lq, D], keys/values
[*, Lk, D], key mask bool [*, Lk] (True = attend). Every query must see at least one key (the encoder guarantees this
with one always-present scene token per scene).
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from utils.weight_init import weight_init

# cuDNN's fused attention is left out: on an H100 (torch 2.11, bf16, boolean key masks, a few thousand sequences per
# call) it failed mid-training with "mha_graph.execute(...) is_good()" while these kernels ran the same batches.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with ``num_heads`` heads of ``head_dim`` channels; output [*, Lq, hidden_dim]."""

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = num_heads * head_dim
        self.to_q = nn.Linear(hidden_dim, inner)
        self.to_kv = nn.Linear(hidden_dim, 2 * inner)  # one matmul for keys and values
        self.to_out = nn.Linear(inner, hidden_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)  # [*, heads, L, head_dim]

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = x_q.shape[:-2]
        q = self._heads(self.to_q(x_q)).reshape(-1, self.num_heads, x_q.size(-2), self.head_dim)
        k, v = self.to_kv(x_kv).chunk(2, dim=-1)
        k = self._heads(k).reshape(-1, self.num_heads, x_kv.size(-2), self.head_dim)
        v = self._heads(v).reshape(-1, self.num_heads, x_kv.size(-2), self.head_dim)
        mask = None
        if key_mask is not None:
            mask = key_mask.reshape(-1, 1, 1, key_mask.size(-1))  # broadcast over heads and queries
        with sdpa_kernel(SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(*lead, x_q.size(-2), self.num_heads * self.head_dim)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear, hidden width ``ratio * hidden_dim`` (ratio 4 as in Forecast-MAE)."""

    def __init__(self, hidden_dim: int, dropout: float, ratio: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_dim, ratio * hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ratio * hidden_dim, hidden_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer encoder block: x + Attn(LN(x), LN(x)), then x + FFN(LN(x)). x [*, L, D]."""

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(hidden_dim)
        self.attn = MultiHeadAttention(hidden_dim, num_heads, head_dim, dropout)
        self.norm_ff = nn.LayerNorm(hidden_dim)
        self.ff = FeedForward(hidden_dim, dropout)
        self.drop = nn.Dropout(dropout)
        self.apply(weight_init)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + self.drop(self.attn(h, h, key_mask))
        return x + self.drop(self.ff(self.norm_ff(x)))


class QueryBlock(nn.Module):
    """Pre-norm decoder block for query tokens.

    1. cross-attention of the queries to a scene's tokens (``memory`` [B, N, D], ``memory_mask`` [B, N]), with the
       queries laid out per scene as [B, Lq, D];
    2. self-attention among the queries of one agent, laid out [A, Q, D] (modes and/or future segments);
    3. feed-forward.
    ``forward`` takes the per-agent layout and the index that scatters it into the per-scene layout.
    """

    def __init__(self, hidden_dim: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_cross = nn.LayerNorm(hidden_dim)
        self.norm_memory = nn.LayerNorm(hidden_dim)
        self.cross_attn = MultiHeadAttention(hidden_dim, num_heads, head_dim, dropout)
        self.norm_self = nn.LayerNorm(hidden_dim)
        self.self_attn = MultiHeadAttention(hidden_dim, num_heads, head_dim, dropout)
        self.norm_ff = nn.LayerNorm(hidden_dim)
        self.ff = FeedForward(hidden_dim, dropout)
        self.drop = nn.Dropout(dropout)
        self.apply(weight_init)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor,
                agent_scene: torch.Tensor, agent_local: torch.Tensor, max_agents: int) -> torch.Tensor:
        """x [A, Q, D] queries; agent_scene / agent_local long[A]: scene of each agent and its index in the scene;
        max_agents: most agents of one scene. Returns [A, Q, D]."""
        num_agents, num_queries, dim = x.shape
        # Per-scene layout [B, max_agents * Q, D]: every query of a scene attends to that scene's tokens only.
        dense = x.new_zeros(memory.size(0), max_agents, num_queries, dim)
        dense[agent_scene, agent_local] = self.norm_cross(x)
        attended = self.cross_attn(dense.flatten(1, 2), self.norm_memory(memory), memory_mask)
        x = x + self.drop(attended.view(-1, max_agents, num_queries, dim)[agent_scene, agent_local])
        h = self.norm_self(x)
        x = x + self.drop(self.self_attn(h, h))
        return x + self.drop(self.ff(self.norm_ff(x)))
