"""Pre-training schedules (learning rate, weight decay, EMA momentum), the EMA update and the optimizer groups."""
import math

import pytest
import torch
import torch.nn as nn

from predictors.smartpretrain import SmartPretrain
from utils.schedules import SSLSchedule, cosine_momentum, linear_ramp, warmup_cosine

from tiny_configs import TINY_QCNET_SIZES

RECIPE = dict(lr_init=1e-4, lr=1.5e-3, lr_last=1e-6, weight_decay_init=1e-2, weight_decay=1e-1, momentum=0.996)


def official_values(epoch: float, max_epochs: int, warmup: int):
    """The official per-step formulas on a fractional epoch (written independently of utils.schedules)."""
    if epoch < warmup:
        lr = (RECIPE['lr'] - RECIPE['lr_init']) * epoch / warmup + RECIPE['lr_init']
    else:
        lr = RECIPE['lr_last'] + (RECIPE['lr'] - RECIPE['lr_last']) * 0.5 * (
            1.0 + math.cos(math.pi * (epoch - warmup) / (max_epochs - warmup)))
    decay = (RECIPE['weight_decay'] - RECIPE['weight_decay_init']) * epoch / max_epochs + RECIPE['weight_decay_init']
    momentum = 1.0 - 0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs)) * (1.0 - RECIPE['momentum'])
    return lr, decay, momentum


def test_schedule_follows_the_official_curves_per_step():
    steps_per_epoch, max_epochs, warmup = 7, 32, 15
    schedule = SSLSchedule.from_epochs(steps_per_epoch, max_epochs, warmup, **RECIPE)
    assert schedule.total_steps == 7 * 32 and schedule.warmup_steps == 7 * 15
    for step in (0, 1, 50, 104, 105, 106, 150, 223):
        expected = official_values(step / steps_per_epoch, max_epochs, warmup)
        for got, want in zip(schedule.at(step), expected):
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    lr0, wd0, m0 = schedule.at(0)
    assert (lr0, wd0, m0) == pytest.approx((1e-4, 1e-2, 0.996))
    assert schedule.lr_at(105) == pytest.approx(1.5e-3)
    assert schedule.at(schedule.total_steps) == pytest.approx((1e-6, 1e-1, 1.0))
    # monotone where the method says so
    lrs = [schedule.lr_at(s) for s in range(schedule.total_steps + 1)]
    assert all(a <= b for a, b in zip(lrs[:105], lrs[1:106])) and all(a >= b for a, b in zip(lrs[105:], lrs[106:]))
    momenta = [schedule.momentum_at(s) for s in range(schedule.total_steps + 1)]
    assert all(a <= b for a, b in zip(momenta, momenta[1:]))


def test_schedule_edge_cases_and_state_round_trip():
    assert warmup_cosine(0, 10, 0, 0.0, 1.0, 0.0) == pytest.approx(1.0)   # no warm-up: cosine starts at the peak
    assert warmup_cosine(10, 10, 10, 0.0, 1.0, 0.5) == pytest.approx(1.0)  # warm-up over the whole run
    assert linear_ramp(20, 10, 1.0, 2.0) == 2.0 and cosine_momentum(-3, 10, 0.9) == pytest.approx(0.9)
    short = SSLSchedule.from_epochs(steps_per_epoch=4, max_epochs=32, warmup_epochs=15, total_steps=10, **RECIPE)
    assert short.total_steps == 10 and short.warmup_steps == 10  # --max_steps shorter than the warm-up
    restored = SSLSchedule.from_state_dict(short.state_dict())
    assert restored == short and restored.at(7) == short.at(7)
    with pytest.raises(ValueError, match='total_steps'):
        SSLSchedule(total_steps=0, warmup_steps=0, **RECIPE)
    with pytest.raises(KeyError, match='missing'):
        SSLSchedule.from_state_dict({'total_steps': 3})


def test_momentum_update_is_an_ema_of_parameters_only():
    torch.manual_seed(0)
    model = SmartPretrain(**TINY_QCNET_SIZES)
    online = dict(model.branch.named_parameters())
    momentum = dict(model.momentum_branch.named_parameters())
    assert online.keys() == momentum.keys()
    assert all(torch.equal(online[k], momentum[k]) for k in online)       # starts as a copy
    assert not any(p.requires_grad for p in momentum.values())
    # each branch's backbone runs on that branch's own modules (the momentum copy is not wired to the online one)
    assert model.momentum_branch.backbone.encoder is model.momentum_branch.encoder
    assert model.momentum_branch.encoder is not model.branch.encoder
    with torch.no_grad():
        for p in online.values():
            p.add_(torch.randn_like(p))
        model.branch.proj[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in momentum.items()}
    model.update_momentum_branch(0.9)
    for k in online:
        torch.testing.assert_close(momentum[k], 0.9 * before[k] + 0.1 * online[k])
    assert torch.equal(model.momentum_branch.proj[1].running_mean, torch.zeros(4 * 16))  # buffers untouched
    model.update_momentum_branch(1.0)
    for k in online:
        torch.testing.assert_close(momentum[k], 0.9 * before[k] + 0.1 * online[k])


def test_weight_decay_only_on_decayed_weights():
    model = SmartPretrain(**TINY_QCNET_SIZES)
    optimizer = model.configure_optimizers()
    decayed, not_decayed = optimizer.param_groups
    assert decayed['decayed'] and not not_decayed['decayed'] and not_decayed['weight_decay'] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed['params']}
    other_names = {names[id(p)] for p in not_decayed['params']}
    assert not any(n.startswith('momentum_branch.') for n in decayed_names | other_names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed_names | other_names == trainable and not decayed_names & other_names
    modules = dict(model.named_modules())
    for name in decayed_names:
        module_name, param_name = name.rsplit('.', 1)
        assert param_name == 'weight' and isinstance(modules[module_name], nn.Linear), name
    assert 'temp_emb' in other_names and 'branch.proj.0.bias' in other_names
    assert 'branch.proj.1.weight' in other_names                      # BatchNorm
    assert 'rec_predictor.1.weight' in other_names                    # LayerNorm
    assert 'branch.decoder.mode_emb.weight' in other_names            # Embedding
    assert 'contra_predictor.0.weight' in decayed_names
