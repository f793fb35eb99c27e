
from predictors.qcnet import QCNet
from predictors.smartpretrain import SmartPretrain
from predictors.trajectory_predictor import TrajectoryPredictor
from predictors.forecast_mae import ForecastMAE
from predictors.registry import PREDICTORS, model_class, model_class_for_checkpoint, resolve_model_name
