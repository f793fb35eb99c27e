"""SmartPretrain's faster step pieces against the plain step, on real Argoverse 2 views (CPU).

- both views in one momentum pass (acceleration.view_pair_batch) = two passes: losses, gradients, BatchNorm statistics;
- edge lists built in the loader (both views; the two-view batch's joined from the two) = built in the step;
- the fused EMA update = the official per-parameter update.
"""
import copy

import pytest
import torch
from torch_geometric.loader import DataLoader

from predictors.smartpretrain import SmartPretrain
from transforms.ssl_views import ANCHOR, TARGET, SSLViews
from acceleration.edge_lists_in_workers import EDGE_LISTS_ATTRIBUTE, attached_edge_lists
from acceleration.padded_qcnet_batch import node_sizes
from acceleration.view_pair_batch import ViewPairCollate, concat_edge_lists, view_edge_list_builder
from transforms.ssl_views import VIEW_ORDER, VIEWS

from test_ssl_model import real_scenes
from tiny_configs import TINY_QCNET_SSL


@pytest.fixture(scope='module')
def pairs():
    views = SSLViews(50, 60, seed=4)
    scenes = real_scenes()
    # one fixed pair (anchor at 3, target at 57) and one sampled; three items so batches hold unequal scenes
    return [views.make_views(scenes[0], 3, 57), views(scenes[1]), views.make_views(scenes[1], 10, 60)]


def _collate(pairs):
    return DataLoader(pairs, batch_size=len(pairs)).collate_fn


def _model(**overrides):
    torch.manual_seed(0)
    model = SmartPretrain(**{**TINY_QCNET_SSL, 'dropout': 0.0, **overrides})
    # momentum branch != online branch, as after some training steps
    with torch.no_grad():
        for p in model.momentum_branch.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.train()


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out['loss'].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    stats = {name: b.clone() for name, b in model.momentum_branch.named_buffers()}
    return out, grads, stats


def _assert_same_step(plain, fast):
    (out_p, grads_p, stats_p), (out_f, grads_f, stats_f) = plain, fast
    for key in ('loss', 'contra_loss', 'rec_loss', 'contra_acc', 'num_queries', 'num_keys'):
        torch.testing.assert_close(out_f[key], out_p[key], rtol=1e-5, atol=1e-6, msg=key)
    assert out_p['num_queries'] > 0 and out_p['contra_loss'] > 0
    assert grads_p.keys() == grads_f.keys() and len(grads_p) > 50
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in stats_p:  # running statistics of the momentum projector: the two views, target first
        torch.testing.assert_close(stats_f[name], stats_p[name], rtol=1e-5, atol=1e-7, msg=name)


def test_one_momentum_pass_over_both_views_equals_two(pairs):
    model = _model()
    fast_model = copy.deepcopy(model)
    plain = _step(model, _collate(pairs)(pairs))
    batch = ViewPairCollate(_collate(pairs))(pairs)
    assert set(batch) == {ANCHOR, VIEWS} and VIEW_ORDER == (TARGET, ANCHOR)
    assert batch[VIEWS].num_graphs == 2 * len(pairs)
    fast = _step(fast_model, batch)
    _assert_same_step(plain, fast)
    # a wrong split (BatchNorm over both views at once) would not match: the test can tell
    with torch.no_grad():
        keys_two = fast_model.momentum_branch(batch[VIEWS], num_views=2)
        keys_one = fast_model.momentum_branch(batch[VIEWS], num_views=1)
    assert not torch.allclose(keys_two, keys_one, atol=1e-4)


def test_loader_built_edge_lists_equal_built_in_step(pairs):
    model = _model()
    plain = _step(copy.deepcopy(model), _collate(pairs)(pairs))
    builder = view_edge_list_builder(model, num_workers=1)
    for batch_views in (False, True):
        batch = ViewPairCollate(_collate(pairs), builder, batch_views=batch_views)(pairs)
        assert all(attached_edge_lists(view) is not None for view in batch.values())
        _assert_same_step(plain, _step(copy.deepcopy(model), batch))


def test_joined_edge_lists_equal_the_joined_batch_built_directly(pairs):
    builder = view_edge_list_builder(_model(), num_workers=1)
    collate = _collate(pairs)
    parts = {name: collate([pair[name] for pair in pairs]) for name in (ANCHOR, TARGET)}
    graphs = {name: builder.build_graph(batch) for name, batch in parts.items()}
    first, second = VIEW_ORDER
    joined = concat_edge_lists(graphs[first], graphs[second], node_sizes(parts[first]), node_sizes(parts[second]),
                               steps=50, modes=1)
    direct = builder.build_graph(collate([pair[first] for pair in pairs] + [pair[second] for pair in pairs]))
    assert joined.keys() == direct.keys()
    for name, edges in direct.items():
        if name in ('query_agent', 'query_slot'):
            assert torch.equal(joined[name], edges), name
        elif edges.dim() == 2:  # same edge set (order may differ)
            assert edges.size(1) > 0, name
            assert sorted(map(tuple, joined[name].t().tolist())) == sorted(map(tuple, edges.t().tolist())), name
    pl2pl = lambda g: sorted(zip(map(tuple, g['pl2pl'].t().tolist()), g['type_pl2pl'].tolist()))  # noqa: E731
    assert pl2pl(joined) == pl2pl(direct)


def test_loader_workers_build_both_views_edge_lists(pairs):
    builder = view_edge_list_builder(_model(), num_workers=1)
    loader = DataLoader(pairs, batch_size=2, num_workers=1)
    loader.collate_fn = ViewPairCollate(loader.collate_fn, builder)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        graph = getattr(batch[VIEWS], EDGE_LISTS_ATTRIBUTE)
        assert graph['a2a'].size(1) > 0 and graph['query_slot'].numel() == batch[VIEWS]['agent']['num_nodes']


def test_builder_is_needed_for_a_backbone_with_edge_lists():
    with pytest.raises(ValueError, match='build_graph'):
        ViewPairCollate(lambda items: items, torch.nn.Linear(1, 1))


def test_fused_ema_update_equals_per_parameter_update():
    model = _model()
    momentum = 0.9921
    expected = [p_m * momentum + p_b * (1.0 - momentum)  # the official per-parameter rule
                for p_b, p_m in zip(model.branch.parameters(), model.momentum_branch.parameters())]
    before = [p.clone() for p in model.momentum_branch.parameters()]
    model.update_momentum_branch(momentum)
    moved = 0
    for new, old, want in zip(model.momentum_branch.parameters(), before, expected):
        torch.testing.assert_close(new, want, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(new, old))
    assert moved > 50


def test_train_ssl_py_builds_both_views_edge_lists_in_workers(tmp_path):
    from sample_data import AV2_TRAIN_DIR
    from tiny_configs import as_flags
    import train_ssl
    common = ['--root', tmp_path, '--train_raw_dir', AV2_TRAIN_DIR, '--val_raw_dir', AV2_TRAIN_DIR,
              '--train_processed_dir', tmp_path / 'processed', '--val_processed_dir', tmp_path / 'processed',
              '--train_batch_size', 2, '--val_batch_size', 2, '--log_dir', tmp_path / 'logs', '--warmup', 1,
              '--accelerator', 'cpu', '--max_epochs', 1, '--build_graph_in_workers'] + as_flags(TINY_QCNET_SSL)
    with pytest.raises(SystemExit, match='--build_graph_in_workers: needs --num_workers >= 1'):
        train_ssl.main([str(a) for a in common + ['--num_workers', 0, '--exp_name', 'refused']])
    trainer = train_ssl.main([str(a) for a in common + ['--num_workers', 1, '--exp_name', 'workers',
                                                         '--persistent_workers', 'false']])
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics['val_loss'])


def test_one_weight_decay_rule_for_pre_training_and_fine_tuning():
    from predictors.qcnet import QCNet
    from utils.parameter_groups import weight_decay_groups
    from tiny_configs import TINY_QCNET
    model = _model()
    decay, no_decay = weight_decay_groups(model)
    assert 'branch.proj.0.weight' in decay and 'branch.proj.1.weight' in no_decay and 'temp_emb' in no_decay
    assert 'contra_predictor.1.weight' in no_decay and 'rec_predictor.1.weight' in no_decay
    optimizer = model.configure_optimizers()
    grouped = [{id(p) for p in group['params']} for group in optimizer.param_groups]
    params = dict(model.named_parameters())
    assert grouped == [{id(params[n]) for n in names if params[n].requires_grad} for names in (decay, no_decay)]
    qcnet = QCNet(**TINY_QCNET)
    assert qcnet.parameter_groups() == weight_decay_groups(qcnet)
    # SyncBatchNorm (DDP on GPUs converts the projector's BatchNorm before the optimiser is made) does not decay
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert weight_decay_groups(synced) == (decay, no_decay)
    with pytest.raises(RuntimeError, match='unlisted module types'):
        weight_decay_groups(torch.nn.Sequential(torch.nn.PReLU()))
