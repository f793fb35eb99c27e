"""train.py / val.py / test.py end to end on CPU with a tiny QCNet and the real Argoverse 2 samples.

The real samples are linked (not copied) into a temporary dataset root: train and val hold the two 110-step
training scenarios, test the 50-step test scenario. The scripts run in-process (their main(argv)) to keep the
suite fast; each CLI's --help is checked the same way.
"""
import csv
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from av2.datasets.motion_forecasting.eval.submission import ChallengeSubmission

from tiny_configs import AV2_STEPS, TINY_QCNET_SIZES, as_flags
from sample_data import AV2_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_AV2 = AV2_DIR
TINY_MODEL = as_flags({'dataset': 'argoverse_v2', **AV2_STEPS, 'pl2pl_radius': 150, 'time_span': 10, 'pl2a_radius': 50,
                      'a2a_radius': 50, 'num_t2m_steps': 30, 'pl2m_radius': 150, 'a2m_radius': 150,
                      **TINY_QCNET_SIZES, 'T_max': 2})


def load_script(name):
    """Imports <project>/<name>.py under a private module name (a plain `import test` could hit the stdlib)."""
    spec = importlib.util.spec_from_file_location(f'_script_{name}', PROJECT_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scenario_dirs(split):
    return sorted(p for p in (SHARED_AV2 / split).iterdir() if p.is_dir())


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    if not (SHARED_AV2 / 'train').is_dir() or not (SHARED_AV2 / 'test').is_dir():
        pytest.skip(f'real AV2 samples not found under {SHARED_AV2}')
    root = tmp_path_factory.mktemp('av2_root')
    for split, source in (('train', 'train'), ('val', 'train'), ('test', 'test')):
        (root / split / 'raw').mkdir(parents=True)
        for scenario in scenario_dirs(source):
            os.symlink(scenario.resolve(), root / split / 'raw' / scenario.name)
    return root


def train_args(root, log_dir, *extra):
    return ['--root', str(root), '--train_batch_size', '2', '--val_batch_size', '2', '--test_batch_size', '2',
            '--num_workers', '0', '--pin_memory', 'false', '--accelerator', 'cpu', '--devices', '1',
            '--log_dir', str(log_dir), '--exp_name', 'tiny', '--log_every_n_steps', '1', '--num_sanity_val_steps', '0',
            *TINY_MODEL, *extra]


@pytest.fixture(scope='module')
def trained_run(dataset_root, tmp_path_factory):
    """One epoch of training, then a resumed second epoch; returns (run_dir, outputs of both starts)."""
    train = load_script('train')
    log_dir = tmp_path_factory.mktemp('logs')
    first = train.main(train_args(dataset_root, log_dir, '--max_epochs', '1'))
    first_step = first.global_step
    resumed = train.main(train_args(dataset_root, log_dir, '--max_epochs', '2', '--resume'))
    return log_dir / 'tiny', first_step, resumed


@pytest.mark.parametrize('script, flags', [
    ('train', ['--pretrained_ckpt', '--copy_refine', '--resume', '--precision', '--max_steps', '--hidden_dim',
               '--train_raw_dir', '--persistent_workers', '--num_nodes', '--limit_train_batches', '--seed']),
    ('val', ['--ckpt_path', '--val_batch_size', '--output_json', '--devices']),
    ('test', ['--ckpt_path', '--test_batch_size', '--submission_dir', '--submission_file_name']),
])
def test_help(script, flags, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load_script(script).main(['--help'])
    assert excinfo.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out, flag


def test_training_writes_checkpoints_logs_and_summary(trained_run, capsys):
    run_dir, first_step, resumed = trained_run
    checkpoints = sorted(p.name for p in (run_dir / 'checkpoints').iterdir())
    assert 'last.ckpt' in checkpoints
    assert any(name.startswith('epoch=0-') for name in checkpoints)
    assert any(name.startswith('epoch=1-') for name in checkpoints)
    assert not [name for name in checkpoints if name.startswith('.')]  # no temporary files left
    # The resumed start continued from the first one (optimiser steps and epochs add up) and logged separately.
    assert first_step == 1 and resumed.global_step == 2 and resumed.current_epoch == 2
    last = torch.load(run_dir / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False)
    assert last['global_step'] == 2 and last['hyper_parameters']['hidden_dim'] == 16
    for version in ('version_0', 'version_1'):
        with open(run_dir / 'csv' / version / 'metrics.csv') as f:
            rows = list(csv.DictReader(f))
        logged = [row['val_minFDE'] for row in rows if row.get('val_minFDE')]
        assert len(logged) == 1 and math.isfinite(float(logged[0]))
        assert any(name.startswith('events.out.tfevents') for name in os.listdir(run_dir / 'tensorboard' / version))


def test_training_refuses_to_mix_into_an_existing_run(trained_run, dataset_root):
    run_dir, _, _ = trained_run
    train = load_script('train')
    with pytest.raises(SystemExit, match='already holds .* pass --resume'):
        train.main(train_args(dataset_root, run_dir.parent, '--max_epochs', '1'))
    with pytest.raises(SystemExit, match='--resume: checkpoint .*missing.ckpt does not exist'):
        train.main(train_args(dataset_root, run_dir.parent, '--resume', str(run_dir / 'missing.ckpt')))


def test_val_prints_table_and_writes_json(trained_run, dataset_root, tmp_path, capsys):
    run_dir, _, resumed = trained_run
    out_json = tmp_path / 'val' / 'metrics.json'
    table = load_script('val').main(['--root', str(dataset_root), '--ckpt_path', str(run_dir / 'checkpoints' /
                                     'last.ckpt'), '--num_workers', '0', '--accelerator', 'cpu',
                                     '--output_json', str(out_json)])
    names = ['minADE', 'minFDE', 'MR', 'Brier', 'brier-minFDE', 'minAHE', 'minFHE']
    assert list(table) == names
    printed = capsys.readouterr().out
    for name in names:
        assert f'\n{name} ' in printed, name
    # last.ckpt holds the weights validated at the end of the resumed run: same numbers.
    assert table['minFDE'] == pytest.approx(float(resumed.callback_metrics['val_minFDE']), rel=1e-5)
    assert table['brier-minFDE'] == pytest.approx(table['minFDE'] + table['Brier'])
    assert 0.0 <= table['MR'] <= 1.0 and 0.0 <= table['Brier'] <= 1.0
    assert all(math.isfinite(value) for value in table.values())
    assert 0.0 <= table['minAHE'] <= math.pi and 0.0 <= table['minFHE'] <= math.pi
    written = json.loads(out_json.read_text())
    assert written['metrics'] == pytest.approx(table) and written['num_scenarios'] == 2


def test_val_evaluates_eagerly_a_checkpoint_trained_with_cuda_graphs(trained_run, dataset_root, tmp_path,
                                                                     monkeypatch):
    """Older checkpoints stored cuda_graphs as a hyper-parameter; val.py ignores it (speed options are run-time
    settings) and evaluates eagerly without --cuda_graphs; --cuda_graphs without a GPU is a one-line error."""
    import torch
    from utils.cli import CliError
    run_dir, _, _ = trained_run
    checkpoint = torch.load(run_dir / 'checkpoints' / 'last.ckpt', map_location='cpu', weights_only=False)
    checkpoint['hyper_parameters']['cuda_graphs'] = True
    path = tmp_path / 'graphs.ckpt'
    torch.save(checkpoint, path)

    import acceleration.cuda_graph_step

    def refuse(*args, **kwargs):
        raise AssertionError('val.py took the fixed-shape path without --cuda_graphs')
    monkeypatch.setattr(acceleration.cuda_graph_step.FixedShapeRunner, '__call__', refuse)
    flags = ['--root', str(dataset_root), '--ckpt_path', str(path), '--num_workers', '0', '--accelerator', 'cpu']
    table = load_script('val').main(flags)
    assert math.isfinite(table['minFDE'])
    with pytest.raises(CliError, match='--cuda_graphs: needs a CUDA GPU'):
        load_script('val').main(flags + ['--cuda_graphs'])


def test_val_and_test_build_graphs_in_workers(trained_run, dataset_root, tmp_path, monkeypatch):
    """val.py / test.py --build_graph_in_workers: the worker builds the graphs (the main process's build_graph
    raises), the metrics equal those of the in-forward graphs; without workers it is a one-line error."""
    from predictors import QCNet
    from utils.cli import CliError
    run_dir, _, _ = trained_run
    flags = ['--root', str(dataset_root), '--ckpt_path', str(run_dir / 'checkpoints' / 'last.ckpt'),
             '--accelerator', 'cpu']
    plain = load_script('val').main(flags + ['--num_workers', '0'])
    main_pid, original = os.getpid(), QCNet.build_graph

    def build_graph_outside_the_main_process(self, data):
        if os.getpid() == main_pid:
            raise AssertionError('graph built in the main process')
        return original(self, data)

    monkeypatch.setattr(QCNet, 'build_graph', build_graph_outside_the_main_process)
    in_workers = load_script('val').main(flags + ['--num_workers', '1', '--persistent_workers', 'false',
                                                  '--build_graph_in_workers'])
    assert in_workers == pytest.approx(plain, rel=1e-6, abs=1e-7)
    submission = tmp_path / 'sub'
    load_script('test').main(['--root', str(dataset_root), '--ckpt_path', str(run_dir / 'checkpoints' / 'last.ckpt'),
                              '--accelerator', 'cpu', '--num_workers', '1', '--persistent_workers', 'false',
                              '--build_graph_in_workers', '--submission_dir', str(submission)])
    assert list(submission.glob('*.parquet'))
    for script in ('val', 'test'):
        with pytest.raises(CliError, match='--build_graph_in_workers: needs --num_workers >= 1'):
            load_script(script).main(flags + ['--num_workers', '0', '--build_graph_in_workers'])


def test_val_and_test_compile_flag_compiles_the_model_for_inference(trained_run, dataset_root, tmp_path,
                                                                   monkeypatch):
    """--compile runs the attention layers and embeddings through their compiled form (torch.compile replaced by the
    function it compiles here: compiling the model takes minutes on a CPU; the compiled layers are checked against
    eager ones in the layer tests)."""
    import acceleration.kernels.layer_ops
    run_dir, _, _ = trained_run
    calls = []

    def record(function):
        calls.append(function.__name__)
        return function
    monkeypatch.setattr(acceleration.kernels.layer_ops, 'compiled', record)
    checkpoint = str(run_dir / 'checkpoints' / 'last.ckpt')
    table = load_script('val').main(['--root', str(dataset_root), '--ckpt_path', checkpoint, '--num_workers', '0',
                                     '--accelerator', 'cpu', '--compile'])
    assert {'traced_embedding', '_compiled_attention'} <= set(calls) and math.isfinite(table['minFDE'])
    calls.clear()
    load_script('test').main(['--root', str(dataset_root), '--ckpt_path', checkpoint, '--num_workers', '0',
                              '--accelerator', 'cpu', '--compile', '--submission_dir', str(tmp_path)])
    assert {'traced_embedding', '_compiled_attention'} <= set(calls)


def test_test_writes_a_complete_submission_in_the_world_frame(trained_run, dataset_root, tmp_path, capsys):
    run_dir, _, _ = trained_run
    path = load_script('test').main(['--root', str(dataset_root), '--ckpt_path', str(run_dir / 'checkpoints' /
                                     'last.ckpt'), '--num_workers', '0', '--accelerator', 'cpu',
                                     '--submission_dir', str(tmp_path / 'sub'), '--submission_file_name', 'qcnet'])
    assert path == tmp_path / 'sub' / 'qcnet.parquet' and os.listdir(tmp_path / 'sub') == ['qcnet.parquet']
    predictions = ChallengeSubmission.from_parquet(path).predictions
    test_scenarios = scenario_dirs('test')
    assert set(predictions) == {p.name for p in test_scenarios}
    for scenario in test_scenarios:
        probabilities, tracks = predictions[scenario.name]
        tracks_df = pd.read_parquet(scenario / f'scenario_{scenario.name}.parquet')
        focal_id = tracks_df['focal_track_id'].iloc[0]
        assert list(tracks) == [focal_id]
        assert tracks[focal_id].shape == (6, 60, 2)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        # World frame: the forecasts start next to the focal agent's last observed position (an untrained model
        # still predicts small offsets in the agent frame, so they stay within a few hundred metres of it).
        focal = tracks_df[tracks_df['track_id'] == focal_id].sort_values('timestep')
        last_xy = focal[['position_x', 'position_y']].to_numpy()[-1]
        assert np.linalg.norm(tracks[focal_id][:, 0] - last_xy, axis=-1).max() < 300.0
        assert np.linalg.norm(last_xy) > 1000.0  # AV2 city coordinates: agent-frame output would fail the above


def test_test_refuses_an_incomplete_submission(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    root = tmp_path / 'root'
    (root / 'test' / 'raw').mkdir(parents=True)
    for scenario in scenario_dirs('test'):
        os.symlink(scenario.resolve(), root / 'test' / 'raw' / scenario.name)
    broken = root / 'test' / 'raw' / 'ffffffff-0000-0000-0000-000000000000'
    broken.mkdir()
    (broken / f'scenario_{broken.name}.parquet').write_text('not a parquet file')
    with pytest.raises(SystemExit, match=r'missing 1 \(ffffffff-0000-0000-0000-000000000000\).*failures.json'):
        load_script('test').main(['--root', str(root), '--ckpt_path', str(run_dir / 'checkpoints' / 'last.ckpt'),
                                  '--num_workers', '0', '--accelerator', 'cpu',
                                  '--submission_dir', str(tmp_path / 'sub')])
    assert not (tmp_path / 'sub').exists()


def test_atomic_checkpoint_io_keeps_the_old_file_when_saving_fails(tmp_path):
    from utils.atomic_checkpoint_io import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    path = tmp_path / 'ckpts' / 'last.ckpt'
    io.save_checkpoint({'step': 1, 'w': torch.ones(3)}, path)
    assert torch.load(path)['step'] == 1
    with pytest.raises(Exception):
        io.save_checkpoint({'step': 2, 'bad': lambda: None}, path)  # lambdas cannot be pickled
    assert torch.load(path)['step'] == 1
    assert os.listdir(path.parent) == ['last.ckpt']


def test_boolean_flags_parse_like_their_spelling():
    from utils.cli import str2bool
    assert [str2bool(v) for v in ('true', 'False', '1', '0', 'yes', 'n')] == [True, False, True, False, True, False]
    with pytest.raises(Exception, match='expected a boolean'):
        str2bool('maybe')


def test_fine_tuning_starts_from_the_pretrained_momentum_branch(dataset_root, tmp_path, capsys):
    from predictors.smartpretrain import SmartPretrain
    torch.manual_seed(123)
    pretrained = SmartPretrain(**TINY_QCNET_SIZES)
    with torch.no_grad():  # make the momentum branch clearly different from any fresh initialisation
        for name, tensor in pretrained.state_dict().items():
            if name.startswith('momentum_branch.') and tensor.is_floating_point():
                tensor.add_(0.5)
    ckpt_path = tmp_path / 'pretrain.ckpt'
    torch.save({'state_dict': pretrained.state_dict(), 'hyper_parameters': dict(pretrained.hparams)}, ckpt_path)

    # lr = 0 and no weight decay: after one step the weights are still exactly the loaded ones.
    load_script('train').main(train_args(dataset_root, tmp_path / 'logs', '--max_epochs', '1', '--lr', '0',
                                         '--weight_decay', '0', '--pretrained_ckpt', str(ckpt_path),
                                         '--copy_refine', '1'))
    assert f'fine-tuning from {ckpt_path}' in capsys.readouterr().out
    source = pretrained.state_dict()
    tuned = torch.load(tmp_path / 'logs' / 'tiny' / 'checkpoints' / 'last.ckpt', map_location='cpu',
                       weights_only=False)['state_dict']
    encoder_keys = [k for k in tuned if k.startswith('encoder.')]
    assert encoder_keys
    for key in encoder_keys:
        expected = source['momentum_branch.' + key]
        assert torch.equal(tuned[key], expected[:tuned[key].shape[0]] if expected.dim() else expected), key
    refine_keys = [k for k in tuned if k.startswith('decoder.') and '_refine_attn_layer' in k]
    assert refine_keys
    for key in refine_keys:  # copy_refine: refinement attention initialised from the proposal attention
        propose_key = 'momentum_branch.' + key.replace('_refine_attn_layer', '_propose_attn_layer')
        assert torch.equal(tuned[key], source[propose_key]), key


def test_freeze_encoder_trains_only_the_decoder(dataset_root, tmp_path):
    """--freeze_encoder 1: the encoder leaves training with the weights it started with (the same seed builds the
    same initial model), the optimiser holds only decoder parameters, and the decoder does learn."""
    import pytorch_lightning as pl
    from predictors import QCNet

    train = load_script('train')
    trainer = train.main(train_args(dataset_root, tmp_path, '--max_epochs', '1', '--freeze_encoder', '1',
                                    '--seed', '7'))
    model = trainer.lightning_module
    pl.seed_everything(7, workers=True)
    initial = QCNet(**vars(train.build_parser().parse_args(train_args(dataset_root, tmp_path, '--seed', '7'))))
    for name, value in initial.encoder.state_dict().items():
        assert torch.equal(value, model.encoder.state_dict()[name].cpu()), name
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group['params']}
    assert not optimised & {id(p) for p in model.encoder.parameters()}
    assert optimised == {id(p) for p in model.decoder.parameters()}
    changed = [n for n, v in initial.decoder.state_dict().items()
               if not torch.equal(v, model.decoder.state_dict()[n].cpu())]
    assert changed, 'no decoder weight moved in one epoch'
    assert model.hparams['freeze_encoder'] == 1


def test_build_graph_in_workers_trains_without_building_graphs_in_the_training_process(dataset_root, tmp_path,
                                                                                      monkeypatch):
    """--build_graph_in_workers: the loader worker builds every batch's graph (the training process must not: its
    build_graph raises here), training and validation run; without workers it is a one-line error."""
    from predictors import QCNet
    from utils.cli import CliError

    train = load_script('train')
    main_pid, original = os.getpid(), QCNet.build_graph

    def build_graph_outside_the_main_process(self, data):
        if os.getpid() == main_pid:
            raise AssertionError('graph built in the training process')
        return original(self, data)

    monkeypatch.setattr(QCNet, 'build_graph', build_graph_outside_the_main_process)
    args = train_args(dataset_root, tmp_path, '--max_epochs', '1', '--build_graph_in_workers')
    args[args.index('--num_workers') + 1] = '1'
    trainer = train.main(args)
    assert trainer.global_step > 0
    assert 'val_minFDE' in trainer.callback_metrics
    with pytest.raises(CliError, match='--build_graph_in_workers: needs --num_workers >= 1'):
        train.main(train_args(dataset_root, tmp_path / 'other', '--max_epochs', '1', '--build_graph_in_workers'))
