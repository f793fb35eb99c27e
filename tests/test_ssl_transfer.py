"""Transfer of pre-trained SmartPretrain weights into the QCNet predictor for fine-tuning."""
import pytest
import torch

from predictors.qcnet import QCNet
from predictors.smartpretrain import SmartPretrain
from utils.pretrained import load_pretrained, load_pretrained_into_qcnet

from tiny_configs import TINY_QCNET_SIZES

REFINE = ('t2m_refine_attn_layers', 'pl2m_refine_attn_layers', 'a2m_refine_attn_layers', 'm2m_refine_attn_layer')


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A pre-training checkpoint whose momentum branch differs from its online branch."""
    torch.manual_seed(0)
    model = SmartPretrain(**TINY_QCNET_SIZES)
    with torch.no_grad():
        for p in model.momentum_branch.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path_factory.mktemp('ckpt') / 'pretrain.ckpt'
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams)}, path)
    return path, model.state_dict()


def qcnet(**overrides):
    hp = dict(SmartPretrain(**TINY_QCNET_SIZES).hparams)
    hp.update(num_modes=6, **overrides)
    return QCNet(**hp)


@pytest.mark.parametrize('copy_refine', [False, True])
def test_momentum_encoder_and_proposal_decoder_are_loaded(pretrained, copy_refine, capsys):
    path, source = pretrained
    model = qcnet()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained_into_qcnet(model, str(path), copy_refine)
    state = model.state_dict()
    assert 'pre-trained weights (momentum branch) from' in capsys.readouterr().out

    for key, value in state.items():
        if key.startswith('encoder.'):  # every encoder tensor, from the MOMENTUM branch
            assert torch.equal(value, source['momentum_branch.' + key]), key
            assert not torch.equal(value, source['branch.' + key]) or value.numel() == 0 or key.endswith('tracked')
    assert torch.equal(state['decoder.mode_emb.weight'], source['momentum_branch.decoder.mode_emb.weight'].repeat(6, 1))
    propose = [k for k in state if 'propose_attn_layer' in k]
    assert propose and all(torch.equal(state[k], source['momentum_branch.' + k]) for k in propose)
    for key in ('decoder.r_t2m_emb.freqs.weight', 'decoder.r_a2m_emb.to_out.2.weight'):
        assert torch.equal(state[key], source['momentum_branch.' + key])

    refine = [k for k in state if any(name in k for name in REFINE)]
    for key in refine:
        propose_key = key.replace('refine', 'propose')
        if copy_refine:
            assert torch.equal(state[key], source['momentum_branch.' + propose_key]), key
        else:
            assert torch.equal(state[key], fresh[key]), key
    heads = [k for k in state if k.startswith(('decoder.to_', 'decoder.traj_emb', 'decoder.y_emb'))]
    assert heads and all(torch.equal(state[k], fresh[k]) for k in heads)  # fresh initialisation
    assert all(p.requires_grad for p in model.parameters())                # nothing frozen

    loaded, not_loaded = set(report.loaded), set(report.not_loaded)
    assert loaded | not_loaded == set(state) and not loaded & not_loaded
    assert {k for k in state if k.startswith('encoder.')} <= loaded
    assert set(heads) <= not_loaded
    assert (set(refine) <= loaded) == copy_refine and len(report.copied_to_refine) == (len(refine) if copy_refine else 0)
    assert any('repeated to 6 modes' in note for note in report.adapted)
    assert 'contra_predictor.0.weight' in report.unused and 'branch.encoder.map_encoder.type_pt_emb.weight' in \
        report.unused


def test_longer_vocabulary_tables_are_cut_and_reported(pretrained, tmp_path):
    _, source = pretrained
    state = dict(source)
    key = 'momentum_branch.encoder.agent_encoder.type_a_emb.weight'
    state[key] = torch.cat([state[key], torch.randn(3, state[key].shape[1])])  # multi-dataset vocabulary
    path = tmp_path / 'multi.ckpt'
    torch.save({'state_dict': state}, path)
    model = qcnet()
    report = load_pretrained_into_qcnet(model, str(path), True, verbose=False)
    assert torch.equal(model.encoder.agent_encoder.type_a_emb.weight, source[key])
    assert any('type_a_emb' in note and 'cut' in note for note in report.adapted)


def test_wrong_checkpoints_fail_with_a_clear_message(pretrained, tmp_path):
    path, source = pretrained
    model = qcnet()
    finetuned = tmp_path / 'qcnet.ckpt'
    torch.save({'state_dict': model.state_dict()}, finetuned)
    with pytest.raises(ValueError, match=r'qcnet\.ckpt: this is a QCNet \(supervised / fine-tuned\) checkpoint'):
        load_pretrained_into_qcnet(model, str(finetuned), True)
    garbage = tmp_path / 'garbage.ckpt'
    garbage.write_bytes(b'definitely not a checkpoint')
    with pytest.raises(ValueError, match=r'garbage\.ckpt: not a readable PyTorch checkpoint'):
        load_pretrained_into_qcnet(model, str(garbage), True)
    with pytest.raises(FileNotFoundError, match='missing.ckpt: no such checkpoint file'):
        load_pretrained_into_qcnet(model, str(tmp_path / 'missing.ckpt'), True)
    no_state = tmp_path / 'no_state.ckpt'
    torch.save({'epoch': 3}, no_state)
    with pytest.raises(ValueError, match=r'no_state\.ckpt: checkpoint has no state_dict'):
        load_pretrained_into_qcnet(model, str(no_state), True)
    wider = qcnet(hidden_dim=32, head_dim=16)
    with pytest.raises(ValueError, match=r'pretrain\.ckpt: pre-trained encoder weights do not fit the model.*shape'):
        load_pretrained_into_qcnet(wider, str(path), True)
    truncated = dict(source)
    del truncated['momentum_branch.encoder.agent_encoder.type_a_emb.weight']
    torch.save({'state_dict': truncated}, tmp_path / 'partial.ckpt')
    with pytest.raises(ValueError, match=r'partial\.ckpt: .*missing.*type_a_emb'):
        load_pretrained_into_qcnet(model, str(tmp_path / 'partial.ckpt'), True)


def test_mode_noise_breaks_the_mode_symmetry_and_changes_nothing_else(pretrained):
    """mode_noise_std > 0 (a deviation, off by default): the K copies of the one pre-training mode embedding differ
    by about that std; every other tensor is the same as in the plain transfer."""
    path, source = pretrained
    plain, noisy = qcnet(), qcnet()
    plain.load_state_dict(noisy.state_dict())  # same fresh initialisation of what the transfer leaves alone
    load_pretrained_into_qcnet(plain, str(path), True, verbose=False)
    torch.manual_seed(3)
    report = load_pretrained(noisy, str(path), True, verbose=False, mode_noise_std=0.05)
    key = 'decoder.mode_emb.weight'
    same, broken = plain.state_dict()[key], noisy.state_dict()[key]
    assert same.shape[0] == 6 and all(torch.equal(row, same[0]) for row in same)  # without: identical modes
    assert all(not torch.equal(broken[i], broken[j]) for i in range(6) for j in range(i))
    assert 0.03 < (broken - same).std().item() < 0.07 and (broken - same).mean().abs().item() < 0.02
    for name, value in plain.state_dict().items():
        if name != key:
            assert torch.equal(value, noisy.state_dict()[name]), name
    assert any('mode symmetry broken' in note for note in report.adapted)
    again = qcnet()
    torch.manual_seed(3)  # seeded: the same noise again
    load_pretrained(again, str(path), True, verbose=False, mode_noise_std=0.05)
    assert torch.equal(again.state_dict()[key], broken)


def supervised_checkpoint(tmp_path, name='oracle.ckpt', model=None):
    """A 'trained' QCNet (fresh weights moved by noise) saved as train.py saves it (state_dict + hyper-parameters)."""
    model = model or qcnet()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / name
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams)}, path)
    return path, model.state_dict()


def test_supervised_checkpoint_transfers_encoder_and_whole_decoder(pretrained, tmp_path, capsys):
    """The oracle arm: a supervised checkpoint of the same predictor loads into every encoder and decoder tensor;
    copy_refine, mode noise, a pre-training checkpoint or another predictor are refused with the file named."""
    torch.manual_seed(1)
    path, source = supervised_checkpoint(tmp_path)
    model = qcnet()
    report = load_pretrained(model, str(path), False, branch='supervised')
    assert 'pre-trained weights (supervised branch)' in capsys.readouterr().out
    state = model.state_dict()
    parts = [k for k in state if k.startswith(('encoder.', 'decoder.'))]
    assert parts and all(torch.equal(state[k], source[k]) for k in parts)
    assert set(report.loaded) == set(parts) and not report.unused and not report.copied_to_refine
    with pytest.raises(ValueError, match=r'oracle\.ckpt: copy_refine with a supervised checkpoint'):
        load_pretrained(qcnet(), str(path), True, branch='supervised')
    with pytest.raises(ValueError, match=r'oracle\.ckpt: mode_noise_std 0\.02 given, but no one-mode embedding'):
        load_pretrained(qcnet(), str(path), False, branch='supervised', mode_noise_std=0.02)
    with pytest.raises(ValueError, match=r'pretrain\.ckpt: a SmartPretrain pre-training checkpoint, not a supervised'):
        load_pretrained(qcnet(), str(pretrained[0]), False, branch='supervised')
    other = tmp_path / 'fmae.ckpt'
    torch.save({'state_dict': source, 'hyper_parameters': {'model': 'ForecastMAE'}}, other)
    with pytest.raises(ValueError, match=r'fmae\.ckpt: a supervised ForecastMAE checkpoint, but the model is QCNet'):
        load_pretrained(qcnet(), str(other), False, branch='supervised')
    with pytest.raises(ValueError, match=r'pre-trained decoder weights do not fit the model.*missing'):
        partial = {k: v for k, v in source.items() if 'to_pi' not in k}
        torch.save({'state_dict': partial, 'hyper_parameters': {'model': 'QCNet'}}, tmp_path / 'partial.ckpt')
        load_pretrained(qcnet(), str(tmp_path / 'partial.ckpt'), False, branch='supervised')
