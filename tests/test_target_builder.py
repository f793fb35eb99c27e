"""TargetBuilder: future positions/headings in each agent's frame at the last history step."""
import math

import pytest
import torch
from torch_geometric.data import HeteroData

from transforms import TargetBuilder
from sample_data import AV2_TRAIN_DIR


def make_sample(num_agents=3, num_steps=110, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data['scenario_id'] = 'sample-0'
    data['agent']['num_nodes'] = num_agents
    data['agent']['position'] = torch.randn(num_agents, num_steps, dim, generator=gen) * 30
    data['agent']['heading'] = (torch.rand(num_agents, num_steps, generator=gen) * 2 - 1) * math.pi
    data['agent']['predict_mask'] = torch.rand(num_agents, num_steps, generator=gen) > 0.5
    return data


def test_straight_motion_along_heading_becomes_positive_x():
    data = make_sample(num_agents=4)
    headings = torch.tensor([0.0, 0.7, -2.5, math.pi - 1e-3])
    origins = torch.tensor([[10.0, -5.0, 1.0], [0.0, 0.0, 0.0], [-300.0, 42.0, 2.0], [7.0, 7.0, -1.0]])
    steps = torch.arange(-49, 61, dtype=torch.float32)  # step 49 (last history) sits at the origin
    direction = torch.stack([headings.cos(), headings.sin()], dim=-1)
    data['agent']['position'][..., :2] = origins[:, None, :2] + 2.0 * steps[None, :, None] * direction[:, None]
    data['agent']['position'][..., 2] = origins[:, 2:3] + 0.1 * steps
    data['agent']['heading'] = headings[:, None].expand(-1, 110) + 0.01 * steps
    target = TargetBuilder(50, 60)(data)['agent']['target']
    assert target.shape == (4, 60, 4)
    future = torch.arange(1, 61, dtype=torch.float32)
    torch.testing.assert_close(target[..., 0], 2.0 * future.expand(4, -1), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(target[..., 1], torch.zeros(4, 60), atol=1e-3, rtol=0)
    torch.testing.assert_close(target[..., 2], 0.1 * future.expand(4, -1), atol=1e-4, rtol=1e-5)
    # Agent 3 starts just below pi: its future headings cross +pi and must come back wrapped near 0.
    torch.testing.assert_close(target[..., 3], 0.01 * future.expand(4, -1), atol=1e-4, rtol=1e-5)


def test_left_of_agent_is_positive_y_and_distances_are_preserved():
    data = make_sample(num_agents=5, seed=1)
    out = TargetBuilder(50, 60)(data)
    position, heading, target = data['agent']['position'], data['agent']['heading'], out['agent']['target']
    offset = position[:, 50:, :2] - position[:, 49:50, :2]
    torch.testing.assert_close(target[..., :2].norm(dim=-1), offset.norm(dim=-1), atol=1e-3, rtol=1e-5)
    theta = heading[:, 49:50]
    left = -offset[..., 0] * theta.sin() + offset[..., 1] * theta.cos()  # component along the agent's left axis
    torch.testing.assert_close(target[..., 1], left, atol=1e-3, rtol=1e-5)
    assert (target[..., 3] >= -math.pi).all() and (target[..., 3] < math.pi).all()


def test_two_dimensional_positions_give_zero_height():
    out = TargetBuilder(50, 60)(make_sample(dim=2))
    assert out['agent']['target'].shape == (3, 60, 4)
    assert (out['agent']['target'][..., 2] == 0).all()


def test_input_sample_and_predict_mask_are_left_untouched():
    data = make_sample()
    predict_mask = data['agent']['predict_mask'].clone()
    out = TargetBuilder(50, 60)(data)
    assert 'target' not in data['agent']  # BaseTransform works on a copy
    assert torch.equal(out['agent']['predict_mask'], predict_mask)


def test_sample_without_future_is_rejected_with_scenario_id():
    with pytest.raises(ValueError, match='scenario sample-0: .* 50/50 steps, expected 50 history \\+ 60 future'):
        TargetBuilder(50, 60)(make_sample(num_steps=50))


REAL_TRAIN_SCENARIO = str(AV2_TRAIN_DIR / '0a1e6f0a-1817-4a98-b02e-db8c9327d151')


def test_real_scenario_targets_map_back_to_world_positions():
    import os
    if not os.path.isdir(REAL_TRAIN_SCENARIO):
        pytest.skip(f'real AV2 sample not found at {REAL_TRAIN_SCENARIO}')
    from datasets import load_argoverse_v2_scenario, process_scenario
    data = TargetBuilder(50, 60)(process_scenario(load_argoverse_v2_scenario(REAL_TRAIN_SCENARIO)))
    agent = data['agent']
    assert agent['target'].shape == (agent['num_nodes'], 60, 4)
    focal = int((agent['category'] == 3).nonzero().item())
    assert agent['id'][focal] == '138951'
    assert agent['predict_mask'][focal, 50:].all()
    # Rotating the focal agent's targets back by its heading at step 49 (as test-time submission code does)
    # must give back its logged future positions.
    theta = agent['heading'][focal, 49]
    back = torch.stack([agent['target'][focal, :, 0] * theta.cos() - agent['target'][focal, :, 1] * theta.sin(),
                        agent['target'][focal, :, 0] * theta.sin() + agent['target'][focal, :, 1] * theta.cos()], -1)
    back = back + agent['position'][focal, 49, :2]
    torch.testing.assert_close(back, agent['position'][focal, 50:, :2], atol=1e-3, rtol=0)
    # This focal vehicle creeps forward and stops: ~1.9 m straight ahead, almost no lateral offset or turn.
    final = agent['target'][focal, -1]
    assert 1.5 < final[0] < 2.5 and final[1].abs() < 0.3 and final[3].abs() < 0.05
