"""Pre-training under a Lightning Trainer: per-step schedules, exact resumption, train_ssl.py end to end."""
import random
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import Dataset
from torch_geometric.loader import DataLoader

from predictors.smartpretrain import SmartPretrain, ViewEpochCallback
from transforms.ssl_views import SSLViews
from utils.pretrained import load_pretrained_into_qcnet
from utils.rng import rng_states, set_rng_states

from tiny_configs import TINY_QCNET_SSL, as_flags
from sample_data import AV2_TRAIN_DIR

ROOT = Path(__file__).resolve().parents[1]
RAW = AV2_TRAIN_DIR


class _Scenes(Dataset):
    def __init__(self, scenes, transform):
        self.scenes, self.transform = scenes, transform

    def __len__(self):
        return len(self.scenes)

    def __getitem__(self, idx):
        return self.transform(self.scenes[idx])


class _ScenesModule(pl.LightningDataModule):
    def __init__(self, scenes, views, view_callback):
        super().__init__()
        self.scenes, self.views, self.view_callback = scenes, views, view_callback

    def train_dataloader(self):
        self.view_callback.sync(self.trainer)
        return DataLoader(_Scenes(self.scenes, self.views), batch_size=1, shuffle=False)

    def val_dataloader(self):
        return DataLoader(_Scenes(self.scenes, SSLViews(50, 60, seed=99)), batch_size=2)


class _RecordSchedule(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.rows.append((trainer.global_step - 1, groups[0]['lr'], groups[0]['weight_decay'], groups[1]['weight_decay']))


class _StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.fixture(scope='module')
def scenes():
    if not RAW.is_dir():
        pytest.skip(f'real AV2 samples are absent ({RAW})')
    from test_ssl_model import SCENARIOS, crop_scene  # same module object pytest collected
    from datasets import load_argoverse_v2_scenario, process_scenario
    return [crop_scene(process_scenario(load_argoverse_v2_scenario(RAW / s)), 25.0) for s in SCENARIOS]


def fit(scenes, tmp_path, max_epochs, extra_callbacks=(), ckpt_path=None):
    pl.seed_everything(7)
    model = SmartPretrain(**TINY_QCNET_SSL, dropout=0.0, warmup=1, seed=7)
    views = SSLViews(50, 60, seed=7)
    view_callback = ViewEpochCallback(views)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator='cpu', devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoint, view_callback, *extra_callbacks])
    trainer.fit(model, _ScenesModule(scenes, views, view_callback), ckpt_path=ckpt_path)
    return trainer, model


def test_resumed_run_equals_uninterrupted_run(scenes, tmp_path):
    recorder = _RecordSchedule()
    trainer, full = fit(scenes, tmp_path / 'full', max_epochs=2, extra_callbacks=[recorder])
    assert trainer.global_step == 4
    schedule = full.schedule
    assert schedule.total_steps == 4 and schedule.warmup_steps == 2
    for step, lr, decay, no_decay in recorder.rows:  # applied before every optimizer step
        assert lr == pytest.approx(schedule.lr_at(step)) and decay == pytest.approx(schedule.weight_decay_at(step))
        assert no_decay == 0.0
    assert [row[0] for row in recorder.rows] == [0, 1, 2, 3]

    fit(scenes, tmp_path / 'part', max_epochs=2, extra_callbacks=[_StopAfterFirstEpoch()])
    last = tmp_path / 'part' / 'last.ckpt'
    checkpoint = torch.load(last, map_location='cpu', weights_only=True)  # plain tensors and containers only
    assert checkpoint['ssl_schedule'] == schedule.state_dict() and 'ssl_rng_states' in checkpoint
    trainer, resumed = fit(scenes, tmp_path / 'resumed', max_epochs=2, ckpt_path=str(last))
    assert trainer.global_step == 4 and resumed.schedule == schedule
    full_state, resumed_state = full.state_dict(), resumed.state_dict()
    for key in full_state:  # online and momentum branch, heads, BatchNorm statistics
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=1e-5, atol=1e-6, msg=key)


def test_rng_states_round_trip():
    states = rng_states()
    first = (torch.rand(3), np.random.rand(2), random.random())
    set_rng_states(states)
    second = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def run_script(args):
    import train_ssl
    return train_ssl.main([str(a) for a in args])


def test_train_ssl_end_to_end_and_resume(tmp_path, capsys):
    if not RAW.is_dir():
        pytest.skip(f'real AV2 samples are absent ({RAW})')
    common = ['--root', tmp_path, '--train_raw_dir', RAW, '--val_raw_dir', RAW,
              '--train_processed_dir', tmp_path / 'processed', '--val_processed_dir', tmp_path / 'processed',
              '--train_batch_size', 2, '--val_batch_size', 2, '--num_workers', 0, '--log_dir', tmp_path / 'logs',
              '--exp_name', 'tiny', '--warmup', 1, '--accelerator', 'cpu', '--log_every_n_steps', 1]
    common += as_flags(TINY_QCNET_SSL)
    trainer = run_script(common + ['--max_epochs', 1])
    out = capsys.readouterr().out
    run_dir = tmp_path / 'logs' / 'tiny'
    assert 'Pre-training finished' in out and str(run_dir / 'checkpoints' / 'last.ckpt') in out
    assert trainer.global_step == 1
    assert (run_dir / 'csv' / 'version_0' / 'metrics.csv').is_file() and (run_dir / 'tensorboard').is_dir()
    header = (run_dir / 'csv' / 'version_0' / 'metrics.csv').read_text().splitlines()[0].split(',')
    for column in ('lr', 'decay', 'momentum_m', 'loss_step', 'component/contra_loss_step', 'contra_acc_step',
                   'val_loss', 'val_contra_acc'):
        assert column in header, column

    # a fresh run refuses to write into an existing run; --resume continues it
    with pytest.raises(SystemExit, match='pass --resume'):
        run_script(common + ['--max_epochs', 2])
    trainer = run_script(common + ['--max_epochs', 2, '--resume'])
    assert trainer.global_step == 2 and trainer.current_epoch == 2

    # the checkpoint transfers into QCNet for fine-tuning
    from predictors.qcnet import QCNet
    hp = dict(SmartPretrain(**TINY_QCNET_SSL).hparams, num_modes=6)
    report = load_pretrained_into_qcnet(QCNet(**hp), str(run_dir / 'checkpoints' / 'last.ckpt'), True,
                                        verbose=False)
    assert any(k.startswith('encoder.') for k in report.loaded)


def test_train_ssl_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_script(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ('--root', '--resume_path', '--num_nodes', '--train_batch_size', '--val_batch_size',
                 '--test_batch_size', '--exp_name', '--max_epochs', '--T_max', '--lr', '--lr_init', '--lr_last',
                 '--weight_decay', '--weight_decay_init', '--warmup', '--contra_t', '--contra_momentum',
                 '--load_av1', '--load_waymo', '--num_workers', '--precision', '--accelerator', '--devices',
                 '--lambda_rec', '--lambda_contra', '--seed', '--max_steps', '--limit_train_batches', '--log_dir', '--resume',
                 '--num_recurrent_steps', '--pl2pl_radius', '--backbone'):
        assert flag in text, flag
    for flag in ('--load_waymo', '--load_av1'):  # a mix needs the other dataset's data
        with pytest.raises(SystemExit, match=f'{flag} 1 needs --'):
            run_script(['--root', '/nonexistent', flag, 1])
