"""Official checkpoint layout: parameter names/shapes, loading official-format .ckpt files, clear mismatch errors."""
import os

import pytest
import torch

from modules import QCNetEncoder, QCNetProposalDecoder
from predictors import QCNet
from utils.checkpoint import (CheckpointError, CheckpointMismatchError, load_submodule_weights, read_spec_tsv,
                              state_dict_spec)
from sample_data import SPEC_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_DIR = str(SPEC_DIR)
QCNET_SPEC = os.path.join(SPEC_DIR, 'qcnet_checkpoint_keys.tsv')
SSL_SPEC = os.path.join(SPEC_DIR, 'smartpretrain_checkpoint_keys.tsv')

pytestmark = pytest.mark.skipif(not os.path.isfile(QCNET_SPEC),
                                reason=f'checkpoint specs not found in {SPEC_DIR}')

# Hyper-parameters as stored by the official training script for Argoverse 2 (train_qcnet.py flags included).
OFFICIAL_HPARAMS = dict(
    dataset='argoverse_v2', input_dim=2, hidden_dim=128, output_dim=2, output_head=False, num_historical_steps=50,
    num_future_steps=60, num_modes=6, num_recurrent_steps=3, num_freq_bands=64, num_map_layers=1,
    num_agent_layers=2, num_dec_layers=2, num_heads=8, head_dim=16, dropout=0.1, pl2pl_radius=150.0, time_span=10,
    pl2a_radius=50.0, a2a_radius=50.0, num_t2m_steps=30, pl2m_radius=150.0, a2m_radius=150.0, lr=5e-4,
    weight_decay=1e-4, T_max=64, submission_dir='./', submission_file_name='submission',
    root='/data/av2', train_batch_size=4, val_batch_size=4, test_batch_size=4, shuffle=True, num_workers=8,
    pin_memory=True, persistent_workers=True, train_raw_dir=None, val_raw_dir=None, test_raw_dir=None,
    train_processed_dir=None, val_processed_dir=None, test_processed_dir=None, accelerator='auto', devices=8,
    max_epochs=64)
MODEL_HPARAMS = {k: v for k, v in OFFICIAL_HPARAMS.items()
                 if k in QCNet.__init__.__code__.co_varnames[:QCNet.__init__.__code__.co_argcount]}


@pytest.fixture(scope='module')
def qcnet_spec():
    return read_spec_tsv(QCNET_SPEC)


@pytest.fixture(scope='module')
def av2_model():
    return QCNet(**MODEL_HPARAMS)


def random_state_dict(spec, seed=0):
    """Random tensors of the spec shapes; a self-attention layer's shared norm is saved under both of its names
    (attn_prenorm_x_src / attn_prenorm_x_dst), so those entries are equal, as in real checkpoints."""
    gen = torch.Generator().manual_seed(seed)
    state_dict = {name: torch.randn(shape, generator=gen) if shape else torch.tensor(0) for name, shape in spec}
    shared = ('pl2pl_layers', 't_attn_layers', 'a2a_attn_layers', 'm2m_propose_attn_layer', 'm2m_refine_attn_layer')
    for name in state_dict:
        if 'attn_prenorm_x_dst' in name and any(part in name for part in shared):
            state_dict[name] = state_dict[name.replace('x_dst', 'x_src')]
    return state_dict


def official_format_checkpoint(spec, seed=0):
    """A checkpoint dict laid out like the official Lightning 2.0 releases, with random weights of spec shapes."""
    state_dict = random_state_dict(spec, seed)
    return {
        'epoch': 63, 'global_step': 399808, 'pytorch-lightning_version': '2.0.4',
        'state_dict': state_dict,
        'loops': {'fit_loop': {'state_dict': {}, 'epoch_progress': {'total': {'ready': 64, 'completed': 63}}}},
        'callbacks': {"ModelCheckpoint{'monitor': 'val_minFDE', 'mode': 'min'}": {
            'monitor': 'val_minFDE', 'best_model_score': torch.tensor(1.25), 'best_model_path': 'epoch=63.ckpt'}},
        'optimizer_states': [], 'lr_schedulers': [{'T_max': 64, 'eta_min': 0.0, 'base_lrs': [5e-4, 5e-4]}],
        'hparams_name': 'kwargs', 'hyper_parameters': dict(OFFICIAL_HPARAMS),
    }


def test_state_dict_names_and_shapes_equal_the_official_spec(qcnet_spec, av2_model):
    ours = state_dict_spec(av2_model.state_dict())
    assert len(qcnet_spec) == 949
    assert ours == qcnet_spec  # same names, same shapes, same order
    assert sum(p.numel() for p in av2_model.parameters()) == 7_660_673


def test_official_format_checkpoint_loads(qcnet_spec, tmp_path):
    checkpoint = official_format_checkpoint(qcnet_spec)
    path = tmp_path / 'QCNet_AV2.ckpt'
    torch.save(checkpoint, path)
    model = QCNet.load_from_checkpoint(str(path))
    loaded = model.state_dict()
    for name, value in checkpoint['state_dict'].items():
        assert torch.equal(loaded[name], value), name
    assert model.hparams['hidden_dim'] == 128 and model.hparams['devices'] == 8  # official extras kept
    assert model.num_historical_steps == 50 and model.dataset == 'argoverse_v2'
    # Overrides win over stored hyper-parameters (e.g. a new submission folder).
    other = QCNet.load_from_checkpoint(str(path), submission_dir=str(tmp_path))
    assert other.submission_dir == str(tmp_path)


def test_mismatching_checkpoint_fails_with_full_listing(qcnet_spec, tmp_path):
    checkpoint = official_format_checkpoint(qcnet_spec)
    state_dict = checkpoint['state_dict']
    del state_dict['decoder.to_pi.mlp.3.bias']
    state_dict['decoder.to_pi_extra.weight'] = torch.zeros(3)
    state_dict['decoder.mode_emb.weight'] = torch.zeros(5, 128)
    path = tmp_path / 'broken.ckpt'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError) as info:
        QCNet.load_from_checkpoint(str(path))
    message = str(info.value)
    assert 'broken.ckpt' in message
    assert 'decoder.to_pi.mlp.3.bias' in message and 'decoder.to_pi_extra.weight' in message
    assert 'decoder.mode_emb.weight: (5, 128) vs (6, 128)' in message
    assert info.value.missing == ['decoder.to_pi.mlp.3.bias']
    assert info.value.unexpected == ['decoder.to_pi_extra.weight']
    # strict=False tolerates the key-set difference but never a shape mismatch.
    with pytest.raises(CheckpointMismatchError, match='mode_emb'):
        QCNet.load_from_checkpoint(str(path), strict=False)


def test_conflicting_values_for_a_shared_norm_are_rejected(qcnet_spec, tmp_path):
    checkpoint = official_format_checkpoint(qcnet_spec)
    key = 'encoder.map_encoder.pl2pl_layers.0.attn_prenorm_x_dst.weight'
    checkpoint['state_dict'][key] = checkpoint['state_dict'][key] + 1.0
    path = tmp_path / 'conflict.ckpt'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match='conflict.ckpt: .*pl2pl_layers.0.attn_prenorm_x_src.weight'):
        QCNet.load_from_checkpoint(str(path))


def test_unreadable_or_foreign_files_fail_clearly(tmp_path):
    missing = tmp_path / 'nope.ckpt'
    with pytest.raises(CheckpointError, match='nope.ckpt: checkpoint file not found'):
        QCNet.load_from_checkpoint(str(missing))
    garbage = tmp_path / 'garbage.ckpt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='garbage.ckpt'):
        QCNet.load_from_checkpoint(str(garbage))
    plain = tmp_path / 'weights_only.pt'
    torch.save({'encoder.x': torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match='weights_only.pt: not a Lightning checkpoint'):
        QCNet.load_from_checkpoint(str(plain))


def test_own_checkpoint_round_trip(tmp_path):
    small = dict(MODEL_HPARAMS, hidden_dim=16, num_heads=2, head_dim=8, num_freq_bands=4)
    model = QCNet(**small)
    path = tmp_path / 'own.ckpt'
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams),
                'pytorch-lightning_version': '2.6.0'}, path)
    again = QCNet.load_from_checkpoint(str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)


def test_smartpretrain_encoder_and_decoder_keys_match_the_spec():
    spec = read_spec_tsv(SSL_SPEC)
    assert len(spec) == 1418
    config = {k: MODEL_HPARAMS[k] for k in ('dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head',
                                            'num_historical_steps', 'num_future_steps', 'num_recurrent_steps',
                                            'num_t2m_steps', 'pl2m_radius', 'a2m_radius', 'num_freq_bands',
                                            'num_heads', 'head_dim', 'dropout')}
    decoder = QCNetProposalDecoder(num_modes=1, num_layers=MODEL_HPARAMS['num_dec_layers'], **config)
    encoder = QCNetEncoder(**{k: MODEL_HPARAMS[k] for k in (
        'dataset', 'input_dim', 'hidden_dim', 'num_historical_steps', 'pl2pl_radius', 'time_span', 'pl2a_radius',
        'a2a_radius', 'num_freq_bands', 'num_heads', 'head_dim', 'dropout')},
        num_map_layers=MODEL_HPARAMS['num_map_layers'], num_agent_layers=MODEL_HPARAMS['num_agent_layers'])
    for prefix, module in (('momentum_branch.decoder.', decoder), ('momentum_branch.encoder.', encoder),
                           ('branch.decoder.', decoder)):
        expected = [(name[len(prefix):], shape) for name, shape in spec if name.startswith(prefix)]
        assert state_dict_spec(module.state_dict()) == expected, prefix
    # Fine-tuning loads the momentum branch's encoder + decoder weights into QCNet's encoder and propose stage.
    ssl_state = random_state_dict(spec, seed=1)
    load_submodule_weights(decoder, ssl_state, 'momentum_branch.decoder.', 'smartpretrain.ckpt')
    assert torch.equal(decoder.mode_emb.weight, ssl_state['momentum_branch.decoder.mode_emb.weight'])
    with pytest.raises(CheckpointMismatchError, match=r'smartpretrain.ckpt \[branch.proj.\*\]'):
        load_submodule_weights(decoder, ssl_state, 'branch.proj.', 'smartpretrain.ckpt')
