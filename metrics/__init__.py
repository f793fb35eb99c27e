
from metrics.agent_mean_metric import AgentMeanMetric
from metrics.brier import Brier
from metrics.min_ade import minADE
from metrics.min_ahe import minAHE
from metrics.min_fde import minFDE
from metrics.min_fhe import minFHE
from metrics.mr import MR
