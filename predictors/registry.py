"""Model selection for the scripts: predictor names, their SSL backbones, and the model stored in a checkpoint.

Every script accepts a model under its predictor name or its SmartPretrain backbone name, in any case and with or
without '_' / '-' ('QCNet' = 'qcnet'; 'ForecastMAE' = 'forecast_mae' = 'forecast-mae').
"""
from typing import Dict, List, Type

from predictors.forecast_mae import ForecastMAE
from predictors.qcnet import QCNet
from predictors.trajectory_predictor import TrajectoryPredictor, checkpoint_model_name, normalise_model_name

PREDICTORS: Dict[str, Type[TrajectoryPredictor]] = {cls.MODEL_NAME: cls for cls in (QCNet, ForecastMAE)}
AUTO = 'auto'


def model_names() -> List[str]:
    """Predictor names, e.g. for argparse choices."""
    return list(PREDICTORS)


def resolve_model_name(name: str) -> str:
    """Predictor name of ``name`` (a predictor or backbone name, see the module docstring)."""
    key = normalise_model_name(name)
    for model_name, cls in PREDICTORS.items():
        if key in (normalise_model_name(model_name), normalise_model_name(cls.SSL_BACKBONE)):
            return model_name
    raise ValueError(f'unknown model {name!r}; available: {", ".join(PREDICTORS)} (or their backbone names '
                     f'{", ".join(cls.SSL_BACKBONE for cls in PREDICTORS.values())})')


def model_class(name: str) -> Type[TrajectoryPredictor]:
    return PREDICTORS[resolve_model_name(name)]


def backbone_name(name: str) -> str:
    """SmartPretrain backbone of a model given by any of its names; names of other registered backbones
    (``modules.backbone``) are returned unchanged."""
    try:
        return model_class(name).SSL_BACKBONE
    except ValueError:
        return name


def model_class_for_checkpoint(path: str, requested: str = AUTO) -> Type[TrajectoryPredictor]:
    """The predictor class for ``path``: the one stored in the checkpoint when ``requested`` is 'auto', else the
    requested one (whose ``load_from_checkpoint`` refuses another model's checkpoint with a clear error)."""
    if normalise_model_name(requested) == AUTO:
        return model_class(checkpoint_model_name(path))
    return model_class(requested)
