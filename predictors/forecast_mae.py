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

    def forward(self, data: HeteroData) -> Dict[str, torch.Tensor]:
        """The decoder's output dict (see :class:`modules.ForecastMAEDecoder`), in each agent's frame."""
        return self.decoder(self.encoder(data))

    @staticmethod
    def add_model_specific_args(parent_parser):
        """Flags of the model (QCNet's names where they mean the same; the QCNet-only radii are not taken)."""
        parser = parent_parser.add_argument_group('ForecastMAE')
        parser.add_argument('--dataset', type=str, default='argoverse_v2')
        parser.add_argument('--input_dim', type=int, default=2)
        parser.add_argument('--hidden_dim', type=int, default=128)
        parser.add_argument('--output_dim', type=int, default=2)
        parser.add_argument('--output_head', action='store_true')
        parser.add_argument('--num_historical_steps', type=int, default=50)
        parser.add_argument('--num_future_steps', type=int, default=60)
        parser.add_argument('--num_modes', type=int, default=6)
        parser.add_argument('--num_recurrent_steps', type=int, default=3,
                            help='future segments decoded by their own queries (pre-training "recurrences")')
        parser.add_argument('--num_freq_bands', type=int, default=64)
        add_backbone_specific_args(parser)
        parser.add_argument('--num_dec_layers', type=int, default=2)
        parser.add_argument('--num_heads', type=int, default=8)
        parser.add_argument('--head_dim', type=int, default=16)
        parser.add_argument('--dropout', type=float, default=0.1)
        # optimisation defaults of the official Forecast-MAE recipe (lr 1e-3, 10 warm-up epochs, 60 epochs, clip 5)
        parser.add_argument('--lr', type=float, default=1e-3)
        parser.add_argument('--weight_decay', type=float, default=1e-4)
        parser.add_argument('--T_max', type=int, default=60)
        parser.add_argument('--warmup_epochs', type=int, default=10,
                            help='linear learning-rate warm-up epochs before the cosine decay (0: none)')
        parser.add_argument('--gradient_clip_val', type=float, default=5.0,
                            help='clip the gradient norm to this value (0: no clipping)')
        parser.add_argument('--submission_dir', type=str, default='./')
        parser.add_argument('--submission_file_name', type=str, default='submission')
        return parent_parser


def add_backbone_specific_args(parser) -> None:
    """The flags QCNet has no counterpart for (also offered by train_ssl.py for ``--backbone forecast_mae``)."""
    parser.add_argument('--num_temporal_layers', type=int, default=BACKBONE_DEFAULTS['num_temporal_layers'],
                        help='ForecastMAE: transformer blocks over each agent\'s history steps')
    parser.add_argument('--num_scene_layers', type=int, default=BACKBONE_DEFAULTS['num_scene_layers'],
                        help='ForecastMAE: transformer blocks over the scene\'s agent and lane tokens')
