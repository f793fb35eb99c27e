"""QCNet model on real Argoverse 2 scenarios: forward/backward, invariance, batching, decoders, evaluation hooks."""
import math
import os

import pyarrow.parquet as pq
import pytest
import torch
from torch_geometric.data import Batch

from modules import QCNetDecoder, QCNetEncoder, QCNetProposalDecoder
from predictors import QCNet

from tiny_configs import TINY_QCNET
from sample_data import AV2_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_DIR = str(AV2_DIR)
TRAIN_IDS = ['0a1e6f0a-1817-4a98-b02e-db8c9327d151', '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca']
TEST_ID = '0a0af725-fbc3-41de-b969-3be718f694e2'

pytestmark = pytest.mark.skipif(not os.path.isdir(AV2_DIR),
                                reason=f'real Argoverse 2 samples not found at {AV2_DIR}')


def load_scene(split, scenario_id):
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    data = process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, split, scenario_id)))
    return TargetBuilder(50, 60)(data) if split != 'test' else data


@pytest.fixture(scope='module')
def train_scenes():
    return [load_scene('train', scenario_id) for scenario_id in TRAIN_IDS]


@pytest.fixture(scope='module')
def test_scene():
    return load_scene('test', TEST_ID)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return QCNet(**dict(TINY_QCNET, **overrides))


def to_float64(data):
    data = data.clone()
    for store in data.stores:
        for key, value in store.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                store[key] = value.double()
    return data


def test_forward_backward_on_real_batch(train_scenes):
    model = tiny_model()
    batch = Batch.from_data_list(train_scenes)
    pred = model(batch)
    num_agents, fut = batch['agent']['num_nodes'], TINY_QCNET['num_future_steps']
    assert pred['loc_refine_pos'].shape == (num_agents, 3, fut, 2)
    assert pred['scale_propose_pos'].shape == (num_agents, 3, fut, 2)
    assert pred['loc_refine_head'].shape == (num_agents, 3, fut, 1)
    assert pred['pi'].shape == (num_agents, 3)
    assert (pred['scale_propose_pos'] > 0.1).all() and (pred['scale_refine_pos'] > 0.1).all()
    losses = model.compute_losses(batch, pred)
    assert torch.isfinite(losses['loss']) and losses['loss'] > 0
    losses['loss'].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == [], f'parameters without gradient: {missing}'
    # The refinement sees the proposal without gradient: the proposal heads only learn from the proposal loss.
    assert model.decoder.to_loc_propose_pos.mlp[3].weight.grad.abs().sum() > 0


def test_batch_equals_separate_scenes(train_scenes):
    model = tiny_model().eval()
    with torch.no_grad():
        together = model(Batch.from_data_list(train_scenes))
        separate = [model(scene) for scene in train_scenes]
    for key in ('loc_refine_pos', 'scale_refine_pos', 'pi'):
        torch.testing.assert_close(together[key], torch.cat([s[key] for s in separate]), rtol=1e-4, atol=1e-4)


def test_outputs_invariant_to_rotating_and_translating_the_scene(train_scenes):
    """Agent-frame outputs must not change when the whole scene is rotated and shifted (float64)."""
    model = tiny_model().double().eval()
    data = to_float64(train_scenes[0])
    theta, shift = 0.7, torch.tensor([1234.5, -987.25], dtype=torch.float64)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    moved = data.clone()
    for node_type in ('agent', 'map_polygon', 'map_point'):
        pos = moved[node_type]['position'].clone()
        pos[..., :2] = pos[..., :2] @ rot.T + shift
        moved[node_type]['position'] = pos
    vel = moved['agent']['velocity'].clone()
    vel[..., :2] = vel[..., :2] @ rot.T
    moved['agent']['velocity'] = vel
    moved['agent']['heading'] = moved['agent']['heading'] + theta
    moved['map_polygon']['orientation'] = moved['map_polygon']['orientation'] + theta
    moved['map_point']['orientation'] = moved['map_point']['orientation'] + theta
    with torch.no_grad():
        ref, out = model(data), model(moved)
    for key in ('loc_propose_pos', 'loc_refine_pos', 'scale_refine_pos', 'pi'):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-7, atol=1e-7)


def test_encoder_uses_only_the_requested_history_window(train_scenes):
    """num_historical_steps comes from the arguments: a 30-step encoder ignores everything after step 30."""
    torch.manual_seed(0)
    kwargs = {k: TINY_QCNET[k] for k in ('dataset', 'input_dim', 'hidden_dim', 'pl2pl_radius', 'time_span',
                                         'pl2a_radius', 'a2a_radius', 'num_freq_bands', 'num_heads', 'head_dim',
                                         'dropout')}
    encoder = QCNetEncoder(num_historical_steps=30, num_map_layers=1, num_agent_layers=1, **kwargs).eval()
    data = train_scenes[1]
    changed = data.clone()
    changed['agent']['position'] = data['agent']['position'].clone()
    changed['agent']['position'][:, 30:] += 100.0
    with torch.no_grad():
        a, b = encoder(data), encoder(changed)
    assert a['x_a'].shape == (data['agent']['num_nodes'], 30, TINY_QCNET['hidden_dim'])
    assert a['x_pl'].shape == (data['map_polygon']['num_nodes'], 30, TINY_QCNET['hidden_dim'])
    torch.testing.assert_close(a['x_a'], b['x_a'])


def test_proposal_decoder_matches_the_supervised_propose_stage(train_scenes):
    """Same weights -> the propose-only decoder returns the supervised decoder's per-recurrence mode embeddings."""
    model = tiny_model(num_modes=1).eval()
    dec_kwargs = {k: TINY_QCNET[k] for k in ('dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head',
                                             'num_historical_steps', 'num_future_steps', 'num_recurrent_steps',
                                             'num_t2m_steps', 'pl2m_radius', 'a2m_radius', 'num_freq_bands',
                                             'num_heads', 'head_dim', 'dropout')}
    proposal = QCNetProposalDecoder(num_modes=1, num_layers=1, **dec_kwargs).eval()
    full_state = model.decoder.state_dict()
    proposal.load_state_dict({k: full_state[k] for k in proposal.state_dict()}, strict=True)
    data = train_scenes[0]
    with torch.no_grad():
        scene_enc = model.encoder(data)
        emb = proposal(data, scene_enc)
        graph, expected = model.decoder.propose(data, scene_enc)
        expected = [graph.to_agents(e) for e in expected]
        pred = model.decoder(data, scene_enc)
    assert emb.shape == (3, data['agent']['num_nodes'], TINY_QCNET['hidden_dim'])
    torch.testing.assert_close(emb, torch.stack(expected).squeeze(2))
    # The first proposal chunk comes from the first recurrence's embedding.
    first = model.decoder.to_loc_propose_pos(emb[0]).view(-1, 20, 2).cumsum(dim=1)
    torch.testing.assert_close(pred['loc_propose_pos'][:, 0, :20], first)
    assert not any(name.startswith(('to_', 'traj_emb', 'y_emb', 't2m_refine')) for name in proposal.state_dict())
    assert isinstance(model.decoder, QCNetDecoder)


def test_output_head_variant_runs_and_bounds_concentrations(train_scenes):
    model = tiny_model(output_head=True)
    pred = model(train_scenes[1])
    # Headings are accumulated over the steps; the refinement moves each by at most pi.
    assert (pred['loc_refine_head'] - pred['loc_propose_head']).abs().max() <= math.pi + 1e-5
    assert (pred['conc_refine_head'] > 0).all()
    losses = model.compute_losses(train_scenes[1], pred)
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()


def test_validation_step_updates_focal_metrics(train_scenes):
    model = tiny_model().eval()
    with torch.no_grad():
        model.validation_step(Batch.from_data_list(train_scenes), 0)
    # One focal agent per scenario was evaluated.
    assert int(model.minFDE.count) == 2 and int(model.MR.count) == 2
    assert torch.isfinite(model.minADE.compute()) and model.minADE.compute() > 0
    assert 0 <= float(model.Brier.compute()) <= 1


def test_test_step_writes_world_frame_submission(test_scene, tmp_path):
    model = tiny_model(num_modes=6, submission_dir=str(tmp_path), submission_file_name='preds').eval()
    model.on_test_start()
    with torch.no_grad():
        model.test_step(Batch.from_data_list([test_scene]), 0)
    track_id, traj, prob = model.test_predictions[TEST_ID]
    assert track_id == '9024' and traj.shape == (6, 60, 2)
    assert abs(prob.sum() - 1) < 1e-5
    # World frame: the first predicted step lies next to the focal agent's last observed position.
    focal = test_scene['agent']['category'] == 3
    last = test_scene['agent']['position'][focal, 49, :2][0].numpy()
    assert ((traj[:, 0] - last) ** 2).sum(-1).max() ** 0.5 < 50
    model.on_test_end()
    table = pq.read_table(tmp_path / 'preds.parquet').to_pandas()
    assert set(table['scenario_id']) == {TEST_ID}
    assert set(table['track_id']) == {'9024'}


def test_optimizer_groups_follow_official_rules():
    model = tiny_model()
    decay, no_decay = model.parameter_groups()
    assert 'decoder.traj_emb_h0' in no_decay and 'decoder.traj_emb.weight_hh_l0' in decay
    assert 'decoder.mode_emb.weight' in no_decay and 'encoder.map_encoder.x_pt_emb.freqs.weight' in no_decay
    assert 'decoder.to_pi.mlp.1.weight' in no_decay and 'decoder.to_pi.mlp.0.weight' in decay
    assert all(not name.endswith('bias') for name in decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    [optimizer], [scheduler] = model.configure_optimizers()
    assert [g['weight_decay'] for g in optimizer.param_groups] == [TINY_QCNET['weight_decay'], 0.0]
    assert isinstance(optimizer, torch.optim.AdamW) and scheduler.T_max == TINY_QCNET['T_max']


def test_model_specific_args_mirror_official_flags():
    import argparse
    parser = QCNet.add_model_specific_args(argparse.ArgumentParser())
    args = parser.parse_args(['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
                              '--num_recurrent_steps', '3', '--pl2pl_radius', '150', '--pl2a_radius', '50',
                              '--a2a_radius', '50', '--pl2m_radius', '150', '--a2m_radius', '150'])
    assert args.hidden_dim == 128 and args.num_modes == 6 and args.lr == 5e-4 and args.T_max == 64
    assert args.time_span is None and args.output_head is False


def test_decoder_query_slots_agents_without_target_share_one_output(train_scenes):
    """The decoder runs on query slots (agents with a target + one shared slot). Taking an agent's target away gives
    it exactly the shared no-target output and leaves every other agent's output unchanged."""
    model = tiny_model().eval()
    data = train_scenes[0].clone()
    has_target = data['agent']['predict_mask'].any(dim=-1)
    assert has_target.any() and not has_target.all()
    with torch.no_grad():
        before = model(data)
    without = int(has_target.nonzero()[0])
    shared = int((~has_target).nonzero()[0])
    data['agent']['predict_mask'] = data['agent']['predict_mask'].clone()
    data['agent']['predict_mask'][without] = False
    with torch.no_grad():
        after = model(data)
    others = torch.ones_like(has_target)
    others[without] = False
    for name, value in after.items():
        torch.testing.assert_close(value[others], before[name][others], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(value[without], before[name][shared])
        # every agent without a target has the same output
        rows = value[~has_target]
        assert (rows == rows[:1]).all(), name
