"""Second backbone (Forecast-MAE-style): frames, batching, pre-training through the same SmartPretrain
module as QCNet, the supervised predictor through train.py / val.py / test.py, fine-tuning transfer, and checkpoints
of one backbone refused by the other. Real Argoverse 2 samples under tests/data."""
import importlib.util
import inspect
import math
import os
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from predictors import ForecastMAE, QCNet
from predictors.smartpretrain import SmartPretrain
from transforms import TargetBuilder
from transforms.ssl_views import SSLViews
from utils.checkpoint import CheckpointError
from utils.pretrained import load_pretrained

from tiny_configs import TINY_FMAE, TINY_QCNET_SSL, as_flags
from sample_data import AV2_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_AV2 = AV2_DIR
# SmartPretrain kwargs valid for either backbone: tiny widths (and short QCNet radii) keep every step well under a
# second on two CPU cores
TINY_SSL_EITHER_BACKBONE = {**TINY_QCNET_SSL, **TINY_FMAE}


def real_scenes(split='train'):
    if not (SHARED_AV2 / split).is_dir():
        pytest.skip(f'real AV2 samples are absent ({SHARED_AV2 / split})')
    from datasets import load_argoverse_v2_scenario, process_scenario
    return [process_scenario(load_argoverse_v2_scenario(p)) for p in sorted((SHARED_AV2 / split).iterdir())
            if p.is_dir()]


@pytest.fixture(scope='module')
def scenes():
    return real_scenes()


def near_the_av(data, radius: float = 30.0):
    """The agents observed at the last history step and the polygons (with their points) within ``radius`` metres
    of the AV: a smaller real scene, so that the QCNet backbone's pre-training steps stay fast on CPU."""
    agent, polygon = data['agent'], data['map_polygon']
    center = agent['position'][agent['av_index'], 49, :2]
    agents = (((agent['position'][:, 49, :2] - center).norm(dim=-1) < radius) & agent['valid_mask'][:, 49])
    polygons = (polygon['position'][:, :2] - center).norm(dim=-1) < radius
    points = polygons[data['map_point', 'to', 'map_polygon']['edge_index'][1]]
    keep = {'agent': agents.nonzero().squeeze(1), 'map_polygon': polygons.nonzero().squeeze(1),
            'map_point': points.nonzero().squeeze(1)}
    ids = [agent['id'][i] for i in keep['agent'].tolist()]
    data = data.clone()
    del data['agent'].id
    small = data.subgraph(keep)
    small['agent']['id'] = ids
    small['agent']['av_index'] = int((keep['agent'] == agent['av_index']).nonzero()[0, 0])
    return small


def load_script(name):
    """Imports <project>/<name>.py under a private module name (a plain `import test` could hit the stdlib)."""
    spec = importlib.util.spec_from_file_location(f'_script_{name}', PROJECT_ROOT / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# frames and batching of the Forecast-MAE-style model
# ----------------------------------------------------------------------------------------------------------------
def moved(data, angle: float, shift):
    """The same scene in another map frame: every position rotated by ``angle`` and shifted, headings turned."""
    data = data.clone()
    cos, sin = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    shift = torch.tensor(shift, dtype=torch.float64)
    for store, fields in (('agent', ('position', 'velocity')), ('map_polygon', ('position',)),
                          ('map_point', ('position',))):
        for field in fields:
            value = data[store][field].clone()
            value[..., :2] = value[..., :2] @ rot.T + (shift if field == 'position' else 0)
            data[store][field] = value
    data['agent']['heading'] = data['agent']['heading'] + angle
    for store in ('map_polygon', 'map_point'):
        data[store]['orientation'] = data[store]['orientation'] + angle
    return data


def to_double(data):
    data = data.clone()
    for store in data.node_stores:
        for key, value in store.items():
            if torch.is_tensor(value) and value.is_floating_point():
                store[key] = value.double()
    return data


def test_predictions_do_not_depend_on_the_map_frame(scenes):
    torch.manual_seed(0)
    model = ForecastMAE(**TINY_FMAE).double().eval()
    data = to_double(scenes[0])
    with torch.no_grad():
        out = model(Batch.from_data_list([data]))
        out_moved = model(Batch.from_data_list([moved(data, angle=2.1, shift=[-850.0, 4200.0])]))
    assert out['loc_refine_pos'].shape == (data['agent'].num_nodes, 6, 60, 2)
    for key in ('loc_propose_pos', 'loc_refine_pos', 'scale_refine_pos', 'pi'):
        torch.testing.assert_close(out_moved[key], out[key], rtol=1e-7, atol=1e-7, msg=key)


def test_scenes_of_a_batch_do_not_see_each_other(scenes):
    torch.manual_seed(0)
    model = ForecastMAE(**TINY_FMAE).double().eval()
    data = [to_double(s) for s in scenes]
    with torch.no_grad():
        together = model(Batch.from_data_list(data))
        alone = [model(Batch.from_data_list([d])) for d in data]
    for key in ('loc_refine_pos', 'pi'):
        torch.testing.assert_close(together[key], torch.cat([a[key] for a in alone]), rtol=1e-9, atol=1e-9)


def test_scene_frame_falls_back_when_the_av_is_unobserved(scenes):
    from modules.forecast_mae_frames import scene_reference_agents
    has_history = torch.tensor([True, False, True, True, False, True])
    agent_scene = torch.tensor([0, 0, 0, 1, 1, 1])
    # scene 0: AV (local 1) unobserved -> its first observed agent (0); scene 1: AV (local 2) observed -> itself
    chosen = scene_reference_agents(has_history, agent_scene, torch.tensor([1, 2]), torch.tensor([0, 3]))
    assert chosen.tolist() == [0, 5]


# ----------------------------------------------------------------------------------------------------------------
# pre-training: the same SmartPretrain module and losses for both backbones
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def view_batch(scenes):
    views = SSLViews(50, 60, seed=4)
    small = [near_the_av(scene) for scene in scenes]
    pairs = [views.make_views(scene, 3, 57) if i == 0 else views(scene) for i, scene in enumerate(small)]
    return next(iter(DataLoader(pairs, batch_size=len(pairs))))


def test_the_pretraining_module_and_losses_know_no_backbone():
    import losses.contrastive_loss
    import losses.reconstruction_loss
    import predictors.smartpretrain
    for module in (predictors.smartpretrain, losses.contrastive_loss, losses.reconstruction_loss):
        code = inspect.getsource(module).lower()
        assert 'forecast' not in code and 'qcnetencoder' not in code, module.__name__


@pytest.mark.parametrize('backbone', ['qcnet', 'forecast_mae'])
def test_both_backbones_pretrain_through_the_same_module(view_batch, backbone):
    torch.manual_seed(0)
    model = SmartPretrain(backbone=backbone, dropout=0.0, **TINY_SSL_EITHER_BACKBONE)
    assert {k.split('.')[1] for k in model.state_dict() if k.startswith('branch.')} == {'encoder', 'decoder', 'proj'}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        model.update_momentum_branch(0.99)
        out = model(view_batch)
        losses.append((out['loss'].item(), out['contra_loss'].item(), out['rec_loss'].item()))
        optimizer.zero_grad()
        out['loss'].backward()
        optimizer.step()
    assert all(math.isfinite(v) for row in losses for v in row), losses
    assert (losses[-1][0] + losses[-2][0]) / 2 < 0.75 * losses[0][0], losses
    assert (losses[-1][1] + losses[-2][1]) / 2 < losses[0][1], losses   # the contrastive term learns too
    assert all(p.grad is None for p in model.momentum_branch.parameters())


def test_forecast_mae_backbone_needs_one_mode_query():
    from modules.backbone import build_backbone
    with pytest.raises(ValueError, match='forecast_mae backbone: pre-training uses one mode query'):
        build_backbone('forecast_mae', **{**SmartPretrain(**TINY_SSL_EITHER_BACKBONE).hparams, 'num_modes': 6})


# ----------------------------------------------------------------------------------------------------------------
# checkpoints of one backbone do not load into the other
# ----------------------------------------------------------------------------------------------------------------
def save_lightning_like(model, path):
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams)}, path)
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    qcnet_hp = dict(SmartPretrain(**TINY_SSL_EITHER_BACKBONE).hparams, num_modes=6)
    return {
        'qcnet_ssl': save_lightning_like(SmartPretrain(backbone='qcnet', **TINY_SSL_EITHER_BACKBONE),
                                         folder / 'qcnet_ssl.ckpt'),
        'fmae_ssl': save_lightning_like(SmartPretrain(backbone='forecast_mae', **TINY_SSL_EITHER_BACKBONE),
                                        folder / 'fmae_ssl.ckpt'),
        'qcnet': save_lightning_like(QCNet(**qcnet_hp), folder / 'qcnet.ckpt'),
        'fmae': save_lightning_like(ForecastMAE(**TINY_FMAE), folder / 'fmae.ckpt'),
        'qcnet_hp': qcnet_hp,
    }


def test_supervised_checkpoints_are_refused_by_the_other_model(checkpoints, tmp_path):
    assert ForecastMAE.load_from_checkpoint(checkpoints['fmae']).hparams['model'] == 'ForecastMAE'
    with pytest.raises(CheckpointError, match=r'fmae\.ckpt: a ForecastMAE checkpoint cannot be loaded as QCNet'):
        QCNet.load_from_checkpoint(checkpoints['fmae'])
    with pytest.raises(CheckpointError, match=r'qcnet\.ckpt: a QCNet checkpoint cannot be loaded as ForecastMAE'):
        ForecastMAE.load_from_checkpoint(checkpoints['qcnet'])
    # checkpoints that name no model (official QCNet releases) are QCNet's
    state = torch.load(checkpoints['qcnet'], weights_only=True)
    del state['hyper_parameters']['model']
    torch.save(state, tmp_path / 'official.ckpt')
    assert isinstance(QCNet.load_from_checkpoint(tmp_path / 'official.ckpt'), QCNet)
    with pytest.raises(CheckpointError, match=r'official\.ckpt: a QCNet checkpoint cannot be loaded as ForecastMAE'):
        ForecastMAE.load_from_checkpoint(tmp_path / 'official.ckpt')
    # a pre-training checkpoint is not a predictor
    with pytest.raises(CheckpointError, match=r"fmae_ssl\.ckpt: a SmartPretrain pre-training checkpoint \(backbone "
                                              r"'forecast_mae'\).*train\.py --pretrained_ckpt"):
        ForecastMAE.load_from_checkpoint(checkpoints['fmae_ssl'])


def test_pretrained_checkpoints_are_refused_by_the_other_model(checkpoints, tmp_path):
    qcnet, fmae = QCNet(**checkpoints['qcnet_hp']), ForecastMAE(**TINY_FMAE)
    with pytest.raises(ValueError, match=r"fmae_ssl\.ckpt: pre-trained with backbone 'forecast_mae', but QCNet "
                                         r"takes 'qcnet' weights"):
        load_pretrained(qcnet, str(checkpoints['fmae_ssl']), copy_refine=True)
    with pytest.raises(ValueError, match=r"qcnet_ssl\.ckpt: pre-trained with backbone 'qcnet', but ForecastMAE "
                                         r"takes 'forecast_mae' weights"):
        load_pretrained(fmae, str(checkpoints['qcnet_ssl']), copy_refine=True)
    # a bare state dict has no hyper-parameters: its encoder keys give it away
    bare = tmp_path / 'bare.ckpt'
    torch.save(torch.load(checkpoints['qcnet_ssl'], weights_only=True)['state_dict'], bare)
    with pytest.raises(ValueError, match=r"bare\.ckpt: its encoder .* shares no weight name with the ForecastMAE "
                                         r"encoder"):
        load_pretrained(fmae, str(bare), copy_refine=True)
    # a fine-tuned checkpoint is not a pre-training one
    with pytest.raises(ValueError, match=r'fmae\.ckpt: this is a ForecastMAE \(supervised / fine-tuned\) checkpoint'):
        load_pretrained(fmae, str(checkpoints['fmae']), copy_refine=True)


def test_pretrained_forecast_mae_weights_transfer(checkpoints, capsys):
    source = torch.load(checkpoints['fmae_ssl'], weights_only=True)['state_dict']
    torch.manual_seed(1)
    model = ForecastMAE(**TINY_FMAE)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, str(checkpoints['fmae_ssl']), copy_refine=True)
    assert 'pre-trained weights (momentum branch) from' in capsys.readouterr().out
    state = model.state_dict()
    encoder = [k for k in state if k.startswith('encoder.')]
    assert encoder and all(torch.equal(state[k], source['momentum_branch.' + k]) for k in encoder)
    assert torch.equal(state['decoder.mode_emb.weight'],
                       source['momentum_branch.decoder.mode_emb.weight'].repeat(6, 1))
    propose = [k for k in state if k.startswith('decoder.propose_blocks.')]
    assert propose and all(torch.equal(state[k], source['momentum_branch.' + k]) for k in propose)
    refine = [k for k in state if k.startswith('decoder.refine_blocks.')]
    assert refine and all(torch.equal(state[k], state[k.replace('refine_blocks', 'propose_blocks')]) for k in refine)
    heads = [k for k in state if k.startswith(('decoder.to_', 'decoder.traj_emb'))]
    assert heads and all(torch.equal(state[k], fresh[k]) for k in heads)
    assert set(report.loaded) | set(report.not_loaded) == set(state)
    assert len(report.copied_to_refine) == len(refine)


# ----------------------------------------------------------------------------------------------------------------
# the scripts: train_ssl.py -> train.py (fine-tuning) -> val.py -> test.py with the second backbone
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    if not (SHARED_AV2 / 'train').is_dir() or not (SHARED_AV2 / 'test').is_dir():
        pytest.skip(f'real AV2 samples not found under {SHARED_AV2}')
    root = tmp_path_factory.mktemp('av2_root')
    for split, source in (('train', 'train'), ('val', 'train'), ('test', 'test')):
        (root / split / 'raw').mkdir(parents=True)
        for scenario in sorted(p for p in (SHARED_AV2 / source).iterdir() if p.is_dir()):
            os.symlink(scenario.resolve(), root / split / 'raw' / scenario.name)
    return root


def model_flags():
    return as_flags(TINY_FMAE)


@pytest.fixture(scope='module')
def pipeline(dataset_root, tmp_path_factory):
    """train_ssl.py --model ForecastMAE (1 step), then train.py --model forecast_mae fine-tuning from it with lr 0."""
    logs = tmp_path_factory.mktemp('logs')
    common = ['--root', str(dataset_root), '--train_batch_size', '2', '--val_batch_size', '2', '--num_workers', '0',
              '--pin_memory', 'false', '--accelerator', 'cpu', '--devices', '1', '--log_dir', str(logs),
              '--log_every_n_steps', '1', *model_flags()]
    load_script('train_ssl').main(common + ['--model', 'ForecastMAE', '--exp_name', 'ssl', '--max_epochs', '1',
                                            '--warmup', '1'])
    pretrained = logs / 'ssl' / 'checkpoints' / 'last.ckpt'
    trainer = load_script('train').main(common + ['--model', 'forecast_mae', '--exp_name', 'ft', '--max_epochs', '1',
                                                  '--test_batch_size', '2', '--num_sanity_val_steps', '0',
                                                  '--lr', '0', '--weight_decay', '0', '--pretrained_ckpt',
                                                  str(pretrained), '--copy_refine', '1'])
    return pretrained, logs / 'ft' / 'checkpoints' / 'last.ckpt', trainer


def test_pretraining_and_fine_tuning_scripts(pipeline, capsys):
    pretrained, finetuned, trainer = pipeline
    ssl = torch.load(pretrained, map_location='cpu', weights_only=True)
    assert ssl['hyper_parameters']['backbone'] == 'forecast_mae'
    assert any(k.startswith('momentum_branch.encoder.scene_blocks.') for k in ssl['state_dict'])
    tuned = torch.load(finetuned, map_location='cpu', weights_only=True)
    assert tuned['hyper_parameters']['model'] == 'ForecastMAE'
    encoder = [k for k in tuned['state_dict'] if k.startswith('encoder.')]
    assert encoder and all(torch.equal(tuned['state_dict'][k], ssl['state_dict']['momentum_branch.' + k])
                           for k in encoder)  # lr 0: still exactly the pre-trained momentum encoder
    assert math.isfinite(float(trainer.callback_metrics['val_minFDE']))
    assert trainer.gradient_clip_val == 5.0  # Forecast-MAE's recipe reaches the Trainer
    assert tuned['hyper_parameters']['warmup_epochs'] == 10


def test_val_and_test_detect_the_model(pipeline, dataset_root, tmp_path, capsys):
    _, finetuned, trainer = pipeline
    table = load_script('val').main(['--root', str(dataset_root), '--ckpt_path', str(finetuned), '--num_workers', '0',
                                     '--accelerator', 'cpu'])
    assert table['minFDE'] == pytest.approx(float(trainer.callback_metrics['val_minFDE']), rel=1e-5)
    assert all(math.isfinite(v) for v in table.values())
    path = load_script('test').main(['--root', str(dataset_root), '--ckpt_path', str(finetuned), '--num_workers', '0',
                                     '--accelerator', 'cpu', '--submission_dir', str(tmp_path)])
    from av2.datasets.motion_forecasting.eval.submission import ChallengeSubmission
    predictions = ChallengeSubmission.from_parquet(path).predictions
    assert set(predictions) == {p.name for p in (SHARED_AV2 / 'test').iterdir() if p.is_dir()}
    for probabilities, tracks in predictions.values():
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert all(track.shape == (6, 60, 2) for track in tracks.values())
    with pytest.raises(SystemExit, match=r'last\.ckpt: a ForecastMAE checkpoint cannot be loaded as QCNet'):
        load_script('val').main(['--root', str(dataset_root), '--ckpt_path', str(finetuned), '--model', 'QCNet',
                                 '--num_workers', '0', '--accelerator', 'cpu'])


def test_fine_tuning_refuses_the_other_backbone(pipeline, dataset_root, tmp_path):
    pretrained, _, _ = pipeline
    args = ['--root', str(dataset_root), '--train_batch_size', '2', '--val_batch_size', '2', '--test_batch_size', '2',
            '--num_workers', '0', '--accelerator', 'cpu', '--log_dir', str(tmp_path), '--dataset', 'argoverse_v2',
            '--num_historical_steps', '50', '--num_future_steps', '60', '--num_recurrent_steps', '3',
            '--pl2pl_radius', '20', '--pl2a_radius', '15', '--a2a_radius', '15', '--pl2m_radius', '20',
            '--a2m_radius', '20', '--hidden_dim', '16', '--num_heads', '2', '--head_dim', '8',
            '--pretrained_ckpt', str(pretrained)]
    # a ValueError naming the file, which train.py may turn into its one-line error exit
    with pytest.raises((ValueError, SystemExit),
                       match=r"last\.ckpt: pre-trained with backbone 'forecast_mae', but QCNet takes 'qcnet' weights"):
        load_script('train').main(args)
    with pytest.raises(SystemExit):
        load_script('train').main(['--model', 'nope', '--root', str(dataset_root)])
