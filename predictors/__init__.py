
from predictors.qcnet import QCNet
