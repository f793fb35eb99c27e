"""Per-step schedules of SmartPretrain pre-training: learning rate, weight decay and EMA momentum.

All three are pure functions of the optimizer step, so resuming only needs the step counter and the schedule's
configuration (``SSLSchedule.state_dict``), which the pre-training module stores in its checkpoint.

Like the official code the schedules advance per step, on a fractional epoch ``e = step / steps_per_epoch``:
- learning rate: linear warm-up ``lr_init -> lr`` over ``warmup`` epochs, then half-cosine ``lr -> lr_last`` until the
  last step;
- weight decay: linear ``weight_decay_init -> weight_decay`` over the whole run;
- momentum: ``1 - (1 - m0) * (1 + cos(pi * e / max_epochs)) / 2``, rising from ``m0`` to 1.
"""
import math
from dataclasses import asdict, dataclass
from typing import Dict, Tuple


def warmup_cosine(step: float, total_steps: float, warmup_steps: float, start: float, peak: float,
                  end: float) -> float:
    """Linear ``start -> peak`` over ``warmup_steps``, then half-cosine ``peak -> end`` reaching ``end`` at
    ``total_steps``. ``warmup_steps == 0`` means no warm-up (the cosine starts at ``peak``)."""
    if total_steps <= 0:
        raise ValueError(f'warmup_cosine: total_steps must be positive, got {total_steps}')
    step = min(max(step, 0.0), total_steps)
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return peak
    progress = (step - warmup_steps) / decay_steps
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_ramp(step: float, total_steps: float, start: float, end: float) -> float:
    """``start -> end`` linearly over ``total_steps`` (held at ``end`` afterwards)."""
    if total_steps <= 0:
        raise ValueError(f'linear_ramp: total_steps must be positive, got {total_steps}')
    fraction = min(max(step, 0.0), total_steps) / total_steps
    return start + (end - start) * fraction


def cosine_momentum(step: float, total_steps: float, base_momentum: float) -> float:
    """EMA momentum rising from ``base_momentum`` (step 0) to 1 (last step) on a half-cosine."""
    if total_steps <= 0:
        raise ValueError(f'cosine_momentum: total_steps must be positive, got {total_steps}')
    fraction = min(max(step, 0.0), total_steps) / total_steps
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * fraction)) * (1.0 - base_momentum)


@dataclass
class SSLSchedule:
    """Learning rate, weight decay and momentum of pre-training as functions of the optimizer step.

    ``total_steps``: optimizer steps of the whole run; ``warmup_steps``: steps of the learning-rate warm-up
    (``warmup`` epochs times steps per epoch).
    """
    total_steps: int
    warmup_steps: int
    lr_init: float
    lr: float
    lr_last: float
    weight_decay_init: float
    weight_decay: float
    momentum: float

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f'SSLSchedule: total_steps must be positive, got {self.total_steps}')
        if not 0 <= self.warmup_steps:
            raise ValueError(f'SSLSchedule: warmup_steps must be >= 0, got {self.warmup_steps}')
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f'SSLSchedule: momentum must be in [0, 1], got {self.momentum}')

    @classmethod
    def from_epochs(cls, steps_per_epoch: int, max_epochs: float, warmup_epochs: float, total_steps: int = 0,
                    **values: float) -> 'SSLSchedule':
        """Schedule for ``max_epochs`` epochs of ``steps_per_epoch`` steps (``total_steps`` > 0 overrides the
        length, e.g. under ``--max_steps``); the warm-up is clamped to the run."""
        if steps_per_epoch <= 0:
            raise ValueError(f'SSLSchedule: steps_per_epoch must be positive, got {steps_per_epoch}')
        total = int(total_steps) if total_steps > 0 else int(round(steps_per_epoch * max_epochs))
        warmup = min(int(round(steps_per_epoch * warmup_epochs)), total)
        return cls(total_steps=total, warmup_steps=warmup, **values)

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.lr_init, self.lr, self.lr_last)

    def weight_decay_at(self, step: int) -> float:
        return linear_ramp(step, self.total_steps, self.weight_decay_init, self.weight_decay)

    def momentum_at(self, step: int) -> float:
        return cosine_momentum(step, self.total_steps, self.momentum)

    def at(self, step: int) -> Tuple[float, float, float]:
        """``(learning rate, weight decay, EMA momentum)`` to use for optimizer step ``step`` (0-based)."""
        return self.lr_at(step), self.weight_decay_at(step), self.momentum_at(step)

    def state_dict(self) -> Dict[str, float]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Dict[str, float]) -> 'SSLSchedule':
        missing = [f for f in cls.__dataclass_fields__ if f not in state]
        if missing:
            raise KeyError(f'SSLSchedule state is missing {missing}')
        return cls(**{f: state[f] for f in cls.__dataclass_fields__})
