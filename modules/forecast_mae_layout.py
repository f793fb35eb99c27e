"""Dense per-scene token layout of the Forecast-MAE-style backbone.

A batch (``torch_geometric`` Batch of HeteroData, or one HeteroData) has its agents and map polygons stored flat.
The scene transformer works on one dense row per scene: slot 0 holds the scene token, slots 1..A_b the scene's
agents (in sample order), the next P_b slots its polygons, and the rest of the row is padding (masked out).
"""
from typing import NamedTuple

import torch
from torch_geometric.data import HeteroData


class SceneLayout(NamedTuple):
    """Where every agent and polygon sits in the dense [B, max_tokens] token rows.

    agent_scene / agent_local long[A]: scene of each agent, index within its scene; polygon_scene / polygon_local
    long[P] likewise; agent_offset long[B]: global index of each scene's first agent; agent_slot / polygon_slot
    long[A] / long[P]: token slot within the row; num_scenes, max_agents, max_tokens: host integers (sizes of the
    dense tensors).
    """
    num_scenes: int
    agent_scene: torch.Tensor
    agent_local: torch.Tensor
    agent_offset: torch.Tensor
    agent_slot: torch.Tensor
    polygon_scene: torch.Tensor
    polygon_slot: torch.Tensor
    max_agents: int
    max_tokens: int

    def token_mask(self) -> torch.Tensor:
        """bool[B, max_tokens]: real tokens (scene token, agents, polygons) vs padding."""
        mask = torch.zeros(self.num_scenes, self.max_tokens, dtype=torch.bool, device=self.agent_scene.device)
        mask[:, 0] = True
        mask[self.agent_scene, self.agent_slot] = True
        mask[self.polygon_scene, self.polygon_slot] = True
        return mask


def _scene_index(store, device: torch.device):
    """(scene of each node long[N], first node of each scene long[B+1]) of a node store, batched or not."""
    num_nodes = store.num_nodes
    if 'batch' in store and 'ptr' in store:
        return store['batch'], store['ptr']
    return (torch.zeros(num_nodes, dtype=torch.long, device=device),
            torch.tensor([0, num_nodes], dtype=torch.long, device=device))


def scene_layout(data: HeteroData) -> SceneLayout:
    """Layout of ``data``'s agents and polygons (one host synchronisation: the two row sizes)."""
    device = data['agent']['position'].device
    agent_scene, agent_ptr = _scene_index(data['agent'], device)
    polygon_scene, polygon_ptr = _scene_index(data['map_polygon'], device)
    if agent_ptr.numel() != polygon_ptr.numel():
        raise ValueError(f'scene_layout: {agent_ptr.numel() - 1} scenes of agents but {polygon_ptr.numel() - 1} of '
                         f'map polygons')
    num_agents = agent_ptr[1:] - agent_ptr[:-1]
    num_polygons = polygon_ptr[1:] - polygon_ptr[:-1]
    agent_local = torch.arange(agent_scene.numel(), device=device) - agent_ptr[agent_scene]
    polygon_local = torch.arange(polygon_scene.numel(), device=device) - polygon_ptr[polygon_scene]
    if num_agents.numel() == 0:
        raise ValueError('scene_layout: empty batch')
    max_agents, max_row = torch.stack([num_agents.max(), (num_agents + num_polygons).max()]).tolist()
    return SceneLayout(num_scenes=num_agents.numel(), agent_scene=agent_scene, agent_local=agent_local,
                       agent_offset=agent_ptr[:-1], agent_slot=agent_local + 1, polygon_scene=polygon_scene,
                       polygon_slot=polygon_local + 1 + num_agents[polygon_scene], max_agents=max(max_agents, 1),
                       max_tokens=1 + max_row)
