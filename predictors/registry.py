"""Model classes for the scripts: the predictor class of a name (``predictors.names``) or of a checkpoint."""
from typing import Dict, Type

from predictors.forecast_mae import ForecastMAE
from predictors.qcnet import QCNet
from predictors.names import (AUTO, backbone_name, model_names, normalise_model_name,  # noqa: F401 (re-exported)
                              resolve_model_name)
from predictors.trajectory_predictor import TrajectoryPredictor, checkpoint_model_name

PREDICTORS: Dict[str, Type[TrajectoryPredictor]] = {cls.MODEL_NAME: cls for cls in (QCNet, ForecastMAE)}


def model_class(name: str) -> Type[TrajectoryPredictor]:
    return PREDICTORS[resolve_model_name(name)]


def model_class_for_checkpoint(path: str, requested: str = AUTO) -> Type[TrajectoryPredictor]:
    """The predictor class for ``path``: the one stored in the checkpoint when ``requested`` is 'auto', else the
    requested one (whose ``load_from_checkpoint`` refuses another model's checkpoint with a clear error)."""
    if normalise_model_name(requested) == AUTO:
        return model_class(checkpoint_model_name(path))
    return model_class(requested)
