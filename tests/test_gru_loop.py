"""The GRU as a step loop (acceleration/kernels/gru_loop.py): the function of torch.nn.GRU, values and gradients; compiled too."""
import pytest
import torch
import torch.nn as nn

from acceleration.kernels.gru_loop import gru_final_state_loop
from acceleration.kernels.layer_ops import GRULoopOps
from layers.layer_ops import PLAIN_OPS


def make_gru(seed=0, size=12, dtype=torch.float64):
    torch.manual_seed(seed)
    gru = nn.GRU(input_size=size, hidden_size=size, num_layers=1, bias=True, batch_first=False).to(dtype)
    with torch.no_grad():  # biases of both halves non-zero, so the n-gate's b_hn placement matters
        for param in gru.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return gru


def loop_args(gru):
    return gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0


@pytest.mark.parametrize('steps', [1, 7])
def test_loop_equals_nn_gru_values_and_gradients(steps):
    gru = make_gru()
    gen = torch.Generator().manual_seed(steps)
    inputs = torch.randn(steps, 9, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    h0 = torch.randn(9, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    ours = gru_final_state_loop(inputs, h0, *loop_args(gru))
    ref = gru(inputs, h0.unsqueeze(0))[1][0]
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    params = [inputs, h0] + list(gru.parameters())
    upstream = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    for got, want in zip(torch.autograd.grad((ours * upstream).sum(), params),
                         torch.autograd.grad((ref * upstream).sum(), params)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_plain_form_is_the_module_and_the_loop_runs_only_with_gradients_in_training():
    gru = make_gru()
    inputs, h0 = torch.randn(4, 3, 12, dtype=torch.float64), torch.randn(3, 12, dtype=torch.float64)
    assert torch.equal(PLAIN_OPS.gru_final_state(gru, inputs, h0), gru(inputs, h0.unsqueeze(0))[1][0])
    looped = GRULoopOps(compile=False)
    with torch.no_grad():  # evaluation keeps the module
        assert torch.equal(looped.gru_final_state(gru, inputs, h0), gru(inputs, h0.unsqueeze(0))[1][0])
    torch.testing.assert_close(looped.gru_final_state(gru, inputs, h0), gru(inputs, h0.unsqueeze(0))[1][0])


@pytest.mark.slow
def test_compiled_loop_equals_nn_gru():
    gru = make_gru(size=8, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    for rows in (6, 11):  # dynamic shapes: one compilation for both row counts
        inputs = torch.randn(5, rows, 8, generator=gen, requires_grad=True)
        h0 = torch.randn(rows, 8, generator=gen)
        ours = GRULoopOps().gru_final_state(gru, inputs, h0)
        ref = gru(inputs, h0.unsqueeze(0))[1][0]
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        params = [inputs] + list(gru.parameters())
        for got, want in zip(torch.autograd.grad(ours.square().sum(), params),
                             torch.autograd.grad(ref.square().sum(), params)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_loop_under_bf16_autocast_keeps_a_float32_state_close_to_the_float32_result():
    gru = make_gru(size=16, dtype=torch.float32)
    gen = torch.Generator().manual_seed(9)
    inputs, h0 = torch.randn(60, 5, 16, generator=gen), torch.randn(5, 16, generator=gen)
    full = gru_final_state_loop(inputs, h0, *loop_args(gru))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = gru_final_state_loop(inputs, h0, *loop_args(gru))
    assert mixed.dtype == torch.float32
    assert float((mixed - full).abs().max()) < 5e-2
