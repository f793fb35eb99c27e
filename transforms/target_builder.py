"""Supervised regression targets in each agent's own frame."""
import torch
from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform

from utils.geometry import wrap_angle


class TargetBuilder(BaseTransform):
    """Adds agent.target float[A, F, 4] = (x, y, z, heading) of the F future steps, expressed in the frame of each
    agent at its last history step (origin = its position at step H-1, x axis = its heading at step H-1).

    z is the height difference to step H-1 (0 when positions are 2-D); the heading is wrapped to [-pi, pi).
    Positions of unobserved steps are transformed like any other value; agent.predict_mask (set by the dataset)
    says which future steps are supervised and is left untouched, as in the official QCNet.
    """

    def __init__(self, num_historical_steps: int, num_future_steps: int) -> None:
        if num_historical_steps < 1 or num_future_steps < 1:
            raise ValueError(f'TargetBuilder: num_historical_steps ({num_historical_steps}) and num_future_steps '
                             f'({num_future_steps}) must be >= 1')
        self.num_historical_steps = num_historical_steps
        self.num_future_steps = num_future_steps

    def forward(self, data: HeteroData) -> HeteroData:
        """Called through BaseTransform.__call__, which hands over a shallow copy of the sample."""
        position = data['agent']['position']  # [A, T, 2 or 3], world frame
        heading = data['agent']['heading']  # [A, T]
        num_steps = self.num_historical_steps + self.num_future_steps
        if position.size(1) != num_steps or heading.size(1) != num_steps:
            scenario = data['scenario_id'] if 'scenario_id' in data else '<unknown scenario>'
            raise ValueError(f'TargetBuilder: scenario {scenario}: agent position/heading have '
                             f'{position.size(1)}/{heading.size(1)} steps, expected {self.num_historical_steps} '
                             f'history + {self.num_future_steps} future = {num_steps} (test-split samples have no '
                             f'future and need no targets)')
        origin = position[:, self.num_historical_steps - 1]  # [A, 2 or 3]
        theta = heading[:, self.num_historical_steps - 1]  # [A]
        cos, sin = theta.cos(), theta.sin()
        # Row-vector convention: p_local = (p_world - origin) @ rot_mat rotates by -theta.
        rot_mat = torch.stack([torch.stack([cos, -sin], dim=-1), torch.stack([sin, cos], dim=-1)], dim=-2)
        target = position.new_zeros(position.size(0), self.num_future_steps, 4)
        target[..., :2] = torch.bmm(position[:, self.num_historical_steps:, :2] - origin[:, :2].unsqueeze(1), rot_mat)
        if position.size(2) == 3:
            target[..., 2] = position[:, self.num_historical_steps:, 2] - origin[:, 2].unsqueeze(-1)
        target[..., 3] = wrap_angle(heading[:, self.num_historical_steps:] - theta.unsqueeze(-1))
        data['agent']['target'] = target
        return data

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.num_historical_steps}, {self.num_future_steps})'
