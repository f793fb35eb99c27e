"""Mode-query decoding shared by the supervised QCNet decoder and the propose-only SmartPretrain decoder.

``QCNetProposeStage`` builds the query graphs (history -> mode, map -> mode, agent -> mode, mode <-> mode) and runs
the recurrent proposal attention; ``QCNetProposalDecoder`` exposes the mode embedding after each recurrence, and
``modules.qcnet_decoder.QCNetDecoder`` adds the trajectory heads and the refinement stage.

The mode queries are kept as [S, K, hidden] (K modes) for S query *slots*: one per agent with a prediction target,
plus one shared slot for all other agents. An agent without a target receives no edge, so its queries evolve from
the learnt mode embeddings alone, identically for every such agent: computing that once and copying it
(``ModeQueryGraph.query_slot``) gives the official outputs for every agent while the recurrences, the GRU and the
heads run only on the agents that matter (on the real scenes a third of the agents have no target).
The history/map/agent -> mode edges end at the slot (not at each of its K queries): every mode attends over the
same edges, so edge embeddings, keys and values are computed once per edge and shared by the K modes (see
``layers.AttentionLayer``'s multi-query targets); the official implementation repeats each edge and its embedding K
times, with the same result.
"""
from typing import Dict, List, Mapping, NamedTuple, Optional

import torch
import torch.nn as nn
from torch_geometric.data import Batch, HeteroData

from layers.attention_layer import AttentionLayer, normalize_edge_embedding
from layers.fourier_embedding import FourierEmbedding
from modules.qcnet_map_encoder import MAX_NUM_NEIGHBORS, relative_pose_features
from utils.geometry import angle_between_2d_vectors, wrap_angle
from utils.graph import bipartite_dense_to_sparse, max_nodes_per_example, radius, radius_graph
from utils.weight_init import weight_init


class ModeQueryGraph(NamedTuple):
    """Inputs of the mode-query attention layers (node sets and edges), computed once per forward pass.

    x_t [A*T, hidden] agent history (agent-major), x_pl [P, hidden] map polygons, x_a [A, hidden] agents at the
    current step; edge_index_t2m [2, E] (x_t -> query slot), edge_index_pl2m (x_pl -> slot), edge_index_a2m (x_a ->
    slot): each edge feeds all K mode queries of its target slot; edge_index_m2m (query s * K + k <-> the same
    slot's queries); r_* the matching edge embeddings [E, hidden], one row per edge (not per mode), normalised
    (``layers.attention_layer.normalize_edge_embedding``: shared by all layers and recurrences); query_slot [A]: the
    slot of each agent (agents without a target share the last slot, which has no edges); num_slots = S.
    """
    x_t: torch.Tensor
    x_pl: torch.Tensor
    x_a: torch.Tensor
    edge_index_t2m: torch.Tensor
    r_t2m: torch.Tensor
    edge_index_pl2m: torch.Tensor
    r_pl2m: torch.Tensor
    edge_index_a2m: torch.Tensor
    r_a2m: torch.Tensor
    edge_index_m2m: torch.Tensor
    query_slot: torch.Tensor
    num_slots: int

    def to_agents(self, per_slot: torch.Tensor) -> torch.Tensor:
        """[S, ...] -> [A, ...]: each agent's row is its query slot's."""
        return per_slot.index_select(0, self.query_slot)


class QCNetProposeStage(nn.Module):
    """Shared part of the QCNet decoders: mode embeddings, relative-pose embeddings and proposal attention."""

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, output_dim: int, output_head: bool,
                 num_historical_steps: int, num_future_steps: int, num_modes: int, num_recurrent_steps: int,
                 num_t2m_steps: Optional[int], pl2m_radius: float, a2m_radius: float, num_freq_bands: int,
                 num_layers: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        if dataset != 'argoverse_v2':
            raise ValueError(f'{dataset} is not a valid dataset')
        self.dataset = dataset
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.output_head = output_head
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_modes = num_modes
        self.num_recurrent_steps = num_recurrent_steps
        self.num_t2m_steps = num_t2m_steps if num_t2m_steps is not None else num_historical_steps
        self.pl2m_radius = pl2m_radius
        self.a2m_radius = a2m_radius
        self.num_freq_bands = num_freq_bands
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout

        input_dim_r_t = 4  # distance, bearing, relative heading, time offset
        input_dim_r_pl2m = 3
        input_dim_r_a2m = 3

        # Registration order reproduces the official state-dict order.
        self.mode_emb = nn.Embedding(num_modes, hidden_dim)
        self.r_t2m_emb = FourierEmbedding(input_dim=input_dim_r_t, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.r_pl2m_emb = FourierEmbedding(input_dim=input_dim_r_pl2m, hidden_dim=hidden_dim,
                                           num_freq_bands=num_freq_bands)
        self.r_a2m_emb = FourierEmbedding(input_dim=input_dim_r_a2m, hidden_dim=hidden_dim,
                                          num_freq_bands=num_freq_bands)
        self._register_trajectory_embedding()
        self.t2m_propose_attn_layers = self._attention_stack(bipartite=True)
        self.pl2m_propose_attn_layers = self._attention_stack(bipartite=True)
        self.a2m_propose_attn_layers = self._attention_stack(bipartite=True)
        self.m2m_propose_attn_layer = self._attention(bipartite=False, has_pos_emb=False)

    def _register_trajectory_embedding(self) -> None:
        """Hook for subclasses that embed proposed trajectories (registered here to keep the official key order)."""

    def _attention(self, bipartite: bool, has_pos_emb: bool) -> AttentionLayer:
        return AttentionLayer(hidden_dim=self.hidden_dim, num_heads=self.num_heads, head_dim=self.head_dim,
                              dropout=self.dropout, bipartite=bipartite, has_pos_emb=has_pos_emb)

    def _attention_stack(self, bipartite: bool) -> nn.ModuleList:
        return nn.ModuleList([self._attention(bipartite=bipartite, has_pos_emb=True) for _ in range(self.num_layers)])

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """The mode queries' edges (data dependent sizes, see acceleration.padded_qcnet_batch). Only the last
        num_t2m_steps valid history steps feed the queries; only agents to be predicted get queries (and edges).

        't2m' [2, E]: history step (agent-major index a * T + t) -> agent a; 'pl2m': polygon -> agent within
        pl2m_radius; 'a2m': agent (valid at the current step) -> agent within a2m_radius (targets are agent
        indices); 'query_agent' [Q]: the agents with a target, in order (query slot s = the s-th of them);
        'query_slot' [A]: each agent's slot, Q for the agents without a target (one shared slot without edges);
        'm2m': query s * K + k <-> the same slot's queries (self included), for the Q slots with a target.
        """
        steps, num_modes = self.num_historical_steps, self.num_modes
        agent = data['agent']
        pos_m = agent['position'][:, steps - 1, :self.input_dim]  # [A, D]
        mask_src = agent['valid_mask'][:, :steps].clone()
        mask_src[:, :steps - self.num_t2m_steps] = False
        mask_dst = agent['predict_mask'].any(dim=-1)  # [A]
        edge_index_t2m = bipartite_dense_to_sparse((mask_src & mask_dst.unsqueeze(1)).unsqueeze(2))

        batch_a = agent['batch'] if isinstance(data, Batch) else None
        batch_pl = data['map_polygon']['batch'] if isinstance(data, Batch) else None
        num_scenes = data.num_graphs if isinstance(data, Batch) else 1  # known on the host: no sync to find it
        pos_pl = data['map_polygon']['position'][:, :self.input_dim]
        # Padded search sizes come from the host (no device sync); agents without queries are dropped inside the
        # search, after the neighbour cap (= filtering afterwards).
        most_agents = max_nodes_per_example(data, 'agent')
        most_polygons = max_nodes_per_example(data, 'map_polygon')
        sizes = (most_agents, most_polygons) if most_agents is not None and most_polygons is not None else None
        edge_index_pl2m = radius(x=pos_m[:, :2], y=pos_pl[:, :2], r=self.pl2m_radius, batch_x=batch_a,
                                 batch_y=batch_pl, max_num_neighbors=MAX_NUM_NEIGHBORS, batch_size=num_scenes,
                                 max_per_example=sizes, x_mask=mask_dst)
        edge_index_a2m = radius_graph(x=pos_m[:, :2], r=self.a2m_radius, batch=batch_a, loop=False,
                                      max_num_neighbors=MAX_NUM_NEIGHBORS, batch_size=num_scenes,
                                      max_per_example=most_agents, source_mask=mask_src[:, -1].contiguous(),
                                      target_mask=mask_dst)
        query_agent = mask_dst.nonzero(as_tuple=True)[0]
        num_queries = query_agent.size(0)
        query_slot = torch.full_like(mask_dst, num_queries, dtype=torch.long)
        query_slot[query_agent] = torch.arange(num_queries, device=query_slot.device)
        pair = mask_dst.new_ones(num_queries, num_modes, num_modes)
        edge_index_m2m = bipartite_dense_to_sparse(pair)
        return {'t2m': edge_index_t2m, 'pl2m': edge_index_pl2m, 'a2m': edge_index_a2m, 'm2m': edge_index_m2m,
                'query_agent': query_agent, 'query_slot': query_slot}

    def build_query_graph(self, data: HeteroData, scene_enc: Mapping[str, torch.Tensor],
                          edges: Optional[Mapping[str, torch.Tensor]] = None) -> ModeQueryGraph:
        """Edges (``build_graph(data)``, built here when None) and edge embeddings of the mode queries, in each
        agent's frame at the last history step."""
        steps = self.num_historical_steps
        edges = self.build_graph(data) if edges is None else edges
        agent = data['agent']
        pos_m = agent['position'][:, steps - 1, :self.input_dim]  # [A, D]
        head_m = agent['heading'][:, steps - 1]
        head_vector_m = torch.stack([head_m.cos(), head_m.sin()], dim=-1)

        x_t = scene_enc['x_a'].reshape(-1, self.hidden_dim)
        x_pl = scene_enc['x_pl'][:, steps - 1]
        x_a = scene_enc['x_a'][:, -1]

        pos_t = agent['position'][:, :steps, :self.input_dim].reshape(-1, self.input_dim)
        head_t = agent['heading'][:, :steps].reshape(-1)
        edge_index_t2m = edges['t2m']
        src, dst = edge_index_t2m
        rel_pos_t2m = pos_t[src] - pos_m[dst]
        r_t2m = torch.stack(
            [torch.linalg.vector_norm(rel_pos_t2m[:, :2], dim=-1),
             angle_between_2d_vectors(ctr_vector=head_vector_m[dst], nbr_vector=rel_pos_t2m[:, :2]),
             wrap_angle(head_t[src] - head_m[dst]),
             ((src % steps) - steps + 1).to(pos_t.dtype)], dim=-1)
        r_t2m = normalize_edge_embedding(self.r_t2m_emb(continuous_inputs=r_t2m, categorical_embs=None))

        pos_pl = data['map_polygon']['position'][:, :self.input_dim]
        orient_pl = data['map_polygon']['orientation']
        edge_index_pl2m = edges['pl2m']
        src, dst = edge_index_pl2m
        r_pl2m = relative_pose_features(pos_pl[src] - pos_m[dst], head_vector_m[dst],
                                        wrap_angle(orient_pl[src] - head_m[dst]), input_dim=2)
        r_pl2m = normalize_edge_embedding(self.r_pl2m_emb(continuous_inputs=r_pl2m, categorical_embs=None))

        edge_index_a2m = edges['a2m']
        src, dst = edge_index_a2m
        r_a2m = relative_pose_features(pos_m[src] - pos_m[dst], head_vector_m[dst],
                                       wrap_angle(head_m[src] - head_m[dst]), input_dim=2)
        r_a2m = normalize_edge_embedding(self.r_a2m_emb(continuous_inputs=r_a2m, categorical_embs=None))

        # Edge targets: agent -> its query slot (edge features above are in the target agent's frame).
        query_slot = edges['query_slot']

        def to_slots(edge_index: torch.Tensor) -> torch.Tensor:
            return torch.stack([edge_index[0], query_slot[edge_index[1]]], dim=0)
        return ModeQueryGraph(x_t, x_pl, x_a, to_slots(edge_index_t2m), r_t2m, to_slots(edge_index_pl2m), r_pl2m,
                              to_slots(edge_index_a2m), r_a2m, edges['m2m'], query_slot,
                              edges['query_agent'].size(0) + 1)

    @staticmethod
    def _sources(graph: ModeQueryGraph):
        """(sources, edge embeddings, edges) of the history, map and agent -> mode attentions."""
        return ((graph.x_t, graph.r_t2m, graph.edge_index_t2m), (graph.x_pl, graph.r_pl2m, graph.edge_index_pl2m),
                (graph.x_a, graph.r_a2m, graph.edge_index_a2m))

    def edge_keys_values(self, graph: ModeQueryGraph, t2m_layers: nn.ModuleList, pl2m_layers: nn.ModuleList,
                         a2m_layers: nn.ModuleList) -> List[List[torch.Tensor]]:
        """Per layer i: the keys/values [E, 2 * heads * head_dim] of the three query attentions. They depend on
        the sources and edges only, not on the queries: the recurrences of the proposal stage share them."""
        return [[layers[i].edge_keys_values(x_src, r, edge_index, r_normalized=True)
                 for layers, (x_src, r, edge_index) in zip((t2m_layers, pl2m_layers, a2m_layers), self._sources(graph))]
                for i in range(self.num_layers)]

    def attend(self, m: torch.Tensor, graph: ModeQueryGraph, t2m_layers: nn.ModuleList, pl2m_layers: nn.ModuleList,
               a2m_layers: nn.ModuleList, m2m_layer: AttentionLayer,
               source_kv: Optional[List[List[torch.Tensor]]] = None) -> torch.Tensor:
        """One pass of query attention: m [S, K, hidden] -> [S, K, hidden] (S query slots). ``source_kv``: the
        output of ``edge_keys_values`` for these layers (computed here when None)."""
        num_slots, num_modes = m.shape[:2]
        for i in range(self.num_layers):
            for j, (layers, (x_src, r, edge_index)) in enumerate(zip((t2m_layers, pl2m_layers, a2m_layers),
                                                                     self._sources(graph))):
                m = layers[i]((x_src, m), r, edge_index, r_normalized=True,
                              source_kv=None if source_kv is None else source_kv[i][j])
        m = m2m_layer(m.reshape(-1, self.hidden_dim), None, graph.edge_index_m2m)
        return m.view(num_slots, num_modes, self.hidden_dim)

    def propose(self, data: HeteroData, scene_enc: Mapping[str, torch.Tensor],
                edges: Optional[Mapping[str, torch.Tensor]] = None):
        """Runs the recurrent proposal stage (``edges``: ``build_graph(data)`` when computed beforehand).

        Returns (graph, list of num_recurrent_steps mode embeddings [S, K, hidden] of the query slots:
        ``graph.to_agents`` gives them per agent); each recurrence starts from the previous one's output (the first
        from the learnt mode embeddings).
        """
        graph = self.build_query_graph(data, scene_enc, edges)
        m = self.mode_emb.weight.unsqueeze(0).expand(graph.num_slots, -1, -1)  # [S, K, hidden]
        layers = (self.t2m_propose_attn_layers, self.pl2m_propose_attn_layers, self.a2m_propose_attn_layers)
        # Keys and values over the (unchanging) sources and edges: once for all recurrences.
        source_kv = self.edge_keys_values(graph, *layers) if self.num_recurrent_steps > 1 else None
        embeddings: List[torch.Tensor] = []
        for _ in range(self.num_recurrent_steps):
            m = self.attend(m, graph, *layers, self.m2m_propose_attn_layer, source_kv=source_kv)
            embeddings.append(m)
        return graph, embeddings


class QCNetProposalDecoder(QCNetProposeStage):
    """Propose-only QCNet decoder used by SmartPretrain (no trajectory heads, no refinement, no traj_emb).

    Same constructor as :class:`modules.qcnet_decoder.QCNetDecoder`; parameter names match the ``decoder.*``
    entries of the official SmartPretrain checkpoints. ``forward(data, scene_enc)`` returns the mode embedding after
    each recurrence, shaped [num_recurrent_steps, A, hidden] when ``num_modes == 1`` (SmartPretrain) and
    [num_recurrent_steps, A, num_modes, hidden] otherwise, in each agent's frame at the last history step. Agents
    with no prediction target receive no edges: their embeddings come from the mode embedding alone.
    """

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, output_dim: int, output_head: bool,
                 num_historical_steps: int, num_future_steps: int, num_modes: int, num_recurrent_steps: int,
                 num_t2m_steps: Optional[int], pl2m_radius: float, a2m_radius: float, num_freq_bands: int,
                 num_layers: int, num_heads: int, head_dim: int, dropout: float) -> None:
        super().__init__(dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, output_dim=output_dim,
                         output_head=output_head, num_historical_steps=num_historical_steps,
                         num_future_steps=num_future_steps, num_modes=num_modes,
                         num_recurrent_steps=num_recurrent_steps, num_t2m_steps=num_t2m_steps,
                         pl2m_radius=pl2m_radius, a2m_radius=a2m_radius, num_freq_bands=num_freq_bands,
                         num_layers=num_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.apply(weight_init)

    def forward(self, data: HeteroData, scene_enc: Mapping[str, torch.Tensor],
                edges: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """edges: ``build_graph(data)`` when computed beforehand (else built here)."""
        graph, embeddings = self.propose(data, scene_enc, edges)
        out = graph.to_agents(torch.stack(embeddings, dim=1)).transpose(0, 1)  # [R, A, K, hidden]
        return out.squeeze(2) if self.num_modes == 1 else out
