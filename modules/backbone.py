"""What the self-supervised pre-training module sees of a backbone, and a registry of backbones.

A backbone turns one temporal view (a regular history-only sample, see ``transforms.ssl_views``) into one embedding
per agent and per recurrence:

    scene_enc = backbone.encode(view)                 # whatever the backbone's decoder needs
    embeddings = backbone.propose(view, scene_enc)    # [A, num_recurrent_steps, embed_dim]

Its submodules are what gets transferred to fine-tuning, so their names define the checkpoint layout (for 'qcnet':
``encoder.*`` and ``decoder.*``, which become ``branch.encoder.*`` / ``branch.decoder.*`` in the pre-training
checkpoint). Adding a backbone = subclass ``SSLBackbone`` + ``@register_backbone('name')``; the SSL losses and the
pre-training module need no change.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Type

import torch
import torch.nn as nn
from torch_geometric.data import HeteroData

from acceleration.edge_lists_in_workers import attached_edge_lists
from layers.grouped_batch_norm import mlp_with_grouped_norm


_BACKBONES: Dict[str, Type['SSLBackbone']] = {}


class SSLBackbone(nn.Module):
    """Interface of a pre-training backbone. Subclasses set ``embed_dim`` and ``num_recurrent_steps``."""

    embed_dim: int
    num_recurrent_steps: int

    def encode(self, view: HeteroData) -> Any:
        """Scene encoding of a view (history = the view's steps)."""
        raise NotImplementedError

    def propose(self, view: HeteroData, scene_enc: Any) -> torch.Tensor:
        """Per-agent embeddings after each recurrence -> float[A, num_recurrent_steps, embed_dim]."""
        raise NotImplementedError

    def forward(self, view: HeteroData, graph: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """graph: edge lists built beforehand (``build_graph(view)``, backbones that have one); None: built here."""
        if graph is not None:
            raise ValueError(f'{type(self).__name__} takes no edge lists built beforehand')
        return self.propose(view, self.encode(view))

    @classmethod
    def from_hparams(cls, **hparams: Any) -> 'SSLBackbone':
        """Builds the backbone from a flat dict of hyper-parameters, ignoring the ones it does not use."""
        raise NotImplementedError


def register_backbone(name: str) -> Callable[[Type[SSLBackbone]], Type[SSLBackbone]]:
    def decorator(cls: Type[SSLBackbone]) -> Type[SSLBackbone]:
        if name in _BACKBONES and _BACKBONES[name] is not cls:
            raise ValueError(f'backbone {name!r} is already registered ({_BACKBONES[name].__name__})')
        _BACKBONES[name] = cls
        return cls
    return decorator


def available_backbones() -> List[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, **hparams: Any) -> SSLBackbone:
    """Backbone ``name`` built from ``hparams`` (extra keys are ignored)."""
    if name not in _BACKBONES:
        raise ValueError(f'unknown backbone {name!r}; available: {", ".join(available_backbones())}')
    return _BACKBONES[name].from_hparams(**hparams)


def _pick(hparams: Mapping[str, Any], names: List[str], owner: str) -> Dict[str, Any]:
    missing = [n for n in names if n not in hparams]
    if missing:
        raise ValueError(f'{owner}: missing hyper-parameters {missing}')
    return {n: hparams[n] for n in names}


@register_backbone('qcnet')
class QCNetBackbone(SSLBackbone):
    """QCNet encoder + propose-only QCNet decoder (one mode query, ``num_recurrent_steps`` recurrences).

    Submodules ``encoder`` (``modules.QCNetEncoder``) and ``decoder`` (``modules.QCNetProposalDecoder``) carry the
    official parameter names, so their weights load into the supervised QCNet for fine-tuning.
    """

    ENCODER_ARGS = ['dataset', 'input_dim', 'hidden_dim', 'num_historical_steps', 'pl2pl_radius', 'time_span',
                    'pl2a_radius', 'a2a_radius', 'num_freq_bands', 'num_map_layers', 'num_agent_layers', 'num_heads',
                    'head_dim', 'dropout']
    DECODER_ARGS = ['dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head', 'num_historical_steps',
                    'num_future_steps', 'num_modes', 'num_recurrent_steps', 'num_t2m_steps', 'pl2m_radius',
                    'a2m_radius', 'num_freq_bands', 'num_dec_layers', 'num_heads', 'head_dim', 'dropout']

    def __init__(self, encoder: nn.Module, decoder: nn.Module, hidden_dim: int, num_recurrent_steps: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = hidden_dim
        self.num_recurrent_steps = num_recurrent_steps

    @classmethod
    def from_hparams(cls, **hparams: Any) -> 'QCNetBackbone':
        from modules.qcnet_encoder import QCNetEncoder
        from modules.qcnet_proposal_decoder import QCNetProposalDecoder
        hparams = dict(hparams)
        hparams.setdefault('num_modes', 1)
        if hparams['num_modes'] != 1:
            raise ValueError(f'qcnet backbone: pre-training uses one mode query, got num_modes={hparams["num_modes"]}')
        # optional: union-vocabulary table sizes for multi-dataset pre-training (absent = Argoverse 2's sizes)
        vocabulary = {name: hparams[name] for name in ('num_point_types', 'num_polygon_types')
                      if hparams.get(name) is not None}
        encoder = QCNetEncoder(**_pick(hparams, cls.ENCODER_ARGS, 'qcnet backbone'), **vocabulary)
        decoder_args = _pick(hparams, cls.DECODER_ARGS, 'qcnet backbone')
        decoder_args['num_layers'] = decoder_args.pop('num_dec_layers')
        decoder = QCNetProposalDecoder(**decoder_args)
        return cls(encoder, decoder, hidden_dim=hparams['hidden_dim'],
                   num_recurrent_steps=hparams['num_recurrent_steps'])

    def build_graph(self, view: HeteroData) -> Dict[str, torch.Tensor]:
        """Edge lists of the encoder and decoder (the data-dependent part, built in the loader workers by
        ``acceleration.view_pair_batch``)."""
        return {**self.encoder.build_graph(view), **self.decoder.build_graph(view)}

    def encode(self, view: HeteroData, graph: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        return self.encoder(view, graph)

    def propose(self, view: HeteroData, scene_enc: Mapping[str, torch.Tensor],
                graph: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        return self.decoder(view, scene_enc, graph).transpose(0, 1)  # decoder gives [R, A, D]

    def forward(self, view: HeteroData, graph: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        return self.propose(view, self.encode(view, graph), graph)


class SSLBranch(nn.Module):
    """Backbone + projector head: one branch (online or momentum) of the pre-training module.

    The backbone's submodules are registered directly on the branch (``branch.encoder``, ``branch.decoder``, ...),
    next to ``branch.proj``, which is the official checkpoint layout. ``forward(view)`` -> float[A, R, proj_dim].
    The projector is Linear -> BatchNorm1d -> ReLU -> Linear; its BatchNorm statistics run over agents and
    recurrences together.
    """

    def __init__(self, backbone: SSLBackbone, proj_hidden_dim: int, proj_dim: int) -> None:
        super().__init__()
        if next(backbone.parameters(recurse=False), None) is not None or len(backbone._buffers) > 0:
            raise ValueError(f'{type(backbone).__name__}: parameters must live in submodules to be adopted by a branch')
        for name, child in backbone.named_children():
            self.add_module(name, child)
        # Plain attribute (not a submodule): the backbone's methods run on the very modules registered above.
        object.__setattr__(self, 'backbone', backbone)
        self.proj = nn.Sequential(nn.Linear(backbone.embed_dim, proj_hidden_dim), nn.BatchNorm1d(proj_hidden_dim),
                                  nn.ReLU(inplace=True), nn.Linear(proj_hidden_dim, proj_dim))

    def add_module(self, name: str, module: Optional[nn.Module]) -> None:
        super().add_module(name, module)
        backbone = self.__dict__.get('backbone')
        if backbone is not None and name in backbone._modules:
            backbone._modules[name] = module  # e.g. SyncBatchNorm conversion replacing a child

    def forward(self, view: HeteroData, num_views: int = 1, edge_lists: Optional[Mapping[str, torch.Tensor]] = None,
                agent_groups: Optional[torch.Tensor] = None, layout: Optional[Any] = None) -> torch.Tensor:
        """view: one batch of views -> float[A, R, proj_dim]. ``edge_lists``: the backbone's edge lists built
        beforehand; else those a loader worker attached to the batch (``acceleration.edge_lists_in_workers``); else
        built here. ``layout``: the forecast_mae backbone's scene token layout computed beforehand (none: computed
        there).

        num_views > 1: the batch holds that many views of the same scenes one after the other (equal agent
        counts, e.g. ``acceleration.view_pair_batch``), run through the backbone together. The projector's
        BatchNorm then normalises each view by its own statistics and updates its running statistics view after
        view: the outputs and statistics of ``num_views`` separate calls, in that order.
        agent_groups long[A] (fixed-shape batches): each agent's view (0 .. num_views - 1), -1 for padding agents,
        which then take no part in the BatchNorm statistics (``layers.grouped_batch_norm``).
        """
        if layout is not None:
            embeddings = self.backbone(view, layout=layout)                                   # [A, R, D]
        else:
            graph = edge_lists if edge_lists is not None else attached_edge_lists(view)
            embeddings = self.backbone(view) if graph is None else self.backbone(view, graph)  # [A, R, D]
        num_agents, num_rec, _ = embeddings.shape
        rows = embeddings.reshape(num_agents * num_rec, -1)
        if agent_groups is not None:
            projected = mlp_with_grouped_norm(self.proj, rows, agent_groups.repeat_interleave(num_rec), num_views)
            return projected.view(num_agents, num_rec, -1)
        if num_views == 1:
            return self.proj(rows).view(num_agents, num_rec, -1)
        if num_agents % num_views:
            raise ValueError(f'SSLBranch: {num_agents} agents do not split into {num_views} views of equal size')
        hidden = self.proj[0](rows)
        # rows are agent-major, so each view's agents are one contiguous block
        hidden = torch.cat([self.proj[1](part) for part in hidden.chunk(num_views, dim=0)], dim=0)
        return self.proj[3](self.proj[2](hidden)).view(num_agents, num_rec, -1)


# Backbones defined in their own modules register on import (kept last: they subclass SSLBackbone from here).
from modules import forecast_mae_backbone  # noqa: E402,F401  'forecast_mae'
