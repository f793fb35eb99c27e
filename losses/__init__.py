
from losses.laplace_nll_loss import LaplaceNLLLoss
from losses.mixture_nll_loss import MixtureNLLLoss
from losses.nll_loss import NLLLoss
from losses.von_mises_nll_loss import VonMisesNLLLoss
from losses.contrastive_loss import ContrastiveLoss
from losses.reconstruction_loss import ReconstructionLoss
