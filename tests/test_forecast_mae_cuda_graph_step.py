"""The CUDA-graph step (acceleration.cuda_graph_step) with ForecastMAE's padding
(acceleration.padded_forecast_mae_batch) on real Argoverse 2 scenes: the padded forward, losses and gradients equal
the unpadded ones, for scenes of very different sizes and a smaller last batch; the --cuda_graphs training path of
the Lightning module (on CPU the padded step runs without capture); SmartPretrain pre-training with the forecast_mae
backbone (acceleration.padded_ssl_batch), in one process and in two; --speed fast and the benchmark."""

import pytest
import torch
from torch_geometric.data import Batch

from acceleration.apply import apply
from acceleration.cuda_graph_step import CudaGraphStep
from acceleration.options import SpeedOptions
from acceleration.padded_forecast_mae_batch import (SCENE_AGENTS, SCENE_TOKENS, ForecastMAEPadding,
                                                    PaddedForecastMAEBatch, layout_sizes)
from modules.forecast_mae_layout import scene_layout
from predictors import ForecastMAE
from transforms.target_builder import TargetBuilder
from utils.scene_crop import crop_scene

from padded_step_checks import assert_close, check_padded_training_step, fit_two_epochs
from sample_data import AV2_DIR
from test_ssl_fast_step import pairs  # noqa: F401  (fixture)
from tiny_configs import TINY_FMAE

TRAIN_DIR = AV2_DIR / 'train'
pytestmark = pytest.mark.skipif(not TRAIN_DIR.is_dir(), reason=f'real Argoverse 2 samples not found at {TRAIN_DIR}')


@pytest.fixture(scope='module')
def scenes():
    """The two real training scenes, and a 12 m crop of the second (a few agents and polygons): very different
    sizes in one batch."""
    from datasets import load_argoverse_v2_scenario, process_scenario
    full = [process_scenario(load_argoverse_v2_scenario(p)) for p in sorted(TRAIN_DIR.iterdir()) if p.is_dir()]
    targets = TargetBuilder(50, 60)
    return [targets(s) for s in full] + [targets(crop_scene(full[1], radius=12.0))]


@pytest.fixture(scope='module')
def batch(scenes):
    """Full scene, small crop, full scene."""
    return Batch.from_data_list([scenes[0], scenes[2], scenes[1]])


def tiny_model(**overrides):
    torch.manual_seed(0)
    return ForecastMAE(**dict(TINY_FMAE, **overrides))


def roomy_capacities(batch, extra=37):
    """Capacities with a few dozen padded rows of every kind (odd numbers: no accidental alignment)."""
    return {name: count + extra for name, count in layout_sizes(batch, scene_layout(batch)).items()}


def test_scenes_differ_in_size(batch):
    agents = batch['agent']['ptr'].diff().tolist()
    polygons = batch['map_polygon']['ptr'].diff().tolist()
    assert min(agents) * 4 < max(agents) and min(polygons) * 4 < max(polygons), (agents, polygons)


def test_padded_forward_equals_unpadded(batch):
    model = tiny_model().eval()
    layout = scene_layout(batch)
    sizes = layout_sizes(batch, layout)
    static = PaddedForecastMAEBatch(batch, layout.num_scenes, roomy_capacities(batch))
    static.fill(batch, layout, sizes)
    with torch.no_grad():
        expected = model(batch)
        padded = model(static.data, static.layout)
    num_agents = sizes['agent']
    assert padded['pi'].size(0) == static.capacities['agent'] > num_agents
    for name, value in expected.items():
        assert_close(padded[name][:num_agents], value, name)
        assert torch.isfinite(padded[name]).all(), f'{name}: padded rows are not finite'
    # the padded slot is masked out of every scene's row; real tokens keep theirs
    mask = static.layout.token_mask()
    assert not mask[:, -1].any()
    assert int(mask.sum()) == layout.num_scenes + sizes['agent'] + sizes['map_polygon']


def test_padded_losses_and_gradients_equal_unpadded(batch):
    model = tiny_model(dropout=0.0).train()
    check_padded_training_step(model, ForecastMAEPadding(model), batch, ('agent', 'map_polygon', 'map_point', SCENE_AGENTS, SCENE_TOKENS), min_gradients=51)


def test_smaller_last_batch_gets_buffers_of_its_own_and_stays_exact(batch, scenes):
    """An epoch's last batch with fewer scenes: its own static buffers (the scene count is exact), the same results
    as unpadded; a full batch afterwards still uses the first buffers."""
    model = tiny_model(dropout=0.0).train()
    runner = CudaGraphStep(model, ForecastMAEPadding(model), capture=False).training_runner
    runner(batch)
    last = Batch.from_data_list([scenes[2]])
    model.zero_grad(set_to_none=True)
    expected = model.compute_losses(last, model(last))
    expected['loss'].backward()
    expected_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    padded_losses = runner(last)
    assert len(runner._entries) == 2
    assert_close(padded_losses['loss'], expected['loss'].detach(), 'loss of the last batch')
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close(p.grad, expected_grads[name], f'gradient of {name} (last batch)', tol=1e-4)
    runner(batch)
    assert len(runner._entries) == 2  # the full batch's buffers are reused


def test_infer_runner_matches_forward_with_and_without_targets(batch):
    model = tiny_model().eval()
    runner = CudaGraphStep(model, ForecastMAEPadding(model), capture=False).inference_runner
    with torch.no_grad():
        expected = model(batch)
    first = runner(batch)
    assert runner(batch).keys() == first.keys() and len(runner._entries) == 1
    for name, value in expected.items():
        assert first[name].shape == value.shape
        assert_close(first[name], value, name)
    test_like = batch.clone()
    del test_like['agent']['target']  # test batches carry no targets: separate static buffers, same outputs
    without = runner(test_like)
    assert len(runner._entries) == 2
    for name, value in first.items():
        assert torch.equal(without[name], value)


def test_static_batch_refuses_a_batch_that_does_not_fit(batch):
    layout = scene_layout(batch)
    sizes = layout_sizes(batch, layout)
    static = PaddedForecastMAEBatch(batch, layout.num_scenes, {**roomy_capacities(batch, extra=1),
                                                               SCENE_TOKENS: sizes[SCENE_TOKENS]})
    with pytest.raises(ValueError, match='exceed the capacities'):
        static.fill(batch, layout, sizes)


def test_cuda_graphs_flag_trains_with_manual_optimisation_on_cpu(scenes, tmp_path):
    """--cuda_graphs switches ForecastMAE to the padded step with its own backward + optimiser step; on CPU it runs
    without capture. Same losses as the automatic path over two epochs of a full and a smaller last batch."""
    def fit(cuda_graphs):
        model, recorded, moved, trainer = fit_two_epochs(tiny_model(dropout=0.0, T_max=4), scenes, tmp_path,
                                                         cuda_graphs)
        return model, [loss for loss, _ in recorded], moved, trainer

    model, recorded, moved, trainer = fit(True)
    assert not model.automatic_optimization and model.fixed_shape_step is not None
    assert trainer.global_step == 4 and moved > 0
    assert len(model.fixed_shape_step.training_runner._entries) == 2  # batches of 2 scenes and of 1
    _, reference, _, _ = fit(False)
    assert len(recorded) == len(reference) == 4
    for step, (value, expected) in enumerate(zip(recorded, reference)):
        assert abs(value - expected) < 1e-4 * max(1.0, abs(expected)), (step, value, expected)


# ----------------------------------------------------------------------------------------------------------------
# pre-training with the forecast_mae backbone (SmartPretrain, acceleration.padded_ssl_batch)
# ----------------------------------------------------------------------------------------------------------------
def _assert_same_pretraining_step(padded, plain):
    from test_ssl_cuda_graph_step import worst_relative
    for key in ('loss', 'contra_loss', 'rec_loss', 'contra_acc', 'num_queries', 'num_keys'):
        torch.testing.assert_close(padded[0][key].double(), plain[0][key].detach().double(), rtol=1e-6, atol=1e-9,
                                   msg=key)
    assert plain[0]['num_queries'] > 0 and plain[0]['contra_loss'] > 0
    assert plain[1].keys() == padded[1].keys() and len(plain[1]) > 50
    # float64 (the losses compute a few terms in float32): gradients that are zero in exact arithmetic (biases
    # right before a BatchNorm) are compared absolutely
    assert worst_relative(padded[1], plain[1]) < 1e-6
    for name in plain[2]:  # running statistics of the momentum projector: padded agents stay out of them
        torch.testing.assert_close(padded[2][name], plain[2][name], rtol=1e-7, atol=1e-9, msg=name)


def test_pretraining_padded_step_equals_plain_step_and_a_smaller_last_batch(pairs):  # noqa: F811
    """In float64: the padded agents, polygons and scenes' rows change float32 sums at the rounding level, which
    for the gradients that cancel to almost zero (e.g. the last decoder block's output bias: a BatchNorm follows)
    is their whole size."""
    import copy
    from acceleration.view_pair_batch import ViewPairCollate
    from test_second_backbone import to_double
    from test_ssl_cuda_graph_step import _one_step
    from test_ssl_fast_step import _collate, _model
    start = _model(backbone='forecast_mae', **TINY_FMAE).double()
    pairs = [{name: to_double(view) for name, view in pair.items()} for pair in pairs]
    padded_model = copy.deepcopy(start)
    apply(padded_model, SpeedOptions(cuda_graphs=True, tf32=False))
    runner = padded_model.fixed_shape_step.training_runner
    for items in (pairs, pairs[2:]):  # three view pairs, then a last batch of one
        # both from the same weights (one AdamW step each)
        padded_model.load_state_dict(start.state_dict())
        plain = _one_step(copy.deepcopy(start), _collate(items)(items), padded=False)
        padded = _one_step(padded_model, ViewPairCollate(_collate(items))(items), padded=True)
        for name in ('anchor.agent', 'views.agent', f'views.{SCENE_TOKENS}'):
            assert runner.last_capacities[name] > runner.last_sizes[name], name
        assert runner.last_sizes['views.agent'] == 2 * runner.last_sizes['anchor.agent']
        _assert_same_pretraining_step(padded, plain)
    assert len(runner._entries) == 2


@pytest.mark.slow
def test_pretraining_padded_step_under_ddp_gathers_keys_from_both_processes(tmp_path, pairs):  # noqa: F811
    """Two gloo processes through Lightning's DDP with the forecast_mae backbone: capacities agreed across the
    processes, so the keys of both are gathered inside the padded step (equal row counts) and the losses and averaged
    gradients are eager DDP's."""
    from test_ssl_cuda_graph_step import BEFORE_NORM, fit_two_processes, worst_relative
    items = [pairs[0], pairs[1], pairs[2], pairs[0]]  # rank 0 sees pairs 0, 2 and rank 1 pairs 1, 0
    overrides = dict(backbone='forecast_mae', **TINY_FMAE)
    graphs = fit_two_processes(items, True, str(tmp_path / 'graphs'), **overrides)
    eager = fit_two_processes(items, False, str(tmp_path / 'eager'), **overrides)
    for rank in range(2):
        for name in ('num_neg_sample_step', 'num_query_step', 'loss_step', 'contra_acc_step'):
            assert graphs[rank]['logged'][name] == pytest.approx(eager[rank]['logged'][name], rel=1e-5), name
    keys = [int(pairs[i]['anchor']['agent']['view_mask'].sum() + pairs[i]['target']['agent']['view_mask'].sum())
            for i in (0, 1)]
    assert graphs[0]['logged']['num_neg_sample_step'] == sum(keys)
    assert worst_relative(graphs[0]['grads'], graphs[1]['grads']) == 0.0
    assert graphs[0]['grads'].keys() == eager[0]['grads'].keys() and len(eager[0]['grads']) > 50
    # float32: gradients that cancel to almost zero differ at the rounding level, which depends on the CPU's
    # kernels; the biases right before a BatchNorm are zero in exact arithmetic and compared absolutely
    grads = {n: v for n, v in eager[0]['grads'].items() if n not in BEFORE_NORM}
    assert worst_relative(graphs[0]['grads'], grads, floor=1e-2) < 1e-3
    before_norm = [name for name in BEFORE_NORM if name in eager[0]['grads']]
    assert before_norm
    for name in before_norm:
        assert float((graphs[0]['grads'][name] - eager[0]['grads'][name]).abs().max()) < 1e-4, name


# ----------------------------------------------------------------------------------------------------------------
# --speed fast and the benchmark
# ----------------------------------------------------------------------------------------------------------------
def test_fast_preset_builds_edge_lists_only_for_models_that_have_them():
    """--speed fast names the edge lists in the loader workers; ForecastMAE (supervised or as the pre-training
    backbone) has none and takes the rest of the preset; --build_graph_in_workers 1 given explicitly stays a one-line
    flag error."""
    from acceleration.apply import options_for_model
    from acceleration.options import PRESETS
    from predictors import QCNet
    from predictors.smartpretrain import SmartPretrain
    from test_second_backbone import TINY_SSL_EITHER_BACKBONE
    from tiny_configs import TINY_QCNET
    fast = PRESETS['fast']
    for model in (tiny_model(), SmartPretrain(backbone='forecast_mae', **TINY_SSL_EITHER_BACKBONE)):
        options = options_for_model(model, fast, {'speed': 'fast'})
        assert options == fast.replace(edge_lists_in_workers=False)
        apply(model, options.replace(compile_attention=False, compile_embeddings=False, compile_gru=False))
        assert model.fixed_shape_step is not None
        given = options_for_model(model, fast, {'speed': 'fast', 'build_graph_in_workers': True})
        with pytest.raises(ValueError, match='^--build_graph_in_workers: .* has no separate edge-list construction'):
            apply(model, given)
    for model in (QCNet(**TINY_QCNET), SmartPretrain(backbone='qcnet', **TINY_SSL_EITHER_BACKBONE)):
        assert options_for_model(model, fast, {'speed': 'fast'}) == fast


def test_backbone_benchmark_times_the_forecast_mae_cuda_graph_step(tmp_path):
    """benchmarks/bench_backbones.py --speed fast: the padded step of each mode (on the CPU without capture)."""
    import json
    from benchmarks.bench_backbones import main
    report = tmp_path / 'report.json'
    assert main(['--device', 'cpu', '--size', 'tiny', '--models', 'ForecastMAE', '--batch_sizes', '2', '--steps', '1',
                 '--warmup', '1', '--precision', 'fp32', '--speed', 'fast', '--report', str(report)]) == 0
    result = json.loads(report.read_text())
    assert result['speed'] == 'fast'
    assert sorted(row['mode'] for row in result['results']) == ['infer', 'ssl', 'train']
    assert all(row['scenarios_per_s'] > 0 for row in result['results'])


def test_pretraining_refuses_processes_with_different_scene_counts(pairs, monkeypatch):  # noqa: F811
    """Each scene count has graphs of its own: processes holding different counts would not replay the same graph
    (one capturing while another replays), so the step stops with one line instead of waiting forever."""
    import acceleration.padded_ssl_batch as padded_ssl_batch
    from acceleration.view_pair_batch import ViewPairCollate
    from test_ssl_fast_step import _collate, _model
    model = _model(backbone='forecast_mae', **TINY_FMAE)
    apply(model, SpeedOptions(cuda_graphs=True, tf32=False))
    batch = ViewPairCollate(_collate(pairs))(pairs)
    # another process with one scene more: the maximum of the counts rises, the minimum stays
    monkeypatch.setattr(padded_ssl_batch, 'agree_across_processes', lambda sizes: {**sizes, 'scenes': 4})
    with pytest.raises(ValueError, match='^--cuda_graphs: this process has a batch of 3 scenes, another process a '
                                         'different number'):
        model.fixed_shape_step.train(batch, model.configure_optimizers())
