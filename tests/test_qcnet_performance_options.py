"""QCNet speed/memory options change neither results nor checkpoints: activation checkpointing of the agent
encoder and recomputed embeddings (same loss and gradients, dropout included, less kept for backward), TF32 switch
(CUDA-only, restored after fit), CLI flags, bf16 autocast."""
import argparse
import os

import pytest
import torch
from torch_geometric.data import Batch

from predictors import QCNet

from tiny_configs import TINY_QCNET
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


@pytest.mark.parametrize('option', ['checkpoint_agent_encoder', 'recompute_embeddings'])
def test_recomputation_options_give_the_same_loss_and_gradients(train_batch, option):
    torch.manual_seed(0)
    plain = QCNet(**TINY_QCNET_TWO_AGENT_LAYERS).train()
    torch.manual_seed(0)
    checkpointed = QCNet(**TINY_QCNET_TWO_AGENT_LAYERS, **{option: True}).train()
    assert checkpointed.encoder.agent_encoder.checkpoint_layers == (option == 'checkpoint_agent_encoder')
    assert checkpointed.decoder.y_emb.recompute == (option == 'recompute_embeddings')
    assert list(plain.state_dict()) == list(checkpointed.state_dict())  # same checkpoint layout
    checkpointed.load_state_dict(plain.state_dict())
    loss_a, grads_a = loss_and_grads(plain, train_batch, seed=3)
    loss_b, grads_b = loss_and_grads(checkpointed, train_batch, seed=3)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)
    # ... and keeps less for the backward pass.
    assert saved_bytes(checkpointed, train_batch) < 0.8 * saved_bytes(plain, train_batch)
    # It only acts while gradients are recorded: inference gives the same outputs either way.
    with torch.no_grad():
        plain.eval(), checkpointed.eval()
        torch.testing.assert_close(checkpointed(train_batch)['pi'], plain(train_batch)['pi'])


def test_tf32_is_only_switched_on_for_cuda_fits_and_restored():
    model = QCNet(**TINY_QCNET_TWO_AGENT_LAYERS)
    assert model.hparams.tf32 is True
    before = torch.get_float32_matmul_precision()
    model.on_fit_start()  # CPU model: nothing changes
    assert torch.get_float32_matmul_precision() == before
    model.on_fit_end()
    assert torch.get_float32_matmul_precision() == before
    assert QCNet(**TINY_QCNET_TWO_AGENT_LAYERS, tf32=False).hparams.tf32 is False


def test_speed_flags_parse_into_hyper_parameters():
    parser = QCNet.add_model_specific_args(argparse.ArgumentParser())
    required = ['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
                '--num_recurrent_steps', '3', '--pl2pl_radius', '150', '--pl2a_radius', '50', '--a2a_radius', '50',
                '--pl2m_radius', '150', '--a2m_radius', '150']
    defaults = vars(parser.parse_args(required))
    assert defaults['tf32'] is True and defaults['checkpoint_agent_encoder'] is False
    assert defaults['compile_attention'] is False and defaults['recompute_embeddings'] is False
    assert defaults['compile_embeddings'] is False
    flags = vars(parser.parse_args(required + ['--no_tf32', '--checkpoint_agent_encoder', '--compile_attention',
                                               '--recompute_embeddings']))
    assert flags['tf32'] is False and flags['checkpoint_agent_encoder'] is True and flags['compile_attention']
    assert flags['recompute_embeddings'] is True
    model = QCNet(**{k: v for k, v in flags.items() if k not in ('hidden_dim',)}, hidden_dim=16)
    layers = [m for m in model.modules() if type(m).__name__ == 'AttentionLayer']
    assert layers and all(m.compiled_training for m in layers)
    embeddings = [m for m in model.modules() if type(m).__name__ == 'FourierEmbedding']
    assert embeddings and not any(m.compiled_training for m in embeddings)
    flags = vars(parser.parse_args(required + ['--compile_embeddings']))
    model = QCNet(**{k: v for k, v in flags.items() if k not in ('hidden_dim',)}, hidden_dim=16)
    embeddings = [m for m in model.modules() if type(m).__name__ == 'FourierEmbedding']
    assert embeddings and all(m.compiled_training and not m.recompute for m in embeddings)
    with pytest.raises(SystemExit):  # argparse: a number in (0, 1]
        parser.parse_args(required + ['--compile_memory_budget', '0'])
    import torch._functorch.config as functorch_config
    before = functorch_config.activation_memory_budget
    try:
        budget = vars(parser.parse_args(required + ['--compile_attention', '--compile_memory_budget', '0.4']))
        model = QCNet(**{k: v for k, v in budget.items() if k not in ('hidden_dim',)}, hidden_dim=16)
        assert model.hparams.compile_memory_budget == 0.4 and functorch_config.activation_memory_budget == 0.4
    finally:
        functorch_config.activation_memory_budget = before
    with pytest.raises(ValueError, match='--compile_embeddings and --recompute_embeddings'):
        QCNet(**{k: v for k, v in flags.items() if k not in ('hidden_dim', 'recompute_embeddings')}, hidden_dim=16,
              recompute_embeddings=True)


def test_bf16_autocast_step_gives_float32_outputs_close_to_float32(train_batch):
    torch.manual_seed(0)
    model = QCNet(**dict(TINY_QCNET_TWO_AGENT_LAYERS, dropout=0.0)).train()
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


def test_compile_gru_flag_reaches_the_decoder_and_the_loop_gives_the_same_step(train_batch):
    """--compile_gru: the decoder's GRU switch; the step loop (the function it compiles, run eagerly here: the
    compiled one is tests/test_gru_loop.py) gives the cuDNN/ATen module's outputs and gradients in a real step."""
    import layers.gru_loop as gru_loop
    torch.manual_seed(0)
    model = QCNet(**dict(TINY_QCNET, dropout=0.0), compile_gru=True).train()
    assert model.decoder.compile_gru and model.hparams.compile_gru
    model.decoder.compile_gru = False
    reference = model(train_batch)
    ref_loss = model.compute_losses(train_batch, reference)['loss']
    ref_grads = torch.autograd.grad(ref_loss, list(model.decoder.traj_emb.parameters()))
    model.decoder.compile_gru = True
    saved = gru_loop._compiled_loop
    gru_loop._compiled_loop = gru_loop.gru_final_state_loop  # the uncompiled loop: same code path, no compile time
    try:
        looped = model(train_batch)
        loss = model.compute_losses(train_batch, looped)['loss']
        grads = torch.autograd.grad(loss, list(model.decoder.traj_emb.parameters()))
    finally:
        gru_loop._compiled_loop = saved
    for name in reference:
        torch.testing.assert_close(looped[name], reference[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
