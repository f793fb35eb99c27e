"""Metrics checked against the Argoverse 2 reference evaluation (av2.datasets.motion_forecasting.eval.metrics)."""
import numpy as np
import pytest
import torch

from av2.datasets.motion_forecasting.eval import metrics as av2_metrics
from metrics import MR, Brier, minADE, minAHE, minFDE, minFHE


def random_batch(seed, num_agents=32, num_modes=6, num_steps=60, dim=2):
    """Predictions scattered around the target so that some agents hit (FDE < 2 m) and some miss."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.cumsum(torch.randn(num_agents, num_steps, dim, generator=gen, dtype=torch.float64), dim=1)
    noise_scale = torch.rand(num_agents, 1, 1, 1, generator=gen, dtype=torch.float64) * 4.0
    pred = target.unsqueeze(1) + noise_scale * torch.cumsum(
        torch.randn(num_agents, num_modes, num_steps, dim, generator=gen, dtype=torch.float64), dim=2) / 4.0
    prob = torch.softmax(torch.randn(num_agents, num_modes, generator=gen, dtype=torch.float64) * 2.0, dim=-1)
    return pred, target, prob


def av2_reference(pred, target, prob, valid_mask, max_guesses=6, keep_invalid_final_step=True):
    """Per-agent Argoverse 2 metrics with the av2 functions; invalid steps are dropped before calling them."""
    rows = []
    for i in range(pred.shape[0]):
        valid = valid_mask[i]
        if not (valid.any() if keep_invalid_final_step else valid[-1]):
            continue
        p = prob[i].copy()
        modes = np.argsort(-p, kind='stable')[:max_guesses]
        trajs = pred[i, modes]
        p = p[modes]
        last = np.nonzero(valid)[0][-1]
        fde = av2_metrics.compute_fde(trajs[:, :last + 1], target[i, :last + 1])
        best = int(np.argmin(fde))
        ade = av2_metrics.compute_ade(trajs[:, valid], target[i, valid])
        brier_fde = av2_metrics.compute_brier_fde(trajs[:, :last + 1], target[i, :last + 1], p, normalize=True)
        missed = av2_metrics.compute_is_missed_prediction(trajs[:, :last + 1], target[i, :last + 1], 2.0)
        rows.append(dict(minFDE=fde[best], minADE=ade[best], brier_minFDE=brier_fde[best], MR=float(missed[best]),
                         Brier=brier_fde[best] - fde[best]))
    return {key: np.mean([row[key] for row in rows]) for key in rows[0]}


def compute_ours(pred, target, prob, valid_mask=None, max_guesses=6, **kwargs):
    values = {}
    for name, cls in [('minFDE', minFDE), ('minADE', minADE), ('MR', MR), ('Brier', Brier)]:
        metric = cls(max_guesses=max_guesses)
        metric.update(pred=pred, target=target, prob=prob, valid_mask=valid_mask, **kwargs)
        values[name] = metric.compute().item()
    values['brier_minFDE'] = values['minFDE'] + values['Brier']
    return values


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_av2_on_fully_observed_futures(seed):
    pred, target, prob = random_batch(seed)
    ours = compute_ours(pred, target, prob)
    ref = av2_reference(pred.numpy(), target.numpy(), prob.numpy(), np.ones(target.shape[:2], dtype=bool))
    assert 0.0 < ref['MR'] < 1.0, 'test data must contain both hits and misses'
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key


def test_best_mode_is_min_fde_mode_not_min_ade_mode():
    # Mode 0 is close all the way but ends 1 m off; mode 1 is far in the middle but ends exactly on target.
    target = torch.zeros(1, 60, 2)
    target[0, :, 0] = torch.arange(60, dtype=torch.float32)
    pred = target.unsqueeze(1).repeat(1, 2, 1, 1)
    pred[0, 0, -1, 1] += 1.0
    pred[0, 1, 10:50, 1] += 5.0
    prob = torch.tensor([[0.7, 0.3]])
    ours = compute_ours(pred, target, prob)
    assert ours['minFDE'] == pytest.approx(0.0)
    assert ours['minADE'] == pytest.approx(40 * 5.0 / 60)  # ADE of the min-FDE mode (mode 1)
    assert ours['Brier'] == pytest.approx((1 - 0.3) ** 2)
    by_ade = minADE()
    by_ade.update(pred, target, prob, min_criterion='ADE')
    assert by_ade.compute().item() == pytest.approx(1.0 / 60)


def test_more_modes_than_guesses_keeps_most_probable_and_renormalises():
    pred, target, prob = random_batch(3, num_modes=9)
    ours = compute_ours(pred, target, prob, max_guesses=6)
    ref = av2_reference(pred.numpy(), target.numpy(), prob.numpy(), np.ones(target.shape[:2], dtype=bool))
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    # A dominant mode outside the first six must still be used.
    pred2, target2 = pred.clone(), target.clone()
    pred2[:, 8] = target2
    prob2 = torch.full((pred.size(0), 9), 0.01, dtype=torch.float64)
    prob2[:, 8] = 1.0
    assert compute_ours(pred2, target2, prob2)['minFDE'] == pytest.approx(0.0, abs=1e-12)


def test_unnormalised_probabilities_are_normalised():
    pred, target, prob = random_batch(4)
    ours = compute_ours(pred, target, prob * 7.5)
    ref = av2_reference(pred.numpy(), target.numpy(), prob.numpy(), np.ones(target.shape[:2], dtype=bool))
    assert ours['Brier'] == pytest.approx(ref['Brier'], rel=1e-6)


@pytest.mark.parametrize('keep_invalid_final_step', [True, False])
def test_partially_observed_futures(keep_invalid_final_step):
    pred, target, prob = random_batch(5, num_agents=40)
    gen = torch.Generator().manual_seed(7)
    valid_mask = torch.rand(40, 60, generator=gen) > 0.3
    valid_mask[:4] = False  # never observed: excluded
    valid_mask[4:10, 45:] = False  # track ends early: FDE at step 44 when kept
    ours = compute_ours(pred, target, prob, valid_mask, keep_invalid_final_step=keep_invalid_final_step)
    ref = av2_reference(pred.numpy(), target.numpy(), prob.numpy(), valid_mask.numpy(),
                        keep_invalid_final_step=keep_invalid_final_step)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
    assert np.isfinite(list(ours.values())).all()


def heading_reference(pred, target, valid_mask):
    """minAHE / minFHE of the min-FDE mode (numpy), angles wrapped to [-pi, pi)."""
    ahe, fhe = [], []
    for i in range(pred.shape[0]):
        valid = valid_mask[i]
        if not valid.any():
            continue
        last = np.nonzero(valid)[0][-1]
        best = int(np.argmin(av2_metrics.compute_fde(pred[i, :, :last + 1, :2], target[i, :last + 1, :2])))
        err = np.abs((pred[i, best, :, 2] - target[i, :, 2] + np.pi) % (2 * np.pi) - np.pi)
        ahe.append(err[valid].mean())
        fhe.append(err[last])
    return np.mean(ahe), np.mean(fhe)


def test_heading_errors_are_wrapped():
    pred, target, _ = random_batch(6, dim=2)
    gen = torch.Generator().manual_seed(8)
    target_heading = (torch.rand(target.shape[:2], generator=gen, dtype=torch.float64) * 2 - 1) * np.pi
    pred_heading = target_heading.unsqueeze(1) + torch.randn(pred.shape[:3], generator=gen, dtype=torch.float64) * 3
    pred = torch.cat([pred, pred_heading.unsqueeze(-1)], dim=-1)
    target = torch.cat([target, target_heading.unsqueeze(-1)], dim=-1)
    valid_mask = torch.rand(target.shape[:2], generator=gen) > 0.2
    ahe, fhe = minAHE(), minFHE()
    ahe.update(pred, target, None, valid_mask)
    fhe.update(pred, target, None, valid_mask)
    ref_ahe, ref_fhe = heading_reference(pred.numpy(), target.numpy(), valid_mask.numpy())
    assert ahe.compute().item() == pytest.approx(ref_ahe, rel=1e-6)
    assert fhe.compute().item() == pytest.approx(ref_fhe, rel=1e-6)
    assert 0.0 < ahe.compute().item() <= np.pi


def test_accumulates_over_batches_and_resets():
    pred, target, prob = random_batch(9, num_agents=30)
    whole, parts = minADE(), minADE()
    whole.update(pred, target, prob)
    parts.update(pred[:11], target[:11], prob[:11])
    parts.update(pred[11:], target[11:], prob[11:])
    assert parts.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)
    parts.reset()
    parts.update(pred[:5], target[:5], prob[:5])
    assert parts.count.item() == 5


def test_half_precision_inputs():
    pred, target, prob = random_batch(10)
    full = compute_ours(pred.float(), target.float(), prob.float())
    half = compute_ours(pred.bfloat16(), target.bfloat16(), prob.bfloat16())
    assert half['minFDE'] == pytest.approx(full['minFDE'], rel=2e-2)


def test_bad_shapes_raise_clear_errors():
    pred, target, prob = random_batch(11, num_agents=4)
    with pytest.raises(ValueError, match='minFDE: target must be'):
        minFDE().update(pred, target[:, :50], prob)
    with pytest.raises(ValueError, match='Brier: prob must be'):
        Brier().update(pred, target, prob[:, :3])
    with pytest.raises(ValueError, match='MR: valid_mask must be'):
        MR().update(pred, target, prob, torch.ones(4, 59, dtype=torch.bool))
    with pytest.raises(ValueError, match="min_criterion must be 'FDE' or 'ADE'"):
        minADE().update(pred, target, prob, min_criterion='XDE')


def test_metric_states_stay_out_of_state_dict():
    module = torch.nn.Module()
    module.minFDE = minFDE()
    module.minFDE.update(*random_batch(12, num_agents=3))
    assert module.state_dict() == {}
