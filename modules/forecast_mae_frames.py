"""Reference frames of the Forecast-MAE-style backbone.

Two kinds of frame, both 2-D (origin + heading, map frame in, right-handed rotation):

- **agent frame**: origin = the agent's position at its reference step, x axis = its heading there. The reference
  step is the last history step (H-1) for every agent observed there, which is exactly the frame of
  ``transforms.TargetBuilder`` targets and of the SSL reconstruction targets; an agent not observed at H-1 uses its
  last observed step (such agents are never supervised with the default processing). Token contents (an agent's
  history, a lane's points) are expressed in their own frame, so they do not change when the scene moves.
- **scene frame**: one per scene, the agent frame of its AV (``agent.av_index``). Where the AV has no observed
  history step (possible in other datasets' windows), the scene's first agent with one is used instead. Token poses
  (positional embeddings) are expressed in the scene frame, so the scene encoding is invariant to the map frame.

Observation: the samples carry QCNet's vector-representation ``valid_mask`` (step t valid when observed at t and
t-1), so an agent is observed at t when ``valid_mask`` holds at t or t+1; at H-1, a supervised future
(``predict_mask[:, H:]``, which requires an observation at H-1) also counts.
"""
from typing import Tuple

import torch


def observed_history(valid_mask: torch.Tensor, predict_mask: torch.Tensor, num_historical_steps: int) -> torch.Tensor:
    """bool[A, H]: agent observed at each history step (see module docstring). Masks are bool[A, T], T >= H."""
    hist = num_historical_steps
    valid = valid_mask[:, :hist]
    observed = valid.clone()
    observed[:, :-1] |= valid[:, 1:]
    if predict_mask.size(1) > hist:
        observed[:, -1] |= predict_mask[:, hist:].any(dim=-1)
    return observed


def reference_steps(observed: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(last observed step long[A], has any observed step bool[A]); step H-1 for agents never observed."""
    num_steps = observed.size(1)
    steps = torch.arange(num_steps, device=observed.device)
    last = torch.where(observed, steps, -1).amax(dim=-1)
    has_history = last >= 0
    return torch.where(has_history, last, num_steps - 1), has_history


def rotate(xy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Expresses vectors xy [..., 2] in a frame rotated by theta (cos/sin broadcast to xy[..., 0]): R(-theta) xy."""
    x, y = xy[..., 0], xy[..., 1]
    return torch.stack([cos * x + sin * y, -sin * x + cos * y], dim=-1)


def scene_reference_agents(has_history: torch.Tensor, agent_scene: torch.Tensor, av_index: torch.Tensor,
                           agent_offset: torch.Tensor) -> torch.Tensor:
    """Global index long[B] of the agent whose frame is each scene's frame.

    has_history bool[A]; agent_scene long[A] scene of each agent; av_index long[B] AV index within its scene;
    agent_offset long[B] index of each scene's first agent.
    """
    num_agents = has_history.numel()
    av = av_index + agent_offset
    candidates = torch.where(has_history, torch.arange(num_agents, device=has_history.device), num_agents)
    first = torch.full_like(av, num_agents).scatter_reduce(0, agent_scene, candidates, reduce='amin')
    fallback = torch.where(first < num_agents, first, av)
    return torch.where(has_history[av], av, fallback)
