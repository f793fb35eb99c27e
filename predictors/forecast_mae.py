"""Forecast-MAE-style predictor as a Lightning module (second backbone family next to QCNet).

Same objective, metrics, optimiser, checkpoint handling and submission path as ``predictors.QCNet`` (both subclass
``predictors.trajectory_predictor.TrajectoryPredictor``); only the networks differ: ``modules.ForecastMAEEncoder``
(agent-history and lane tokens, one transformer over the scene) and ``modules.ForecastMAEDecoder``.
"""
from typing import Dict, Optional

import torch
from torch_geometric.data import HeteroData

from modules.forecast_mae_backbone import BACKBONE_DEFAULTS
from modules.forecast_mae_decoder import ForecastMAEDecoder
from modules.forecast_mae_encoder import ForecastMAEEncoder
from modules.forecast_mae_layout import SceneLayout
from predictors.arguments import add_forecast_mae_args
from predictors.trajectory_predictor import TrajectoryPredictor


class ForecastMAE(TrajectoryPredictor):
    """Constructor arguments reuse QCNet's names where the meaning is the same (``hidden_dim``, ``num_heads``,
    ``head_dim``, ``num_freq_bands``, ``num_dec_layers``, ``num_recurrent_steps`` = future segments, ...), plus
    ``num_temporal_layers`` (history transformer depth) and ``num_scene_layers`` (scene transformer depth). Extra
    keyword arguments (e.g. the training script's flags) are stored in the hyper-parameters, like QCNet's.
    """

    MODEL_NAME = 'ForecastMAE'
    SSL_BACKBONE = 'forecast_mae'
    PROPOSE_TO_REFINE = (('propose_blocks', 'refine_blocks'),)

    def __init__(self,
                 dataset: str = 'argoverse_v2',
                 input_dim: int = 2,
                 hidden_dim: int = 128,
                 output_dim: int = 2,
                 output_head: bool = False,
                 num_historical_steps: int = 50,
                 num_future_steps: int = 60,
                 num_modes: int = 6,
                 num_recurrent_steps: int = 3,
                 num_freq_bands: int = 64,
                 num_temporal_layers: int = BACKBONE_DEFAULTS['num_temporal_layers'],
                 num_scene_layers: int = BACKBONE_DEFAULTS['num_scene_layers'],
                 num_dec_layers: int = 2,
                 num_heads: int = 8,
                 head_dim: int = 16,
                 dropout: float = 0.1,
                 lr: float = 5e-4,
                 weight_decay: float = 1e-4,
                 T_max: int = 64,
                 submission_dir: str = './',
                 submission_file_name: str = 'submission',
                 num_point_types: Optional[int] = None,
                 num_polygon_types: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.dataset = dataset
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.output_head = output_head
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_modes = num_modes
        self.num_recurrent_steps = num_recurrent_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.T_max = T_max
        self.submission_dir = submission_dir
        self.submission_file_name = submission_file_name
        if output_dim != 2:
            raise ValueError(f'ForecastMAE: only output_dim=2 is supported, got {output_dim}')

        self.encoder = ForecastMAEEncoder(
            input_dim=input_dim, hidden_dim=hidden_dim, num_historical_steps=num_historical_steps,
            num_freq_bands=num_freq_bands, num_heads=num_heads, head_dim=head_dim, dropout=dropout,
            num_temporal_layers=num_temporal_layers, num_scene_layers=num_scene_layers,
            num_point_types=num_point_types, num_polygon_types=num_polygon_types)
        self.decoder = ForecastMAEDecoder(
            hidden_dim=hidden_dim, output_dim=output_dim, output_head=output_head, num_future_steps=num_future_steps,
            num_modes=num_modes, num_recurrent_steps=num_recurrent_steps, num_layers=num_dec_layers,
            num_heads=num_heads, head_dim=head_dim, dropout=dropout)
        self.init_objectives()

    def forward(self, data: HeteroData, layout: Optional[SceneLayout] = None) -> Dict[str, torch.Tensor]:
        """The decoder's output dict (see :class:`modules.ForecastMAEDecoder`), in each agent's frame. ``layout``:
        the scene token layout computed beforehand (the CUDA-graph step pads it); None: computed here."""
        return self.decoder(self.encoder(data, layout))

    def padded_step_losses(self, padded) -> Dict[str, torch.Tensor]:
        """Losses of a batch padded to fixed sizes (acceleration.padded_forecast_mae_batch): the CUDA-graph step's
        body."""
        return self.compute_losses(padded.data, self(padded.data, padded.layout))

    def padded_forward(self, padded) -> Dict[str, torch.Tensor]:
        """Forward outputs of a padded batch (the CUDA-graph evaluation step's body)."""
        return self(padded.data, padded.layout)

    @staticmethod
    def add_model_specific_args(parent_parser):
        """Flags of the model (``predictors.arguments``)."""
        return add_forecast_mae_args(parent_parser)
