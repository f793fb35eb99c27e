"""Run-time speed options (acceleration/): every preset and option computes the plain model's loss and gradients on
real Argoverse 2 scenes; options are never hyper-parameters (checkpoints carry none, old ones that do still load);
the flags parse without torch; bf16 autocast stays close to float32."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from torch_geometric.data import Batch

import acceleration.compiled
from acceleration.apply import apply, remove
from acceleration.kernels.layer_ops import CompiledOps, FusedOps, GRULoopOps, RecomputedOps
from acceleration.options import PRESETS, RUN_TIME_KEYS, SpeedOptions, add_speed_args, speed_options_from_args
from layers.layer_ops import PLAIN_OPS
from predictors import QCNet

from tiny_configs import TINY_QCNET, as_flags
from sample_data import AV2_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_DIR = str(AV2_DIR)
TRAIN_IDS = ['0a1e6f0a-1817-4a98-b02e-db8c9327d151', '0a0a2bb7-c4f4-44cd-958a-9ee15cb34aca']

TINY_QCNET_TWO_AGENT_LAYERS = {**TINY_QCNET, 'num_agent_layers': 2}


@pytest.fixture(scope='module')
def train_batch():
    if not os.path.isdir(AV2_DIR):
        pytest.skip(f'real Argoverse 2 samples not found at {AV2_DIR}')
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.target_builder import TargetBuilder
    scenes = [TargetBuilder(50, 60)(process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, 'train', i))))
              for i in TRAIN_IDS]
    return Batch.from_data_list(scenes)


@pytest.fixture
def uncompiled(monkeypatch):
    """torch.compile replaced by the function it compiles: the compiled code path (traced forms, GRU loop) without
    minutes of compilation on the CPU (compiled == eager is checked per layer in test_attention_layer.py,
    test_fourier_embedding.py and test_gru_loop.py)."""
    monkeypatch.setattr(acceleration.compiled, 'compiled', lambda function: function)
    monkeypatch.setattr('acceleration.kernels.layer_ops.compiled', lambda function: function)


def loss_and_grads(model, batch, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks in both runs
    loss = model.compute_losses(batch, model(batch))['loss']
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of one training loss."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.compute_losses(batch, model(batch))['loss']
    return sum(storages.values())


def assert_same_step(got, want, rtol=1e-4):
    """Same loss (relative ``rtol``) and gradients: each parameter's within ``10 rtol`` of its largest entry, or of
    1e-3 of the largest gradient entry of the model when its own are rounding noise (e.g. the bias of the mode
    logits, to which the softmax is invariant): float rounding of sums in another order."""
    (loss_a, grads_a), (loss_b, grads_b) = want, got
    torch.testing.assert_close(loss_b, loss_a, rtol=rtol, atol=0)
    assert grads_a.keys() == grads_b.keys()
    overall = max(float(g.abs().max()) for g in grads_a.values())
    for name in grads_a:
        scale = max(float(grads_a[name].abs().max()), 1e-3 * overall)
        error = float((grads_b[name] - grads_a[name]).abs().max())
        assert error <= 10 * rtol * scale + 1e-9, f'{name}: {error:.2e} against a gradient scale of {scale:.2e}'


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_each_preset_gives_the_plain_loss_and_gradients(train_batch, preset, uncompiled):
    """apply(model, preset) vs the plain model, on real scenes. Dropout off: the fast preset's padded step draws
    other random numbers (other shapes)."""
    torch.manual_seed(0)
    model = QCNet(**dict(TINY_QCNET_TWO_AGENT_LAYERS, dropout=0.0)).train()
    plain = loss_and_grads(model, train_batch, seed=3)
    options = PRESETS[preset]
    apply(model, options)
    if options.cuda_graphs:  # the CUDA-graph step's padded body, run eagerly on the CPU
        model.zero_grad(set_to_none=True)
        losses = model.fixed_shape_step.training_runner(train_batch)
        fast = losses['loss'], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    else:
        fast = loss_and_grads(model, train_batch, seed=3)
    assert_same_step(fast, plain)
    remove(model)
    assert all(getattr(m, 'ops', PLAIN_OPS) is PLAIN_OPS for m in model.modules())
    assert model.automatic_optimization and model.fixed_shape_step is None


def test_apply_installs_the_forms_each_option_names(uncompiled):
    model = QCNet(**TINY_QCNET)
    apply(model, PRESETS['fast'])
    kinds = {type(m).__name__: type(m.ops) for m in model.modules() if 'ops' in vars(m)}
    assert kinds == {'AttentionLayer': CompiledOps, 'FourierEmbedding': CompiledOps, 'QCNetDecoder': GRULoopOps}
    assert not model.automatic_optimization and model.fixed_shape_step is not None
    apply(model, PRESETS['low_memory'])  # re-applying replaces everything
    assert model.encoder.agent_encoder.checkpoint_layers and model.fixed_shape_step is None
    assert isinstance(model.decoder.y_emb.ops, RecomputedOps) and isinstance(model.decoder.ops, type(PLAIN_OPS))
    apply(model, SpeedOptions(fused_kernels=False))
    assert all(getattr(m, 'ops', PLAIN_OPS) is PLAIN_OPS for m in model.modules())
    apply(model, PRESETS['default'])
    assert isinstance(model.encoder.map_encoder.pl2pl_layers[0].ops, FusedOps)


@pytest.mark.parametrize('option', ['checkpoint_agent_encoder', 'recompute_embeddings'])
def test_recomputation_options_give_the_same_loss_and_gradients_with_dropout(train_batch, option):
    torch.manual_seed(0)
    plain = QCNet(**TINY_QCNET_TWO_AGENT_LAYERS).train()
    apply(plain, PRESETS['default'])
    torch.manual_seed(0)
    checkpointed = QCNet(**TINY_QCNET_TWO_AGENT_LAYERS).train()
    apply(checkpointed, SpeedOptions(**{option: True}))
    checkpointed.load_state_dict(plain.state_dict())
    assert_same_step(loss_and_grads(checkpointed, train_batch, seed=3), loss_and_grads(plain, train_batch, seed=3),
                     rtol=1e-5)
    # ... and keeps less for the backward pass.
    assert saved_bytes(checkpointed, train_batch) < 0.8 * saved_bytes(plain, train_batch)
    with torch.no_grad():  # it only acts while gradients are recorded
        plain.eval(), checkpointed.eval()
        torch.testing.assert_close(checkpointed(train_batch)['pi'], plain(train_batch)['pi'])


def test_fast_preset_checkpoint_has_no_speed_keys_and_evaluates_the_same_under_default(train_batch, tmp_path,
                                                                                      uncompiled):
    """A model built as train.py builds it from `--speed fast` flags (and, as older scripts did, from every flag)
    stores no run-time option; its checkpoint evaluates the same plain, with default and with fast options."""
    import train
    args = train.parse_args(['--root', str(tmp_path), '--train_batch_size', '2', '--val_batch_size', '2',
                             '--test_batch_size', '2', '--speed', 'fast', '--compile_memory_budget', '0.5',
                             *as_flags({k: v for k, v in TINY_QCNET.items() if k not in ('output_head',)})])
    assert speed_options_from_args(args) == PRESETS['fast'].replace(compile_memory_budget=0.5)
    torch.manual_seed(0)
    model = QCNet(**vars(args))  # every flag, speed flags included
    assert not RUN_TIME_KEYS & set(model.hparams), sorted(RUN_TIME_KEYS & set(model.hparams))
    apply(model, speed_options_from_args(args))
    path = tmp_path / 'fast.ckpt'
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': dict(model.hparams),
                'pytorch-lightning_version': '2.6.0'}, path)
    stored = torch.load(path, weights_only=False)['hyper_parameters']
    assert not RUN_TIME_KEYS & set(stored)
    model.eval()
    with torch.no_grad():
        reference = model.fixed_shape_step.infer(train_batch)
    for options in (None, PRESETS['default'], PRESETS['fast']):
        again = QCNet.load_from_checkpoint(str(path)).eval()
        if options is not None:
            apply(again, options)
        with torch.no_grad():
            out = again.predict_batch(train_batch)
        for name in ('loc_refine_pos', 'pi'):
            torch.testing.assert_close(out[name], reference[name], rtol=1e-4, atol=1e-5)


def test_old_checkpoint_with_speed_hyper_parameters_loads_and_ignores_them(tmp_path):
    model = QCNet(**TINY_QCNET)
    old = {**dict(model.hparams), 'cuda_graphs': True, 'compile_attention': True, 'compile_gru': True, 'tf32': False,
           'compile_memory_budget': 0.5, 'recompute_embeddings': True, 'checkpoint_agent_encoder': True}
    path = tmp_path / 'old.ckpt'
    torch.save({'state_dict': model.state_dict(), 'hyper_parameters': old, 'pytorch-lightning_version': '2.6.0'},
               path)
    again = QCNet.load_from_checkpoint(str(path))
    assert not RUN_TIME_KEYS & set(again.hparams)
    assert again.automatic_optimization and again.fixed_shape_step is None
    assert not again.encoder.agent_encoder.checkpoint_layers
    assert all(getattr(m, 'ops', PLAIN_OPS) is PLAIN_OPS for m in again.modules())


def test_speed_flags_parse_into_options_and_override_the_preset():
    parser = argparse.ArgumentParser()
    add_speed_args(parser, evaluation=True)
    assert speed_options_from_args(parser.parse_args([])) == PRESETS['default']
    fast = speed_options_from_args(parser.parse_args(['--speed', 'fast', '--cuda_graphs', '0', '--no_tf32']))
    assert fast == PRESETS['fast'].replace(cuda_graphs=False, tf32=False)
    old_style = speed_options_from_args(parser.parse_args(['--cuda_graphs', '--compile', '--build_graph_in_workers']))
    assert old_style.cuda_graphs and old_style.compile_attention and old_style.compile_embeddings
    assert old_style.edge_lists_in_workers and not old_style.compile_gru
    low = speed_options_from_args(parser.parse_args(['--speed', 'low_memory', '--compile_embeddings', 'true']))
    assert low.compile_embeddings and not low.recompute_embeddings and low.checkpoint_agent_encoder
    with pytest.raises(SystemExit):  # argparse: a number in (0, 1]
        parser.parse_args(['--compile_memory_budget', '0'])
    with pytest.raises(ValueError, match='--compile_embeddings and --recompute_embeddings'):
        speed_options_from_args(parser.parse_args(['--compile_embeddings', '--recompute_embeddings']))
    with pytest.raises(ValueError, match='--cuda_graphs: not available together with --checkpoint_agent_encoder'):
        speed_options_from_args(parser.parse_args(['--speed', 'low_memory', '--cuda_graphs']))


def test_options_module_imports_no_torch():
    code = ('import sys, argparse; from acceleration.options import add_speed_args; '
            'add_speed_args(argparse.ArgumentParser()); assert "torch" not in sys.modules, "torch imported"')
    subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=60)


def test_compile_memory_budget_is_set_by_apply(uncompiled):
    import torch._functorch.config as functorch_config
    before = functorch_config.activation_memory_budget
    try:
        apply(QCNet(**TINY_QCNET), SpeedOptions(compile_attention=True, compile_memory_budget=0.4))
        assert functorch_config.activation_memory_budget == 0.4
    finally:
        functorch_config.activation_memory_budget = before


def test_compiled_functions_are_built_without_mix_order_reduction():
    # Inductor's mix-order reduction returns [H] gradients for the [1, 1, H] norm scales of one-scalar embeddings on
    # CUDA (acceleration/compiled.py); every compiled function of the project must be built with it off.
    import torch._inductor.config as inductor_config
    if not hasattr(inductor_config.triton, 'mix_order_reduction'):
        pytest.skip('this torch has no mix-order reduction')
    before = inductor_config.triton.mix_order_reduction
    inductor_config.triton.mix_order_reduction = True
    try:
        acceleration.compiled.compiled(lambda x: x + 1)
        assert inductor_config.triton.mix_order_reduction is False
    finally:
        inductor_config.triton.mix_order_reduction = before


def test_bf16_autocast_step_gives_float32_outputs_close_to_float32(train_batch):
    torch.manual_seed(0)
    model = apply(QCNet(**dict(TINY_QCNET_TWO_AGENT_LAYERS, dropout=0.0)).train(), PRESETS['default'])
    full = model(train_batch)
    loss_full = model.compute_losses(train_batch, full)['loss']
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = model(train_batch)
        loss_mixed = model.compute_losses(train_batch, mixed)['loss']
    # Positions are sums over 60 steps (tens of metres): they and the loss stay in float32.
    assert all(value.dtype == torch.float32 for value in mixed.values())
    assert abs(loss_mixed.item() - loss_full.item()) < 0.02 * abs(loss_full.item())
    err = (mixed['loc_refine_pos'] - full['loc_refine_pos']).abs().max() / full['loc_refine_pos'].abs().max()
    assert err < 0.05
    loss_mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tf32_callback_is_only_switched_on_for_cuda_fits():
    from acceleration.lightning_callbacks import TF32DuringFit
    model = apply(QCNet(**TINY_QCNET), PRESETS['default'])
    [callback] = [c for c in model.configure_callbacks() if isinstance(c, TF32DuringFit)]
    before = torch.get_float32_matmul_precision()
    callback.on_fit_start(None, model)  # CPU model: nothing changes
    assert torch.get_float32_matmul_precision() == before
    callback.on_fit_end(None, model)
    assert torch.get_float32_matmul_precision() == before
    assert apply(QCNet(**TINY_QCNET), SpeedOptions(tf32=False)).configure_callbacks() == []


@pytest.fixture(scope='module')
def ssl_view_batch():
    """A batch of SmartPretrain view pairs from the real scenes, cropped to 30 m around the AV."""
    if not os.path.isdir(AV2_DIR):
        pytest.skip(f'real Argoverse 2 samples not found at {AV2_DIR}')
    from torch_geometric.loader import DataLoader
    from datasets import load_argoverse_v2_scenario, process_scenario
    from transforms.ssl_views import SSLViews
    from test_ssl_model import crop_scene
    views = SSLViews(50, 60, seed=4)
    scenes = [crop_scene(process_scenario(load_argoverse_v2_scenario(os.path.join(AV2_DIR, 'train', i))), 30.0)
              for i in TRAIN_IDS]
    return next(iter(DataLoader([views(scene) for scene in scenes], batch_size=len(scenes))))


def _smartpretrain_step(model, batch, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(batch)['loss']
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('preset', sorted(PRESETS))
@pytest.mark.parametrize('backbone', ['qcnet', 'forecast_mae'])
def test_each_preset_gives_the_plain_pretraining_loss_and_gradients(ssl_view_batch, backbone, preset, uncompiled):
    """SmartPretrain with either backbone through the same apply(): same loss and gradients as plain (the CUDA-graph
    step of pre-training is not part of these presets' check: only the layer forms and memory options)."""
    from predictors.smartpretrain import SmartPretrain
    from tiny_configs import TINY_FMAE, TINY_QCNET_SSL
    torch.manual_seed(0)
    model = SmartPretrain(backbone=backbone, dropout=0.0, **{**TINY_QCNET_SSL, **TINY_FMAE}).train()
    plain = _smartpretrain_step(model, ssl_view_batch, seed=5)
    apply(model, PRESETS[preset].replace(cuda_graphs=False, edge_lists_in_workers=False))
    assert_same_step(_smartpretrain_step(model, ssl_view_batch, seed=5), plain)


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_each_preset_gives_the_plain_forecast_mae_loss_and_gradients(train_batch, preset, uncompiled):
    from predictors import ForecastMAE
    from tiny_configs import TINY_FMAE
    torch.manual_seed(0)
    model = ForecastMAE(**{**TINY_FMAE, 'hidden_dim': 16, 'num_heads': 2, 'head_dim': 8, 'num_freq_bands': 4,
                           'dropout': 0.0}).train()
    plain = loss_and_grads(model, train_batch, seed=3)
    apply(model, PRESETS[preset].replace(cuda_graphs=False, edge_lists_in_workers=False))
    assert any(type(m.ops) is not type(PLAIN_OPS) for m in model.modules() if 'ops' in vars(m))
    assert_same_step(loss_and_grads(model, train_batch, seed=3), plain)
