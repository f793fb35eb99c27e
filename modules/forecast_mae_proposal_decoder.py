"""Mode x future-segment queries of the Forecast-MAE-style backbone (shared by the SSL backbone and the supervised
decoder)."""
import torch
import torch.nn as nn

from modules.forecast_mae_attention import QueryBlock
from modules.forecast_mae_encoder import ForecastMAEEncoding
from utils.weight_init import weight_init


class ForecastMAEProposalDecoder(nn.Module):
    """One query per (agent, mode k, future segment r): agent token + mode embedding + segment embedding, refined by
    ``num_layers`` query blocks (cross-attention to the agent's scene, self-attention among the agent's K*R queries).

    The future is cut into ``num_recurrent_steps`` (R) equal segments; query r describes segment r, which is what
    SmartPretrain's reconstruction loss asks of "recurrence" r. Pre-training uses one mode (K = 1): its
    ``[A, 1, R, D]`` output is the backbone's per-recurrence embedding.
    """

    def __init__(self, hidden_dim: int, num_modes: int, num_recurrent_steps: int, num_layers: int, num_heads: int,
                 head_dim: int, dropout: float) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.num_modes = num_modes
        self.num_recurrent_steps = num_recurrent_steps
        self.mode_emb = nn.Embedding(num_modes, hidden_dim)
        self.segment_emb = nn.Embedding(num_recurrent_steps, hidden_dim)
        self.propose_blocks = nn.ModuleList([QueryBlock(hidden_dim, num_heads, head_dim, dropout)
                                             for _ in range(num_layers)])
        self.mode_emb.apply(weight_init)
        self.segment_emb.apply(weight_init)

    def attend(self, queries: torch.Tensor, scene_enc: ForecastMAEEncoding, blocks: nn.ModuleList) -> torch.Tensor:
        """queries [A, Q, D] through ``blocks`` -> [A, Q, D]."""
        layout = scene_enc.layout
        for block in blocks:
            queries = block(queries, scene_enc.tokens, scene_enc.token_mask, layout.agent_scene, layout.agent_local,
                            layout.max_agents)
        return queries

    def forward(self, scene_enc: ForecastMAEEncoding) -> torch.Tensor:
        """Query embeddings [A, K, R, D] (mode k, future segment r) in each agent's frame."""
        x_a = scene_enc.x_a
        queries = (x_a[:, None, None] + self.mode_emb.weight[None, :, None]
                   + self.segment_emb.weight[None, None]).flatten(1, 2)           # [A, K*R, D]
        queries = self.attend(queries, scene_enc, self.propose_blocks)
        return queries.view(x_a.size(0), self.num_modes, self.num_recurrent_steps, self.hidden_dim)
