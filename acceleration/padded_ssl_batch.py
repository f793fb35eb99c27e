"""SmartPretrain batches padded to fixed sizes: the padding scheme of the pre-training CUDA-graph step.

A pre-training batch here is the two-view form of ``acceleration.view_pair_batch``: ``{'anchor': Batch,
'views': Batch(target views + anchor views)}``. Each of the two batches is padded as its backbone's supervised
predictor pads a batch (qcnet: ``acceleration.padded_qcnet_batch``, zero agents, polygons and points after the real
ones, padded edges joining the last padded nodes; forecast_mae: ``acceleration.padded_forecast_mae_batch``, the same
zero rows and a padded scene token layout), so the backbone's fixed-shape part is the supervised one's. What
pre-training adds:

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

from acceleration.padded_forecast_mae_batch import ForecastMAEPadding
from acceleration.padded_qcnet_batch import QCNetPadding
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
    """Static buffers of one capacity: the padded anchor batch and two-view batch (``PaddedQCNetBatch`` or
    ``PaddedForecastMAEBatch`` each, ``.data`` their node tensors), the pre-training index buffers (module docstring)
    and ``anchor_inputs`` / ``views_inputs``: what the branches take besides the data (``SSLBranch`` keywords: the
    padded edge lists, or the padded scene layout)."""

    def __init__(self, anchor, views, backbone_input: str) -> None:
        self.anchor, self.views = anchor, views
        self.anchor_inputs = {backbone_input: getattr(anchor, backbone_input)}
        self.views_inputs = {backbone_input: getattr(views, backbone_input)}
        device = anchor.data['agent']['position'].device
        anchor_cap, views_cap = anchor.capacities['agent'], views.capacities['agent']
        self.anchor_groups = torch.full((anchor_cap,), -1, dtype=torch.long, device=device)
        self.view_of_agent = torch.full((views_cap,), -1, dtype=torch.long, device=device)
        self.positive_index = torch.zeros(anchor_cap, dtype=torch.long, device=device)
        self.self_index = torch.zeros(anchor_cap, dtype=torch.long, device=device)

    def fill_indices(self, num_agents: int) -> None:
        """Agent groups and key rows of a batch of ``num_agents`` anchor agents (after both parts are filled)."""
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
    """The padding scheme of SmartPretrain (qcnet or forecast_mae backbone) for
    ``acceleration.cuda_graph_step.CudaGraphStep``: each view batch padded by its backbone's part scheme
    (``QCNetPadding`` / ``ForecastMAEPadding``), capacities agreed across processes."""

    def __init__(self, model: torch.nn.Module) -> None:
        from modules.forecast_mae_backbone import ForecastMAEBackbone
        backbone = model.branch.backbone
        if model.hparams.get('separate_dataset_negatives'):
            raise ValueError('--cuda_graphs: not available with --separate_dataset_negatives 1 yet')
        if hasattr(backbone, 'build_graph'):
            self.part = QCNetPadding(backbone, steps=model.num_historical_steps, modes=int(backbone.decoder.num_modes))
            self.backbone_input = 'edge_lists'
        elif isinstance(backbone, ForecastMAEBackbone):
            self.part = ForecastMAEPadding(backbone)
            self.backbone_input = 'layout'
        else:
            raise ValueError(f'--cuda_graphs: the {type(backbone).__name__} of pre-training has no fixed-shape step '
                             '(the qcnet and forecast_mae backbones have)')

    def prepare(self, batch: Mapping[str, HeteroData]) -> Tuple[Dict[str, int], Hashable, tuple]:
        """(sizes agreed across processes, structure key, payload (each part's payload, this process's own
        sizes))."""
        if VIEWS not in batch:
            raise ValueError('--cuda_graphs: pre-training batches must hold both views in one batch '
                             '(--batch_momentum_views 1)')
        parts = {part: self.part.prepare(batch[part]) for part in PARTS}
        local = {f'{part}.{name}': count for part in PARTS for name, count in parts[part][0].items()}
        key = tuple(parts[part][1] for part in PARTS)
        if self.backbone_input != 'layout':
            return agree_across_processes(local), key, (parts[ANCHOR][2], parts[VIEWS][2], local)
        # The scene count is exact (part of the key): every process must replay the same graph, or one would capture
        # (warm-up runs with the key gather) while another replays. Its maximum and minimum ride on the same
        # all-reduce (Lightning's distributed sampler gives every process the same number of samples).
        num_scenes = parts[ANCHOR][1][0]
        agreed = agree_across_processes({**local, 'scenes': num_scenes, 'minus_scenes': -num_scenes})
        if agreed.pop('scenes') != -agreed.pop('minus_scenes'):
            raise ValueError(f'--cuda_graphs: this process has a batch of {num_scenes} scenes, another process a '
                             'different number (pre-training with the forecast_mae backbone needs equal batches)')
        return agreed, key, (parts[ANCHOR][2], parts[VIEWS][2], local)

    def allocate(self, payload: tuple, capacities: Mapping[str, int]) -> PaddedViewPairBatch:
        anchor = self.part.allocate(payload[0], _split(capacities, ANCHOR))
        views = self.part.allocate(payload[1], _split(capacities, VIEWS))
        return PaddedViewPairBatch(anchor, views, self.backbone_input)

    def fill(self, padded: PaddedViewPairBatch, payload: tuple, sizes: Mapping[str, int]) -> None:
        local = payload[2]
        self.part.fill(padded.anchor, payload[0], _split(local, ANCHOR))
        self.part.fill(padded.views, payload[1], _split(local, VIEWS))
        padded.fill_indices(local[f'{ANCHOR}.agent'])

    @staticmethod
    def real_rows(outputs: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> Dict[str, torch.Tensor]:
        return dict(outputs)
