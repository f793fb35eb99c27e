"""Fixed-shape QCNet steps: a batch and its graph padded to capacities, replayed as a CUDA graph.

Why: the eager QCNet step is launch-bound. On the H200 a B = 4 training step does 44 ms of GPU work in 188 ms of
wall clock (6,600 kernel launches); CUDA graphs replay all kernels of a captured step with one launch, but need
fixed shapes and no host synchronisation. Everything whose size depends on the data is the model's
``build_graph(data)`` (radius searches, dense-to-sparse masks: edge lists); what remains (embeddings, attention,
heads, loss, backward) has shapes fixed by the node and edge counts. So a step here is:

1. ``model.build_graph(batch)`` eagerly (the graph part of the official step, a few % of it);
2. node tensors and edge lists copied into static buffers padded to *capacities* (``CapacityLadder``);
3. the fixed-shape rest (forward, loss, backward; or forward only) captured once per capacity and replayed.

Padding is exact: padded agents, polygons and points are zero rows appended after the real ones (agents with no
valid step and nothing to predict); padded edges join the *last* padded node of each type to itself. Real nodes
receive exactly their real edges, the loss masks padded agents out (``predict_mask`` False), and no padded value
reaches a real one, so outputs of real nodes, losses and gradients equal the unpadded step's up to float rounding
(tests/test_static_graph.py). Dropout draws different random numbers (other tensor shapes): same distribution.

Edge index layouts (which node list an index points into) follow the modules' conventions; only the step-major
agent layout (index t * A + a of the agent encoder's per-step graphs) changes with the agent capacity and is
remapped. The decoder's query slots (modules/qcnet_proposal_decoder.py) get a capacity of their own: slots past the
real ones are padding, padded agents and edges point at the last padded slot, and the shared slot of the agents
without a target stays the last slot, free of edges.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch_geometric.data import HeteroData

from utils.prebuilt_graph import prebuilt_graph

NODE_TYPES = ('agent', 'map_polygon', 'map_point')
# (source layout, target layout) of each edge list of QCNet.build_graph. Layouts: a node type, or
# 'agent_step' (a * T + t), 'step_agent' (t * A + a), 'slot_mode' (s * K + k over the decoder's query slots).
QCNET_EDGE_LAYOUTS = {
    'pt2pl': ('map_point', 'map_polygon'), 'pl2pl': ('map_polygon', 'map_polygon'),
    't': ('agent_step', 'agent_step'), 'pl2a': ('map_polygon', 'step_agent'), 'a2a': ('step_agent', 'step_agent'),
    't2m': ('agent_step', 'agent'), 'pl2m': ('map_polygon', 'agent'), 'a2m': ('agent', 'agent'),
    'm2m': ('slot_mode', 'slot_mode'),
}
# Per-edge attributes of the graph: name -> the edge list they belong to (padded with zeros).
QCNET_EDGE_ATTRS = {'type_pl2pl': 'pl2pl'}
# Node attributes that are not per-node data (batch bookkeeping is not read by the fixed-shape part).
_SKIPPED_NODE_KEYS = ('batch', 'ptr', 'num_nodes')
# Capacities are multiples of this (aligned rows for the matmuls).
_ROUND = 32


def per_node_keys(store, count: int) -> List[str]:
    """Names of a node store's per-node tensors (first dimension = the node count), in store order."""
    return [key for key, value in store.items() if key not in _SKIPPED_NODE_KEYS
            and isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == count]


def node_sizes(data: HeteroData) -> Dict[str, int]:
    """Number of nodes of each node type (host integers: tensor shapes, no device synchronisation)."""
    return {node_type: int(data[node_type]['position'].size(0)) for node_type in NODE_TYPES}


def graph_sizes(data: HeteroData, graph: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Node counts and edge counts (one per edge list of ``graph``) of a batch: what has to fit a capacity."""
    sizes = node_sizes(data)
    sizes.update({name: int(graph[name].size(1)) for name in QCNET_EDGE_LAYOUTS})
    sizes['query_agent'] = int(graph['query_agent'].size(0))
    return sizes


class CapacityLadder:
    """Capacities for batches of varying size: rung k = reference sizes x growth^k (rounded up), for every count
    at once, so one number (k) names a capacity and a training run sees only a few of them (batch totals of B
    scenes vary by roughly +-1/sqrt(B) of a scene's variation).

    The reference is the first batch seen; rung(sizes) is the smallest k whose capacities hold every count of
    ``sizes`` plus one padding node/edge. Waste: each count is padded by at most ``growth`` x (it or the count that
    sets the rung).
    """

    def __init__(self, growth: float = 1.1) -> None:
        if growth <= 1.0:
            raise ValueError(f'CapacityLadder: growth must be > 1, got {growth}')
        self.growth = growth
        self.reference: Optional[Dict[str, int]] = None

    def rung(self, sizes: Mapping[str, int]) -> int:
        if self.reference is None:
            self.reference = {name: max(int(count), 1) for name, count in sizes.items()}
        ratio = max((int(sizes[name]) + 1) / self.reference[name] for name in self.reference)
        rung = math.ceil(math.log(ratio) / math.log(self.growth) - 1e-9)
        # Rounding capacities up to whole rows of _ROUND can make a lower rung hold the batch too.
        while self._holds(self.capacities(rung - 1), sizes) and rung > -1000:
            rung -= 1
        return rung

    @staticmethod
    def _holds(capacities: Mapping[str, int], sizes: Mapping[str, int]) -> bool:
        return all(int(sizes[name]) < capacities[name] for name in capacities)

    def capacities(self, rung: int) -> Dict[str, int]:
        scale = self.growth ** rung
        return {name: max(_ROUND, _ROUND * math.ceil(count * scale / _ROUND))
                for name, count in self.reference.items()}


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


class StaticBatch:
    """Padded copies of a batch's node tensors and graph in buffers that keep their memory (CUDA-graph inputs).

    ``data``: a HeteroData with every per-node tensor of the node types in ``NODE_TYPES`` at its capacity;
    ``graph``: the edge lists and edge attributes at theirs. ``fill(batch, graph)`` copies a new batch in.
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
        self.graph: Dict[str, torch.Tensor] = {}
        self._padding: Dict[str, torch.Tensor] = {}
        for name, (src_layout, dst_layout) in QCNET_EDGE_LAYOUTS.items():
            pad = torch.tensor([[_dummy_index(src_layout, capacities, steps, modes)],
                                [_dummy_index(dst_layout, capacities, steps, modes)]], device=device)
            self._padding[name] = pad.expand(2, capacities[name]).contiguous()
            self.graph[name] = self._padding[name].clone()
        for name, edges in QCNET_EDGE_ATTRS.items():
            self.graph[name] = torch.zeros(capacities[edges], dtype=torch.long, device=device)
        # Decoder query slots: C = capacities['query_agent'] slots for agents with a target (the last ones padded),
        # plus slot C shared by the real agents without one (no edges reach it). Padded agents and padded edges
        # go to slot C - 1, so the shared slot stays edge-free.
        self.graph['query_agent'] = torch.zeros(capacities['query_agent'], dtype=torch.long, device=device)
        self.graph['query_slot'] = torch.full((capacities['agent'],), capacities['query_agent'] - 1,
                                              dtype=torch.long, device=device)

    def fits(self, sizes: Mapping[str, int]) -> bool:
        """Whether a batch of these sizes fits (every count below its capacity: one padding row is needed)."""
        return all(sizes[name] < self.capacities[name] for name in self.capacities)

    def fill(self, batch: HeteroData, graph: Mapping[str, torch.Tensor],
             sizes: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
        """Copies ``batch``'s node tensors and ``graph`` (QCNet.build_graph of it) in; returns its sizes
        (``graph_sizes(batch, graph)``, computed here unless the caller has them)."""
        sizes = dict(graph_sizes(batch, graph) if sizes is None else sizes)
        if not self.fits(sizes):
            raise ValueError(f'StaticBatch.fill: batch sizes {sizes} exceed the capacities {self.capacities}')
        for node_type, keys in self.node_keys.items():
            count = sizes[node_type]
            for key in keys:
                if key not in batch[node_type]:
                    raise KeyError(f'StaticBatch.fill: the batch has no {node_type}.{key}, which the first batch had')
                buffer = self.data[node_type][key]
                buffer[:count].copy_(batch[node_type][key])
                buffer[count:].zero_()
        num_agents, agent_cap = sizes['agent'], self.capacities['agent']
        for name, (src_layout, dst_layout) in QCNET_EDGE_LAYOUTS.items():
            count, buffer = sizes[name], self.graph[name]
            edges = graph[name]
            buffer[0, :count].copy_(_remap(edges[0], src_layout, num_agents, agent_cap))
            buffer[1, :count].copy_(_remap(edges[1], dst_layout, num_agents, agent_cap))
            buffer[:, count:].copy_(self._padding[name][:, count:])
        for name, edges in QCNET_EDGE_ATTRS.items():
            count = sizes[edges]
            self.graph[name][:count].copy_(graph[name])
            self.graph[name][count:].zero_()
        num_queries, slot_cap = sizes['query_agent'], self.capacities['query_agent']
        self.graph['query_agent'][:num_queries].copy_(graph['query_agent'])
        self.graph['query_agent'][num_queries:].fill_(agent_cap - 1)
        slots = graph['query_slot']
        self.graph['query_slot'][:num_agents].copy_(torch.where(slots == num_queries, slot_cap, slots))
        self.graph['query_slot'][num_agents:].fill_(slot_cap - 1)
        return sizes


LOSS_NAMES = ('loss', 'reg_loss_propose', 'reg_loss_refine', 'cls_loss')


class _Captured:
    """One capacity: its static inputs, and (on CUDA) the captured graph with its static outputs."""

    def __init__(self, static: StaticBatch) -> None:
        self.static = static
        self.cuda_graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Optional[Dict[str, torch.Tensor]] = None
        self.grads: Optional[List[Optional[torch.Tensor]]] = None


class StaticGraphRunner:
    """Runs a model's fixed-shape training step (forward, loss, backward: gradients in ``param.grad``) or
    forward pass on padded batches; on CUDA (``capture=True``) each capacity is captured once as a CUDA graph and
    replayed afterwards.

    ``model`` needs ``build_graph(data)``, ``forward(data, graph)`` and, for ``mode='train'``,
    ``compute_losses(data, pred)``; ``steps`` / ``modes``: its history length and number of modes.
    Train mode returns the detached loss terms of ``LOSS_NAMES``; infer mode the output dict restricted to the real
    agents. At most ``max_graphs`` capacities are kept (least recently used dropped first); they share one memory
    pool, which is safe because replays never overlap and each replay's outputs are read before the next.
    The graphs read the parameters' memory: the optimiser steps in place, and when the parameters move (``.to()``,
    Lightning's end-of-fit move to the CPU) every graph is dropped and captured again.
    """

    def __init__(self, model: torch.nn.Module, mode: str, steps: int, modes: int, capture: bool = True,
                 growth: float = 1.1, warmup: int = 2, max_graphs: int = 8) -> None:
        if mode not in ('train', 'infer'):
            raise ValueError(f"StaticGraphRunner: mode must be 'train' or 'infer', got {mode!r}")
        self.model, self.mode, self.steps, self.modes = model, mode, steps, modes
        self.capture, self.warmup, self.max_graphs = capture, warmup, max_graphs
        self.ladder = CapacityLadder(growth)
        self._entries: 'OrderedDict[tuple, _Captured]' = OrderedDict()
        self._pool = None
        self._fingerprint: Optional[Tuple[int, ...]] = None
        self.num_captures = 0
        self.last_sizes: Optional[Dict[str, int]] = None
        self.last_capacities: Optional[Dict[str, int]] = None

    def _params(self) -> List[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _body(self, static: StaticBatch) -> Dict[str, torch.Tensor]:
        # Autocast's weight-cast cache must be off while capturing (its cached casts would be freed memory).
        device_type = static.data['agent']['position'].device.type
        autocast_on = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast_on else None
        with torch.autocast(device_type, dtype=dtype, enabled=autocast_on, cache_enabled=False):
            if self.mode == 'infer':
                with torch.no_grad():
                    return dict(self.model(static.data, static.graph))
            pred = self.model(static.data, static.graph)
            losses = self.model.compute_losses(static.data, pred)
        losses['loss'].backward()
        return {name: losses[name].detach() for name in LOSS_NAMES}

    def _entry(self, batch: HeteroData, sizes: Mapping[str, int]) -> _Captured:
        # Keyed by capacity rung and by which per-node tensors the batch has (a test batch has no targets).
        rung = self.ladder.rung(sizes)
        key = (rung, tuple(tuple(per_node_keys(batch[t], sizes[t])) for t in NODE_TYPES))
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        if len(self._entries) >= self.max_graphs:
            self._entries.popitem(last=False)
        static = StaticBatch(batch, self.ladder.capacities(rung), self.steps, self.modes)
        entry = self._entries[key] = _Captured(static)
        return entry

    def _capture(self, entry: _Captured) -> None:
        """Warm-up runs on a side stream (lazy initialisations stay out of the graph), then the capture."""
        params = self._params() if self.mode == 'train' else []
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                for p in params:
                    p.grad = None
                self._body(entry.static)
        torch.cuda.current_stream().wait_stream(side)
        for p in params:  # the captured backward allocates the gradients in the graph's pool: they stay put
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        # With several processes (DDP) the NCCL watchdog thread polls CUDA events while this thread captures: the
        # default 'global' mode would fail those calls, 'thread_local' restricts the capture rules to this thread.
        distributed = dist.is_available() and dist.is_initialized()
        with torch.cuda.graph(graph, pool=self._pool,
                              capture_error_mode='thread_local' if distributed else 'global'):
            entry.outputs = self._body(entry.static)
        if self._pool is None:
            self._pool = graph.pool()
        entry.cuda_graph = graph
        entry.grads = [p.grad for p in params]
        self.num_captures += 1

    def _storage_fingerprint(self) -> Tuple[int, ...]:
        return tuple(t.data_ptr() for t in list(self.model.parameters()) + list(self.model.buffers()))

    def _forget_graphs_if_weights_moved(self) -> None:
        """A captured graph reads the parameters at the addresses they had when it was captured. Lightning moves a
        module to the CPU when a fit/validate call ends and back to the GPU at the next one (new memory): the old
        graphs would then read freed memory, so they are dropped and captured again."""
        fingerprint = self._storage_fingerprint()
        if fingerprint != self._fingerprint:
            self._entries.clear()
            self._pool = None
            self._fingerprint = fingerprint

    def __call__(self, batch: HeteroData) -> Dict[str, torch.Tensor]:
        self._forget_graphs_if_weights_moved()
        graph = prebuilt_graph(batch)  # built by a loader worker (utils.prebuilt_graph), else here
        if graph is None:
            with torch.no_grad():
                graph = self.model.build_graph(batch)
        sizes = graph_sizes(batch, graph)
        entry = self._entry(batch, sizes)
        entry.static.fill(batch, graph, sizes)
        self.last_sizes, self.last_capacities = sizes, entry.static.capacities
        if not self.capture:
            if self.mode == 'train':  # as a replay does: this step's gradients replace the last step's
                for p in self._params():
                    p.grad = None
            outputs = self._body(entry.static)
        else:
            if entry.cuda_graph is None:
                self._capture(entry)
            entry.cuda_graph.replay()
            outputs = entry.outputs
            if self.mode == 'train':
                for p, grad in zip(self._params(), entry.grads):
                    p.grad = grad  # this capacity's gradient buffers (each graph has its own)
        if self.mode == 'train':
            return {name: value.clone() for name, value in outputs.items()}
        num_agents = sizes['agent']
        return {name: value[:num_agents].clone() for name, value in outputs.items()}

    def capacity_rungs(self) -> List[int]:
        """The capacity rungs that have static buffers (and, on CUDA, a captured graph) now."""
        return sorted({key[0] for key in self._entries})


def check_cuda_device(accelerator: str) -> None:
    """--cuda_graphs needs a CUDA device: ValueError naming the flag otherwise (no silent eager fallback)."""
    if accelerator not in ('gpu', 'cuda', 'auto') or not torch.cuda.is_available():
        raise ValueError(f'--cuda_graphs: needs a CUDA GPU (--accelerator {accelerator}, CUDA available: '
                         f'{torch.cuda.is_available()})')


def enable_for_evaluation(model: torch.nn.Module, accelerator: str) -> None:
    """val.py / test.py --cuda_graphs: evaluate with replayed fixed-shape forward passes (model.predict_batch).
    Raises ValueError for a model without a graph/compute split or without a CUDA device."""
    if not hasattr(model, 'static_runner'):
        raise ValueError(f'--cuda_graphs: {type(model).__name__} has no fixed-shape path (QCNet only)')
    check_cuda_device(accelerator)
    model.cuda_graphs = True
