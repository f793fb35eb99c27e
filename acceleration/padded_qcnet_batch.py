"""QCNet batches padded to fixed sizes (capacities): the padding scheme of QCNet's CUDA-graph step.

Everything of a QCNet step whose size depends on the data is its edge lists (``QCNet.build_graph``: radius searches,
dense-to-sparse masks). Node tensors and edge lists are copied into buffers of a *capacity* each
(``acceleration.cuda_graph_step.CapacityLadder``); what remains (embeddings, attention, heads, loss, backward) then
has fixed shapes.

Padding is exact: padded agents, polygons and points are zero rows appended after the real ones (agents with no
valid step and nothing to predict); padded edges join the *last* padded node of each type to itself. Real nodes
receive exactly their real edges, the loss masks padded agents out (``predict_mask`` False), and no padded value
reaches a real one, so outputs of real nodes, losses and gradients equal the unpadded step's up to float rounding
(tests/test_cuda_graph_step.py). Dropout draws different random numbers (other tensor shapes): same distribution.

Edge index layouts (which node list an index points into) follow the modules' conventions; only the step-major
agent layout (index t * A + a of the agent encoder's per-step edge lists) changes with the agent capacity and is
remapped. The decoder's query slots (modules/qcnet_proposal_decoder.py) get a capacity of their own: slots past the
real ones are padding, padded agents and edges point at the last padded slot, and the shared slot of the agents
without a target stays the last slot, free of edges.
"""
from typing import Dict, Hashable, List, Mapping, Optional, Tuple

import torch
from torch_geometric.data import HeteroData

from acceleration.edge_lists_in_workers import attached_edge_lists

NODE_TYPES = ('agent', 'map_polygon', 'map_point')
# (source layout, target layout) of each edge list of QCNet.build_graph. Layouts: a node type, or
# 'agent_step' (a * T + t), 'step_agent' (t * A + a), 'slot_mode' (s * K + k over the decoder's query slots).
QCNET_EDGE_LAYOUTS = {
    'pt2pl': ('map_point', 'map_polygon'), 'pl2pl': ('map_polygon', 'map_polygon'),
    't': ('agent_step', 'agent_step'), 'pl2a': ('map_polygon', 'step_agent'), 'a2a': ('step_agent', 'step_agent'),
    't2m': ('agent_step', 'agent'), 'pl2m': ('map_polygon', 'agent'), 'a2m': ('agent', 'agent'),
    'm2m': ('slot_mode', 'slot_mode'),
}
# Per-edge attributes of the edge lists: name -> the edge list they belong to (padded with zeros).
QCNET_EDGE_ATTRS = {'type_pl2pl': 'pl2pl'}
# Node attributes that are not per-node data (batch bookkeeping is not read by the fixed-shape part).
_SKIPPED_NODE_KEYS = ('batch', 'ptr', 'num_nodes')


def per_node_keys(store, count: int) -> List[str]:
    """Names of a node store's per-node tensors (first dimension = the node count), in store order."""
    return [key for key, value in store.items() if key not in _SKIPPED_NODE_KEYS
            and isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == count]


def fill_node_buffers(buffers: HeteroData, batch: HeteroData, node_keys: Mapping[str, List[str]],
                      sizes: Mapping[str, int], owner: str) -> None:
    """Copies each per-node tensor of ``batch`` into the first rows of its static buffer and zeroes the padded rows
    after them. KeyError naming ``owner`` when the batch lacks a tensor the first batch had."""
    for node_type, keys in node_keys.items():
        count = sizes[node_type]
        for key in keys:
            if key not in batch[node_type]:
                raise KeyError(f'{owner}.fill: the batch has no {node_type}.{key}, which the first batch had')
            buffer = buffers[node_type][key]
            buffer[:count].copy_(batch[node_type][key])
            buffer[count:].zero_()


def node_sizes(data: HeteroData) -> Dict[str, int]:
    """Number of nodes of each node type (host integers: tensor shapes, no device synchronisation)."""
    return {node_type: int(data[node_type]['position'].size(0)) for node_type in NODE_TYPES}


def qcnet_sizes(data: HeteroData, edge_lists: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Node counts and edge counts (one per edge list) of a batch: what has to fit a capacity."""
    sizes = node_sizes(data)
    sizes.update({name: int(edge_lists[name].size(1)) for name in QCNET_EDGE_LAYOUTS})
    sizes['query_agent'] = int(edge_lists['query_agent'].size(0))
    return sizes


def _dummy_index(layout: str, cap: Mapping[str, int], steps: int, modes: int) -> int:
    """Index of the last padded node in a layout (padded edges start and end there)."""
    last_agent = cap['agent'] - 1
    if layout == 'agent_step':
        return last_agent * steps
    if layout == 'step_agent':
        return last_agent
    if layout == 'slot_mode':  # the last padded query slot (padded agents are sent there too)
        return (cap['query_agent'] - 1) * modes
    return cap[layout] - 1


def _remap(index: torch.Tensor, layout: str, num_agents: int, agent_capacity: int) -> torch.Tensor:
    """Edge endpoints of the unpadded batch -> indices into the padded node list of the same layout."""
    if layout == 'step_agent':  # t * A + a -> t * A_cap + a
        return torch.div(index, num_agents, rounding_mode='floor') * agent_capacity + index % num_agents
    return index


class PaddedQCNetBatch:
    """Padded copies of a batch's node tensors and edge lists in buffers that keep their memory (CUDA-graph inputs).

    ``data``: a HeteroData with every per-node tensor of the node types in ``NODE_TYPES`` at its capacity;
    ``edge_lists``: the edge lists and edge attributes at theirs. ``fill(batch, edge_lists)`` copies a new batch in.
    """

    def __init__(self, example: HeteroData, capacities: Mapping[str, int], steps: int, modes: int) -> None:
        self.capacities = dict(capacities)
        self.steps, self.modes = steps, modes
        self.data = HeteroData()
        self.node_keys: Dict[str, List[str]] = {}
        for node_type in NODE_TYPES:
            store = example[node_type]
            count, cap = store['position'].size(0), capacities[node_type]
            keys = per_node_keys(store, count)
            self.node_keys[node_type] = keys
            for key in keys:
                value = store[key]
                self.data[node_type][key] = value.new_zeros((cap,) + tuple(value.shape[1:]))
            self.data[node_type].num_nodes = cap
        device = example['agent']['position'].device
        self.edge_lists: Dict[str, torch.Tensor] = {}
        self._padding: Dict[str, torch.Tensor] = {}
        for name, (src_layout, dst_layout) in QCNET_EDGE_LAYOUTS.items():
            pad = torch.tensor([[_dummy_index(src_layout, capacities, steps, modes)],
                                [_dummy_index(dst_layout, capacities, steps, modes)]], device=device)
            self._padding[name] = pad.expand(2, capacities[name]).contiguous()
            self.edge_lists[name] = self._padding[name].clone()
        for name, edges in QCNET_EDGE_ATTRS.items():
            self.edge_lists[name] = torch.zeros(capacities[edges], dtype=torch.long, device=device)
        # Decoder query slots: C = capacities['query_agent'] slots for agents with a target (the last ones padded),
        # plus slot C shared by the real agents without one (no edges reach it). Padded agents and padded edges
        # go to slot C - 1, so the shared slot stays edge-free.
        self.edge_lists['query_agent'] = torch.zeros(capacities['query_agent'], dtype=torch.long, device=device)
        self.edge_lists['query_slot'] = torch.full((capacities['agent'],), capacities['query_agent'] - 1,
                                              dtype=torch.long, device=device)

    def fits(self, sizes: Mapping[str, int]) -> bool:
        """Whether a batch of these sizes fits (every count below its capacity: one padding row is needed)."""
        return all(sizes[name] < self.capacities[name] for name in self.capacities)

    def fill(self, batch: HeteroData, edge_lists: Mapping[str, torch.Tensor],
             sizes: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
        """Copies ``batch``'s node tensors and ``edge_lists`` (QCNet.build_graph of it) in; returns its sizes
        (``qcnet_sizes(batch, edge_lists)``, computed here unless the caller has them)."""
        sizes = dict(qcnet_sizes(batch, edge_lists) if sizes is None else sizes)
        if not self.fits(sizes):
            raise ValueError(f'PaddedQCNetBatch.fill: batch sizes {sizes} exceed the capacities {self.capacities}')
        fill_node_buffers(self.data, batch, self.node_keys, sizes, 'PaddedQCNetBatch')
        num_agents, agent_cap = sizes['agent'], self.capacities['agent']
        for name, (src_layout, dst_layout) in QCNET_EDGE_LAYOUTS.items():
            count, buffer = sizes[name], self.edge_lists[name]
            edges = edge_lists[name]
            buffer[0, :count].copy_(_remap(edges[0], src_layout, num_agents, agent_cap))
            buffer[1, :count].copy_(_remap(edges[1], dst_layout, num_agents, agent_cap))
            buffer[:, count:].copy_(self._padding[name][:, count:])
        for name, edges in QCNET_EDGE_ATTRS.items():
            count = sizes[edges]
            self.edge_lists[name][:count].copy_(edge_lists[name])
            self.edge_lists[name][count:].zero_()
        num_queries, slot_cap = sizes['query_agent'], self.capacities['query_agent']
        self.edge_lists['query_agent'][:num_queries].copy_(edge_lists['query_agent'])
        self.edge_lists['query_agent'][num_queries:].fill_(agent_cap - 1)
        slots = edge_lists['query_slot']
        self.edge_lists['query_slot'][:num_agents].copy_(torch.where(slots == num_queries, slot_cap, slots))
        self.edge_lists['query_slot'][num_agents:].fill_(slot_cap - 1)
        return sizes




class QCNetPadding:
    """The padding scheme of QCNet for ``acceleration.cuda_graph_step.CudaGraphStep``: a batch's sizes and edge
    lists (attached by a loader worker, else built here), static buffers for a capacity, and the copy into them."""

    def __init__(self, model: torch.nn.Module, steps: Optional[int] = None, modes: Optional[int] = None) -> None:
        """``model``: QCNet, or anything with its ``build_graph`` (e.g. the qcnet pre-training backbone, with
        ``steps`` / ``modes`` given)."""
        self.model = model
        self.steps = model.num_historical_steps if steps is None else steps
        self.modes = model.num_modes if modes is None else modes

    def prepare(self, batch: HeteroData) -> Tuple[Dict[str, int], Hashable, tuple]:
        """(sizes, structure key, payload): the counts that must fit a capacity; which per-node tensors the batch
        has (a test batch has no targets); the batch and its edge lists."""
        edge_lists = attached_edge_lists(batch)
        if edge_lists is None:
            with torch.no_grad():
                edge_lists = self.model.build_graph(batch)
        sizes = qcnet_sizes(batch, edge_lists)
        key = tuple(tuple(per_node_keys(batch[t], sizes[t])) for t in NODE_TYPES)
        return sizes, key, (batch, edge_lists)

    def allocate(self, payload: tuple, capacities: Mapping[str, int]) -> PaddedQCNetBatch:
        return PaddedQCNetBatch(payload[0], capacities, self.steps, self.modes)

    def fill(self, padded: PaddedQCNetBatch, payload: tuple, sizes: Mapping[str, int]) -> None:
        padded.fill(payload[0], payload[1], sizes)

    @staticmethod
    def real_rows(outputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> Dict[str, torch.Tensor]:
        """Forward outputs (per agent) restricted to the real agents."""
        return {name: value[:sizes['agent']] for name, value in outputs.items()}
