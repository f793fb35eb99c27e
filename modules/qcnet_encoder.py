"""QCNet scene encoder = map encoder followed by agent encoder."""
from typing import Dict, Optional

import torch
import torch.nn as nn
from torch_geometric.data import HeteroData

from modules.qcnet_agent_encoder import QCNetAgentEncoder
from modules.qcnet_map_encoder import QCNetMapEncoder


class QCNetEncoder(nn.Module):
    """Encodes a scene (or a Batch of scenes) over its first ``num_historical_steps`` steps.

    Returns {'x_pt': [N_pt, hidden], 'x_pl': [P, num_historical_steps, hidden], 'x_a': [A, num_historical_steps,
    hidden]}. All embeddings are invariant to rotating/translating the whole scene (relative features only).
    ``checkpoint_agent_layers``: activation checkpointing of the agent encoder (see QCNetAgentEncoder).
    """

    def __init__(self, dataset: str, input_dim: int, hidden_dim: int, num_historical_steps: int, pl2pl_radius: float,
                 time_span: Optional[int], pl2a_radius: float, a2a_radius: float, num_freq_bands: int,
                 num_map_layers: int, num_agent_layers: int, num_heads: int, head_dim: int, dropout: float,
                 num_point_types: Optional[int] = None, num_polygon_types: Optional[int] = None,
                 checkpoint_agent_layers: bool = False) -> None:
        super().__init__()
        self.map_encoder = QCNetMapEncoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, num_historical_steps=num_historical_steps,
            pl2pl_radius=pl2pl_radius, num_freq_bands=num_freq_bands, num_layers=num_map_layers, num_heads=num_heads,
            head_dim=head_dim, dropout=dropout, num_point_types=num_point_types,
            num_polygon_types=num_polygon_types)
        self.agent_encoder = QCNetAgentEncoder(
            dataset=dataset, input_dim=input_dim, hidden_dim=hidden_dim, num_historical_steps=num_historical_steps,
            time_span=time_span, pl2a_radius=pl2a_radius, a2a_radius=a2a_radius, num_freq_bands=num_freq_bands,
            num_layers=num_agent_layers, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
            checkpoint_layers=checkpoint_agent_layers)

    def build_graph(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """All edges of the encoder (map encoder's, then agent encoder's; their key names do not overlap)."""
        return {**self.map_encoder.build_graph(data), **self.agent_encoder.build_graph(data)}

    def forward(self, data: HeteroData, graph: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """graph: ``build_graph(data)`` when computed beforehand (else each encoder builds its own)."""
        map_enc = self.map_encoder(data, graph)
        agent_enc = self.agent_encoder(data, map_enc, graph)
        return {**map_enc, **agent_enc}
