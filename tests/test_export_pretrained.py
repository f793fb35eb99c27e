"""Slim pre-training checkpoints (utils/export_pretrained.py): only the momentum encoder + decoder and the
hyper-parameters, loading for fine-tuning exactly like the full checkpoint; the split options of
benchmarks/ssl_low_label.py that use them. Checkpoints come from two tiny pre-training steps on the real
Argoverse 2 samples under tests/data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from predictors import ForecastMAE, QCNet
from predictors.smartpretrain import SmartPretrain, ViewEpochCallback
from transforms.ssl_views import SSLViews
from utils.export_pretrained import EXPORT_INFO_KEY, export_pretrained, exported_keys, main
from utils.pretrained import load_pretrained

from tiny_configs import TINY_FMAE, TINY_QCNET_SSL
from sample_data import AV2_TRAIN_DIR, SPEC_DIR

ROOT = Path(__file__).resolve().parents[1]
RAW = AV2_TRAIN_DIR
SPEC = SPEC_DIR / 'smartpretrain_checkpoint_keys.tsv'
TINY_SIZES = {'QCNet': TINY_QCNET_SSL, 'ForecastMAE': TINY_FMAE}
PREDICTOR = {'QCNet': QCNet, 'ForecastMAE': ForecastMAE}
BACKBONE = {'QCNet': 'qcnet', 'ForecastMAE': 'forecast_mae'}
MOMENTUM = ('momentum_branch.encoder.', 'momentum_branch.decoder.')


@pytest.fixture(scope='module')
def ssl_checkpoints(tmp_path_factory):
    """{'QCNet': path, 'ForecastMAE': path}: last.ckpt of two pre-training steps of each backbone under a Lightning
    Trainer (the SmartPretrain module and views of train_ssl.py; full Lightning checkpoints: both branches, heads,
    AdamW state) on real scenes cropped around the AV, which keeps a step fast on CPU."""
    if not RAW.is_dir():
        pytest.skip(f'real AV2 samples are absent ({RAW})')
    from test_ssl_model import SCENARIOS, crop_scene  # same module objects pytest collected
    from test_ssl_training import _ScenesModule
    from datasets import load_argoverse_v2_scenario, process_scenario
    scenes = [crop_scene(process_scenario(load_argoverse_v2_scenario(RAW / s)), 20.0) for s in SCENARIOS]
    root = tmp_path_factory.mktemp('ssl')
    paths = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread beats two waiting on each other on a busy 2-core box
    try:
        for model, sizes in TINY_SIZES.items():
            pl.seed_everything(5)
            module = SmartPretrain(backbone=BACKBONE[model], **sizes, warmup=1, seed=5)
            views = SSLViews(50, 60, seed=5)
            view_callback = ViewEpochCallback(views)
            trainer = pl.Trainer(max_steps=2, accelerator='cpu', devices=1, logger=False, enable_progress_bar=False,
                                 enable_model_summary=False, limit_val_batches=0,
                                 callbacks=[ModelCheckpoint(dirpath=root / model, save_last=True), view_callback])
            trainer.fit(module, _ScenesModule(scenes, views, view_callback))
            paths[model] = root / model / 'last.ckpt'
    finally:
        torch.set_num_threads(threads)
    return paths


def args_hparams(ssl_checkpoints, model='QCNet'):
    return torch.load(ssl_checkpoints[model], map_location='cpu', weights_only=True)['hyper_parameters']


def fine_tuning_model(model: str, hparams):
    torch.manual_seed(3)  # the same fresh initialisation for every load that is compared
    return PREDICTOR[model](**{**hparams, 'num_modes': 6})


@pytest.mark.parametrize('model,dtype', [('QCNet', 'float32'), ('QCNet', 'float16'), ('ForecastMAE', 'float16'),
                                         ('ForecastMAE', 'bfloat16')])
def test_slim_checkpoint_loads_like_the_full_one(ssl_checkpoints, tmp_path, model, dtype):
    full_path, slim_path = ssl_checkpoints[model], tmp_path / 'slim.ckpt'
    summary = export_pretrained(str(full_path), str(slim_path), dtype)
    full = torch.load(full_path, map_location='cpu', weights_only=True)
    slim = torch.load(slim_path, map_location='cpu', weights_only=True)

    # only the momentum encoder / decoder, same names; the hyper-parameters unchanged
    expected_keys = [k for k in full['state_dict'] if k.startswith(MOMENTUM)]
    assert list(slim['state_dict']) == expected_keys and len(expected_keys) < len(full['state_dict'])
    assert slim['hyper_parameters'] == full['hyper_parameters']
    assert 'optimizer_states' in full and 'optimizer_states' not in slim
    assert slim[EXPORT_INFO_KEY]['dtype'] == dtype
    for key, value in slim['state_dict'].items():
        source = full['state_dict'][key]
        assert value.dtype == (getattr(torch, dtype) if source.is_floating_point() else source.dtype), key
    assert summary.num_tensors == len(expected_keys) and summary.output_bytes == os.path.getsize(slim_path)
    assert summary.num_parameters == sum(full['state_dict'][k].numel() for k in expected_keys
                                         if full['state_dict'][k].is_floating_point())
    assert summary.output_bytes < summary.source_bytes / (8 if dtype == 'float32' else 12)
    assert [p.name for p in tmp_path.iterdir()] == ['slim.ckpt']  # no temporary file left behind

    # fine-tuning from either file: the same weights (up to the export dtype's rounding), the same report
    hparams = full['hyper_parameters']
    from_full, from_slim = fine_tuning_model(model, hparams), fine_tuning_model(model, hparams)
    report_full = load_pretrained(from_full, str(full_path), copy_refine=True, verbose=False)
    report_slim = load_pretrained(from_slim, str(slim_path), copy_refine=True, verbose=False)
    for field in ('loaded', 'copied_to_refine', 'adapted', 'not_loaded'):
        assert getattr(report_slim, field) == getattr(report_full, field), field
    assert set(report_slim.unused) < set(report_full.unused)  # the online branch, heads, ... are gone
    assert all(p.dtype == torch.float32 for p in from_slim.parameters())
    state_full, state_slim = from_full.state_dict(), from_slim.state_dict()
    rounded = 0
    for key in state_full:
        if dtype == 'float32' or key not in report_full.loaded or not state_full[key].is_floating_point():
            assert torch.equal(state_slim[key], state_full[key]), key
        else:  # exactly the float32 weight rounded to the export dtype
            assert torch.equal(state_slim[key], state_full[key].to(getattr(torch, dtype)).float()), key
            rounded += not torch.equal(state_slim[key], state_full[key])
    assert (rounded > 0) == (dtype != 'float32')


def test_official_layout_is_exported(ssl_checkpoints, tmp_path):
    """The official SmartPretrain release: same key layout (tests/data/spec), hyper-parameters without 'backbone'."""
    if not SPEC.is_file():
        pytest.skip(f'checkpoint spec is absent ({SPEC})')
    official_keys = [line.split('\t')[0] for line in SPEC.read_text().splitlines() if line.strip()]
    kept = exported_keys(official_keys)
    assert len(official_keys) == 1418 and len(kept) == 411 + 281
    assert kept == [k for k in official_keys if k.startswith(MOMENTUM)]

    full = torch.load(ssl_checkpoints['QCNet'], map_location='cpu', weights_only=True)
    official_names = ('dataset', 'input_dim', 'hidden_dim', 'output_dim', 'output_head', 'num_historical_steps',
                      'num_future_steps', 'num_modes', 'num_recurrent_steps', 'num_freq_bands', 'num_map_layers',
                      'num_agent_layers', 'num_dec_layers', 'num_heads', 'head_dim', 'dropout', 'pl2pl_radius',
                      'time_span', 'pl2a_radius', 'a2a_radius', 'num_t2m_steps', 'pl2m_radius', 'a2m_radius', 'lr',
                      'weight_decay', 'T_max', 'submission_dir', 'submission_file_name', 'lr_init', 'lr_last',
                      'weight_decay_init', 'warmup', 'contra_t', 'contra_momentum')
    official = {'epoch': 31, 'global_step': 100, 'state_dict': full['state_dict'],
                'hyper_parameters': {k: full['hyper_parameters'][k] for k in official_names},
                'optimizer_states': full['optimizer_states']}
    torch.save(official, tmp_path / 'official.ckpt')
    export_pretrained(str(tmp_path / 'official.ckpt'), str(tmp_path / 'slim.ckpt'))
    slim = torch.load(tmp_path / 'slim.ckpt', weights_only=True)
    assert 'backbone' not in slim['hyper_parameters']
    model = fine_tuning_model('QCNet', full['hyper_parameters'])
    report = load_pretrained(model, str(tmp_path / 'slim.ckpt'), copy_refine=False, verbose=False)
    assert {f'{k[len("momentum_branch."):]}' for k in slim['state_dict'] if k.startswith(MOMENTUM[0])} <= \
        set(report.loaded)


def test_bad_inputs_fail_with_one_line_naming_the_file(ssl_checkpoints, tmp_path):
    full = torch.load(ssl_checkpoints['QCNet'], map_location='cpu', weights_only=True)
    out = tmp_path / 'out' / 'slim.ckpt'
    supervised = tmp_path / 'qcnet_supervised.ckpt'
    model = fine_tuning_model('QCNet', full['hyper_parameters'])
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': {'model': 'QCNet'}}, supervised)
    online_only = tmp_path / 'online_only.ckpt'
    torch.save({'state_dict': {k: v for k, v in full['state_dict'].items() if not k.startswith('momentum_branch.')}},
               online_only)
    diverged = tmp_path / 'diverged.ckpt'
    state = dict(full['state_dict'])
    key = next(k for k in state if k.startswith(MOMENTUM[0]) and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], float('nan'))
    torch.save({'state_dict': state, 'hyper_parameters': full['hyper_parameters']}, diverged)
    huge = tmp_path / 'huge.ckpt'
    state = dict(full['state_dict'])
    state[key] = torch.full_like(state[key], 1e6)
    torch.save({'state_dict': state, 'hyper_parameters': full['hyper_parameters']}, huge)

    cases = [(supervised, r'qcnet_supervised\.ckpt: this is a QCNet \(supervised / fine-tuned\) checkpoint'),
             (tmp_path / 'missing.ckpt', r'missing\.ckpt: no such checkpoint file'),
             (online_only, r'online_only\.ckpt: holds only the online branch \(branch\.encoder\.\*\), not the '
                           r'momentum one'),
             (diverged, rf'diverged\.ckpt: {key} holds NaN'),
             (huge, rf'huge\.ckpt: {key} has values beyond the range of float16.*--dtype bfloat16')]
    for path, message in cases:
        with pytest.raises(SystemExit, match=f'^error: .*{message}') as error:
            main([str(path), str(out)])
        assert error.value.code == 2 and '\n' not in str(error.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing written, not even a temp file
    main([str(huge), str(out), '--dtype', 'bfloat16'])  # bfloat16 has float32's range
    with pytest.raises(SystemExit, match=r'slim\.ckpt: the output is the input checkpoint itself'):
        main([str(out), str(out)])


def test_command_line(ssl_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0 and '--dtype' in capsys.readouterr().out
    out = tmp_path / 'slim.ckpt'
    result = subprocess.run([sys.executable, '-m', 'utils.export_pretrained', str(ssl_checkpoints['ForecastMAE']),
                             str(out), '--dtype', 'float32'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    slim = torch.load(out, weights_only=True)['state_dict']
    params = sum(v.numel() for v in slim.values() if v.is_floating_point())
    assert f'{params:,} parameters' in result.stdout and 'as float32' in result.stdout
    assert f'{os.path.getsize(out) / 2 ** 20:.2f} MiB' in result.stdout


def test_ssl_low_label_checks_checkpoints_before_fine_tuning(ssl_checkpoints, tmp_path):
    """benchmarks/ssl_low_label.py refuses a checkpoint that does not fit an arm before any fine-tune starts; the
    oracle arm's supervised checkpoint exports (``--branch supervised``) and loads like the pre-training ones."""
    from benchmarks import ssl_low_label
    from utils.pretrained import load_pretrained
    slim, online_slim = tmp_path / 'slim.ckpt', tmp_path / 'online.ckpt'
    export_pretrained(str(ssl_checkpoints['QCNet']), str(slim))
    export_pretrained(str(ssl_checkpoints['QCNet']), str(online_slim), branch='online')
    ssl_low_label.check_pretrained_ckpt(str(slim), 'QCNet')
    ssl_low_label.check_pretrained_ckpt(str(online_slim), 'QCNet', 'online')
    with pytest.raises(SystemExit, match=r"slim\.ckpt: pre-trained with backbone 'qcnet', but --model ForecastMAE"):
        ssl_low_label.check_pretrained_ckpt(str(slim), 'ForecastMAE')
    with pytest.raises(SystemExit, match=r'slim\.ckpt: holds only the momentum branch'):
        ssl_low_label.check_pretrained_ckpt(str(slim), 'QCNet', 'online')
    with pytest.raises(SystemExit, match='nowhere.ckpt: no such checkpoint'):
        ssl_low_label.check_pretrained_ckpt(str(tmp_path / 'nowhere.ckpt'), 'QCNet')
    model = fine_tuning_model('QCNet', args_hparams(ssl_checkpoints))
    supervised = tmp_path / 'qcnet.ckpt'
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams)}, supervised)
    with pytest.raises(SystemExit, match=r'qcnet\.ckpt: this is a QCNet \(supervised'):
        ssl_low_label.check_pretrained_ckpt(str(supervised), 'QCNet')
    ssl_low_label.check_pretrained_ckpt(str(supervised), 'QCNet', 'supervised')
    with pytest.raises(SystemExit, match=r'qcnet\.ckpt: a supervised QCNet checkpoint, but the model is ForecastMAE'):
        ssl_low_label.check_pretrained_ckpt(str(supervised), 'ForecastMAE', 'supervised')
    with pytest.raises(SystemExit, match=r'slim\.ckpt: a SmartPretrain pre-training checkpoint, not a supervised'):
        ssl_low_label.check_pretrained_ckpt(str(slim), 'QCNet', 'supervised')
    oracle_slim = tmp_path / 'oracle_slim.ckpt'
    summary = export_pretrained(str(supervised), str(oracle_slim), 'float32', branch='supervised')
    assert summary.num_tensors == len([k for k in model.state_dict() if k.startswith(('encoder.', 'decoder.'))])
    fresh = fine_tuning_model('QCNet', args_hparams(ssl_checkpoints))
    load_pretrained(fresh, str(oracle_slim), False, verbose=False, branch='supervised')
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize('model', ['QCNet', 'ForecastMAE'])
def test_online_branch_exports_and_loads(ssl_checkpoints, tmp_path, model):
    """``--branch online`` / ``--pretrained_branch online``: the online branch's weights reach the model (they differ
    from the momentum ones after a step), and a slim file of one branch refuses the other with one line."""
    full_path = str(ssl_checkpoints[model])
    full = torch.load(full_path, map_location='cpu', weights_only=True)
    online_slim, momentum_slim = tmp_path / 'online.ckpt', tmp_path / 'momentum.ckpt'
    summary = export_pretrained(full_path, str(online_slim), 'float32', branch='online')
    export_pretrained(full_path, str(momentum_slim), 'float32')
    slim = torch.load(online_slim, map_location='cpu', weights_only=True)
    assert list(slim['state_dict']) == exported_keys(full['state_dict'], 'online')
    assert all(k.startswith(('branch.encoder.', 'branch.decoder.')) for k in slim['state_dict'])
    assert slim[EXPORT_INFO_KEY]['branch'] == 'online' and 'online encoder' in summary.summary()

    hparams = full['hyper_parameters']
    from_online, from_momentum = fine_tuning_model(model, hparams), fine_tuning_model(model, hparams)
    report = load_pretrained(from_online, str(online_slim), copy_refine=False, verbose=False, branch='online')
    load_pretrained(from_momentum, full_path, copy_refine=False, verbose=False)
    assert report.branch == 'online' and report.loaded
    differ = 0
    for key in report.loaded:
        source = full['state_dict']['branch.' + key].float()
        if key == 'decoder.mode_emb.weight':  # the one pre-training mode, repeated to the model's six
            source = source.expand_as(from_online.state_dict()[key])
        assert torch.equal(from_online.state_dict()[key], source), key
        differ += not torch.equal(from_online.state_dict()[key], from_momentum.state_dict()[key])
    assert differ > 0  # two AdamW steps moved the online weights; the EMA moved the momentum ones far less

    with pytest.raises(ValueError, match=r'online\.ckpt: holds only the online branch .*--branch momentum'):
        load_pretrained(fine_tuning_model(model, hparams), str(online_slim), copy_refine=False, verbose=False)
    with pytest.raises(ValueError, match=r'momentum\.ckpt: holds only the momentum branch'):
        load_pretrained(fine_tuning_model(model, hparams), str(momentum_slim), copy_refine=False, verbose=False,
                        branch='online')


@pytest.mark.parametrize('model', ['QCNet', 'ForecastMAE'])
def test_momentum_init_share_rebuilds_the_initialisation(ssl_checkpoints, tmp_path, model):
    """benchmarks/momentum_init_share.py on a two-step pre-training: the momentum branch is still ~99 % its
    initialisation (two EMA updates at 0.996), the same from the full checkpoint and from the two slim exports; a wrong
    seed rebuilds another initialisation and is refused instead of reported."""
    from benchmarks import momentum_init_share
    full = str(ssl_checkpoints[model])
    result = momentum_init_share.main([full, '--json', str(tmp_path / 'share.json')])
    assert 0.97 < result['init_share'] < 1.0 and result['distance_ratio'] < 0.05
    assert result['seed'] == 5 and result['num_tensors'] > 0
    assert json.loads((tmp_path / 'share.json').read_text())['init_share'] == pytest.approx(result['init_share'])
    momentum_slim, online_slim = tmp_path / 'm.ckpt', tmp_path / 'o.ckpt'
    export_pretrained(full, str(momentum_slim), 'float32')
    export_pretrained(full, str(online_slim), 'float32', branch='online')
    slim = momentum_init_share.main([str(momentum_slim), '--online', str(online_slim)])
    assert slim['init_share'] == pytest.approx(result['init_share'], abs=1e-6)
    with pytest.raises(SystemExit, match=r'^error: .*m\.ckpt: no branch\.encoder/decoder \(online\) weights'):
        momentum_init_share.main([str(momentum_slim)])
    with pytest.raises(SystemExit, match=r'not this run.s \(other seed'):
        momentum_init_share.main([full, '--seed', '6'])
