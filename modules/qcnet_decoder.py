"""Supervised QCNet decoder: recurrent trajectory proposal, then one refinement pass and mode scores."""
import math
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from layers.fourier_embedding import FourierEmbedding
from layers.layer_ops import PLAIN_OPS
from layers.mlp_layer import MLPLayer
from modules.qcnet_proposal_decoder import QCNetProposeStage
from utils.geometry import wrap_angle
from utils.weight_init import weight_init

# Lower bounds added to the predicted Laplace scales / von Mises concentrations' inverses (as in the official model).
MIN_SCALE = 0.1
MIN_INV_CONC = 0.02


class QCNetDecoder(QCNetProposeStage):
    """QCNet's query-centric decoder.

    ``forward(data, scene_enc)`` returns, in each agent's frame at the last history step (A agents, K modes,
    F future steps):
    loc_propose_pos / scale_propose_pos [A, K, F, output_dim], loc_propose_head / conc_propose_head [A, K, F, 1],
    loc_refine_pos / scale_refine_pos [A, K, F, output_dim], loc_refine_head / conc_refine_head [A, K, F, 1]
    (zeros when ``output_head`` is False) and pi [A, K] (mode logits).
    ``ops.gru_final_state`` runs the trajectory GRU (layers/layer_ops.py; acceleration swaps in a compiled loop).
    """

    ops = PLAIN_OPS

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, output_dim: int, output_head: bool,
                 num_historical_steps: int, num_future_steps: int, num_modes: int, num_recurrent_steps: int,
                 num_t2m_steps: Optional[int], pl2m_radius: float, a2m_radius: float, num_freq_bands: int,
                 num_layers: int, num_heads: int, head_dim: int, dropout: float) -> None:
        if num_future_steps % num_recurrent_steps != 0:
            raise ValueError(f'num_future_steps ({num_future_steps}) must be a multiple of num_recurrent_steps '
                             f'({num_recurrent_steps})')
        super().__init__(dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim,
                         output_head=output_head, num_historical_steps=num_historical_steps,
                         num_future_steps=num_future_steps, num_modes=num_modes,
                         num_recurrent_steps=num_recurrent_steps, num_t2m_steps=num_t2m_steps,
                         pl2m_radius=pl2m_radius, a2m_radius=a2m_radius, num_freq_bands=num_freq_bands,
                         num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.t2m_refine_attn_layers = self._attention_stack(bipartite=True)
        self.pl2m_refine_attn_layers = self._attention_stack(bipartite=True)
        self.a2m_refine_attn_layers = self._attention_stack(bipartite=True)
        self.m2m_refine_attn_layer = self._attention(bipartite=False, has_pos_emb=False)
        steps_per_recurrence = num_future_steps // num_recurrent_steps
        self.to_loc_propose_pos = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                           output_dim=steps_per_recurrence * output_dim)
        self.to_scale_propose_pos = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                             output_dim=steps_per_recurrence * output_dim)
        self.to_loc_refine_pos = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                          output_dim=num_future_steps * output_dim)
        self.to_scale_refine_pos = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                            output_dim=num_future_steps * output_dim)
        if output_head:
            self.to_loc_propose_head = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                                output_dim=steps_per_recurrence)
            self.to_conc_propose_head = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                                 output_dim=steps_per_recurrence)
            self.to_loc_refine_head = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=num_future_steps)
            self.to_conc_refine_head = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim,
                                                output_dim=num_future_steps)
        else:
            self.to_loc_propose_head = None
            self.to_conc_propose_head = None
            self.to_loc_refine_head = None
            self.to_conc_refine_head = None
        self.to_pi = MLPLayer(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=1)
        self.apply(weight_init)

    def _register_trajectory_embedding(self) -> None:
        # Embeds each proposed waypoint (x, y[, heading]) and summarises the trajectory with a GRU.
        self.y_emb = FourierEmbedding(input_dim=self.output_dim + self.output_head, hidden_dim=self.hidden_dim,
                                      num_freq_bands=self.num_freq_bands)
        self.traj_emb = nn.GRU(input_size=self.hidden_dim, hidden_size=self.hidden_dim, num_layers=1, bias=True,
                               batch_first=False, dropout=0.0, bidirectional=False)
        self.traj_emb_h0 = nn.Parameter(torch.zeros(1, self.hidden_dim))

    def forward(self, data: HeteroData, scene_enc: Mapping[str, torch.Tensor],
                edges: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """edges: ``build_graph(data)`` when computed beforehand (else built here)."""
        num_modes, fut, out_dim = self.num_modes, self.num_future_steps, self.output_dim
        # Everything below runs on the query slots (agents with a target + one shared slot for the others) and is
        # copied out to the agents at the end.
        graph, proposals = self.propose(data, scene_enc, edges)
        # Head outputs are taken in the data's dtype: under mixed precision the positions (sums of 60 steps, tens
        # of metres) and the losses on them stay in float32.
        out_dtype = data['agent']['position'].dtype
        stacked = torch.stack(proposals)  # [R, S, K, hidden]: each head runs once over all recurrences

        def over_recurrences(head: nn.Module) -> torch.Tensor:
            """[S, K, R * chunk]: the head's output for each recurrence, concatenated in recurrence order."""
            out = head(stacked).to(out_dtype)  # [R, S, K, chunk]
            return out.permute(1, 2, 0, 3).reshape(out.size(1), out.size(2), -1)

        # Each recurrence predicts the next chunk of per-step displacements; cumsum turns them into positions.
        loc_propose_pos = torch.cumsum(over_recurrences(self.to_loc_propose_pos).view(-1, num_modes, fut, out_dim),
                                       dim=-2)
        scale_propose_pos = torch.cumsum(
            F.elu(over_recurrences(self.to_scale_propose_pos).view(-1, num_modes, fut, out_dim), alpha=1.0) + 1.0,
            dim=-2) + MIN_SCALE
        if self.output_head:
            loc_propose_head = torch.cumsum(
                torch.tanh(over_recurrences(self.to_loc_propose_head).unsqueeze(-1)) * math.pi, dim=-2)
            conc_propose_head = 1.0 / (torch.cumsum(
                F.elu(over_recurrences(self.to_conc_propose_head).unsqueeze(-1)) + 1.0, dim=-2) + MIN_INV_CONC)
            waypoints = torch.cat([loc_propose_pos.detach(), wrap_angle(loc_propose_head.detach())], dim=-1)
        else:
            loc_propose_head = loc_propose_pos.new_zeros(loc_propose_pos.shape[:-1] + (1,))
            conc_propose_head = scale_propose_pos.new_zeros(scale_propose_pos.shape[:-1] + (1,))
            waypoints = loc_propose_pos.detach()

        # Refinement: the proposal (gradient stopped) re-enters as the new query through the GRU summary.
        m = self.y_emb(waypoints.reshape(-1, waypoints.size(-1)))
        m = m.reshape(-1, fut, self.hidden_dim).transpose(0, 1)  # [F, S*K, hidden]
        m = self.ops.gru_final_state(self.traj_emb, m, self.traj_emb_h0.expand(m.size(1), -1))
        m = m.view(-1, num_modes, self.hidden_dim)  # [S, K, hidden]
        m = self.attend(m, graph, self.t2m_refine_attn_layers, self.pl2m_refine_attn_layers,
                        self.a2m_refine_attn_layers, self.m2m_refine_attn_layer)  # [S, K, hidden]
        loc_refine_pos = (self.to_loc_refine_pos(m).to(out_dtype).view(-1, num_modes, fut, out_dim)
                          + loc_propose_pos.detach())
        scale_refine_pos = F.elu(self.to_scale_refine_pos(m).to(out_dtype).view(-1, num_modes, fut, out_dim),
                                 alpha=1.0) + 1.0 + MIN_SCALE
        if self.output_head:
            loc_refine_head = torch.tanh(self.to_loc_refine_head(m).to(out_dtype).unsqueeze(-1)) * math.pi
            loc_refine_head = loc_refine_head + loc_propose_head.detach()
            conc_refine_head = 1.0 / (F.elu(self.to_conc_refine_head(m).to(out_dtype).unsqueeze(-1)) + 1.0
                                      + MIN_INV_CONC)
        else:
            loc_refine_head = loc_refine_pos.new_zeros(loc_refine_pos.shape[:-1] + (1,))
            conc_refine_head = scale_refine_pos.new_zeros(scale_refine_pos.shape[:-1] + (1,))
        pi = self.to_pi(m).squeeze(-1).to(out_dtype)
        per_slot = {
            'loc_propose_pos': loc_propose_pos,
            'scale_propose_pos': scale_propose_pos,
            'loc_propose_head': loc_propose_head,
            'conc_propose_head': conc_propose_head,
            'loc_refine_pos': loc_refine_pos,
            'scale_refine_pos': scale_refine_pos,
            'loc_refine_head': loc_refine_head,
            'conc_refine_head': conc_refine_head,
            'pi': pi,
        }
        return {name: graph.to_agents(value) for name, value in per_slot.items()}
