"""Batches of SmartPretrain view pairs as the loader workers make them: both views in one batch, edge lists built.

The momentum branch embeds the target view and the anchor view of every scene. The two views of a scene are
independent inputs of the backbone (same agents and map, other time windows), so they can run as ONE batch of
2B scenes instead of two batches of B: half the kernel launches for the same arithmetic. ``ViewPairCollate``
builds that batch next to the anchor batch the online branch needs:

    {'anchor': Batch(anchor views), 'views': Batch(target views + anchor views)}

(``transforms.ssl_views`` makes the pairs; without ``batch_views`` the plain ``{'anchor', 'target'}`` pair of
batches is kept). With a graph builder (``--build_graph_in_workers``) every batch also carries its edge lists
(``acceleration.edge_lists_in_workers``): the anchor's and the target's are built, and the two-view batch's is their
concatenation with the indices moved to the joined node lists (``concat_edge_lists``), so building costs what it
costs for the two views separately.
"""
import copy
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch_geometric.data import Batch

from acceleration.edge_lists_in_workers import EDGE_LISTS_ATTRIBUTE
from acceleration.padded_qcnet_batch import QCNET_EDGE_ATTRS, QCNET_EDGE_LAYOUTS, node_sizes
from transforms.ssl_views import ANCHOR, TARGET, VIEW_ORDER, VIEWS


def _shift(index: torch.Tensor, layout: str, part: int, first: Mapping[str, int], second: Mapping[str, int],
           steps: int, modes: int) -> torch.Tensor:
    """Indices of one part (0: first batch, 1: second) of a joined batch, in ``layout`` (static_graph's names)."""
    if layout == 'step_agent':  # t * A_part + a -> t * (A_1 + A_2) + (offset +) a
        count = first['agent'] if part == 0 else second['agent']
        if index.numel() == 0:
            return index
        total = first['agent'] + second['agent']
        offset = 0 if part == 0 else first['agent']
        return torch.div(index, count, rounding_mode='floor') * total + offset + index % count
    if part == 0:
        return index
    if layout == 'agent_step':  # a * T + t
        return index + first['agent'] * steps
    if layout == 'slot_mode':   # s * K + k over the query slots
        return index + first['query_agent'] * modes
    return index + first[layout]


def concat_edge_lists(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                      first_sizes: Mapping[str, int], second_sizes: Mapping[str, int], steps: int,
                      modes: int) -> Dict[str, torch.Tensor]:
    """Edge lists of the batch ``Batch(first scenes + second scenes)`` from those of the two batches.

    first / second: QCNet backbone edge lists (``QCNetBackbone.build_graph``, keys of
    ``acceleration.padded_qcnet_batch.QCNET_EDGE_LAYOUTS`` plus 'type_pl2pl', 'query_agent', 'query_slot'); *_sizes: node counts
    per node type (``node_sizes``); steps: history steps T of the views; modes: mode queries K per slot.
    The same edges as building the joined batch's lists directly (searches and caps are per scene), the first
    batch's edges first.
    """
    first_sizes = dict(first_sizes, query_agent=int(first['query_agent'].numel()))
    second_sizes = dict(second_sizes, query_agent=int(second['query_agent'].numel()))
    out: Dict[str, torch.Tensor] = {}
    for name, layouts in QCNET_EDGE_LAYOUTS.items():
        parts = []
        for part, graph in enumerate((first, second)):
            edges = graph[name]
            parts.append(torch.stack([_shift(edges[row], layouts[row], part, first_sizes, second_sizes, steps, modes)
                                      for row in range(2)]))
        out[name] = torch.cat(parts, dim=1)
    for name in QCNET_EDGE_ATTRS:
        out[name] = torch.cat([first[name], second[name]])
    num_first, num_second = first_sizes['query_agent'], second_sizes['query_agent']
    shared = num_first + num_second  # the slot of the agents without a query (edge-free)
    out['query_agent'] = torch.cat([first['query_agent'], second['query_agent'] + first_sizes['agent']])
    slot_first, slot_second = first['query_slot'], second['query_slot']
    out['query_slot'] = torch.cat([torch.where(slot_first == num_first, shared, slot_first),
                                   torch.where(slot_second == num_second, shared, slot_second + num_first)])
    return out


def view_edge_list_builder(model: torch.nn.Module, num_workers: int) -> torch.nn.Module:
    """--build_graph_in_workers for pre-training: a CPU copy of ``model``'s backbone (``model.branch.backbone``),
    whose ``build_graph`` the loader workers run (weights are never read). ValueError (one line naming the flag)
    without workers or for a backbone without edge lists."""
    if num_workers < 1:
        raise ValueError('--build_graph_in_workers: needs --num_workers >= 1 (with 0 the edge lists would be built in '
                         'the main process, serially, on the CPU)')
    backbone = model.branch.backbone
    if not hasattr(backbone, 'build_graph'):
        raise ValueError(f'--build_graph_in_workers: the {type(backbone).__name__} has no separate edge-list '
                         'construction (the qcnet backbone has)')
    return copy.deepcopy(backbone).cpu().eval()


class ViewPairCollate:
    """Collate function of a pre-training loader (items: ``{'anchor', 'target'}`` view pairs; module docstring).

    collate: the loader's collate of a list of HeteroData (PyG's); builder: None, or a CPU backbone with
    ``build_graph(view)`` (``view_edge_list_builder``) whose edge lists travel with the batches;
    batch_views: give the two-view batch under 'views' (else the plain anchor / target pair). Picklable.
    """

    def __init__(self, collate: Callable[[List], Batch], builder: Optional[torch.nn.Module] = None,
                 batch_views: bool = True) -> None:
        if builder is not None and not hasattr(builder, 'build_graph'):
            raise ValueError(f'{type(builder).__name__} has no build_graph(view): only the qcnet backbone builds its '
                             'edge lists in the loader workers')
        self.collate, self.builder, self.batch_views = collate, builder, batch_views

    def _graph(self, batch: Batch) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            graph = self.builder.build_graph(batch)
        setattr(batch, EDGE_LISTS_ATTRIBUTE, graph)
        return graph

    def __call__(self, items: List[Mapping[str, object]]) -> Dict[str, Batch]:
        views = {name: [item[name] for item in items] for name in (ANCHOR, TARGET)}
        anchor = self.collate(views[ANCHOR])
        if not self.batch_views:
            target = self.collate(views[TARGET])
            if self.builder is not None:
                self._graph(anchor)
                self._graph(target)
            return {ANCHOR: anchor, TARGET: target}
        joined = self.collate(views[VIEW_ORDER[0]] + views[VIEW_ORDER[1]])
        if self.builder is not None:
            parts = {ANCHOR: anchor, TARGET: self.collate(views[TARGET])}
            graphs = {name: self._graph(batch) for name, batch in parts.items()}
            first, second = (parts[name] for name in VIEW_ORDER)
            steps = int(first['agent']['position'].size(1))
            setattr(joined, EDGE_LISTS_ATTRIBUTE, concat_edge_lists(
                graphs[VIEW_ORDER[0]], graphs[VIEW_ORDER[1]], node_sizes(first), node_sizes(second), steps,
                modes=int(self.builder.decoder.num_modes)))
        return {ANCHOR: anchor, VIEWS: joined}

