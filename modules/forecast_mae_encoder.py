"""Scene encoder of the Forecast-MAE-style backbone: agent and lane tokens + a plain transformer over the scene."""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
from torch_geometric.data import HeteroData

from datasets.scenario import (AV2_NUM_AGENT_TYPES, AV2_NUM_POINT_TYPES, AV2_NUM_POLYGON_TYPES, NUM_POINT_SIDES,
                               NUM_POLYGON_INTERSECTION_FLAGS)
from layers.fourier_embedding import FourierEmbedding
from modules.forecast_mae_agent_embedding import ForecastMAEAgentEmbedding
from modules.forecast_mae_attention import SelfAttentionBlock
from modules.forecast_mae_frames import observed_history, reference_steps, rotate, scene_reference_agents
from modules.forecast_mae_lane_embedding import ForecastMAELaneEmbedding
from modules.forecast_mae_layout import SceneLayout, scene_layout
from utils.weight_init import weight_init

# Architecture sizes that QCNet has no flag for (Forecast-MAE's defaults: 4 encoder blocks; its history encoder has
# 3 stages of 2 blocks, here 2 transformer blocks).
DEFAULT_NUM_TEMPORAL_LAYERS = 2
DEFAULT_NUM_SCENE_LAYERS = 4
SCENE_TOKEN, AGENT_TOKEN, POLYGON_TOKEN = 0, 1, 2


class ForecastMAEEncoding(NamedTuple):
    """Output of ``ForecastMAEEncoder``.

    tokens [B, N, D]: the encoded scene rows (layout ``modules.forecast_mae_layout``), token_mask bool[B, N];
    x_a [A, D]: the encoded agent tokens (rows of ``tokens``); layout: where each agent/polygon sits.
    """
    tokens: torch.Tensor
    token_mask: torch.Tensor
    x_a: torch.Tensor
    layout: SceneLayout


class ForecastMAEEncoder(nn.Module):
    """Agent tokens (``ForecastMAEAgentEmbedding``, history in the agent's frame) and lane tokens
    (``ForecastMAELaneEmbedding``, points in the polygon's frame), each plus a Fourier embedding of its pose
    (x, y, cos, sin of the heading) in the scene frame (``modules.forecast_mae_frames``) and a token-kind embedding,
    and one learnt scene token per scene, go through ``num_scene_layers`` pre-norm transformer blocks over the whole
    scene (dense rows, padding masked).
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_historical_steps: int, num_freq_bands: int,
                 num_heads: int, head_dim: int, dropout: float,
                 num_temporal_layers: int = DEFAULT_NUM_TEMPORAL_LAYERS,
                 num_scene_layers: int = DEFAULT_NUM_SCENE_LAYERS,
                 num_point_types: Optional[int] = None, num_polygon_types: Optional[int] = None) -> None:
        super().__init__()
        if input_dim != 2:
            raise ValueError(f'ForecastMAEEncoder: only input_dim=2 (x, y) is supported, got {input_dim}')
        self.num_historical_steps = num_historical_steps
        self.agent_embedding = ForecastMAEAgentEmbedding(hidden_dim, num_historical_steps, num_temporal_layers,
                                                         num_heads, head_dim, dropout, AV2_NUM_AGENT_TYPES)
        self.lane_embedding = ForecastMAELaneEmbedding(hidden_dim, num_point_types or AV2_NUM_POINT_TYPES,
                                                       NUM_POINT_SIDES, num_polygon_types or AV2_NUM_POLYGON_TYPES,
                                                       NUM_POLYGON_INTERSECTION_FLAGS)
        self.pose_emb = FourierEmbedding(input_dim=4, hidden_dim=hidden_dim, num_freq_bands=num_freq_bands)
        self.token_kind_emb = nn.Embedding(3, hidden_dim)
        self.scene_blocks = nn.ModuleList([SelfAttentionBlock(hidden_dim, num_heads, head_dim, dropout)
                                           for _ in range(num_scene_layers)])
        self.norm = nn.LayerNorm(hidden_dim)
        self.token_kind_emb.apply(weight_init)
        self.norm.apply(weight_init)

    def forward(self, data: HeteroData, layout: Optional[SceneLayout] = None) -> ForecastMAEEncoding:
        """``layout``: the token layout of ``data`` computed beforehand (the fixed-shape step pads it,
        ``acceleration.padded_forecast_mae_batch``); None: ``scene_layout(data)``."""
        hist = self.num_historical_steps
        agent, polygon, point = data['agent'], data['map_polygon'], data['map_point']
        if layout is None:
            layout = scene_layout(data)
        position = agent['position'][:, :hist, :2]
        heading = agent['heading'][:, :hist]
        observed = observed_history(agent['valid_mask'], agent['predict_mask'], hist)
        step, has_history = reference_steps(observed)
        agents = torch.arange(position.size(0), device=position.device)
        origin, theta = position[agents, step], heading[agents, step]
        x_a = self.agent_embedding(position, agent['velocity'][:, :hist, :2], heading, agent['valid_mask'][:, :hist],
                                   step, origin, theta, agent['type'].long())
        point_polygon = data['map_point', 'to', 'map_polygon']['edge_index'][1]
        x_pl = self.lane_embedding(point['position'][:, :2], point['orientation'], point['magnitude'],
                                   point['type'].long(), point['side'].long(), point_polygon,
                                   polygon['position'][:, :2], polygon['orientation'], polygon['type'].long(),
                                   polygon['is_intersection'].long())

        # Poses of all tokens in their scene's frame.
        av_index = torch.as_tensor(agent['av_index'], dtype=torch.long, device=position.device).view(-1)
        reference = scene_reference_agents(has_history, layout.agent_scene, av_index, layout.agent_offset)
        scene_origin, scene_theta = origin[reference], theta[reference]               # [B, 2], [B]
        pose_xy = torch.cat([origin - scene_origin[layout.agent_scene],
                             polygon['position'][:, :2] - scene_origin[layout.polygon_scene]])
        scene_of_token = torch.cat([layout.agent_scene, layout.polygon_scene])
        cos, sin = scene_theta.cos()[scene_of_token], scene_theta.sin()[scene_of_token]
        pose_heading = torch.cat([theta, polygon['orientation']]) - scene_theta[scene_of_token]
        pose = torch.cat([rotate(pose_xy, cos, sin), pose_heading.cos().unsqueeze(-1),
                          pose_heading.sin().unsqueeze(-1)], dim=-1)
        pose = self.pose_emb(continuous_inputs=pose)
        kind = self.token_kind_emb.weight
        num_agents = x_a.size(0)
        x_a = x_a + pose[:num_agents] + kind[AGENT_TOKEN]
        x_pl = x_pl + pose[num_agents:] + kind[POLYGON_TOKEN]

        tokens = x_a.new_zeros(layout.num_scenes, layout.max_tokens, x_a.size(-1))
        tokens[:, 0] = kind[SCENE_TOKEN]
        tokens[layout.agent_scene, layout.agent_slot] = x_a
        tokens[layout.polygon_scene, layout.polygon_slot] = x_pl
        token_mask = layout.token_mask()
        token_mask[layout.agent_scene, layout.agent_slot] = has_history  # agents never observed are not context
        for block in self.scene_blocks:
            tokens = block(tokens, token_mask)
        tokens = self.norm(tokens)
        return ForecastMAEEncoding(tokens=tokens, token_mask=token_mask,
                                   x_a=tokens[layout.agent_scene, layout.agent_slot], layout=layout)
