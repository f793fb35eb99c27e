"""SSLViews: two non-overlapping temporal views of a real Argoverse 2 scenario, and their invariants."""
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset
from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

from transforms.ssl_views import ANCHOR, TARGET, SSLViews, full_vector_valid_mask
from sample_data import AV2_DIR

DATA = AV2_DIR
SCENARIOS = ['0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca', '0a1e6f0a-1817-4a98-b02e-db8c9327d151']
H, F = 50, 60


def load_sample(scenario_id: str, split: str = 'train') -> HeteroData:
    path = DATA / split / scenario_id
    if not path.is_dir():
        pytest.skip(f'real AV2 sample {path} is absent')
    from datasets import load_argoverse_v2_scenario, process_scenario
    return process_scenario(load_argoverse_v2_scenario(path))


@pytest.fixture(scope='module')
def samples():
    return [load_sample(s) for s in SCENARIOS]


def test_window_starts_cover_the_official_ranges_and_do_not_overlap(samples):
    views = SSLViews(H, F, seed=0)
    anchors, targets = set(), set()
    for epoch in range(60):
        views.set_epoch(epoch)
        for data in samples:
            anchor, target = views.sample_starts(data)
            assert 0 <= anchor <= 10 and anchor + H <= target <= 60
            anchors.add(anchor)
            targets.add(target - anchor)
    assert anchors == set(range(11))              # t ~ U{0..10}
    assert min(targets) == H and max(targets) >= 58  # t' ~ U{t+50..60}


def test_views_are_reproducible_and_change_with_epoch_and_seed(samples):
    data = samples[0]
    a, b = SSLViews(H, F, seed=5), SSLViews(H, F, seed=5)
    assert [a.sample_starts(data) for _ in range(3)] == [b.sample_starts(data)] * 3
    per_epoch = []
    for epoch in range(8):
        a.set_epoch(epoch)
        per_epoch.append(a.sample_starts(data))
    assert len(set(per_epoch)) > 3
    other_seed = SSLViews(H, F, seed=6)
    assert [other_seed.sample_starts(data)] + per_epoch[1:3] != per_epoch[:3]
    # different scenarios (hence different processes under DDP) get independent windows
    starts = [tuple(SSLViews(H, F, seed=s).sample_starts(d) for d in samples) for s in range(10)]
    assert any(x[0] != x[1] for x in starts)


def test_view_fields_masks_and_frames_on_real_scenario(samples):
    data = samples[1]
    views = SSLViews(H, F).make_views(data, anchor_start=7, target_start=58)
    anchor, target = views[ANCHOR]['agent'], views[TARGET]['agent']
    full = data['agent']
    num_agents = full['num_nodes']
    for view, start in ((anchor, 7), (target, 58)):
        assert view['position'].shape == (num_agents, H, 3) and view['valid_mask'].shape == (num_agents, H)
        torch.testing.assert_close(view['position'], full['position'][:, start:start + H])
        torch.testing.assert_close(view['heading'], full['heading'][:, start:start + H])
        assert torch.equal(view['view_start'], torch.full((num_agents,), start))
        # vector representation rebuilt inside the window from the raw observations (predict_mask_ssl)
        observed = full['predict_mask_ssl'][:, start:start + H]
        raw = (full['predict_mask_ssl'] | full['valid_mask'])[:, start:start + H]  # raw observations
        expected_valid = torch.zeros_like(observed)
        expected_valid[:, 1:] = raw[:, 1:] & raw[:, :-1]
        assert torch.equal(view['valid_mask'][:, 0], torch.zeros(num_agents, dtype=torch.bool))
        assert torch.equal(view['valid_mask'], expected_valid)
        # participation = the official data_mask: observed at every step of the window (AV2 rule)
        assert torch.equal(view['view_mask'], observed.all(dim=-1))
        assert torch.equal(view['predict_mask'].any(-1), view['valid_mask'][:, -1])
    assert anchor['view_mask'].sum() > 3 and target['view_mask'].sum() > 3
    assert torch.equal(anchor['query_mask'], anchor['view_mask'] & target['view_mask'])
    assert anchor['query_mask'].any()
    assert torch.equal(anchor['rec_mask'],
                       anchor['view_mask'].unsqueeze(-1) & full['predict_mask_ssl'][:, 58:58 + H])
    # reconstruction target: target-window positions in each agent's frame at the anchor's last step
    origin, theta = full['position'][:, 7 + H - 1, :2], full['heading'][:, 7 + H - 1]
    rot = torch.stack([torch.stack([theta.cos(), -theta.sin()], -1), torch.stack([theta.sin(), theta.cos()], -1)], -2)
    world = anchor['rec_target'] @ rot.transpose(1, 2) + origin.unsqueeze(1)
    mask = anchor['rec_mask']
    torch.testing.assert_close(world[mask], full['position'][:, 58:58 + H, :2][mask], atol=2e-3, rtol=0)
    # the anchor window ends where the agent frame sits: rec_target starts >= 1 step later, away from the origin
    assert anchor['rec_target'].shape == (num_agents, H, 2)
    # map shared with the full sample (no copy), original sample untouched
    assert views[ANCHOR]['map_point']['position'] is data['map_point']['position']
    assert full['position'].shape[1] == H + F and 'view_mask' not in full


def test_full_vector_valid_mask_matches_raw_observations(samples):
    for data in samples:
        agent = data['agent']
        vec = full_vector_valid_mask(agent['valid_mask'], agent['predict_mask'], H)
        # raw observations: predict_mask_ssl drops the future of agents unseen at the current step, valid_mask
        # keeps it (its history is already in vector representation, a subset of the raw observations)
        raw = agent['predict_mask_ssl'] | agent['valid_mask']
        assert not vec[:, 0].any()
        assert torch.equal(vec[:, 1:], raw[:, 1:] & raw[:, :-1])


def test_bad_samples_fail_with_one_line_naming_the_scenario():
    test_sample = load_sample('0a0af725-fbc3-41de-b969-3be718f694e2', split='test')
    with pytest.raises(ValueError, match=r'0a0af725.*(needs 110 time steps|no agent is observed after step 49)'):
        SSLViews(H, F)(test_sample)
    from transforms import TargetBuilder
    train_sample = load_sample(SCENARIOS[0])
    with pytest.raises(ValueError, match=r'0a0a2bb7.*TargetBuilder'):
        SSLViews(H, F)(TargetBuilder(H, F)(train_sample))
    with pytest.raises(ValueError, match='invalid window starts'):
        SSLViews(H, F).make_views(load_sample(SCENARIOS[0]), 5, 40)
    with pytest.raises(ValueError, match='num_future_steps'):
        SSLViews(50, 40)


class _Samples(Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, idx):
        return self.transform(self.samples[idx])


def test_collation_and_epoch_reaching_persistent_workers(samples):
    views = SSLViews(H, F, seed=3)
    loader = DataLoader(_Samples(samples, views), batch_size=2, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in range(3):
        views.set_epoch(epoch)
        batch = next(iter(loader))
        assert set(batch) == {ANCHOR, TARGET} and batch[ANCHOR].num_graphs == 2
        assert batch[ANCHOR]['agent']['query_mask'].shape == (sum(s['agent']['num_nodes'] for s in samples),)
        expected = [views.sample_starts(s) for s in samples]  # same (seed, epoch, scenario) in this process
        ptr = batch[ANCHOR]['agent']['ptr'][:-1]
        got = list(zip(batch[ANCHOR]['agent']['view_start'][ptr].tolist(),
                       batch[TARGET]['agent']['view_start'][ptr].tolist()))
        assert got == expected
        seen.append(tuple(got))
    assert len(set(seen)) > 1
