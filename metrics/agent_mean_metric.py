"""Base class of the per-agent averaged motion-forecasting metrics."""
import torch
from torchmetrics import Metric


class AgentMeanMetric(Metric):
    """Accumulates a per-agent quantity and reports its mean over all evaluated agents (all ranks under DDP).

    Subclasses implement `update` and add to `sum` (float) and `count` (long). The states are not persistent, so
    they never appear in a checkpoint's state_dict (official checkpoints load unchanged).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, max_guesses: int = 6, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_guesses < 1:
            raise ValueError(f'{type(self).__name__}: max_guesses must be >= 1, got {max_guesses}')
        self.max_guesses = max_guesses
        self.add_state('sum', default=torch.tensor(0.0), dist_reduce_fx='sum')
        self.add_state('count', default=torch.tensor(0), dist_reduce_fx='sum')

    def compute(self) -> torch.Tensor:
        """Mean over agents; NaN when no agent was evaluated."""
        return self.sum / self.count
