"""Two temporal views of one scenario for SmartPretrain pre-training (runs in the data-loader workers).

From a full-length sample (T = H + F steps, e.g. 50 + 60) two non-overlapping windows of H steps are cut:
the anchor view starting at ``t ~ U{0 .. T - 2H}`` and the target view starting at ``t' ~ U{t + H .. T - H}``.
Each view is a regular QCNet sample whose H steps are presented as history (the map is shared, not copied), so any
backbone encoder consumes it unchanged. Fields added to ``view['agent']``:

- ``valid_mask`` bool[A, H]: QCNet's vector representation re-made inside the window (step valid when the agent is
  observed at it and at the step before; the window's first step is never valid, as in a real history);
- ``predict_mask`` bool[A, H]: the agent's valid steps if it is valid at the window's last step, else all False
  (``predict_mask.any(-1)`` selects the agents the proposal decoder embeds);
- ``view_mask`` bool[A]: the agent takes part in the view: observed at every step of the window that its dataset
  recorded (``data['span_start']`` .. ``data['span_end']``: all 110 steps for Argoverse 2, 30..79 for Argoverse 1)
  and, for windows after the last history step, observed at that step, as the official masks require;
- ``view_start`` long[A]: absolute start step of the window;
- anchor view only: ``query_mask`` bool[A] (taking part in both views), ``rec_target`` float[A, H, 2] (positions of
  the TARGET window in each agent's anchor frame: origin and heading at the anchor's last step) and ``rec_mask``
  bool[A, H] (anchor participant and observed at that target step).

Randomness: the two starts depend only on ``(seed, epoch, scenario_id)``, so views are reproducible whatever the
number of workers or processes, change every epoch (``set_epoch``; the epoch lives in shared memory so persistent
workers see it) and differ between scenarios, hence between processes.
"""
import copy
import hashlib
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch_geometric.data import HeteroData

ANCHOR = 'anchor'
TARGET = 'target'
# A batch may instead carry both views of its scenes as ONE batch under VIEWS (blocks of scenes in VIEW_ORDER: the
# momentum branch's passes in the official order), next to the anchor batch (acceleration/view_pair_batch.py).
VIEWS = 'views'
VIEW_ORDER = (TARGET, ANCHOR)

# Agent fields rebuilt for a view; any other agent field with a time axis of length T is sliced to the window.
_REBUILT_FIELDS = ('valid_mask', 'predict_mask')


def _scenario_key(data: HeteroData) -> int:
    scenario_id = data['scenario_id'] if 'scenario_id' in data else None
    if scenario_id is None:
        raise ValueError('SSLViews: sample has no scenario_id, which seeds its views')
    if isinstance(scenario_id, (list, tuple)):
        scenario_id = scenario_id[0]
    # blake2b, not hash(): Python's str hash is salted per process.
    return int.from_bytes(hashlib.blake2b(str(scenario_id).encode(), digest_size=8).digest(), 'little')


def _span(data: HeteroData, key: str, default: int) -> int:
    """Canvas steps covered by the sample's recording (datasets/processing.py); absent = the whole sample."""
    if key not in data:
        return default
    value = data[key]
    return int(value.item() if torch.is_tensor(value) else value)


def _scenario_name(data: HeteroData) -> str:
    return str(data['scenario_id']) if 'scenario_id' in data else '<unknown scenario>'


def full_vector_valid_mask(valid_mask: torch.Tensor, predict_mask: torch.Tensor,
                           num_historical_steps: int) -> torch.Tensor:
    """Vector-representation validity (observed at t and t-1) over all T steps of a QCNet sample.

    valid_mask, predict_mask: bool[A, T] with the official semantics: history part of ``valid_mask`` already in
    vector representation, future part = raw observation; ``predict_mask[:, H:]`` = raw observation AND observed at
    the last history step. Hence step H is valid exactly where ``predict_mask[:, H]`` is. Returns bool[A, T].
    """
    hist = num_historical_steps
    out = valid_mask.clone()
    if valid_mask.shape[1] > hist:
        out[:, hist] = predict_mask[:, hist]
        out[:, hist + 1:] = valid_mask[:, hist + 1:] & valid_mask[:, hist:-1]
    return out


class SSLViews:
    """Transform: full sample -> ``{'anchor': HeteroData, 'target': HeteroData}`` (see module docstring).

    Args:
        num_historical_steps: H, window length and history length of the backbone (50 for Argoverse 2).
        num_future_steps: F; samples must have H + F >= 2H steps (110 for Argoverse 2 train/val).
        seed: base seed of the view sampling.
    """

    def __init__(self, num_historical_steps: int, num_future_steps: int, seed: int = 0) -> None:
        if num_future_steps < num_historical_steps:
            raise ValueError(f'SSLViews: two non-overlapping {num_historical_steps}-step windows need '
                             f'num_future_steps >= num_historical_steps, got {num_future_steps}')
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps
        self.num_steps = num_historical_steps + num_future_steps
        self.seed = int(seed)
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """New views every epoch; visible to data-loader workers that already exist."""
        self._epoch.fill_(int(epoch))

    def sample_starts(self, data: HeteroData) -> Tuple[int, int]:
        """``(anchor start, target start)`` for this sample at the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch, _scenario_key(data)])
        length = self.num_historical_steps
        anchor = int(rng.integers(0, self.num_steps - 2 * length, endpoint=True))
        target = int(rng.integers(anchor + length, self.num_steps - length, endpoint=True))
        return anchor, target

    def __call__(self, data: HeteroData) -> Dict[str, HeteroData]:
        anchor_start, target_start = self.sample_starts(data)
        return self.make_views(data, anchor_start, target_start)

    def make_views(self, data: HeteroData, anchor_start: int, target_start: int) -> Dict[str, HeteroData]:
        """The two views for given window starts (``anchor_start + H <= target_start <= T - H``)."""
        self._check(data)
        length = self.num_historical_steps
        if not (0 <= anchor_start and anchor_start + length <= target_start <= self.num_steps - length):
            raise ValueError(f'SSLViews: scenario {_scenario_name(data)}: invalid window starts '
                             f'({anchor_start}, {target_start}) for {length}-step windows in {self.num_steps} steps')
        agent = data['agent']
        vec_valid = full_vector_valid_mask(agent['valid_mask'], agent['predict_mask'], self.num_historical_steps)
        anchor = self._view(data, vec_valid, anchor_start)
        target = self._view(data, vec_valid, target_start)

        anchor_agent, target_agent = anchor['agent'], target['agent']
        anchor_agent['query_mask'] = anchor_agent['view_mask'] & target_agent['view_mask']
        anchor_agent['rec_target'] = self._positions_in_anchor_frame(data, anchor_start + length - 1,
                                                                     target_start, target_start + length)
        observed = agent['predict_mask'][:, target_start:target_start + length]
        anchor_agent['rec_mask'] = anchor_agent['view_mask'].unsqueeze(-1) & observed
        return {ANCHOR: anchor, TARGET: target}

    def _check(self, data: HeteroData) -> None:
        agent = data['agent']
        for field in ('valid_mask', 'predict_mask', 'position', 'heading'):
            if field not in agent:
                raise ValueError(f'SSLViews: scenario {_scenario_name(data)}: agent.{field} is missing')
        steps = agent['position'].shape[1]
        if steps != self.num_steps:
            raise ValueError(f'SSLViews: scenario {_scenario_name(data)}: needs {self.num_steps} time steps '
                             f'({self.num_historical_steps} history + {self.num_future_steps} future), got {steps} '
                             f'(pre-training needs the train/val splits, not test)')
        if not bool(agent['valid_mask'][:, self.num_historical_steps:].any()):
            raise ValueError(f'SSLViews: scenario {_scenario_name(data)}: no agent is observed after step '
                             f'{self.num_historical_steps - 1} (test split?); pre-training needs the future steps')
        if 'target' in agent:
            raise ValueError(f'SSLViews: scenario {_scenario_name(data)}: agent.target is present; apply SSLViews '
                             f'to the raw sample, not after TargetBuilder')

    def _view(self, data: HeteroData, vec_valid: torch.Tensor, start: int) -> HeteroData:
        length = self.num_historical_steps
        end = start + length
        view = copy.copy(data)  # shallow: map tensors are shared with the full sample, not copied
        agent = view['agent']
        num_agents = agent['position'].shape[0]
        for key, value in list(agent.items()):
            if key in _REBUILT_FIELDS:
                continue
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == (num_agents,
                                                                                              self.num_steps):
                agent[key] = value[:, start:end]
        valid = vec_valid[:, start:end].clone()
        valid[:, 0] = False  # no motion vector for the first step of a history
        agent['valid_mask'] = valid
        # Only the steps the sample's dataset recorded count (data['span_start'/'span_end'], e.g. 30..79 for
        # Argoverse 1): as the official per-dataset masks, an agent takes part if observed over that part of the window.
        low, high = max(start, _span(data, 'span_start', 0)), min(end, _span(data, 'span_end', self.num_steps))
        # agents to embed: valid at the window's last recorded step (its last step unless the recording ends first)
        last = min(max(high, start + 1), end) - 1 - start
        agent['predict_mask'] = valid & valid[:, last:last + 1]
        if high - low >= 2:  # vector validity at t needs t and t-1 observed: steps low+1..high-1 cover low..high-1
            participates = vec_valid[:, low + 1:high].all(dim=-1)
        else:  # the window (almost) misses the recording: no evidence, nobody takes part
            participates = torch.zeros(num_agents, dtype=torch.bool, device=vec_valid.device)
        if start >= self.num_historical_steps:
            # official masks also require the agent at the last history step (predict_mask holds both conditions)
            participates &= data['agent']['predict_mask'][:, start]
        agent['view_mask'] = participates
        agent['view_start'] = torch.full((num_agents,), start, dtype=torch.long)
        return view

    @staticmethod
    def _positions_in_anchor_frame(data: HeteroData, origin_step: int, start: int, end: int) -> torch.Tensor:
        """xy positions of steps [start, end) in each agent's frame at ``origin_step`` -> float[A, end-start, 2]."""
        agent = data['agent']
        origin = agent['position'][:, origin_step, :2]
        theta = agent['heading'][:, origin_step]
        cos, sin = theta.cos(), theta.sin()
        # Rows of the inverse rotation: [x, y] @ [[cos, -sin], [sin, cos]] expresses world offsets in the agent frame.
        rot = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)
        return torch.bmm(agent['position'][:, start:end, :2] - origin.unsqueeze(1), rot)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_historical_steps={self.num_historical_steps}, '
                f'num_future_steps={self.num_future_steps}, seed={self.seed})')
