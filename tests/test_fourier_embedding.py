"""FourierEmbedding (layers/) and its faster forms (acceleration/kernels/): every form equals the per-scalar
formulation (values and gradients), the memory-saving first layer passes gradcheck, the recomputed form gives the same
gradients and keeps less, the compiled form equals the fused one, bf16 autocast runs."""
import math

import pytest
import torch

from acceleration.kernels.fourier_embedding import FourierFirstLayer, aligned_width
from acceleration.kernels.layer_ops import CompiledOps, FusedOps, RecomputedOps
from layers.fourier_embedding import FourierEmbedding
from layers.layer_ops import PLAIN_OPS


def make_embedding(input_dim, hidden=8, bands=5, seed=0, ops=None):
    torch.manual_seed(seed)
    emb = FourierEmbedding(input_dim=input_dim, hidden_dim=hidden, num_freq_bands=bands)
    emb.ops = FusedOps() if ops is None else ops
    with torch.no_grad():  # non-trivial norms and biases
        for name, param in emb.named_parameters():
            if name.endswith('bias') or '.1.' in name or 'to_out.0' in name:
                param.add_(0.3 * torch.randn_like(param))
    return emb.double()


def reference(emb, inputs, categorical=None):
    """One MLP per scalar on [cos(2 pi f s), sin(2 pi f s), s], summed, plus categorical embeddings, then the head."""
    out = 0
    for i, mlp in enumerate(emb.mlps):
        s = inputs[:, i:i + 1]
        angles = s * emb.freqs.weight[i] * 2 * math.pi
        out = out + mlp(torch.cat([angles.cos(), angles.sin(), s], dim=-1))
    if categorical is not None:
        out = out + sum(categorical)
    return emb.to_out(out)


@pytest.mark.parametrize('ops', [PLAIN_OPS, FusedOps()], ids=['plain', 'fused'])
@pytest.mark.parametrize('input_dim', [1, 3])
def test_matches_per_scalar_formulation_values_and_gradients(input_dim, ops):
    emb = make_embedding(input_dim, ops=ops)
    gen = torch.Generator().manual_seed(1)
    inputs = (10 * torch.randn(13, input_dim, generator=gen, dtype=torch.double)).requires_grad_()
    categorical = [torch.randn(13, 8, generator=gen, dtype=torch.double)]
    ours = emb(inputs, categorical)
    ref = reference(emb, inputs, categorical)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(-1, 1, ours.numel(), dtype=torch.double).view_as(ours)
    params = [inputs] + list(emb.parameters())
    for g_ours, g_ref in zip(torch.autograd.grad((ours * weights).sum(), params),
                             torch.autograd.grad((ref * weights).sum(), params)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('width', [9, 16])  # 2F+1 with F = 4, and padded with zero feature columns to 16
def test_first_layer_gradcheck(width):
    gen = torch.Generator().manual_seed(2)
    args = [torch.randn(shape, generator=gen, dtype=torch.double, requires_grad=True)
            for shape in ((3, 7, 1), (3, 4), (3, width, 5), (3, 1, 5))]
    assert torch.autograd.gradcheck(FourierFirstLayer.apply, args)


def test_first_layer_matmul_width_is_aligned():
    """The batched matmul of the first layer runs at a row length that is a multiple of 8 (2F+1 = 129 -> 136)."""
    assert aligned_width(129) == 136 and aligned_width(9) == 16 and aligned_width(16) == 16
    emb = FourierEmbedding(input_dim=2, hidden_dim=8, num_freq_bands=64)
    emb.ops = FusedOps()
    seen = []
    original = torch.baddbmm

    def spy(input, batch1, batch2, **kwargs):
        seen.append(batch1.size(-1))
        return original(input, batch1, batch2, **kwargs)
    torch.baddbmm = spy
    try:
        emb(continuous_inputs=torch.randn(5, 2))
    finally:
        torch.baddbmm = original
    assert seen == [136]


def test_recompute_mode_gives_the_same_gradients_and_keeps_less():
    emb = make_embedding(3)
    inputs = 5 * torch.randn(50, 3, dtype=torch.double)

    def run():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        emb.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = emb(inputs)
        out.square().sum().backward()
        return [p.grad.clone() for p in emb.parameters()], sum(storages.values())

    grads, kept = run()
    emb.ops = RecomputedOps()
    grads_recomputed, kept_recomputed = run()
    for a, b in zip(grads, grads_recomputed):
        torch.testing.assert_close(a, b)
    assert kept_recomputed < 0.2 * kept


def test_bf16_autocast_backward_runs_and_gives_float32_parameter_gradients():
    emb = make_embedding(2).float()
    inputs = 5 * torch.randn(40, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = emb(inputs)
    out.float().square().sum().backward()
    full = make_embedding(2).float()
    full(inputs).square().sum().backward()
    for (name, p), q in zip(emb.named_parameters(), full.parameters()):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    # bf16 matmuls: the gradients agree with float32 to bf16 precision
    w_mixed, w_full = emb.mlps[0][0].weight.grad, full.mlps[0][0].weight.grad
    assert (w_mixed - w_full).abs().max() < 0.05 * w_full.abs().max()


@pytest.mark.parametrize('rows', [13, 16384 + 32])  # below and above the split-K threshold of the matmuls
def test_split_rows_match_the_per_scalar_formulation(rows):
    emb = make_embedding(3)
    gen = torch.Generator().manual_seed(2)
    inputs = (10 * torch.randn(rows, 3, generator=gen, dtype=torch.double)).requires_grad_()
    ours = emb(inputs)
    ref = reference(emb, inputs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    params = [inputs] + list(emb.parameters())
    upstream = torch.randn(ours.shape, generator=gen, dtype=torch.double)
    for got, want in zip(torch.autograd.grad((ours * upstream).sum(), params),
                         torch.autograd.grad((ref * upstream).sum(), params)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_compiled_training_path_matches_eager_values_and_gradients():
    """CompiledOps: the compiled traced formulation gives the fused values/gradients for several row counts
    (dynamic shapes: no recompilation per count) and input counts (3 and 4 continuous inputs share one graph),
    with no, one or two categorical embeddings, and the same no-grad outputs."""
    import copy

    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    gen = torch.Generator().manual_seed(3)
    for input_dim, num_categorical in ((3, 1), (4, 1), (4, 0), (1, 2)):
        emb = make_embedding(input_dim, hidden=16, seed=input_dim).float().train()
        twin = copy.deepcopy(emb)
        emb.ops = CompiledOps()
        for rows in (40, 77):
            inputs = (5 * torch.randn(rows, input_dim, generator=gen)).requires_grad_()
            categorical = [torch.randn(rows, 16, generator=gen) for _ in range(num_categorical)] or None
            out, ref = emb(inputs, categorical), twin(inputs, categorical)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            upstream = torch.randn(out.shape, generator=gen)
            for got, want in zip(torch.autograd.grad((out * upstream).sum(), [inputs] + list(emb.parameters())),
                                 torch.autograd.grad((ref * upstream).sum(), [inputs] + list(twin.parameters()))):
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            torch.testing.assert_close(emb.eval()(inputs, categorical), twin.eval()(inputs, categorical),
                                       rtol=1e-5, atol=1e-5)
    # with gradients: (3 or 4 inputs, categorical), (4, none), (1, categorical); without: the same three
    assert counters['stats']['unique_graphs'] == 6


@pytest.mark.slow
def test_compile_memory_budget_keeps_fewer_activations_with_the_same_gradients():
    """--compile_memory_budget sets the compiled backward's activation budget: a compiled embedding then
    saves a fraction of the bytes for its backward pass (recomputing the rest) and gives the same gradients."""
    import torch._dynamo
    import torch._functorch.config as functorch_config

    def saved_bytes_and_grads(budget):
        functorch_config.activation_memory_budget = budget
        torch._dynamo.reset()  # compile again under this budget
        emb = make_embedding(3, hidden=32, bands=16, ops=CompiledOps()).float().train()
        inputs = (5 * torch.randn(2048, 3, generator=torch.Generator().manual_seed(4))).requires_grad_()
        saved = []

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = emb(inputs)
        return sum(saved), torch.autograd.grad(out.square().sum(), [inputs] + list(emb.parameters()))

    before = functorch_config.activation_memory_budget
    try:
        full_bytes, full_grads = saved_bytes_and_grads(1.0)
        budget_bytes, budget_grads = saved_bytes_and_grads(0.3)
    finally:
        functorch_config.activation_memory_budget = before
        torch._dynamo.reset()
    assert budget_bytes < 0.5 * full_bytes, (budget_bytes, full_bytes)
    for got, want in zip(budget_grads, full_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
