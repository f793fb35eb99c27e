"""Graph construction (utils.graph) against brute-force references with torch_cluster's documented semantics."""
import itertools

import pytest
import torch
from torch_geometric.utils import coalesce, dense_to_sparse

import utils.graph as graph
from utils.graph import bipartite_dense_to_sparse, merge_edges, radius, radius_graph, subgraph_by_mask


def brute_force_radius(x, y, r, batch_x, batch_y, max_num_neighbors, ignore_same_index=False):
    """Per query point in y (ascending), the x points of its example, in index order, closer than r; capped."""
    edges = []
    for i in range(y.size(0)):
        found = 0
        for j in range(x.size(0)):
            if batch_x[j] != batch_y[i] or (ignore_same_index and i == j):
                continue
            if float(((x[j].double() - y[i].double()) ** 2).sum()) < r * r:
                if found < max_num_neighbors:
                    edges.append((i, j))
                found += 1
    return torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)


def integer_cloud(num_points, num_examples, seed, spread=12):
    """Points on an integer grid (exact squared distances) sorted into examples, some examples possibly empty."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(-spread, spread + 1, (num_points, 2), generator=gen).float()
    batch = torch.randint(0, num_examples, (num_points,), generator=gen).sort().values
    return pos, batch


@pytest.mark.parametrize('seed,cap', [(0, 100), (1, 3), (2, 1)])
def test_radius_matches_brute_force_including_cap_and_order(seed, cap):
    x, batch_x = integer_cloud(70, 4, seed)
    y, batch_y = integer_cloud(40, 4, seed + 100)
    expected = brute_force_radius(x, y, 5.0, batch_x, batch_y, cap)
    got = radius(x, y, 5.0, batch_x, batch_y, max_num_neighbors=cap)
    if graph.torch_cluster_available() and x.device.type == 'cpu' and cap < 100:
        pytest.skip('torch_cluster CPU picks capped neighbours in k-d tree order; compared uncapped only')
    assert torch.equal(got, expected)  # same edges, same order (query-major, then neighbour index)


def test_radius_boundary_is_strict_and_examples_are_separate():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 3.9], [0.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    batch_x = torch.tensor([0, 0, 0, 1])
    batch_y = torch.tensor([0, 1])
    got = radius(x, y, 5.0, batch_x, batch_y, max_num_neighbors=10)
    # (3, 4) lies exactly at distance 5: excluded; the other example only sees its own point.
    assert got.tolist() == [[0, 0, 1], [0, 2, 3]]


def test_radius_handles_empty_examples_and_single_example():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[0.5, 0.0], [10.0, 0.0], [0.2, 0.0]])
    # example 1 has no x points, example 0 has none of y[1:]
    got = radius(x, y, 1.0, torch.tensor([0, 0]), torch.tensor([0, 1, 2]), max_num_neighbors=5)
    assert got.tolist() == [[0, 0], [0, 1]]
    single = radius(x, y, 1.0, None, None, max_num_neighbors=5)
    assert single.tolist() == [[0, 0, 2, 2], [0, 1, 0, 1]]
    assert radius(x[:0], y, 1.0).shape == (2, 0)


def test_radius_chunked_search_gives_identical_edges(monkeypatch):
    x, batch_x = integer_cloud(90, 6, 7)
    y, batch_y = integer_cloud(60, 6, 8)
    full = radius(x, y, 6.0, batch_x, batch_y, max_num_neighbors=4)
    monkeypatch.setattr(graph, '_RADIUS_PAIR_BUDGET', 50)  # forces one example per chunk
    assert torch.equal(radius(x, y, 6.0, batch_x, batch_y, max_num_neighbors=4), full)


@pytest.mark.parametrize('cap_counts_self', [True, False])
def test_radius_graph_cap_semantics(cap_counts_self):
    # Six points at the origin: every point neighbours all others. With cap 2, the legacy semantics (self counted
    # in a search capped at 3, then dropped) keep 3 neighbours for points whose index is > 2.
    x = torch.zeros(6, 2)
    got = radius_graph(x, 1.0, None, loop=False, max_num_neighbors=2, cap_counts_self=cap_counts_self)
    assert (got[0] != got[1]).all()
    per_centre = torch.bincount(got[1], minlength=6).tolist()
    if cap_counts_self:
        assert per_centre == [2, 2, 2, 3, 3, 3]
        expected = brute_force_radius(x, x, 1.0, torch.zeros(6), torch.zeros(6), 3)
        expected = expected[:, expected[0] != expected[1]].flip(0)
    else:
        assert per_centre == [2, 2, 2, 2, 2, 2]
        expected = brute_force_radius(x, x, 1.0, torch.zeros(6), torch.zeros(6), 2, ignore_same_index=True).flip(0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize('seed', [3, 4])
def test_radius_graph_matches_brute_force_with_batches(seed):
    x, batch = integer_cloud(80, 3, seed)
    got = radius_graph(x, 4.0, batch, loop=False, max_num_neighbors=300)
    ref = brute_force_radius(x, x, 4.0, batch, batch, 300, ignore_same_index=True).flip(0)
    assert torch.equal(got, ref)  # row 0 = neighbour (source), row 1 = centre (target)
    with_loops = radius_graph(x, 4.0, batch, loop=True, max_num_neighbors=300)
    assert with_loops.size(1) == got.size(1) + x.size(0)
    flows = radius_graph(x, 4.0, batch, loop=False, max_num_neighbors=300, flow='target_to_source')
    assert torch.equal(flows, got.flip(0))


def test_bipartite_dense_to_sparse_matches_pyg_dense_to_sparse():
    gen = torch.Generator().manual_seed(5)
    adj = torch.rand(3, 4, 4, generator=gen) > 0.5
    assert torch.equal(bipartite_dense_to_sparse(adj), dense_to_sparse(adj)[0])
    rect = torch.rand(3, 5, 2, generator=gen) > 0.3
    src, dst = bipartite_dense_to_sparse(rect)
    b, i, j = rect.nonzero(as_tuple=True)
    assert torch.equal(src, b * 5 + i) and torch.equal(dst, b * 2 + j)
    with pytest.raises(ValueError, match='2-D or 3-D'):
        bipartite_dense_to_sparse(torch.ones(2, 2, 2, 2, dtype=torch.bool))


def test_merge_edges_matches_pyg_coalesce_with_max():
    gen = torch.Generator().manual_seed(6)
    a = torch.randint(0, 9, (2, 40), generator=gen)
    b = torch.randint(0, 9, (2, 25), generator=gen)
    attr_a = torch.zeros(40, dtype=torch.uint8)
    attr_b = torch.randint(1, 5, (25,), generator=gen).to(torch.uint8)
    got_index, got_attr = merge_edges([a, b], [attr_a, attr_b], reduce='max', num_nodes=9)
    ref_index, ref_attr = coalesce(torch.cat([a, b], 1), torch.cat([attr_a, attr_b]), num_nodes=9, reduce='max')
    assert torch.equal(got_index, ref_index)
    assert torch.equal(got_attr, ref_attr) and got_attr.dtype == torch.uint8
    index_only, none = merge_edges([a, b])
    assert torch.equal(index_only, ref_index) and none is None


def test_subgraph_by_mask_keeps_edges_between_kept_nodes_in_order():
    edge_index = torch.tensor([[0, 1, 2, 3, 1], [1, 2, 3, 0, 3]])
    mask = torch.tensor([True, True, False, True])
    assert subgraph_by_mask(mask, edge_index).tolist() == [[0, 3, 1], [1, 0, 3]]


def test_radius_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match='coordinates'):
        radius(torch.zeros(3, 2), torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match='both be given'):
        radius(torch.zeros(3, 2), torch.zeros(2, 2), 1.0, batch_x=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match='flow'):
        radius_graph(torch.zeros(3, 2), 1.0, flow='sideways')


def test_radius_all_pairs_property_on_random_float_cloud():
    # Uncapped: the edge set is exactly the set of same-example pairs closer than r (float inputs).
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(50, 2, generator=gen) * 10
    batch = torch.arange(50) // 20
    got = radius_graph(x, 2.5, batch, loop=False, max_num_neighbors=1000)
    pairs = {(j, i) for i, j in itertools.permutations(range(50), 2)
             if batch[i] == batch[j] and float(((x[i] - x[j]) ** 2).sum()) < 2.5 ** 2}
    assert set(map(tuple, got.t().tolist())) == pairs


@pytest.mark.parametrize('seed,cap', [(11, 300), (12, 2)])
def test_radius_masks_equal_filtering_the_capped_result(seed, cap):
    """x_mask / y_mask act after the cap: masked points still use up cap slots, exactly like filtering afterwards."""
    x, batch_x = integer_cloud(70, 4, seed)
    y, batch_y = integer_cloud(40, 4, seed + 100)
    gen = torch.Generator().manual_seed(seed)
    x_mask, y_mask = torch.rand(70, generator=gen) > 0.4, torch.rand(40, generator=gen) > 0.3
    full = radius(x, y, 5.0, batch_x, batch_y, max_num_neighbors=cap, batch_size=4)
    expected = full[:, y_mask[full[0]] & x_mask[full[1]]]
    got = radius(x, y, 5.0, batch_x, batch_y, max_num_neighbors=cap, batch_size=4, x_mask=x_mask, y_mask=y_mask)
    assert torch.equal(got, expected)
    single = radius(x, y, 5.0, max_num_neighbors=cap, x_mask=x_mask)
    unmasked = radius(x, y, 5.0, max_num_neighbors=cap)
    assert torch.equal(single, unmasked[:, x_mask[unmasked[1]]])
    with pytest.raises(ValueError, match='x_mask'):
        radius(x, y, 5.0, batch_x, batch_y, x_mask=x_mask.float())


@pytest.mark.parametrize('cap_counts_self', [True, False])
def test_radius_graph_masks_and_known_sizes_equal_the_filtered_graph(cap_counts_self):
    x, batch = integer_cloud(90, 3, 21)
    gen = torch.Generator().manual_seed(21)
    source_mask, target_mask = torch.rand(90, generator=gen) > 0.3, torch.rand(90, generator=gen) > 0.5
    for cap in (300, 3):
        full = radius_graph(x, 5.0, batch, max_num_neighbors=cap, batch_size=3, cap_counts_self=cap_counts_self)
        expected = full[:, source_mask[full[0]] & target_mask[full[1]]]
        most = int(torch.bincount(batch).max())
        got = radius_graph(x, 5.0, batch, max_num_neighbors=cap, batch_size=3, cap_counts_self=cap_counts_self,
                           max_per_example=most, source_mask=source_mask, target_mask=target_mask)
        assert torch.equal(got, expected)
        # Known padded sizes (e.g. from the host) give the same edges as sizes found on the device.
        assert torch.equal(radius_graph(x, 5.0, batch, max_num_neighbors=cap, batch_size=3, max_per_example=most,
                                        cap_counts_self=cap_counts_self), full)


def test_max_nodes_per_example_reads_host_offsets_and_detects_stale_ones():
    from torch_geometric.data import Batch, HeteroData

    def scene(num_agents):
        data = HeteroData()
        data['agent'].position = torch.zeros(num_agents, 3)
        return data

    batch = Batch.from_data_list([scene(3), scene(7), scene(5)])
    assert graph.max_nodes_per_example(batch, 'agent') == 7
    assert graph.max_nodes_per_example(scene(4), 'agent') == 4
    batch['agent'].position = torch.zeros(14, 3)  # nodes changed after batching: offsets no longer describe them
    assert graph.max_nodes_per_example(batch, 'agent') is None
