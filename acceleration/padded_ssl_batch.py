"""SmartPretrain batches padded to fixed sizes: the padding scheme of the pre-training CUDA-graph step.

A pre-training batch here is the two-view form of ``acceleration.view_pair_batch``: ``{'anchor': Batch,
'views': Batch(target views + anchor views)}``. Each of the two batches is padded like a QCNet batch
(``acceleration.padded_qcnet_batch``: zero agents, polygons and points after the real ones, padded edges joining the
last padded nodes), so the backbone's fixed-shape part is QCNet's. What pre-training adds:

- agent groups: each agent's view in the two-view batch (0 .. V-1 in ``VIEW_ORDER``) and 0 for the anchor batch's
  agents; -1 for padding. The projector and predictor BatchNorm layers normalise each group by its own statistics
  (``layers.grouped_batch_norm``), so padding never enters them;
- the key rows of each anchor agent's positive (target view) and of its own anchor-view key, as index buffers;
- padded agents have every mask False (view, query, reconstruction), so they take no part in either loss.

Capacities agreed across processes: the contrastive loss gathers every process's keys. With the same capacities on
every process the gathered block of each process has the same row count, so the gather needs no count exchange and
no host synchronisation and runs inside the captured graph (``losses.contrastive_loss.all_gather_equal_rows``); the
other collectives of the losses (global query and step counts) are fixed-shape too. ``prepare`` takes the maximum of
every size over the processes (one small all-reduce per step, outside the graph) before the capacity is chosen, so
all processes pick the same rung. Losses and gradients equal the unpadded two-view step's up to float rounding
(tests/test_ssl_cuda_graph_step.py).
"""
from typing import Dict, Hashable, Mapping, Tuple

import torch
import torch.distributed as dist
from torch_geometric.data import HeteroData

from acceleration.edge_lists_in_workers import attached_edge_lists
from acceleration.padded_qcnet_batch import NODE_TYPES, PaddedQCNetBatch, per_node_keys, qcnet_sizes
from transforms.ssl_views import ANCHOR, TARGET, VIEW_ORDER, VIEWS

PARTS = (ANCHOR, VIEWS)


def _split(sizes: Mapping[str, int], part: str) -> Dict[str, int]:
    prefix = f'{part}.'
    return {name[len(prefix):]: count for name, count in sizes.items() if name.startswith(prefix)}


def agree_across_processes(sizes: Dict[str, int]) -> Dict[str, int]:
    """Each size's maximum over the processes (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return sizes
    names = sorted(sizes)
    device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else torch.device('cpu')
    counts = torch.tensor([sizes[name] for name in names], dtype=torch.long, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    return dict(zip(names, counts.tolist()))


class PaddedViewPairBatch:
    """Static buffers of one capacity: the padded anchor batch and two-view batch (``PaddedQCNetBatch`` each) and
    the pre-training index buffers (module docstring)."""

    def __init__(self, anchor: HeteroData, views: HeteroData, capacities: Mapping[str, int], steps: int,
                 modes: int) -> None:
        self.anchor = PaddedQCNetBatch(anchor, _split(capacities, ANCHOR), steps, modes)
        self.views = PaddedQCNetBatch(views, _split(capacities, VIEWS), steps, modes)
        device = anchor['agent']['position'].device
        anchor_cap, views_cap = self.anchor.capacities['agent'], self.views.capacities['agent']
        self.anchor_groups = torch.full((anchor_cap,), -1, dtype=torch.long, device=device)
        self.view_of_agent = torch.full((views_cap,), -1, dtype=torch.long, device=device)
        self.positive_index = torch.zeros(anchor_cap, dtype=torch.long, device=device)
        self.self_index = torch.zeros(anchor_cap, dtype=torch.long, device=device)

    def fill(self, anchor: HeteroData, anchor_edges, views: HeteroData, views_edges,
             local_sizes: Mapping[str, int]) -> None:
        self.anchor.fill(anchor, anchor_edges, _split(local_sizes, ANCHOR))
        self.views.fill(views, views_edges, _split(local_sizes, VIEWS))
        num_agents = local_sizes[f'{ANCHOR}.agent']
        device = self.anchor_groups.device
        agents = torch.arange(num_agents, device=device)
        self.anchor_groups.fill_(-1)
        self.anchor_groups[:num_agents] = 0
        self.view_of_agent.fill_(-1)
        self.view_of_agent[:len(VIEW_ORDER) * num_agents] = torch.arange(
            len(VIEW_ORDER), device=device).repeat_interleave(num_agents)
        # padded anchor agents point at the last (padded, masked) key row
        last_key = self.views.capacities['agent'] - 1
        self.positive_index.fill_(last_key)
        self.self_index.fill_(last_key)
        self.positive_index[:num_agents] = agents + VIEW_ORDER.index(TARGET) * num_agents
        self.self_index[:num_agents] = agents + VIEW_ORDER.index(ANCHOR) * num_agents


class ViewPairPadding:
    """The padding scheme of SmartPretrain (qcnet backbone) for ``acceleration.cuda_graph_step.CudaGraphStep``."""

    def __init__(self, model: torch.nn.Module) -> None:
        backbone = model.branch.backbone
        if not hasattr(backbone, 'build_graph'):
            raise ValueError(f'--cuda_graphs: the {type(backbone).__name__} of pre-training has no fixed-shape step '
                             '(the qcnet backbone has)')
        if model.hparams.get('separate_dataset_negatives'):
            raise ValueError('--cuda_graphs: not available with --separate_dataset_negatives 1 yet')
        self.backbone = backbone
        self.steps, self.modes = model.num_historical_steps, int(backbone.decoder.num_modes)

    def _edge_lists(self, batch: HeteroData) -> Dict[str, torch.Tensor]:
        edge_lists = attached_edge_lists(batch)
        if edge_lists is None:
            with torch.no_grad():
                edge_lists = self.backbone.build_graph(batch)
        return edge_lists

    def prepare(self, batch: Mapping[str, HeteroData]) -> Tuple[Dict[str, int], Hashable, tuple]:
        """(sizes agreed across processes, structure key, payload (anchor, its edge lists, views, theirs, this
        process's own sizes))."""
        if VIEWS not in batch:
            raise ValueError('--cuda_graphs: pre-training batches must hold both views in one batch '
                             '(--batch_momentum_views 1)')
        anchor, views = batch[ANCHOR], batch[VIEWS]
        anchor_edges, views_edges = self._edge_lists(anchor), self._edge_lists(views)
        local = {f'{part}.{name}': count for part, data, edges in ((ANCHOR, anchor, anchor_edges),
                                                                   (VIEWS, views, views_edges))
                 for name, count in qcnet_sizes(data, edges).items()}
        key = tuple(tuple(per_node_keys(data[t], local[f'{part}.{t}'])) for part, data in ((ANCHOR, anchor),
                                                                                         (VIEWS, views))
                    for t in NODE_TYPES)
        return agree_across_processes(local), key, (anchor, anchor_edges, views, views_edges, local)

    def allocate(self, payload: tuple, capacities: Mapping[str, int]) -> PaddedViewPairBatch:
        return PaddedViewPairBatch(payload[0], payload[2], capacities, self.steps, self.modes)

    def fill(self, padded: PaddedViewPairBatch, payload: tuple, sizes: Mapping[str, int]) -> None:
        padded.fill(*payload)

    @staticmethod
    def real_rows(outputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> Dict[str, torch.Tensor]:
        return dict(outputs)
