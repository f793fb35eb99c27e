"""SmartPretrain adapter of the Forecast-MAE-style backbone (registered as 'forecast_mae')."""
from typing import Any, Optional

import torch
import torch.nn as nn
from torch_geometric.data import HeteroData

from modules.backbone import SSLBackbone, _pick, register_backbone
from modules.forecast_mae_encoder import (DEFAULT_NUM_SCENE_LAYERS, DEFAULT_NUM_TEMPORAL_LAYERS, ForecastMAEEncoder,
                                          ForecastMAEEncoding)
from modules.forecast_mae_layout import SceneLayout
from modules.forecast_mae_proposal_decoder import ForecastMAEProposalDecoder

# Defaults of the flags QCNet has no counterpart for (argparse and SmartPretrain(**hparams) without them).
BACKBONE_DEFAULTS = {'num_temporal_layers': DEFAULT_NUM_TEMPORAL_LAYERS, 'num_scene_layers': DEFAULT_NUM_SCENE_LAYERS}


@register_backbone('forecast_mae')
class ForecastMAEBackbone(SSLBackbone):
    """``encoder`` (``ForecastMAEEncoder``) + ``decoder`` (``ForecastMAEProposalDecoder`` with one mode): the
    embedding of agent a after "recurrence" r is its query for future segment r. The submodule and parameter names
    are those of the supervised ``predictors.ForecastMAE``, so the weights transfer for fine-tuning
    (``utils.pretrained``)."""

    ENCODER_ARGS = ['input_dim', 'hidden_dim', 'num_historical_steps', 'num_freq_bands', 'num_heads', 'head_dim',
                    'dropout', 'num_temporal_layers', 'num_scene_layers']
    DECODER_ARGS = ['hidden_dim', 'num_recurrent_steps', 'num_dec_layers', 'num_heads', 'head_dim', 'dropout']

    def __init__(self, encoder: nn.Module, decoder: nn.Module, hidden_dim: int, num_recurrent_steps: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.embed_dim = hidden_dim
        self.num_recurrent_steps = num_recurrent_steps

    @classmethod
    def from_hparams(cls, **hparams: Any) -> 'ForecastMAEBackbone':
        hparams = {**BACKBONE_DEFAULTS, 'num_modes': 1, **{k: v for k, v in hparams.items() if v is not None}}
        if hparams['num_modes'] != 1:
            raise ValueError(f'forecast_mae backbone: pre-training uses one mode query, got '
                             f'num_modes={hparams["num_modes"]}')
        vocabulary = {name: hparams[name] for name in ('num_point_types', 'num_polygon_types') if name in hparams}
        encoder = ForecastMAEEncoder(**_pick(hparams, cls.ENCODER_ARGS, 'forecast_mae backbone'), **vocabulary)
        decoder_args = _pick(hparams, cls.DECODER_ARGS, 'forecast_mae backbone')
        decoder = ForecastMAEProposalDecoder(num_modes=1, num_layers=decoder_args.pop('num_dec_layers'),
                                             **decoder_args)
        return cls(encoder, decoder, hidden_dim=hparams['hidden_dim'],
                   num_recurrent_steps=hparams['num_recurrent_steps'])

    def encode(self, view: HeteroData, layout: Optional[SceneLayout] = None) -> ForecastMAEEncoding:
        return self.encoder(view, layout)

    def propose(self, view: HeteroData, scene_enc: ForecastMAEEncoding) -> torch.Tensor:
        return self.decoder(scene_enc)[:, 0]                                   # [A, 1, R, D] -> [A, R, D]

    def forward(self, view: HeteroData, graph: Optional[Any] = None,
                layout: Optional[SceneLayout] = None) -> torch.Tensor:
        """layout: the scene token layout of ``view`` computed beforehand (the fixed-shape step pads it); None:
        computed here. There are no edge lists (``graph``)."""
        if graph is not None:
            raise ValueError(f'{type(self).__name__} takes no edge lists built beforehand')
        return self.propose(view, self.encode(view, layout))
