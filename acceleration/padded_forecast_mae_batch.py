"""ForecastMAE batches padded to fixed sizes: the padding scheme of its CUDA-graph step.

What depends on the data in a ForecastMAE step is the number of agents, polygons and points and the dense scene
token layout (``modules.forecast_mae_layout.scene_layout``: each agent's and polygon's slot in its scene's row, and
the row sizes, host integers read with one synchronisation). ``prepare`` computes the layout eagerly; node tensors
and the layout's index tensors are then copied into buffers of a *capacity* each
(``acceleration.cuda_graph_step.CapacityLadder``: agents, polygons, points, most agents of one scene, row length). The
number of scenes is exact (part of the structure key), so the smaller last batch of an epoch gets graphs of its own.

Padding is exact:

- padded agents, polygons and points are zero rows after the real ones: no valid step, nothing to predict; padded
  points belong to the last (padded) polygon;
- every padded agent and polygon takes the last token slot of the first scene's row (slot ``max_tokens - 1``: the
  row capacity exceeds every real row, so that slot is padding in every scene) and padded agents the last agent slot
  of the decoder's per-scene query layout (``max_agents - 1``, free for the same reason);
  ``PaddedSceneLayout.token_mask`` masks the last slot out, so no real token or query attends to it;
- the loss masks padded agents out (``predict_mask`` False), and a padded value reaches no real one.

So outputs of real agents, losses and gradients equal the unpadded step's up to float rounding
(tests/test_forecast_mae_cuda_graph_step.py). Dropout draws different random numbers (other tensor shapes): same
distribution.
"""
from typing import Dict, Hashable, List, Mapping, Tuple

import torch
from torch_geometric.data import HeteroData

from acceleration.padded_qcnet_batch import NODE_TYPES, fill_node_buffers, per_node_keys
from modules.forecast_mae_layout import SceneLayout, scene_layout

POINT_TO_POLYGON = ('map_point', 'to', 'map_polygon')
# Capacity names of the layout's row sizes (the node counts use the node type names).
SCENE_AGENTS, SCENE_TOKENS = 'scene_agents', 'scene_tokens'


class PaddedSceneLayout(SceneLayout):
    """A ``SceneLayout`` at capacities: padded agents and polygons share the last slot of the first scene's row,
    which the token mask leaves out (module docstring)."""

    __slots__ = ()

    def token_mask(self) -> torch.Tensor:
        mask = super().token_mask()
        mask[:, -1] = False
        return mask


def layout_sizes(data: HeteroData, layout: SceneLayout) -> Dict[str, int]:
    """Counts of a batch that must fit a capacity: agents, polygons, points, most agents of one scene, row length."""
    sizes = {node_type: int(data[node_type]['position'].size(0)) for node_type in NODE_TYPES}
    sizes[SCENE_AGENTS], sizes[SCENE_TOKENS] = layout.max_agents, layout.max_tokens
    return sizes


def _point_polygon(data: HeteroData) -> torch.Tensor:
    """Polygon of each point long[N] (the point-to-polygon edges: one per point, in point order)."""
    polygon_of_point = data[POINT_TO_POLYGON]['edge_index'][1]
    num_points = int(data['map_point']['position'].size(0))
    if polygon_of_point.numel() != num_points:
        raise ValueError(f'ForecastMAE padding: {polygon_of_point.numel()} point-to-polygon edges for {num_points} map '
                         'points (one per point expected)')
    return polygon_of_point


class PaddedForecastMAEBatch:
    """Padded copies of a batch's node tensors and of its scene layout, in buffers that keep their memory (CUDA-graph
    inputs).

    ``data``: a HeteroData with every per-node tensor of ``NODE_TYPES`` at its capacity, ``agent.av_index`` long[B]
    and the point-to-polygon edges; ``layout``: a ``PaddedSceneLayout`` of static index tensors. ``fill(batch,
    layout, sizes)`` copies a new batch with the same number of scenes in.
    """

    def __init__(self, example: HeteroData, num_scenes: int, capacities: Mapping[str, int]) -> None:
        self.capacities = dict(capacities)
        self.num_scenes = num_scenes
        device = example['agent']['position'].device
        self.data = HeteroData()
        self.node_keys: Dict[str, List[str]] = {}
        for node_type in NODE_TYPES:
            store = example[node_type]
            keys = per_node_keys(store, int(store['position'].size(0)))
            self.node_keys[node_type] = keys
            for key in keys:
                value = store[key]
                self.data[node_type][key] = value.new_zeros((capacities[node_type],) + tuple(value.shape[1:]))
            self.data[node_type].num_nodes = capacities[node_type]
        self.data['agent']['av_index'] = torch.zeros(num_scenes, dtype=torch.long, device=device)
        num_points = capacities['map_point']
        self.data[POINT_TO_POLYGON]['edge_index'] = torch.stack([
            torch.arange(num_points, device=device), torch.zeros(num_points, dtype=torch.long, device=device)])

        def index(count: int) -> torch.Tensor:
            return torch.zeros(count, dtype=torch.long, device=device)

        agent_cap, polygon_cap = capacities['agent'], capacities['map_polygon']
        self.layout = PaddedSceneLayout(
            num_scenes=num_scenes, agent_scene=index(agent_cap), agent_local=index(agent_cap),
            agent_offset=index(num_scenes), agent_slot=index(agent_cap), polygon_scene=index(polygon_cap),
            polygon_slot=index(polygon_cap), max_agents=capacities[SCENE_AGENTS], max_tokens=capacities[SCENE_TOKENS])

    def fits(self, sizes: Mapping[str, int]) -> bool:
        """Whether a batch of these sizes fits (every count below its capacity: one padding row is needed)."""
        return all(sizes[name] < self.capacities[name] for name in self.capacities)

    def fill(self, batch: HeteroData, layout: SceneLayout, sizes: Mapping[str, int]) -> None:
        """Copies ``batch``'s node tensors, AV indices, point-to-polygon edges and ``layout`` (``scene_layout`` of
        it; ``sizes``: ``layout_sizes`` of both) in."""
        if not self.fits(sizes):
            raise ValueError(f'PaddedForecastMAEBatch.fill: batch sizes {dict(sizes)} exceed the capacities '
                             f'{self.capacities}')
        if layout.num_scenes != self.num_scenes:
            raise ValueError(f'PaddedForecastMAEBatch.fill: {layout.num_scenes} scenes, the buffers hold '
                             f'{self.num_scenes}')
        fill_node_buffers(self.data, batch, self.node_keys, sizes, 'PaddedForecastMAEBatch')
        num_agents, num_polygons, num_points = sizes['agent'], sizes['map_polygon'], sizes['map_point']
        # AV row of each scene such that av_index + agent_offset is the same agent as in the unpadded batch (an
        # index of -1 in the first scene wraps to the last real agent there, not to the last padded one)
        av_index = torch.as_tensor(batch['agent']['av_index'], dtype=torch.long, device=layout.agent_offset.device)
        av_global = torch.remainder(av_index.view(-1) + layout.agent_offset, max(num_agents, 1))
        self.data['agent']['av_index'].copy_(av_global - layout.agent_offset)
        point_polygon = self.data[POINT_TO_POLYGON]['edge_index'][1]
        point_polygon[:num_points].copy_(_point_polygon(batch))
        point_polygon[num_points:].fill_(self.capacities['map_polygon'] - 1)

        padded, last_slot = self.layout, self.layout.max_tokens - 1
        padded.agent_offset.copy_(layout.agent_offset)
        for name, count, pad_value in (('agent_scene', num_agents, 0), ('agent_local', num_agents,
                                                                      padded.max_agents - 1),
                                       ('agent_slot', num_agents, last_slot), ('polygon_scene', num_polygons, 0),
                                       ('polygon_slot', num_polygons, last_slot)):
            buffer = getattr(padded, name)
            buffer[:count].copy_(getattr(layout, name))
            buffer[count:].fill_(pad_value)


class ForecastMAEPadding:
    """The padding scheme of ForecastMAE for ``acceleration.cuda_graph_step.CudaGraphStep``: a batch's layout and
    sizes, static buffers for a capacity, and the copy into them."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def prepare(self, batch: HeteroData) -> Tuple[Dict[str, int], Hashable, tuple]:
        """(sizes, structure key, payload): the counts that must fit a capacity; the number of scenes and which
        per-node tensors the batch has (a test batch has no targets); the batch and its layout."""
        layout = scene_layout(batch)  # the one host synchronisation of the step, outside the graph
        sizes = layout_sizes(batch, layout)
        key = (layout.num_scenes,) + tuple(tuple(per_node_keys(batch[t], sizes[t])) for t in NODE_TYPES)
        return sizes, key, (batch, layout)

    @staticmethod
    def allocate(payload: tuple, capacities: Mapping[str, int]) -> PaddedForecastMAEBatch:
        return PaddedForecastMAEBatch(payload[0], payload[1].num_scenes, capacities)

    @staticmethod
    def fill(padded: PaddedForecastMAEBatch, payload: tuple, sizes: Mapping[str, int]) -> None:
        padded.fill(payload[0], payload[1], sizes)

    @staticmethod
    def real_rows(outputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> Dict[str, torch.Tensor]:
        """Forward outputs (per agent) restricted to the real agents."""
        return {name: value[:sizes['agent']] for name, value in outputs.items()}
