"""Command-line flags of the predictors (official names and defaults), defined without importing the models so
that the scripts answer ``--help`` before torch is imported. ``<Predictor>.add_model_specific_args`` use these."""
from argparse import ArgumentParser
from typing import Any, Callable, Dict

from predictors.names import resolve_model_name
from utils.cli import bool_flag

# Depths of the ForecastMAE encoder (modules/forecast_mae_encoder.py: DEFAULT_NUM_TEMPORAL_LAYERS / _SCENE_LAYERS).
FORECAST_MAE_DEPTHS = {'num_temporal_layers': 2, 'num_scene_layers': 4}


def add_qcnet_args(parent_parser: ArgumentParser) -> ArgumentParser:
    """Official QCNet flags (names and defaults)."""
    parser = parent_parser.add_argument_group('QCNet')
    parser.add_argument('--dataset', type=str, required=True)
    parser.add_argument('--input_dim', type=int, default=2)
    parser.add_argument('--hidden_dim', type=int, default=128)
    parser.add_argument('--output_dim', type=int, default=2)
    parser.add_argument('--output_head', **bool_flag(False))
    parser.add_argument('--num_historical_steps', type=int, required=True)
    parser.add_argument('--num_future_steps', type=int, required=True)
    parser.add_argument('--num_modes', type=int, default=6)
    parser.add_argument('--num_recurrent_steps', type=int, required=True)
    parser.add_argument('--num_freq_bands', type=int, default=64)
    parser.add_argument('--num_map_layers', type=int, default=1)
    parser.add_argument('--num_agent_layers', type=int, default=2)
    parser.add_argument('--num_dec_layers', type=int, default=2)
    parser.add_argument('--num_heads', type=int, default=8)
    parser.add_argument('--head_dim', type=int, default=16)
    parser.add_argument('--dropout', type=float, default=0.1)
    parser.add_argument('--pl2pl_radius', type=float, required=True)
    parser.add_argument('--time_span', type=int, default=None)
    parser.add_argument('--pl2a_radius', type=float, required=True)
    parser.add_argument('--a2a_radius', type=float, required=True)
    parser.add_argument('--num_t2m_steps', type=int, default=None)
    parser.add_argument('--pl2m_radius', type=float, required=True)
    parser.add_argument('--a2m_radius', type=float, required=True)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--weight_decay', type=float, default=1e-4)
    parser.add_argument('--warmup_epochs', '--warmup', dest='warmup_epochs', type=int, default=0,
                        help='linear learning-rate warm-up epochs before the cosine decay (official QCNet: none)')
    parser.add_argument('--gradient_clip_val', type=float, default=0.0,
                        help='clip the gradient norm to this value (0: no clipping, as officially)')
    parser.add_argument('--T_max', type=int, default=64)
    parser.add_argument('--submission_dir', type=str, default='./')
    parser.add_argument('--submission_file_name', type=str, default='submission')
    return parent_parser


def add_forecast_mae_args(parent_parser: ArgumentParser) -> ArgumentParser:
    """Flags of the ForecastMAE predictor (QCNet's names where they mean the same; the QCNet-only radii are not
    taken)."""
    parser = parent_parser.add_argument_group('ForecastMAE')
    parser.add_argument('--dataset', type=str, default='argoverse_v2')
    parser.add_argument('--input_dim', type=int, default=2)
    parser.add_argument('--hidden_dim', type=int, default=128)
    parser.add_argument('--output_dim', type=int, default=2)
    parser.add_argument('--output_head', **bool_flag(False))
    parser.add_argument('--num_historical_steps', type=int, default=50)
    parser.add_argument('--num_future_steps', type=int, default=60)
    parser.add_argument('--num_modes', type=int, default=6)
    parser.add_argument('--num_recurrent_steps', type=int, default=3,
                        help='future segments decoded by their own queries (pre-training "recurrences")')
    parser.add_argument('--num_freq_bands', type=int, default=64)
    add_forecast_mae_backbone_args(parser)
    parser.add_argument('--num_dec_layers', type=int, default=2)
    parser.add_argument('--num_heads', type=int, default=8)
    parser.add_argument('--head_dim', type=int, default=16)
    parser.add_argument('--dropout', type=float, default=0.1)
    # optimisation defaults of the official Forecast-MAE recipe (lr 1e-3, 10 warm-up epochs, 60 epochs, clip 5)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--weight_decay', type=float, default=1e-4)
    parser.add_argument('--T_max', type=int, default=60)
    parser.add_argument('--warmup_epochs', '--warmup', dest='warmup_epochs', type=int, default=10,
                        help='linear learning-rate warm-up epochs before the cosine decay (0: none)')
    parser.add_argument('--gradient_clip_val', type=float, default=5.0,
                        help='clip the gradient norm to this value (0: no clipping)')
    parser.add_argument('--submission_dir', type=str, default='./')
    parser.add_argument('--submission_file_name', type=str, default='submission')
    return parent_parser


def add_forecast_mae_backbone_args(parser: Any) -> None:
    """The ForecastMAE flags QCNet has no counterpart for (also offered by train_ssl.py for
    ``--backbone forecast_mae``)."""
    parser.add_argument('--num_temporal_layers', type=int, default=FORECAST_MAE_DEPTHS['num_temporal_layers'],
                        help='ForecastMAE: transformer blocks over each agent\'s history steps')
    parser.add_argument('--num_scene_layers', type=int, default=FORECAST_MAE_DEPTHS['num_scene_layers'],
                        help='ForecastMAE: transformer blocks over the scene\'s agent and lane tokens')


def add_smartpretrain_args(parent_parser: ArgumentParser) -> ArgumentParser:
    """SmartPretrain flags (official names and defaults of the pre-training script)."""
    parser = parent_parser.add_argument_group('SmartPretrain')
    parser.add_argument('--dataset', type=str, default='argoverse_v2')
    parser.add_argument('--backbone', type=str, default='qcnet', help='registered backbone (modules/backbone.py)')
    parser.add_argument('--input_dim', type=int, default=2)
    parser.add_argument('--hidden_dim', type=int, default=128)
    parser.add_argument('--output_dim', type=int, default=2)
    parser.add_argument('--output_head', **bool_flag(False))
    parser.add_argument('--num_historical_steps', type=int, default=50)
    parser.add_argument('--num_future_steps', type=int, default=60)
    parser.add_argument('--num_modes', type=int, default=1, help='mode queries while pre-training (1)')
    parser.add_argument('--num_recurrent_steps', type=int, default=3)
    parser.add_argument('--num_freq_bands', type=int, default=64)
    parser.add_argument('--num_map_layers', type=int, default=1)
    parser.add_argument('--num_agent_layers', type=int, default=2)
    parser.add_argument('--num_dec_layers', type=int, default=2)
    parser.add_argument('--num_heads', type=int, default=8)
    parser.add_argument('--head_dim', type=int, default=16)
    parser.add_argument('--dropout', type=float, default=0.1)
    parser.add_argument('--pl2pl_radius', type=float, default=150)
    parser.add_argument('--time_span', type=int, default=10)
    parser.add_argument('--pl2a_radius', type=float, default=50)
    parser.add_argument('--a2a_radius', type=float, default=50)
    parser.add_argument('--num_t2m_steps', type=int, default=30)
    parser.add_argument('--pl2m_radius', type=float, default=150)
    parser.add_argument('--a2m_radius', type=float, default=150)
    parser.add_argument('--lr', type=float, default=1.5e-3, help='peak learning rate (after warm-up)')
    parser.add_argument('--weight_decay', type=float, default=1e-1, help='final weight decay')
    parser.add_argument('--T_max', type=int, default=32, help='accepted for compatibility; the schedule '
                        'follows --max_epochs')
    parser.add_argument('--submission_dir', type=str, default='./')
    parser.add_argument('--submission_file_name', type=str, default='submission')
    parser.add_argument('--lr_init', type=float, default=1e-4, help='learning rate at the first step')
    parser.add_argument('--lr_last', type=float, default=1e-6, help='learning rate at the last step')
    parser.add_argument('--weight_decay_init', type=float, default=1e-2, help='weight decay at the first step')
    parser.add_argument('--contra_t', type=float, default=0.07, help='InfoNCE temperature')
    parser.add_argument('--contra_momentum', type=float, default=0.996, help='EMA momentum at the first step')
    parser.add_argument('--warmup', '--warmup_epochs', dest='warmup', type=int, default=15,
                        help='learning-rate warm-up in epochs')
    parser.add_argument('--lambda_rec', type=float, default=1.0, help='weight of the reconstruction loss')
    parser.add_argument('--lambda_contra', type=float, default=1.0,
                        help='weight of the contrastive loss (0 with --lambda_rec 1: reconstruction only)')
    parser.add_argument('--separate_dataset_negatives', **bool_flag(False),
                        help='multi-dataset pre-training: contrastive negatives only from the query\'s dataset')
    return parent_parser


PREDICTOR_ARGS: Dict[str, Callable[[ArgumentParser], ArgumentParser]] = {
    'QCNet': add_qcnet_args, 'ForecastMAE': add_forecast_mae_args}


def add_predictor_args(parser: ArgumentParser, model: str) -> ArgumentParser:
    """The flags of predictor ``model`` (any of its names, ``predictors.names``)."""
    return PREDICTOR_ARGS[resolve_model_name(model)](parser)
