"""AttentionLayer (layers/) with its plain and fused operations (acceleration/kernels/): both equal the per-edge
formulation (the official layer's math), multi-query targets equal per-mode edge copies, custom autograd pieces pass
gradcheck, the compiled form equals the fused one, mixed precision stays close to float32."""
import pytest
import torch

from acceleration.kernels.gather_scatter import GatherDot, SumByIndex
from acceleration.kernels.layer_ops import CompiledOps, FusedOps
from layers.attention_layer import AttentionLayer, normalize_edge_embedding
from layers.layer_ops import PLAIN_OPS

OPS = pytest.mark.parametrize('ops', [PLAIN_OPS, FusedOps()], ids=['plain', 'fused'])

HIDDEN, HEADS, HEAD_DIM = 12, 3, 4


def random_graph(num_src, num_dst, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_src, (num_edges,), generator=gen)
    dst = torch.randint(0, num_dst - 1, (num_edges,), generator=gen)  # the last target gets no edge
    return torch.stack([src, dst])


def make_layer(bipartite, has_pos_emb=True, seed=0, ops=None):
    torch.manual_seed(seed)
    layer = AttentionLayer(HIDDEN, HEADS, HEAD_DIM, dropout=0.0, bipartite=bipartite, has_pos_emb=has_pos_emb)
    layer.ops = FusedOps() if ops is None else ops
    with torch.no_grad():  # non-trivial norms and biases (the default init sets them to 1 / 0)
        for name, param in layer.named_parameters():
            if name.endswith('bias') or 'norm' in name:
                param.add_(0.3 * torch.randn_like(param))
    return layer.double()


def reference_layer(layer, x_src, x_dst, r, edge_index):
    """Per-edge gather -> scatter softmax -> sum, written directly from the layer's documented formula."""
    src, dst = edge_index
    xs = layer.attn_prenorm_x_src(x_src)
    xd = layer.attn_prenorm_x_dst(x_dst)
    q = layer.to_q(xd)[dst].view(-1, HEADS, HEAD_DIM)
    k = layer.to_k(xs)[src]
    v = layer.to_v(xs)[src]
    if r is not None:
        rn = layer.attn_prenorm_r(r)
        k, v = k + layer.to_k_r(rn), v + layer.to_v_r(rn)
    k, v = k.view(-1, HEADS, HEAD_DIM), v.view(-1, HEADS, HEAD_DIM)
    sim = (q * k).sum(-1) * HEAD_DIM ** -0.5
    attn = torch.zeros_like(sim)
    for i in range(x_dst.size(0)):  # softmax over each target's in-edges
        sel = dst == i
        if sel.any():
            attn[sel] = torch.softmax(sim[sel], dim=0)
    msg = torch.zeros(x_dst.size(0), HEADS, HEAD_DIM, dtype=x_dst.dtype).index_add(0, dst, v * attn[..., None])
    msg = msg.reshape(x_dst.size(0), -1)
    gate = torch.sigmoid(layer.to_g(torch.cat([msg, xd], dim=-1)))
    out = x_dst + layer.attn_postnorm(layer.to_out(msg + gate * (layer.to_s(xd) - msg)))
    return out + layer.ff_postnorm(layer.ff_mlp(layer.ff_prenorm(out)))


@OPS
@pytest.mark.parametrize('bipartite', [False, True])
def test_matches_plain_per_edge_formulation_values_and_gradients(bipartite, ops):
    layer = make_layer(bipartite, ops=ops)
    gen = torch.Generator().manual_seed(1)
    num_src, num_dst = 9, (7 if bipartite else 9)
    x_src = torch.randn(num_src, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    x_dst = torch.randn(num_dst, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True) if bipartite \
        else x_src
    edge_index = random_graph(num_src, num_dst, 30)
    r = torch.randn(30, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    inputs = (x_src, x_dst) if bipartite else x_src
    ours = layer(inputs, r, edge_index)
    grads_ours = torch.autograd.grad((ours * torch.linspace(-1, 1, ours.numel()).view_as(ours).double()).sum(),
                                     [r, x_src] + list(layer.parameters()), allow_unused=True)
    ref = reference_layer(layer, x_src, x_dst, r, edge_index)
    grads_ref = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.numel()).view_as(ref).double()).sum(),
                                    [r, x_src] + list(layer.parameters()), allow_unused=True)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    for (name, _), g_ours, g_ref in zip([('r', 0), ('x_src', 0)] + list(layer.named_parameters()),
                                        grads_ours, grads_ref):
        if g_ref is None:
            assert g_ours is None or g_ours.abs().max() == 0, name
        else:
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-10, msg=name)


@OPS
def test_layer_without_edge_embeddings_matches_reference(ops):
    layer = make_layer(bipartite=False, has_pos_emb=False, ops=ops)
    x = torch.randn(6, HIDDEN, dtype=torch.double)
    edge_index = random_graph(6, 6, 20, seed=3)
    torch.testing.assert_close(layer(x, None, edge_index), reference_layer(layer, x, x, None, edge_index))


@OPS
def test_multi_query_targets_equal_per_query_edge_copies(ops):
    """x_dst [Nd, K, H] with edges into the Nd nodes == x_dst [Nd*K, H] with every edge copied to each query."""
    layer = make_layer(bipartite=True, ops=ops)
    num_src, num_dst, num_queries, num_edges = 8, 5, 3, 25
    gen = torch.Generator().manual_seed(2)
    x_src = torch.randn(num_src, HIDDEN, generator=gen, dtype=torch.double)
    x_dst = torch.randn(num_dst, num_queries, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    r = torch.randn(num_edges, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    edge_index = random_graph(num_src, num_dst, num_edges)
    shared = layer((x_src, x_dst), r, edge_index)
    assert shared.shape == (num_dst, num_queries, HIDDEN)
    copies = torch.arange(num_queries)
    edge_copies = torch.stack([edge_index[0].repeat_interleave(num_queries),
                               (edge_index[1].unsqueeze(1) * num_queries + copies).reshape(-1)])
    copied = layer((x_src, x_dst.reshape(-1, HIDDEN)), r.repeat_interleave(num_queries, dim=0), edge_copies)
    torch.testing.assert_close(shared.reshape(-1, HIDDEN), copied)
    g_shared = torch.autograd.grad(shared.square().sum(), [x_dst, r])
    g_copied = torch.autograd.grad(copied.square().sum(), [x_dst, r])
    for a, b in zip(g_shared, g_copied):
        torch.testing.assert_close(a, b)


def test_shared_edge_normalisation_and_precomputed_keys_values_give_the_same_result():
    """r normalised once for several layers, and keys/values computed once for several query sets: same output."""
    layer = make_layer(bipartite=True)
    gen = torch.Generator().manual_seed(7)
    x_src = torch.randn(9, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    x_dst = torch.randn(5, 3, HIDDEN, generator=gen, dtype=torch.double)
    r = torch.randn(30, HIDDEN, generator=gen, dtype=torch.double, requires_grad=True)
    edge_index = random_graph(9, 5, 30)
    plain = layer((x_src, x_dst), r, edge_index)
    r_hat = normalize_edge_embedding(r)
    torch.testing.assert_close(layer((x_src, x_dst), r_hat, edge_index, r_normalized=True), plain)
    source_kv = layer.edge_keys_values(x_src, r_hat, edge_index, r_normalized=True)
    cached = layer((x_src, x_dst), None, edge_index, source_kv=source_kv)
    torch.testing.assert_close(cached, plain)
    for a, b in zip(torch.autograd.grad(plain.sum(), [x_src, r] + list(layer.parameters())),
                    torch.autograd.grad(cached.sum(), [x_src, r] + list(layer.parameters()))):
        torch.testing.assert_close(a, b)
    self_attention = make_layer(bipartite=False)
    with pytest.raises(ValueError, match='bipartite'):
        self_attention(x_src, r, random_graph(9, 9, 30), source_kv=source_kv)


@pytest.mark.parametrize('num_queries', [None, 3])
def test_custom_autograd_pieces_pass_gradcheck(num_queries):
    gen = torch.Generator().manual_seed(4)
    shape = (5, num_queries, 2, 3) if num_queries else (5, 2, 3)
    q = torch.randn(shape, generator=gen, dtype=torch.double, requires_grad=True)
    key = torch.randn(11, 2, 3, generator=gen, dtype=torch.double, requires_grad=True)
    index = torch.randint(0, 5, (11,), generator=gen)
    assert torch.autograd.gradcheck(lambda a, b: GatherDot.apply(a, b, index), (q, key))
    src = torch.randn((11,) + shape[1:], generator=gen, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: SumByIndex.apply(a, index, 6), (src,))


def test_bf16_autocast_is_close_to_float32_on_dense_targets():
    """Hundreds of in-edges per target (long softmax / message sums) under bf16 autocast stay close to float32."""
    layer = make_layer(bipartite=True).float()
    gen = torch.Generator().manual_seed(5)
    x_src, x_dst = torch.randn(400, HIDDEN, generator=gen), torch.randn(3, 4, HIDDEN, generator=gen)
    r = torch.randn(1200, HIDDEN, generator=gen)
    edge_index = torch.stack([torch.arange(1200) % 400, torch.arange(1200) // 400])
    full = layer((x_src, x_dst), r, edge_index)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = layer((x_src, x_dst), r, edge_index)
    assert mixed.shape == full.shape and torch.isfinite(mixed).all()
    err = (mixed.float() - full).abs().max() / full.abs().max()
    assert err < 3e-2, f'bf16 autocast deviates by {err:.3g} (relative to max |out|)'


@pytest.mark.slow
def test_compiled_training_path_matches_eager_and_survives_deepcopy():
    """CompiledOps: same values/gradients as the fused layer while training and in evaluation; copies (the momentum
    branch of pre-training) run the shared compiled function on their own weights."""
    import copy
    layer = make_layer(bipartite=True).float().train()
    twin = copy.deepcopy(layer)
    layer.ops = CompiledOps()
    gen = torch.Generator().manual_seed(6)
    x_src = torch.randn(20, HIDDEN, generator=gen)
    x_dst = torch.randn(6, 2, HIDDEN, generator=gen, requires_grad=True)
    r = torch.randn(50, HIDDEN, generator=gen)
    edge_index = random_graph(20, 6, 50)
    out = layer((x_src, x_dst), r, edge_index)
    ref = twin((x_src, x_dst), r, edge_index)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad_out, = torch.autograd.grad(out.square().sum(), x_dst)
    grad_ref, = torch.autograd.grad(ref.square().sum(), x_dst)
    torch.testing.assert_close(grad_out, grad_ref, rtol=1e-4, atol=1e-5)
    copied = copy.deepcopy(layer)
    with torch.no_grad():
        for param in copied.parameters():
            param.mul_(0.5)
    assert isinstance(copied.ops, CompiledOps)
    assert not torch.allclose(copied((x_src, x_dst), r, edge_index), out)
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()((x_src, x_dst), r, edge_index), twin.eval()((x_src, x_dst), r,
                                                                                          edge_index),
                                   rtol=1e-5, atol=1e-5)


def test_split_k_path_under_bf16_autocast_matches_float32():
    """Edge counts that take the split-K matmuls (>= 16,384 rows in whole chunks of 32) under bf16 autocast: the
    forward and backward run and stay within bf16 rounding of the float32 layer."""
    from acceleration.kernels.split_k_linear import MIN_ROWS, split_rows
    layer = make_layer(bipartite=True).float().train()
    gen = torch.Generator().manual_seed(11)
    num_edges = MIN_ROWS
    assert split_rows(num_edges)
    x_src = torch.randn(300, HIDDEN, generator=gen)
    x_dst = torch.randn(200, HIDDEN, generator=gen, requires_grad=True)
    r = torch.randn(num_edges, HIDDEN, generator=gen)
    edge_index = random_graph(300, 200, num_edges)
    full = layer((x_src, x_dst), r, edge_index)
    grad_full, = torch.autograd.grad(full.square().sum(), x_dst)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = layer((x_src, x_dst), r, edge_index)
    grad_mixed, = torch.autograd.grad(mixed.float().square().sum(), x_dst)
    assert torch.isfinite(mixed).all() and torch.isfinite(grad_mixed).all()
    assert float((mixed.float() - full).abs().max() / full.abs().max()) < 3e-2
    # bf16 rounding of ~80 edges per target: ~4 % in norm on these random inputs, as on the unsplit path
    assert float((grad_mixed - grad_full).norm() / grad_full.norm()) < 8e-2
