"""Agent-history tokens of the Forecast-MAE-style backbone: each agent's history, in its own frame, -> one token."""
import torch
import torch.nn as nn

from modules.forecast_mae_attention import SelfAttentionBlock
from modules.forecast_mae_frames import rotate
from utils.weight_init import weight_init

NUM_STEP_FEATURES = 6  # displacement (2), velocity (2), heading (cos, sin): all in the agent's frame


class ForecastMAEAgentEmbedding(nn.Module):
    """Temporal transformer over the H history steps of every agent.

    Step t of agent a is described in a's frame (origin/heading at its reference step, ``modules.forecast_mae_frames``)
    by its displacement since t-1 (m), its velocity (m/s) and its heading (cos, sin); steps that are not valid
    (``valid_mask``) get a learnt "missing" embedding instead. A learnt step embedding marks time. After
    ``num_layers`` self-attention blocks over the steps, the token at the reference step plus an agent-type embedding
    is the agent's token. Translation- and rotation-invariant by construction.
    """

    def __init__(self, hidden_dim: int, num_historical_steps: int, num_layers: int, num_heads: int, head_dim: int,
                 dropout: float, num_agent_types: int) -> None:
        super().__init__()
        self.num_historical_steps = num_historical_steps
        self.step_mlp = nn.Sequential(nn.Linear(NUM_STEP_FEATURES, hidden_dim), nn.LayerNorm(hidden_dim),
                                      nn.ReLU(inplace=True), nn.Linear(hidden_dim, hidden_dim))
        self.missing_emb = nn.Embedding(1, hidden_dim)
        self.step_emb = nn.Embedding(num_historical_steps, hidden_dim)
        self.blocks = nn.ModuleList([SelfAttentionBlock(hidden_dim, num_heads, head_dim, dropout)
                                     for _ in range(num_layers)])
        self.type_emb = nn.Embedding(num_agent_types, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.apply(weight_init)

    def forward(self, position: torch.Tensor, velocity: torch.Tensor, heading: torch.Tensor, valid: torch.Tensor,
                reference_step: torch.Tensor, origin: torch.Tensor, theta: torch.Tensor,
                agent_type: torch.Tensor) -> torch.Tensor:
        """position / velocity [A, H, 2] and heading [A, H] in the map frame; valid bool[A, H]; reference_step long[A];
        origin [A, 2] / theta [A]: the agent frames; agent_type long[A]. Returns [A, hidden_dim]."""
        cos, sin = theta.cos().unsqueeze(-1), theta.sin().unsqueeze(-1)
        displacement = torch.cat([torch.zeros_like(position[:, :1]), position[:, 1:] - position[:, :-1]], dim=1)
        relative_heading = heading - theta.unsqueeze(-1)
        features = torch.cat([rotate(displacement, cos, sin), rotate(velocity, cos, sin),
                              relative_heading.cos().unsqueeze(-1), relative_heading.sin().unsqueeze(-1)], dim=-1)
        # where, not *: positions of unobserved steps are zeros of the map frame (huge after the shift)
        features = torch.where(valid.unsqueeze(-1), features, torch.zeros_like(features))
        x = torch.where(valid.unsqueeze(-1), self.step_mlp(features), self.missing_emb.weight)
        x = x + self.step_emb.weight[:x.size(1)]
        for block in self.blocks:
            x = block(x)
        token = x[torch.arange(x.size(0), device=x.device), reference_step]
        return self.norm(token + self.type_emb(agent_type))
