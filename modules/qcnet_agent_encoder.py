"""QCNet agent encoder: factorised temporal, map->agent and agent<->agent attention over the history window."""
from typing import Dict, Mapping, Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch_geometric.data import Batch, HeteroData

from datasets.scenario import AV2_NUM_AGENT_TYPES
from layers.attention_layer import AttentionLayer, normalize_edge_embedding
from layers.fourier_embedding import FourierEmbedding
from modules.qcnet_map_encoder import MAX_NUM_NEIGHBORS, relative_pose_features
from utils.geometry import angle_between_2d_vectors, wrap_angle
from utils.graph import bipartite_dense_to_sparse, max_nodes_per_example, radius, radius_graph
from utils.weight_init import weight_init


def scene_batch_info(data: HeteroData, node_type: str):
    """(batch vector [N] or None, number of scenes) of a node type, for a single HeteroData or a Batch."""
    if isinstance(data, Batch):
        return data[node_type]['batch'], data.num_graphs
    return None, 1


def repeat_batch_over_steps(batch: Optional[torch.Tensor], num_nodes: int, num_scenes: int, num_steps: int,
                            device: torch.device) -> torch.Tensor:
    """Example ids [num_steps * N] for nodes laid out step-major (index t * N + n): scene s at step t -> t * S + s."""
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    steps = torch.arange(num_steps, device=device).unsqueeze(1)
    return (batch.unsqueeze(0) + num_scenes * steps).reshape(-1)


class QCNetAgentEncoder(nn.Module):
    """Encodes every agent at every history step.

    Uses the first ``num_historical_steps`` steps of the agent tensors (the SSL module can pass a shorter window).
    Returns {'x_a': [A, num_historical_steps, hidden]}; invalid steps carry embeddings that nothing attends to.

    ``checkpoint_layers`` (memory option, same results): when gradients are on, the edge embeddings (r_t, r_pl2a,
    r_a2a) and each layer (temporal + map->agent + agent->agent attention) keep only their inputs for the backward
    pass and recompute the rest there (torch.utils.checkpoint; dropout masks are replayed): about a third of the
    training step's activation memory for ~1/3 more agent-encoder compute.
    """

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, num_historical_steps: int,
                 time_span: Optional[int], pl2a_radius: float, a2a_radius: float, num_freq_bands: int,
                 num_layers: int, num_heads: int, head_dim: int, dropout: float,
                 checkpoint_layers: bool = False) -> None:
        super().__init__()
        if dataset != 'argoverse_v2':
            raise ValueError(f'{dataset} is not a valid dataset')
        self.dataset = dataset
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.num_historical_steps = num_historical_steps
        self.time_span = time_span if time_span is not None else num_historical_steps
        self.pl2a_radius = pl2a_radius
        self.a2a_radius = a2a_radius
        self.num_freq_bands = num_freq_bands
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.checkpoint_layers = checkpoint_layers

        # Agent state: |motion|, angle(heading, motion), |velocity|, angle(heading, velocity).
        input_dim_x_a = 4
        # Temporal edges: distance, bearing, relative heading, time offset.
        input_dim_r_t = 4
        # Spatial edges: distance, bearing, relative heading/orientation (2-D even when input_dim == 3).
        input_dim_r_pl2a = 3
        input_dim_r_a2a = 3

        self.type_a_emb = nn.Embedding(AV2_NUM_AGENT_TYPES, hidden_dim)
        self.x_a_emb = FourierEmbedding(input_dim=input_dim_x_a, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.r_t_emb = FourierEmbedding(input_dim=input_dim_r_t, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.r_pl2a_emb = FourierEmbedding(input_dim=input_dim_r_pl2a, hidden_dim=hidden_dim,
                                           num_freq_bands=num_freq_bands)
        self.r_a2a_emb = FourierEmbedding(input_dim=input_dim_r_a2a, hidden_dim=hidden_dim,
                                          num_freq_bands=num_freq_bands)
        self.t_attn_layers = nn.ModuleList([
            AttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
                           bipartite=False, has_pos_emb=True) for _ in range(num_layers)])
        self.pl2a_attn_layers = nn.ModuleList([
            AttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
                           bipartite=True, has_pos_emb=True) for _ in range(num_layers)])
        self.a2a_attn_layers = nn.ModuleList([
            AttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
                           bipartite=False, has_pos_emb=True) for _ in range(num_layers)])
        self.apply(weight_init)

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """The agent encoder's edges (data dependent sizes, see utils.static_graph):
        't' [2, E]: temporal, earlier valid step -> later valid step of the same agent, at most time_span steps
        apart, agent-major node index a * T + t; 'pl2a' [2, E]: polygon -> agent step within pl2a_radius, target in
        the step-major index t * A + a; 'a2a' [2, E]: agent step -> agent step of the same step within a2a_radius,
        step-major. Invalid agent steps get no edges."""
        steps = self.num_historical_steps
        agent = data['agent']
        num_agents = agent['position'].size(0)
        mask = agent['valid_mask'][:, :steps]  # [A, T]
        pos_a = agent['position'][:, :steps, :self.input_dim]
        pos_pl = data['map_polygon']['position'][:, :self.input_dim]
        num_polygons = pos_pl.size(0)

        offsets = torch.arange(steps, device=mask.device)
        gap = offsets.unsqueeze(0) - offsets.unsqueeze(1)  # gap[src, dst] = dst - src
        band = (gap > 0) & (gap <= self.time_span)
        edge_index_t = bipartite_dense_to_sparse(mask.unsqueeze(2) & mask.unsqueeze(1) & band)

        # Spatial graphs per history step (one example per (step, scene)).
        pos_s = pos_a.transpose(0, 1).reshape(-1, self.input_dim)
        mask_s = mask.transpose(0, 1).reshape(-1)
        batch_a, num_scenes = scene_batch_info(data, 'agent')
        batch_pl, _ = scene_batch_info(data, 'map_polygon')
        batch_s = repeat_batch_over_steps(batch_a, num_agents, num_scenes, steps, pos_a.device)
        batch_pl_s = repeat_batch_over_steps(batch_pl, num_polygons, num_scenes, steps, pos_a.device)
        pos_pl_s = pos_pl.repeat(steps, 1)
        # Padded search sizes read on the host (no device sync); invalid agents are dropped inside the search,
        # after the neighbour cap (same edges as filtering afterwards).
        most_agents = max_nodes_per_example(data, 'agent')
        most_polygons = max_nodes_per_example(data, 'map_polygon')
        sizes = (most_agents, most_polygons) if most_agents is not None and most_polygons is not None else None
        edge_index_pl2a = radius(x=pos_s[:, :2], y=pos_pl_s[:, :2], r=self.pl2a_radius, batch_x=batch_s,
                                 batch_y=batch_pl_s, max_num_neighbors=MAX_NUM_NEIGHBORS,
                                 batch_size=num_scenes * steps, max_per_example=sizes, x_mask=mask_s)
        # The polygon embedding is the same at every step: attend to the P polygon rows directly instead of to
        # T copies of them (identical result, T times less work on the source side).
        edge_index_pl2a = torch.stack([edge_index_pl2a[0] % num_polygons, edge_index_pl2a[1]], dim=0)
        edge_index_a2a = radius_graph(x=pos_s[:, :2], r=self.a2a_radius, batch=batch_s, loop=False,
                                      max_num_neighbors=MAX_NUM_NEIGHBORS, batch_size=num_scenes * steps,
                                      max_per_example=most_agents, source_mask=mask_s, target_mask=mask_s)
        return {'t': edge_index_t, 'pl2a': edge_index_pl2a, 'a2a': edge_index_a2a}

    def forward(self, data: HeteroData, map_enc: Mapping[str, torch.Tensor],
                graph: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """data: scene(s) with agent tensors of >= num_historical_steps steps; map_enc: output of the map encoder;
        graph: ``build_graph(data)`` when computed beforehand (else built here)."""
        steps = self.num_historical_steps
        agent = data['agent']
        num_agents = agent['position'].size(0)
        pos_a = agent['position'][:, :steps, :self.input_dim]  # [A, T, D], world frame
        motion_vector_a = torch.cat([pos_a.new_zeros(num_agents, 1, self.input_dim),
                                     pos_a[:, 1:] - pos_a[:, :-1]], dim=1)
        head_a = agent['heading'][:, :steps]
        head_vector_a = torch.stack([head_a.cos(), head_a.sin()], dim=-1)
        vel = agent['velocity'][:, :steps, :self.input_dim]
        pos_pl = data['map_polygon']['position'][:, :self.input_dim]
        orient_pl = data['map_polygon']['orientation']

        # Per-step agent state, expressed relative to the agent's own heading (rotation invariant).
        x_a = torch.stack(
            [torch.linalg.vector_norm(motion_vector_a[:, :, :2], dim=-1),
             angle_between_2d_vectors(ctr_vector=head_vector_a, nbr_vector=motion_vector_a[:, :, :2]),
             torch.linalg.vector_norm(vel[:, :, :2], dim=-1),
             angle_between_2d_vectors(ctr_vector=head_vector_a, nbr_vector=vel[:, :, :2])], dim=-1)
        type_emb = self.type_a_emb(agent['type'].long())
        type_emb = type_emb.unsqueeze(1).expand(-1, steps, -1).reshape(-1, self.hidden_dim)  # [A*T, hidden]
        x_a = self.x_a_emb(continuous_inputs=x_a.reshape(-1, x_a.size(-1)), categorical_embs=[type_emb])
        x_a = x_a.view(-1, steps, self.hidden_dim)

        # Temporal edges (agent-major node index a * T + t): earlier valid step -> later valid step of the same
        # agent, at most time_span steps apart.
        pos_t = pos_a.reshape(-1, self.input_dim)
        head_t = head_a.reshape(-1)
        head_vector_t = head_vector_a.reshape(-1, 2)
        graph = self.build_graph(data) if graph is None else graph
        edge_index_t = graph['t']
        src, dst = edge_index_t
        rel_pos_t = pos_t[src] - pos_t[dst]
        r_t = torch.stack(
            [torch.linalg.vector_norm(rel_pos_t[:, :2], dim=-1),
             angle_between_2d_vectors(ctr_vector=head_vector_t[dst], nbr_vector=rel_pos_t[:, :2]),
             wrap_angle(head_t[src] - head_t[dst]),
             (src - dst).to(pos_t.dtype)], dim=-1)
        r_t = self._maybe_checkpoint(self._edge_embedding, self.r_t_emb, r_t)

        # Spatial graphs per history step (step-major node index t * A + a; one example per (step, scene)).
        pos_s = pos_a.transpose(0, 1).reshape(-1, self.input_dim)
        head_s = head_a.transpose(0, 1).reshape(-1)
        head_vector_s = head_vector_a.transpose(0, 1).reshape(-1, 2)
        edge_index_pl2a = graph['pl2a']
        src, dst = edge_index_pl2a
        r_pl2a = relative_pose_features(pos_pl[src] - pos_s[dst], head_vector_s[dst],
                                        wrap_angle(orient_pl[src] - head_s[dst]), input_dim=2)
        r_pl2a = self._maybe_checkpoint(self._edge_embedding, self.r_pl2a_emb, r_pl2a)

        edge_index_a2a = graph['a2a']
        src, dst = edge_index_a2a
        r_a2a = relative_pose_features(pos_s[src] - pos_s[dst], head_vector_s[dst],
                                       wrap_angle(head_s[src] - head_s[dst]), input_dim=2)
        r_a2a = self._maybe_checkpoint(self._edge_embedding, self.r_a2a_emb, r_a2a)

        x_pl = map_enc['x_pl'][:, 0]  # [P, hidden]: time invariant
        for i in range(self.num_layers):
            x_a = self._maybe_checkpoint(self._layer, i, x_a, x_pl, r_t, edge_index_t, r_pl2a, edge_index_pl2a,
                                         r_a2a, edge_index_a2a)
        return {'x_a': x_a}

    def _layer(self, i: int, x_a: torch.Tensor, x_pl: torch.Tensor, r_t: torch.Tensor, edge_index_t: torch.Tensor,
               r_pl2a: torch.Tensor, edge_index_pl2a: torch.Tensor, r_a2a: torch.Tensor,
               edge_index_a2a: torch.Tensor) -> torch.Tensor:
        """Layer i: x_a [A, T, hidden] -> [A, T, hidden] (temporal, then map->agent and agent->agent per step)."""
        steps = x_a.size(1)
        x_a = x_a.reshape(-1, self.hidden_dim)
        x_a = self.t_attn_layers[i](x_a, r_t, edge_index_t, r_normalized=True)
        x_a = x_a.reshape(-1, steps, self.hidden_dim).transpose(0, 1).reshape(-1, self.hidden_dim)
        x_a = self.pl2a_attn_layers[i]((x_pl, x_a), r_pl2a, edge_index_pl2a, r_normalized=True)
        x_a = self.a2a_attn_layers[i](x_a, r_a2a, edge_index_a2a, r_normalized=True)
        return x_a.reshape(steps, -1, self.hidden_dim).transpose(0, 1)

    @staticmethod
    def _edge_embedding(embedding: FourierEmbedding, features: torch.Tensor) -> torch.Tensor:
        """Edge features [E, F] -> normalised edge embedding [E, hidden], shared by the layers (each applies its
        own norm's scale and shift, see layers.attention_layer.normalize_edge_embedding)."""
        return normalize_edge_embedding(embedding(continuous_inputs=features, categorical_embs=None))

    def _maybe_checkpoint(self, fn, *args):
        if self.checkpoint_layers and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)
