"""Supervised decoder of the Forecast-MAE-style backbone: segment-wise proposal, one refinement pass, mode scores."""
import math
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from layers.mlp_layer import MLPLayer
from modules.forecast_mae_attention import QueryBlock
from modules.forecast_mae_encoder import ForecastMAEEncoding
from modules.forecast_mae_proposal_decoder import ForecastMAEProposalDecoder
from modules.qcnet_decoder import MIN_INV_CONC, MIN_SCALE
from utils.geometry import wrap_angle
from utils.weight_init import weight_init


class ForecastMAEDecoder(ForecastMAEProposalDecoder):
    """K-mode trajectory decoder with the output contract of ``modules.QCNetDecoder``.

    Proposal: segment query (k, r) predicts the per-step displacements (and Laplace scale increments) of future
    segment r; cumulative sums give positions. Refinement: an MLP embedding of the proposal (gradient stopped) plus
    the mean of mode k's segment queries goes through ``num_layers`` query blocks (cross-attention to the scene,
    self-attention among the agent's K modes) and predicts a residual, the final scales and the mode logit.

    ``forward(scene_enc)`` returns, in each agent's frame at its last history step (A agents, K modes, F steps):
    loc_propose_pos / scale_propose_pos [A, K, F, output_dim], loc_propose_head / conc_propose_head [A, K, F, 1],
    loc_refine_pos / scale_refine_pos [A, K, F, output_dim], loc_refine_head / conc_refine_head [A, K, F, 1]
    (zeros when ``output_head`` is False) and pi [A, K] (mode logits).
    """

    def __init__(self, hidden_dim: int, output_dim: int, output_head: bool, num_future_steps: int, num_modes: int,
                 num_recurrent_steps: int, num_layers: int, num_heads: int, head_dim: int, dropout: float) -> None:
        if num_future_steps % num_recurrent_steps != 0:
            raise ValueError(f'num_future_steps ({num_future_steps}) must be a multiple of num_recurrent_steps '
                             f'({num_recurrent_steps})')
        super().__init__(hidden_dim=hidden_dim, num_modes=num_modes, num_recurrent_steps=num_recurrent_steps,
                         num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.output_dim = output_dim
        self.output_head = output_head
        self.num_future_steps = num_future_steps
        segment = num_future_steps // num_recurrent_steps
        waypoint_dim = output_dim + int(output_head)
        self.to_loc_propose_pos = MLPLayer(hidden_dim, hidden_dim, segment * output_dim)
        self.to_scale_propose_pos = MLPLayer(hidden_dim, hidden_dim, segment * output_dim)
        self.traj_emb = MLPLayer(num_future_steps * waypoint_dim, hidden_dim, hidden_dim)
        self.refine_blocks = nn.ModuleList([QueryBlock(hidden_dim, num_heads, head_dim, dropout)
                                            for _ in range(num_layers)])
        self.to_loc_refine_pos = MLPLayer(hidden_dim, hidden_dim, num_future_steps * output_dim)
        self.to_scale_refine_pos = MLPLayer(hidden_dim, hidden_dim, num_future_steps * output_dim)
        if output_head:
            self.to_loc_propose_head = MLPLayer(hidden_dim, hidden_dim, segment)
            self.to_conc_propose_head = MLPLayer(hidden_dim, hidden_dim, segment)
            self.to_loc_refine_head = MLPLayer(hidden_dim, hidden_dim, num_future_steps)
            self.to_conc_refine_head = MLPLayer(hidden_dim, hidden_dim, num_future_steps)
        self.to_pi = MLPLayer(hidden_dim, hidden_dim, 1)
        self.apply(weight_init)

    def forward(self, scene_enc: ForecastMAEEncoding) -> Dict[str, torch.Tensor]:
        num_modes, fut, out_dim = self.num_modes, self.num_future_steps, self.output_dim
        segments = super().forward(scene_enc)                                     # [A, K, R, D]
        num_agents = segments.size(0)
        # Segment r's queries emit its steps; concatenating the R segments orders them in time.
        loc_propose_pos = torch.cumsum(self.to_loc_propose_pos(segments).view(num_agents, num_modes, fut, out_dim),
                                       dim=-2)
        scale_propose_pos = torch.cumsum(
            F.elu(self.to_scale_propose_pos(segments).view(num_agents, num_modes, fut, out_dim)) + 1.0,
            dim=-2) + MIN_SCALE
        if self.output_head:
            loc_propose_head = torch.cumsum(torch.tanh(self.to_loc_propose_head(segments).view(
                num_agents, num_modes, fut, 1)) * math.pi, dim=-2)
            conc_propose_head = 1.0 / (torch.cumsum(F.elu(self.to_conc_propose_head(segments).view(
                num_agents, num_modes, fut, 1)) + 1.0, dim=-2) + MIN_INV_CONC)
            waypoints = torch.cat([loc_propose_pos.detach(), wrap_angle(loc_propose_head.detach())], dim=-1)
        else:
            loc_propose_head = loc_propose_pos.new_zeros(loc_propose_pos.shape[:-1] + (1,))
            conc_propose_head = scale_propose_pos.new_zeros(scale_propose_pos.shape[:-1] + (1,))
            waypoints = loc_propose_pos.detach()

        modes = self.traj_emb(waypoints.flatten(2)) + segments.mean(dim=2)       # [A, K, D]
        modes = self.attend(modes, scene_enc, self.refine_blocks)
        loc_refine_pos = (self.to_loc_refine_pos(modes).view(num_agents, num_modes, fut, out_dim)
                          + loc_propose_pos.detach())
        scale_refine_pos = F.elu(self.to_scale_refine_pos(modes).view(num_agents, num_modes, fut, out_dim)) \
            + 1.0 + MIN_SCALE
        if self.output_head:
            loc_refine_head = (torch.tanh(self.to_loc_refine_head(modes).unsqueeze(-1)) * math.pi
                               + loc_propose_head.detach())
            conc_refine_head = 1.0 / (F.elu(self.to_conc_refine_head(modes).unsqueeze(-1)) + 1.0 + MIN_INV_CONC)
        else:
            loc_refine_head = loc_refine_pos.new_zeros(loc_refine_pos.shape[:-1] + (1,))
            conc_refine_head = scale_refine_pos.new_zeros(scale_refine_pos.shape[:-1] + (1,))
        return {'loc_propose_pos': loc_propose_pos, 'scale_propose_pos': scale_propose_pos,
                'loc_propose_head': loc_propose_head, 'conc_propose_head': conc_propose_head,
                'loc_refine_pos': loc_refine_pos, 'scale_refine_pos': scale_refine_pos,
                'loc_refine_head': loc_refine_head, 'conc_refine_head': conc_refine_head, 'pi': self.to_pi(modes)
                .squeeze(-1)}
