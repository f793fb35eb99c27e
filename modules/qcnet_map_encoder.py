"""QCNet map encoder: map points -> polygons, then polygon <-> polygon attention."""
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch_geometric.data import Batch, HeteroData

from datasets.scenario import (AV2_NUM_POINT_TYPES, AV2_NUM_POLYGON_TYPES, NUM_POINT_SIDES,
                               NUM_POLYGON_INTERSECTION_FLAGS, NUM_POLYGON_TO_POLYGON_TYPES)
from layers.attention_layer import AttentionLayer, normalize_edge_embedding
from layers.fourier_embedding import FourierEmbedding
from utils.geometry import angle_between_2d_vectors, wrap_angle
from utils.graph import max_nodes_per_example, merge_edges, radius_graph
from utils.weight_init import weight_init

# Cap on neighbours per polygon in the radius graph (as in the official model).
MAX_NUM_NEIGHBORS = 300


def relative_pose_features(rel_pos: torch.Tensor, ctr_orient_vector: torch.Tensor, rel_orient: torch.Tensor,
                           input_dim: int) -> torch.Tensor:
    """Edge features in the target's frame: [distance, bearing, (dz,) relative orientation] -> [E, 3 or 4].

    rel_pos [E, input_dim]: source minus target position (world frame); ctr_orient_vector [E, 2]: unit heading of
    the target; rel_orient [E]: wrapped source-minus-target heading.
    """
    feats = [torch.linalg.vector_norm(rel_pos[:, :2], dim=-1),
             angle_between_2d_vectors(ctr_vector=ctr_orient_vector, nbr_vector=rel_pos[:, :2])]
    if input_dim == 3:
        feats.append(rel_pos[:, -1])
    elif input_dim != 2:
        raise ValueError(f'{input_dim} is not a valid dimension')
    feats.append(rel_orient)
    return torch.stack(feats, dim=-1)


class QCNetMapEncoder(nn.Module):
    """Encodes the map polygons of a scene.

    Returns {'x_pt': [N_pt, hidden] point embeddings, 'x_pl': [P, num_historical_steps, hidden]} — the polygon
    embedding is time invariant and repeated over the history steps (as an expanded view, no copy).
    """

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, num_historical_steps: int, pl2pl_radius: float,
                 num_freq_bands: int, num_layers: int, num_heads: int, head_dim: int, dropout: float,
                 num_point_types: Optional[int] = None, num_polygon_types: Optional[int] = None) -> None:
        super().__init__()
        if dataset != 'argoverse_v2':
            raise ValueError(f'{dataset} is not a valid dataset')
        if input_dim not in (2, 3):
            raise ValueError(f'{input_dim} is not a valid dimension')
        self.dataset = dataset
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.num_historical_steps = num_historical_steps
        self.pl2pl_radius = pl2pl_radius
        self.num_freq_bands = num_freq_bands
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout

        # Continuous inputs: points (magnitude[, height]), polygons (none | height), edges (dist, bearing[, dz], dyaw).
        input_dim_x_pt = input_dim - 1
        input_dim_x_pl = input_dim - 2
        input_dim_r = input_dim + 1

        # Larger type tables (num_point_types / num_polygon_types) hold the union vocabularies of multi-dataset
        # pre-training (datasets/scenario.py: Argoverse 2's types first); None = Argoverse 2's sizes.
        self.type_pt_emb = nn.Embedding(num_point_types or AV2_NUM_POINT_TYPES, hidden_dim)
        self.side_pt_emb = nn.Embedding(NUM_POINT_SIDES, hidden_dim)
        self.type_pl_emb = nn.Embedding(num_polygon_types or AV2_NUM_POLYGON_TYPES, hidden_dim)
        self.int_pl_emb = nn.Embedding(NUM_POLYGON_INTERSECTION_FLAGS, hidden_dim)
        self.type_pl2pl_emb = nn.Embedding(NUM_POLYGON_TO_POLYGON_TYPES, hidden_dim)
        self.x_pt_emb = FourierEmbedding(input_dim=input_dim_x_pt, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.x_pl_emb = FourierEmbedding(input_dim=input_dim_x_pl, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.r_pt2pl_emb = FourierEmbedding(input_dim=input_dim_r, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.r_pl2pl_emb = FourierEmbedding(input_dim=input_dim_r, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.pt2pl_layers = nn.ModuleList([
            AttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
                           bipartite=True, has_pos_emb=True) for _ in range(num_layers)])
        self.pl2pl_layers = nn.ModuleList([
            AttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
                           bipartite=False, has_pos_emb=True) for _ in range(num_layers)])
        self.apply(weight_init)

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """The map's edges: 'pt2pl' [2, E] point -> polygon (given by the data: each point belongs to one polygon),
        'pl2pl' [2, E] polygon -> polygon and its edge types 'type_pl2pl' [E]: every polygon within
        ``pl2pl_radius`` (type 0) merged with the lane topology edges; where an edge is in both, the topology type
        wins (max). Data dependent sizes: computed outside the fixed-shape part of the model (utils.static_graph)."""
        pl = data['map_polygon']
        pos_pl = pl['position'][:, :self.input_dim]
        edge_index_radius = radius_graph(x=pos_pl[:, :2], r=self.pl2pl_radius,
                                         batch=pl['batch'] if isinstance(data, Batch) else None,
                                         loop=False, max_num_neighbors=MAX_NUM_NEIGHBORS,
                                         batch_size=data.num_graphs if isinstance(data, Batch) else 1,
                                         max_per_example=max_nodes_per_example(data, 'map_polygon'))
        topology = data['map_polygon', 'to', 'map_polygon']
        type_radius = topology['type'].new_zeros(edge_index_radius.size(1))
        edge_index_pl2pl, type_pl2pl = merge_edges(edge_indices=[edge_index_radius, topology['edge_index']],
                                                   edge_attrs=[type_radius, topology['type']], reduce='max',
                                                   num_nodes=pos_pl.size(0))
        return {'pt2pl': data['map_point', 'to', 'map_polygon']['edge_index'], 'pl2pl': edge_index_pl2pl,
                'type_pl2pl': type_pl2pl}

    def forward(self, data: HeteroData, graph: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """graph: the output of ``build_graph(data)`` when computed beforehand (else built here)."""
        pt, pl = data['map_point'], data['map_polygon']
        pos_pt = pt['position'][:, :self.input_dim]
        orient_pt = pt['orientation']
        pos_pl = pl['position'][:, :self.input_dim]
        orient_pl = pl['orientation']
        orient_vector_pl = torch.stack([orient_pl.cos(), orient_pl.sin()], dim=-1)

        if self.input_dim == 2:
            x_pt = pt['magnitude'].unsqueeze(-1)
            x_pl = None
        else:
            x_pt = torch.stack([pt['magnitude'], pt['height']], dim=-1)
            x_pl = pl['height'].unsqueeze(-1)
        x_pt = self.x_pt_emb(continuous_inputs=x_pt, categorical_embs=[self.type_pt_emb(pt['type'].long()),
                                                                       self.side_pt_emb(pt['side'].long())])
        x_pl = self.x_pl_emb(continuous_inputs=x_pl, categorical_embs=[self.type_pl_emb(pl['type'].long()),
                                                                       self.int_pl_emb(pl['is_intersection'].long())])

        graph = self.build_graph(data) if graph is None else graph
        edge_index_pt2pl = graph['pt2pl']
        src, dst = edge_index_pt2pl
        r_pt2pl = relative_pose_features(pos_pt[src] - pos_pl[dst], orient_vector_pl[dst],
                                         wrap_angle(orient_pt[src] - orient_pl[dst]), self.input_dim)
        r_pt2pl = self.r_pt2pl_emb(continuous_inputs=r_pt2pl, categorical_embs=None)

        edge_index_pl2pl, type_pl2pl = graph['pl2pl'], graph['type_pl2pl']
        src, dst = edge_index_pl2pl
        r_pl2pl = relative_pose_features(pos_pl[src] - pos_pl[dst], orient_vector_pl[dst],
                                         wrap_angle(orient_pl[src] - orient_pl[dst]), self.input_dim)
        r_pl2pl = self.r_pl2pl_emb(continuous_inputs=r_pl2pl,
                                   categorical_embs=[self.type_pl2pl_emb(type_pl2pl.long())])

        # Normalised once, shared by the layers (each applies its own norm's scale and shift).
        r_pt2pl, r_pl2pl = normalize_edge_embedding(r_pt2pl), normalize_edge_embedding(r_pl2pl)
        for i in range(self.num_layers):
            x_pl = self.pt2pl_layers[i]((x_pt, x_pl), r_pt2pl, edge_index_pt2pl, r_normalized=True)
            x_pl = self.pl2pl_layers[i](x_pl, r_pl2pl, edge_index_pl2pl, r_normalized=True)
        x_pl = x_pl.unsqueeze(1).expand(-1, self.num_historical_steps, -1)
        return {'x_pt': x_pt, 'x_pl': x_pl}
