
from predictors.qcnet import QCNet
from predictors.smartpretrain import SmartPretrain
