"""Predictors (Lightning modules). Attributes are imported on first use: ``predictors.names`` and
``predictors.arguments`` import no torch (the scripts' ``--help``)."""
from utils.lazy_exports import lazy_exports

_EXPORTS = {
    'qcnet': ('QCNet',),
    'smartpretrain': ('SmartPretrain',),
    'trajectory_predictor': ('TrajectoryPredictor',),
    'forecast_mae': ('ForecastMAE',),
    'registry': ('PREDICTORS', 'model_class', 'model_class_for_checkpoint', 'resolve_model_name'),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__getattr__ = lazy_exports(__name__, _EXPORTS)
