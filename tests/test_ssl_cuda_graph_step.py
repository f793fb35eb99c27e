"""SmartPretrain's CUDA-graph step (train_ssl.py --speed fast) against the plain step, on real Argoverse 2 views.

On the CPU the padded fixed-shape step runs eagerly (what a CUDA graph replays): its losses, gradients, momentum
BatchNorm statistics and parameters after one AdamW step equal the plain step's. Two gloo processes through
Lightning's DDP: the padded step gathers every process's keys and averages gradients like eager DDP.
"""
import copy
import os

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn

from acceleration.apply import apply
from acceleration.options import SpeedOptions
from acceleration.view_pair_batch import ViewPairCollate
from layers.grouped_batch_norm import grouped_batch_norm
from predictors.smartpretrain import SmartPretrain

from test_ssl_fast_step import _collate, _model, pairs  # noqa: F401  (pairs: fixture)
from tiny_configs import TINY_QCNET_SSL

# Biases right before a BatchNorm: their gradient is zero in exact arithmetic (the norm removes any shift), so
# AdamW moves them by +-lr in the direction of rounding noise, differently in any two formulations.
BEFORE_NORM = ('branch.proj.0.bias', 'contra_predictor.0.bias')


def worst_relative(a, b, floor=1e-3):
    """Largest per-tensor difference relative to the tensor's scale (``floor``: gradients zero in exact
    arithmetic, e.g. BEFORE_NORM, are compared absolutely)."""
    return max(float((a[n] - b[n]).abs().max()) / max(float(b[n].abs().max()), floor) for n in b)


def test_grouped_batch_norm_equals_batch_norm_per_group():
    torch.manual_seed(0)
    norm = nn.BatchNorm1d(6, momentum=0.3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    reference = copy.deepcopy(norm)
    rows = torch.randn(11, 6, requires_grad=True)
    groups = torch.tensor([1, 0, 0, 1, -1, 0, 1, 1, -1, 0, 1])
    out = grouped_batch_norm(norm, rows, groups, num_groups=2)
    expected = torch.zeros_like(out)
    for group in range(2):  # separate calls, group 0 first
        rows_g = rows[groups == group]
        expected = expected.index_put((torch.nonzero(groups == group).squeeze(1),), reference(rows_g))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out[groups == -1], torch.zeros(2, 6))
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        torch.testing.assert_close(getattr(norm, name), getattr(reference, name), rtol=1e-6, atol=1e-7)
    weights = torch.randn_like(out)
    grad, = torch.autograd.grad((out * weights).sum(), rows)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), rows)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(grad[groups == -1], torch.zeros(2, 6))  # padding receives no gradient
    norm.eval()
    reference.eval()
    torch.testing.assert_close(grouped_batch_norm(norm, rows, groups, 2)[groups >= 0], reference(rows[groups >= 0]))


def _one_step(model, batch, padded):
    optimizer = model.configure_optimizers()
    model.zero_grad(set_to_none=True)
    if padded:
        out = model.fixed_shape_step.train(batch, optimizer)
    else:
        out = model(batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if not padded:
        out['loss'].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    stats = {n: b.clone() for n, b in model.momentum_branch.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return out, grads, stats, params


def test_padded_step_equals_plain_step(pairs):  # noqa: F811
    plain_model = _model()
    padded_model = copy.deepcopy(plain_model)
    apply(padded_model, SpeedOptions(cuda_graphs=True, tf32=False))
    assert padded_model.fixed_shape_step is not None and not padded_model.automatic_optimization
    plain = _one_step(plain_model, _collate(pairs)(pairs), padded=False)
    batch = ViewPairCollate(_collate(pairs))(pairs)
    padded = _one_step(padded_model, batch, padded=True)
    runner = padded_model.fixed_shape_step.training_runner
    assert runner.last_capacities['views.agent'] > runner.last_sizes['views.agent'] == 2 * runner.last_sizes[
        'anchor.agent']  # really padded
    for key in ('loss', 'contra_loss', 'rec_loss', 'contra_acc', 'num_queries', 'num_keys'):
        torch.testing.assert_close(padded[0][key].float(), plain[0][key].detach().float(), rtol=1e-5, atol=1e-6,
                                   msg=key)
    assert plain[1].keys() == padded[1].keys() and len(plain[1]) > 50
    grads = {n: v for n, v in plain[1].items() if n not in BEFORE_NORM}
    assert worst_relative(padded[1], grads) < 1e-4
    for name in BEFORE_NORM:  # zero up to rounding in both
        assert float(padded[1][name].abs().max()) < 1e-5 and float(plain[1][name].abs().max()) < 1e-5
    for name in plain[2]:
        torch.testing.assert_close(padded[2][name], plain[2][name], rtol=1e-5, atol=1e-6, msg=name)
    # AdamW's first step moves every element by about lr * sign(gradient): elements whose gradient is rounding
    # noise may move the other way (at most 2 lr apart); all others agree
    lr = plain_model.hparams.lr_init
    differ = total = 0
    for name, value in plain[3].items():
        diff = (padded[3][name] - value).abs()
        assert float(diff.max()) <= 2 * lr + 1e-6, name
        differ, total = differ + int((diff > 1e-6).sum()), total + diff.numel()
    assert differ < 0.01 * total  # gradients within ~1e-8 (AdamW eps) of zero: a fraction of a percent
    moved = sum(int(not torch.equal(plain[3][n], v)) for n, v in _model().named_parameters())
    assert moved > 50  # the optimiser stepped


def test_compiled_step_traces_one_graph_per_kind_of_layer_call(pairs, monkeypatch):  # noqa: F811
    """The compiled pre-training step traces a graph per kind of layer call, not per layer, branch or batch size:
    attention (self-attention with and without edge embeddings, bipartite with 2-D and 3-D targets) and Fourier
    embedding (one or several continuous inputs, with or without categorical ones), each once with gradients (the
    online branch) and once without (the momentum branch), and no more for a batch of another capacity. Each graph
    is traced again in every new process (also with a filled compile cache), so their number sets how long a
    restart takes. Counted with dynamo's eager backend (the graphs are dynamo's; no code generation)."""
    import functools

    import torch._dynamo
    import acceleration.compiled
    from torch._dynamo.utils import counters
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='eager'))
    monkeypatch.setattr(acceleration.compiled, '_COMPILED', {})
    torch._dynamo.reset()
    counters.clear()
    model = _model()
    apply(model, SpeedOptions(cuda_graphs=True, compile_attention=True, compile_embeddings=True, tf32=False))
    collate = ViewPairCollate(_collate(pairs))
    model.fixed_shape_step.train(collate(pairs[:2]), model.configure_optimizers())
    first = counters['stats']['unique_graphs']
    assert first == 2 * (4 + 3)
    out = model.fixed_shape_step.train(collate(pairs), model.configure_optimizers())
    assert len(model.fixed_shape_step.training_runner.capacity_rungs()) == 2 and torch.isfinite(out['loss'])
    assert counters['stats']['unique_graphs'] == first
    torch._dynamo.reset()


def test_fast_preset_refusals():
    model = SmartPretrain(**TINY_QCNET_SSL)
    with pytest.raises(ValueError, match='--batch_momentum_views 1'):
        apply(model, SpeedOptions(cuda_graphs=True, batch_views=False))
    with pytest.raises(ValueError, match='separate_dataset_negatives'):
        apply(SmartPretrain(**TINY_QCNET_SSL, separate_dataset_negatives=1), SpeedOptions(cuda_graphs=True))
    # the forecast_mae backbone takes the CUDA-graph step (tests/test_forecast_mae_cuda_graph_step.py), but has no
    # edge lists to build in the loader workers
    from acceleration.options import PRESETS
    from test_second_backbone import TINY_SSL_EITHER_BACKBONE
    forecast_mae = SmartPretrain(backbone='forecast_mae', **TINY_SSL_EITHER_BACKBONE)
    assert apply(forecast_mae, SpeedOptions(cuda_graphs=True)).fixed_shape_step is not None
    with pytest.raises(ValueError, match='^--build_graph_in_workers: SmartPretrain has no separate edge-list'):
        apply(forecast_mae, PRESETS['fast'])


# ----------------------------------------------------------------------------------------------------------------
# two processes
# ----------------------------------------------------------------------------------------------------------------
class SaveEachRank(pl.Callback):
    """Each rank's first-step gradients, first-step logged losses and final parameters, saved to ``out_dir``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def _save(self, trainer, kind, value):
        torch.save(value, os.path.join(self.out_dir, f'{kind}_rank{trainer.global_rank}.pt'))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step == 0:
            self._save(trainer, 'grads', {n: p.grad.detach().clone() for n, p in module.named_parameters()
                                          if p.grad is not None})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self._save(trainer, 'logged', {k: float(v) for k, v in trainer.callback_metrics.items()
                                           if k.endswith('_step')})

    def on_train_end(self, trainer, module):
        self._save(trainer, 'params', {n: p.detach().clone() for n, p in module.named_parameters()})


def fit_two_processes(items, cuda_graphs, out_dir, **model_overrides):
    from pytorch_lightning.strategies import DDPStrategy
    from torch.utils.data import DataLoader
    from torch_geometric.loader.dataloader import Collater
    os.makedirs(out_dir)
    pl.seed_everything(0)
    model = SmartPretrain(**dict(TINY_QCNET_SSL, dropout=0.0, warmup=1, **model_overrides))
    apply(model, SpeedOptions(cuda_graphs=cuda_graphs, tf32=False))
    # the collate among the constructor arguments: Lightning re-creates the loader with its distributed sampler
    loader = DataLoader(items, batch_size=1, shuffle=False, collate_fn=ViewPairCollate(Collater(items)))
    trainer = pl.Trainer(accelerator='cpu', devices=2, max_epochs=1, logger=False, enable_checkpointing=False,
                         strategy=DDPStrategy(start_method='spawn', process_group_backend='gloo',
                                              find_unused_parameters=False, gradient_as_bucket_view=True),
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=[SaveEachRank(out_dir)], default_root_dir=out_dir)
    trainer.fit(model, loader)
    return [{kind: torch.load(os.path.join(out_dir, f'{kind}_rank{r}.pt')) for kind in ('grads', 'params', 'logged')}
            for r in range(2)]


@pytest.mark.slow
def test_padded_step_under_ddp_gathers_keys_and_averages_gradients_like_eager_ddp(tmp_path, pairs):  # noqa: F811
    # four view pairs, one per step and rank: rank 0 sees 0, 2 and rank 1 sees 1, 3 (different scenes)
    items = [pairs[0], pairs[1], pairs[2], pairs[0]]
    graphs = fit_two_processes(items, True, str(tmp_path / 'graphs'))
    eager = fit_two_processes(items, False, str(tmp_path / 'eager'))
    # negatives from both processes: the key count covers both ranks' views, and the losses agree
    for rank in range(2):
        logged_graphs, logged_eager = graphs[rank]['logged'], eager[rank]['logged']
        for name in ('num_neg_sample_step', 'num_query_step', 'loss_step', 'contra_acc_step'):
            assert logged_graphs[name] == pytest.approx(logged_eager[name], rel=1e-5), name
    keys_rank0 = int(pairs[0]['anchor']['agent']['view_mask'].sum() + pairs[0]['target']['agent']['view_mask'].sum())
    keys_rank1 = int(pairs[1]['anchor']['agent']['view_mask'].sum() + pairs[1]['target']['agent']['view_mask'].sum())
    assert graphs[0]['logged']['num_neg_sample_step'] == keys_rank0 + keys_rank1
    # gradients averaged over the ranks, equal to eager DDP's
    assert graphs[0]['grads'].keys() == eager[0]['grads'].keys() and len(graphs[0]['grads']) > 50
    assert worst_relative(graphs[0]['grads'], graphs[1]['grads']) == 0.0
    grads = {n: v for n, v in eager[0]['grads'].items() if n not in BEFORE_NORM}
    assert worst_relative(graphs[0]['grads'], grads) < 1e-4
    for name, value in graphs[0]['params'].items():
        assert torch.equal(value, graphs[1]['params'][name]), name
    lr = SmartPretrain(**TINY_QCNET_SSL).hparams.lr  # upper bound of the scheduled learning rates
    for name, value in eager[0]['params'].items():  # two AdamW steps: each within 2 lr (see the test above)
        assert float((graphs[0]['params'][name] - value).abs().max()) <= 4 * lr + 1e-6, name



def test_train_ssl_py_speed_fast_needs_a_cuda_device(tmp_path):
    """--speed fast (the CUDA-graph step) on a machine without CUDA: one flag error, no silent plain step."""
    import train_ssl
    from sample_data import AV2_TRAIN_DIR
    with pytest.raises(SystemExit, match='--cuda_graphs: needs a CUDA GPU'):
        train_ssl.main([str(a) for a in ['--root', tmp_path, '--train_raw_dir', AV2_TRAIN_DIR, '--accelerator', 'cpu',
                                         '--log_dir', tmp_path / 'logs', '--speed', 'fast', '--num_workers', 1]])
    assert not (tmp_path / 'processed').exists()
