"""SmartPretrain module: official checkpoint layout, forward/backward on real scenes, learning, backbone registry."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch_geometric.loader import DataLoader

from modules.backbone import SSLBackbone, available_backbones, build_backbone, register_backbone
from predictors.smartpretrain import SmartPretrain
from transforms.ssl_views import SSLViews
from utils.scene_crop import crop_scene  # noqa: F401  (other test modules import it from here)

from tiny_configs import TINY_QCNET_SSL
from sample_data import AV2_TRAIN_DIR, SPEC_DIR

ROOT = Path(__file__).resolve().parents[1]
DATA = AV2_TRAIN_DIR
SPEC = SPEC_DIR / 'smartpretrain_checkpoint_keys.tsv'
SCENARIOS = ['0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca', '0a1e6f0a-1817-4a98-b02e-db8c9327d151']


def real_scenes(radius: float = 30.0):
    if not DATA.is_dir():
        pytest.skip(f'real AV2 samples are absent ({DATA})')
    from datasets import load_argoverse_v2_scenario, process_scenario
    return [crop_scene(process_scenario(load_argoverse_v2_scenario(DATA / s)), radius) for s in SCENARIOS]


@pytest.fixture(scope='module')
def view_batch():
    views = SSLViews(50, 60, seed=4)
    pairs = [views.make_views(scene, 3, 57) if i == 0 else views(scene) for i, scene in enumerate(real_scenes())]
    return next(iter(DataLoader(pairs, batch_size=len(pairs))))


def test_state_dict_is_the_official_layout():
    if not SPEC.is_file():
        pytest.skip(f'checkpoint spec {SPEC} is absent')
    spec = [line.split('\t') for line in SPEC.read_text().strip().splitlines()]
    model = SmartPretrain()  # Argoverse 2 defaults of the official pre-training
    state = model.state_dict()
    assert [name for name, _ in spec] == list(state)
    assert all(shape == str(tuple(state[name].shape)) for name, shape in spec)
    assert len(state) == 1418
    assert sum(p.numel() for p in model.parameters()) == 12_563_548
    # checkpoint hyper-parameters carry the official names
    for key in ('lr_init', 'lr_last', 'weight_decay_init', 'warmup', 'contra_t', 'contra_momentum', 'num_modes',
                'T_max', 'submission_dir'):
        assert key in model.hparams


def test_forward_backward_on_real_views(view_batch):
    torch.manual_seed(0)
    model = SmartPretrain(**TINY_QCNET_SSL)
    out = model(view_batch)
    assert all(torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out['loss'], out['contra_loss'] + out['rec_loss'])
    assert out['num_queries'] == view_batch['anchor']['agent']['query_mask'].sum()
    assert out['num_keys'] == (view_batch['anchor']['agent']['view_mask'].sum()
                               + view_batch['target']['agent']['view_mask'].sum())
    out['loss'].backward()
    assert all(p.grad is None for p in model.momentum_branch.parameters())
    for name in ('branch.encoder.agent_encoder.type_a_emb.weight', 'branch.decoder.mode_emb.weight',
                 'branch.proj.3.weight', 'contra_predictor.3.weight', 'rec_predictor.3.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the time embedding learns only the rows of the anchor starts in the batch
    starts = set(view_batch['anchor']['agent']['view_start'].tolist())
    used = set(model.temp_emb.grad.abs().sum(-1).nonzero().squeeze(1).tolist())
    assert used == starts and 3 in starts


def test_lambda_rec_weights_the_reconstruction(view_batch):
    torch.manual_seed(0)
    a = SmartPretrain(**TINY_QCNET_SSL, dropout=0.0)
    b = SmartPretrain(**TINY_QCNET_SSL, dropout=0.0, lambda_rec=0.25)
    b.load_state_dict(a.state_dict())
    out_a, out_b = a(view_batch), b(view_batch)
    torch.testing.assert_close(out_b['loss'], out_a['contra_loss'] + 0.25 * out_a['rec_loss'])


@pytest.mark.parametrize('task', ['contrastive', 'reconstruction'])
def test_one_pretext_task_alone_trains_only_its_head(view_batch, task):
    # the ablation of pre-training with one pretext task: the other head gets no gradient, the backbone still does
    torch.manual_seed(0)
    weights = {'lambda_rec': 0.0} if task == 'contrastive' else {'lambda_contra': 0.0}
    model = SmartPretrain(**TINY_QCNET_SSL, dropout=0.0, **weights)
    out = model(view_batch)
    torch.testing.assert_close(out['loss'], out['contra_loss'] if task == 'contrastive' else out['rec_loss'])
    out['loss'].backward()
    params = dict(model.named_parameters())
    trained, idle = (('contra_predictor', 'rec_predictor') if task == 'contrastive'
                     else ('rec_predictor', 'contra_predictor'))
    assert params[f'{trained}.3.weight'].grad.abs().sum() > 0
    assert params[f'{idle}.3.weight'].grad is None or params[f'{idle}.3.weight'].grad.abs().sum() == 0
    assert params['branch.encoder.agent_encoder.type_a_emb.weight'].grad.abs().sum() > 0


def test_a_few_pretraining_steps_reduce_the_loss(view_batch):
    torch.manual_seed(0)
    model = SmartPretrain(**TINY_QCNET_SSL, dropout=0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(8):
        model.update_momentum_branch(0.99)
        out = model(view_batch)
        losses.append((out['loss'].item(), out['contra_loss'].item(), out['rec_loss'].item()))
        optimizer.zero_grad()
        out['loss'].backward()
        optimizer.step()
    assert all(math.isfinite(v) for row in losses for v in row)
    total_end = (losses[-1][0] + losses[-2][0]) / 2
    contra_end = (losses[-1][1] + losses[-2][1]) / 2
    assert total_end < 0.75 * losses[0][0], losses
    assert contra_end < 0.8 * losses[0][1], losses   # the momentum keys become predictable


def test_validation_is_deterministic(view_batch):
    model = SmartPretrain(**TINY_QCNET_SSL).eval()
    with torch.no_grad():
        first, second = model(view_batch), model(view_batch)
    assert all(torch.equal(first[k], second[k]) for k in first)


class _HistoryMLP(nn.Module):
    def __init__(self, steps, dim):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(steps * 2, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, x):
        return self.net(x)


@register_backbone('test_history_mlp')
class HistoryMLPBackbone(SSLBackbone):
    """A second backbone: an MLP over each agent's window, one embedding per recurrence (shows the interface)."""

    def __init__(self, steps: int, dim: int, recurrences: int):
        super().__init__()
        self.encoder = _HistoryMLP(steps, dim)
        self.recurrence_emb = nn.Embedding(recurrences, dim)
        self.embed_dim, self.num_recurrent_steps = dim, recurrences

    @classmethod
    def from_hparams(cls, **hp):
        return cls(hp['num_historical_steps'], hp['hidden_dim'], hp['num_recurrent_steps'])

    def encode(self, view):
        agent = view['agent']
        pos = agent['position'][..., :2] - agent['position'][:, -1:, :2]
        return self.encoder((pos * agent['valid_mask'].unsqueeze(-1)).flatten(1))

    def propose(self, view, scene_enc):
        return scene_enc.unsqueeze(1) + self.recurrence_emb.weight.unsqueeze(0)


def test_a_second_backbone_plugs_in_without_touching_the_losses(view_batch):
    assert {'qcnet', 'test_history_mlp'} <= set(available_backbones())
    model = SmartPretrain(backbone='test_history_mlp', hidden_dim=16)
    assert {k.split('.')[1] for k in model.state_dict() if k.startswith('branch.')} == \
        {'encoder', 'recurrence_emb', 'proj'}
    out = model(view_batch)
    out['loss'].backward()
    assert torch.isfinite(out['loss']) and model.branch.encoder.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_backbone('nope')
    with pytest.raises(ValueError, match='one mode query'):
        build_backbone('qcnet', **{**SmartPretrain(**TINY_QCNET_SSL).hparams, 'num_modes': 6})


def test_compile_options_switch_the_qcnet_backbone_layers_of_both_branches():
    """acceleration.apply with --compile_attention / --compile_embeddings (train_ssl.py): the attention layers of
    both branches take the compiled form (shared compiled function, each its own weights), no hyper-parameter
    records it; a backbone without such layers refuses."""
    from acceleration.apply import apply
    from acceleration.kernels.layer_ops import CompiledOps
    from acceleration.options import SpeedOptions
    from layers.attention_layer import AttentionLayer
    from layers.fourier_embedding import FourierEmbedding
    model = apply(SmartPretrain(**TINY_QCNET_SSL, compile_attention=True), SpeedOptions(compile_attention=True))
    assert 'compile_attention' not in model.hparams
    online = [m for m in model.branch.modules() if isinstance(m, AttentionLayer)]
    momentum = [m for m in model.momentum_branch.modules() if isinstance(m, AttentionLayer)]
    assert online and len(online) == len(momentum)
    assert all(isinstance(m.ops, CompiledOps) for m in online + momentum)
    assert not any(isinstance(m.ops, CompiledOps) for m in model.modules() if isinstance(m, FourierEmbedding))
    both = apply(SmartPretrain(**TINY_QCNET_SSL), SpeedOptions(compile_attention=True, compile_embeddings=True))
    embeddings = [m for m in both.branch.modules() if isinstance(m, FourierEmbedding)]
    assert embeddings and all(isinstance(m.ops, CompiledOps) for m in embeddings)
    with pytest.raises(ValueError, match="--compile_attention: SmartPretrain has no layer of that kind"):
        apply(SmartPretrain(backbone='test_history_mlp', hidden_dim=16), SpeedOptions(compile_attention=True))
