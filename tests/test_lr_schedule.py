"""Supervised optimisation settings: warm-up + cosine schedule and gradient clipping reach the optimiser / Trainer.

ForecastMAE defaults to its official recipe (lr 1e-3, 10 warm-up epochs, 60 epochs, gradient norm clipped at 5);
QCNet keeps the official QCNet one (lr 5e-4, no warm-up, cosine over T_max = 64, no clipping).
"""
import math
from argparse import ArgumentParser

import pytest
import torch

from predictors import QCNet
from predictors.forecast_mae import ForecastMAE
from predictors.trajectory_predictor import warmup_cosine_factor

from tiny_configs import TINY_FMAE, TINY_QCNET_SIZES

QCNET_REQUIRED = ['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
                  '--num_recurrent_steps', '3', '--pl2pl_radius', '150', '--pl2a_radius', '50', '--a2a_radius', '50',
                  '--pl2m_radius', '150', '--a2m_radius', '150']


def default_args(model_class, argv=()):
    return vars(model_class.add_model_specific_args(ArgumentParser()).parse_args(list(argv)))


def learning_rates(model, epochs):
    """Learning rate of the first parameter group at the start of each epoch (scheduler stepped per epoch)."""
    [optimizer], [scheduler] = model.configure_optimizers()
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return rates


def test_warmup_cosine_factor():
    assert [warmup_cosine_factor(e, 4, 12) for e in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine_factor(4, 4, 12) == 1.0
    assert warmup_cosine_factor(8, 4, 12) == pytest.approx(0.5)
    assert warmup_cosine_factor(12, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_factor(20, 4, 12) == pytest.approx(0.0, abs=1e-12)


def test_forecast_mae_uses_its_official_recipe():
    args = {**default_args(ForecastMAE), **TINY_FMAE}
    assert (args['lr'], args['warmup_epochs'], args['T_max'], args['gradient_clip_val']) == (1e-3, 10, 60, 5.0)
    rates = learning_rates(ForecastMAE(**args), 60)
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # decays after the warm-up
    assert rates[35] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 25 / 50)))


def test_qcnet_keeps_the_official_schedule():
    args = default_args(QCNet, QCNET_REQUIRED)
    args.update(TINY_QCNET_SIZES)
    assert (args['warmup_epochs'], args['gradient_clip_val']) == (0, 0.0)
    model = QCNet(**args)
    [optimizer], [scheduler] = model.configure_optimizers()
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert learning_rates(model, 3) == pytest.approx(
        [5e-4 * 0.5 * (1 + math.cos(math.pi * e / 64)) for e in range(3)])


def test_gradient_clipping_with_mixed_precision_does_not_take_the_fused_optimiser():
    """Lightning's mixed-precision plugin refuses to clip gradients for an optimiser that unscales them itself (fused
    AdamW says it does): ForecastMAE's default clipping at 5 with bf16-mixed on a GPU stopped every run at its first
    step. The fused kernel is therefore only taken without clipping."""
    from pytorch_lightning.plugins.precision import MixedPrecision
    from predictors.trajectory_predictor import use_fused_adamw

    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.full((3,), 10.0)
    plugin = MixedPrecision('bf16-mixed', 'cpu')
    with pytest.raises(RuntimeError, match='does not allow for gradient clipping'):
        plugin.clip_gradients(torch.optim.AdamW([weight], fused=True), clip_val=5.0)
    plugin.clip_gradients(torch.optim.AdamW([weight], fused=None), clip_val=5.0)  # the optimiser we take instead
    assert torch.linalg.vector_norm(weight.grad).item() == pytest.approx(5.0, rel=1e-4)

    assert use_fused_adamw(on_cuda=True, gradient_clip_val=0.0)
    assert not use_fused_adamw(on_cuda=True, gradient_clip_val=5.0)
    assert not use_fused_adamw(on_cuda=False, gradient_clip_val=0.0)
    fmae = ForecastMAE(**{**default_args(ForecastMAE), **TINY_FMAE})
    assert fmae.hparams.gradient_clip_val == 5.0
    optimizer = fmae.configure_optimizers()[0][0]
    assert not optimizer.defaults.get('fused')
