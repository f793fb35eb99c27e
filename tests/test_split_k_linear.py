"""Split-K linear maps (acceleration/kernels/split_k_linear.py): same values and gradients as the plain matmuls."""
import pytest
import torch
import torch.nn.functional as F

from acceleration.kernels.split_k_linear import MIN_ROWS, SPLIT_CHUNKS, batched_linear, linear, split_k_weight_grad, split_rows


def _grads(out, inputs, seed=0):
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * upstream).sum(), inputs)


def test_split_rule_needs_many_rows_in_whole_chunks():
    assert split_rows(MIN_ROWS) and split_rows(MIN_ROWS + SPLIT_CHUNKS)
    assert not split_rows(MIN_ROWS - SPLIT_CHUNKS) and not split_rows(MIN_ROWS + 1)


@pytest.mark.parametrize('rows', [MIN_ROWS + 3 * SPLIT_CHUNKS, 1000])  # split and plain path
@pytest.mark.parametrize('with_bias,with_residual', [(True, False), (False, False), (True, True), (False, True)])
def test_linear_equals_f_linear_with_gradients(rows, with_bias, with_residual):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(40, 24, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    residual = torch.randn(rows, 40, dtype=torch.float64, generator=gen, requires_grad=True) if with_residual else None
    inputs = [t for t in (x, weight, bias, residual) if t is not None]
    out = linear(x, weight, bias, residual)
    ref = F.linear(x, weight, bias) + (residual if with_residual else 0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_linear_keeps_leading_dimensions():
    x = torch.randn(MIN_ROWS // 4, 4, 8, dtype=torch.float64)  # rows = MIN_ROWS over two leading dimensions
    weight = torch.randn(5, 8, dtype=torch.float64)
    out = linear(x, weight)
    assert out.shape == (MIN_ROWS // 4, 4, 5)
    torch.testing.assert_close(out, F.linear(x, weight))


@pytest.mark.parametrize('rows', [MIN_ROWS, 96])
def test_batched_linear_and_its_weight_gradient(rows):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, rows, 17, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(3, 17, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(3, 1, 9, dtype=torch.float64, generator=gen, requires_grad=True)
    out = batched_linear(x, weight, bias)
    ref = torch.baddbmm(bias, x, weight)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out, [x, weight, bias]), _grads(ref, [x, weight, bias])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    grad = torch.randn(3, rows, 9, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(split_k_weight_grad(x.detach(), grad), torch.bmm(x.detach().transpose(1, 2), grad))


@pytest.mark.parametrize('rows', [MIN_ROWS, 64])
def test_residual_form_keeps_the_matmul_dtype_under_autocast_on_both_paths(rows):
    x, weight = torch.randn(rows, 16), torch.randn(8, 16)
    residual = torch.randn(rows, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = linear(x, weight, residual=residual)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), residual + x @ weight.t(), rtol=5e-2, atol=2e-1)
