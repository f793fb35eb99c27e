"""Graph construction for QCNet: radius neighbourhoods, dense-mask-to-edge conversion, edge merging.

Edge-index convention (PyG, ``flow='source_to_target'``): ``edge_index[0]`` = source (neighbour, sends the message),
``edge_index[1]`` = target (receives). All functions keep their tensors on the input device.

``radius``/``radius_graph`` use ``torch_cluster`` when it is importable and a pure-torch implementation otherwise.
The pure-torch version reproduces torch_cluster's CUDA kernel exactly: a point ``x_j`` is a neighbour of ``y_i`` iff
both belong to the same example and ``sum_d (x_jd - y_id)^2 < r^2`` (strict, in the input dtype); when more than
``max_num_neighbors`` points qualify, the ones with the LOWEST index in ``x`` are kept; edges are ordered by ``y``
index, then ``x`` index. (torch_cluster's CPU kernel walks a k-d tree instead, so on CPU with torch_cluster installed
the order, and which neighbours survive a cap, may differ; the sets agree whenever no cap is hit.)
"""
from typing import List, Optional, Sequence, Tuple

import torch

try:  # optional compiled backend
    import torch_cluster as _torch_cluster
except ImportError:  # pragma: no cover - depends on the environment
    _torch_cluster = None

# Upper bound on the number of (query, candidate) pairs materialised at once by the pure-torch radius search;
# bounds the temporary memory to a few hundred MiB on large batches.
_RADIUS_PAIR_BUDGET = 1 << 26


def torch_cluster_available() -> bool:
    """True when the compiled ``torch_cluster`` backend is used by :func:`radius`/:func:`radius_graph`."""
    return _torch_cluster is not None


def _padded_layout(batch: Optional[torch.Tensor], num_nodes: int, batch_size: int, device: torch.device
                   ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """Per-node (example, slot) coordinates of a sorted batch vector, the per-example start offsets [B] and the
    per-example node counts [B] (None, None, [0], None without a batch vector). No host synchronisation."""
    if batch is None:
        return None, None, torch.zeros(1, dtype=torch.long, device=device), None
    # index_add into a host-sized buffer (bincount would synchronise to find the number of bins on CUDA).
    counts = torch.zeros(batch_size, dtype=torch.long, device=device).index_add_(
        0, batch, torch.ones_like(batch))
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(num_nodes, device=device) - start[batch]
    return batch, slot, start, counts


def _radius_pure(x: torch.Tensor, y: torch.Tensor, r: float, batch_x: Optional[torch.Tensor],
                 batch_y: Optional[torch.Tensor], max_num_neighbors: int, batch_size: int,
                 ignore_same_index: bool, max_per_example: Optional[Tuple[int, int]] = None,
                 x_mask: Optional[torch.Tensor] = None, y_mask: Optional[torch.Tensor] = None,
                 drop_same_index_after_cap: bool = False) -> torch.Tensor:
    device = x.device
    bx, slot_x, start_x, counts_x = _padded_layout(batch_x, x.size(0), batch_size, device)
    by, slot_y, start_y, counts_y = _padded_layout(batch_y, y.size(0), batch_size, device)

    def padded(values: Optional[torch.Tensor], example: Optional[torch.Tensor], slot: Optional[torch.Tensor],
               size: int, fill) -> Optional[torch.Tensor]:
        """[num_points, ...] -> [B, size, ...] in the padded layout (pass-through view without a batch)."""
        if values is None or example is None:
            return None if values is None else values.unsqueeze(0)
        out = torch.full((batch_size, size) + tuple(values.shape[1:]), fill, dtype=values.dtype, device=device)
        out[example, slot] = values
        return out

    if bx is None:
        max_x, max_y = x.size(0), y.size(0)
        real_x = real_y = None  # no padding
    else:
        if max_per_example is None:
            # One host sync for the padded sizes (callers that know them pass max_per_example).
            max_x, max_y = (int(v) for v in torch.stack([counts_x.max(), counts_y.max()]).tolist())
        else:
            max_x, max_y = max_per_example
        real_x = padded(torch.ones_like(bx, dtype=torch.bool), bx, slot_x, max_x, False)
        real_y = padded(torch.ones_like(by, dtype=torch.bool), by, slot_y, max_y, False)
    xp = padded(x, bx, slot_x, max_x, 0)
    yp = padded(y, by, slot_y, max_y, 0)
    keep_x = padded(x_mask, bx, slot_x, max_x, False)
    keep_y = padded(y_mask, by, slot_y, max_y, False)
    num_examples = xp.size(0)
    r2 = torch.full((), r * r, dtype=x.dtype, device=device)  # r^2 rounded to the input dtype, like the CUDA kernel
    examples_per_chunk = max(1, _RADIUS_PAIR_BUDGET // max(1, max_x * max_y))
    rows: List[torch.Tensor] = []
    cols: List[torch.Tensor] = []
    for b0 in range(0, num_examples, examples_per_chunk):
        b1 = min(num_examples, b0 + examples_per_chunk)
        xc, yc = xp[b0:b1], yp[b0:b1]
        dist = None
        for d in range(x.size(1)):  # accumulate dimension by dimension, as the kernel does
            diff = xc[:, None, :, d] - yc[:, :, None, d]
            dist = diff * diff if dist is None else dist + diff * diff
        within = dist < r2  # [c, max_y, max_x]
        if real_x is not None:
            within &= real_y[b0:b1, :, None] & real_x[b0:b1, None, :]
        same_index = None
        if ignore_same_index or drop_same_index_after_cap:
            gx = start_x[b0:b1, None] + torch.arange(max_x, device=device)
            gy = start_y[b0:b1, None] + torch.arange(max_y, device=device)
            same_index = gy[:, :, None] == gx[:, None, :]
            if ignore_same_index:
                within &= ~same_index
        # Cap: keep the first max_num_neighbors candidates in x-index order.
        rank = torch.cumsum(within.to(torch.int32), dim=-1)
        within &= rank <= max_num_neighbors
        # Filters on the capped result (the same edges as filtering the output afterwards, in one pass).
        if drop_same_index_after_cap:
            within &= ~same_index
        if keep_y is not None:
            within &= keep_y[b0:b1, :, None]
        if keep_x is not None:
            within &= keep_x[b0:b1, None, :]
        b, i, j = within.nonzero(as_tuple=True)
        b = b + b0
        rows.append(start_y[b] + i)
        cols.append(start_x[b] + j)
    return torch.stack([torch.cat(rows), torch.cat(cols)], dim=0)


def _filter_edges(edge_index: torch.Tensor, row_mask: Optional[torch.Tensor], col_mask: Optional[torch.Tensor]
                  ) -> torch.Tensor:
    keep = None
    if row_mask is not None:
        keep = row_mask[edge_index[0]]
    if col_mask is not None:
        keep = col_mask[edge_index[1]] if keep is None else keep & col_mask[edge_index[1]]
    return edge_index if keep is None else edge_index[:, keep]


def radius(x: torch.Tensor, y: torch.Tensor, r: float, batch_x: Optional[torch.Tensor] = None,
           batch_y: Optional[torch.Tensor] = None, max_num_neighbors: int = 32, batch_size: Optional[int] = None,
           ignore_same_index: bool = False, max_per_example: Optional[Tuple[int, int]] = None,
           x_mask: Optional[torch.Tensor] = None, y_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """For every point of ``y`` [M, D], the points of ``x`` [N, D] closer than ``r`` (same example only).

    ``batch_x`` [N] / ``batch_y`` [M]: sorted example ids (``None`` = one example). ``max_num_neighbors`` caps the
    neighbours per ``y`` point. ``ignore_same_index`` skips ``x_i`` for ``y_i`` (same global index).
    Returns LongTensor [2, E]: row 0 indexes ``y``, row 1 indexes ``x`` (torch_cluster's convention).

    Options that only save work (results unchanged): ``max_per_example`` = (most x points, most y points in one
    example), when known on the host (else the pure-torch search synchronises once to find them);
    ``x_mask`` [N] / ``y_mask`` [M] (bool) drop the edges of masked-out points AFTER the cap, i.e. the same edges as
    filtering the output afterwards, without a second data-dependent indexing pass.
    """
    if x.numel() == 0 or y.numel() == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    x = x.view(-1, 1) if x.dim() == 1 else x
    y = y.view(-1, 1) if y.dim() == 1 else y
    if x.size(1) != y.size(1):
        raise ValueError(f'radius: x has {x.size(1)} coordinates per point but y has {y.size(1)}')
    for name, mask, points in (('x_mask', x_mask, x), ('y_mask', y_mask, y)):
        if mask is not None and (mask.dtype != torch.bool or mask.shape != points.shape[:1]):
            raise ValueError(f'radius: {name} must be a bool tensor of shape [{points.size(0)}], '
                             f'got {mask.dtype} {tuple(mask.shape)}')
    x, y = x.contiguous(), y.contiguous()
    if batch_size is None:
        batch_size = 1
        if batch_x is not None or batch_y is not None:
            maxima = [b.max() for b in (batch_x, batch_y) if b is not None]
            batch_size = int(torch.stack(maxima).max()) + 1
    if batch_size > 1 and (batch_x is None or batch_y is None):
        raise ValueError('radius: batch_x and batch_y must both be given for more than one example')
    if batch_size == 1:
        batch_x = batch_y = None
    if _torch_cluster is not None:
        # Only pass ignore_same_index when needed: torch_cluster <= 1.6.3 does not know the argument.
        kwargs = {'ignore_same_index': True} if ignore_same_index else {}
        edge_index = _torch_cluster.radius(x, y, r, batch_x, batch_y, max_num_neighbors, **kwargs)
        return _filter_edges(edge_index, y_mask, x_mask)
    return _radius_pure(x, y, r, batch_x, batch_y, max_num_neighbors, batch_size, ignore_same_index,
                        max_per_example, x_mask, y_mask)


def radius_graph(x: torch.Tensor, r: float, batch: Optional[torch.Tensor] = None, loop: bool = False,
                 max_num_neighbors: int = 32, flow: str = 'source_to_target', batch_size: Optional[int] = None,
                 cap_counts_self: bool = True, max_per_example: Optional[int] = None,
                 source_mask: Optional[torch.Tensor] = None, target_mask: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Edges between points of ``x`` [N, D] closer than ``r`` within each example of ``batch`` [N].

    Returns LongTensor [2, E]; with ``flow='source_to_target'`` row 0 is the neighbour and row 1 the centre point,
    edges grouped by centre. ``cap_counts_self`` selects the cap semantics when ``loop=False``:
    ``True`` (torch_cluster <= 1.6.3 releases, as in the official QCNet environment): the search keeps
    ``max_num_neighbors + 1`` points including the centre itself, then drops the self edge, so a centre whose own
    index lies beyond the first ``max_num_neighbors + 1`` candidates keeps one extra neighbour;
    ``False`` (later torch_cluster): the centre is skipped during the search and exactly the first
    ``max_num_neighbors`` other points are kept.

    Work savers (results unchanged): ``max_per_example`` (most points in one example, if known on the host);
    ``source_mask`` / ``target_mask`` [N] (bool): keep only edges whose neighbour / centre is set, applied after the
    cap (= filtering the output afterwards).
    """
    if flow not in ('source_to_target', 'target_to_source'):
        raise ValueError(f"radius_graph: flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
    sizes = (max_per_example, max_per_example) if max_per_example is not None else None
    # In radius() terms the centre is y (row 0) and the neighbour x (row 1).
    if loop or cap_counts_self:
        cap = max_num_neighbors if loop else max_num_neighbors + 1
        if _torch_cluster is None and x.numel() > 0:
            x = x.view(-1, 1) if x.dim() == 1 else x
            bs = batch_size
            if bs is None:
                bs = int(batch.max()) + 1 if batch is not None else 1
            edge_index = _radius_pure(x.contiguous(), x.contiguous(), r, batch if bs > 1 else None,
                                      batch if bs > 1 else None, cap, bs, False, sizes, source_mask, target_mask,
                                      drop_same_index_after_cap=not loop)
        else:
            edge_index = radius(x, x, r, batch, batch, cap, batch_size=batch_size, max_per_example=sizes,
                                x_mask=source_mask, y_mask=target_mask)
            if not loop:
                edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    else:
        edge_index = radius(x, x, r, batch, batch, max_num_neighbors, batch_size=batch_size, ignore_same_index=True,
                            max_per_example=sizes, x_mask=source_mask, y_mask=target_mask)
    if flow == 'source_to_target':
        edge_index = edge_index.flip(0)
    return edge_index


def max_nodes_per_example(data, node_type: str) -> Optional[int]:
    """Most ``node_type`` nodes in one example of a PyG ``Batch`` (or the node count of a single ``HeteroData``),
    read on the host: from the Batch's CPU-side slice offsets of the nodes' ``position``, so no device
    synchronisation. None when they are missing or do not match the store (e.g. nodes were added or removed after
    batching): callers then let the search find the sizes on the device."""
    store = data[node_type]
    if 'position' not in store:
        return None
    from torch_geometric.data import Batch
    if not isinstance(data, Batch):
        return store['position'].size(0) if 'batch' not in store else None
    try:
        slice_dict = data._slice_dict  # kept on the host by Batch.from_data_list (stored in the global store)
    except (AttributeError, KeyError):
        return None
    offsets = (slice_dict or {}).get(node_type, {}).get('position')
    num_graphs = data.num_graphs
    if offsets is None or offsets.numel() != num_graphs + 1 or offsets.device.type != 'cpu':
        return None
    offsets = offsets.tolist()
    if offsets[-1] != store['position'].size(0):
        return None
    return max((b - a for a, b in zip(offsets[:-1], offsets[1:])), default=0)


def bipartite_dense_to_sparse(adj: torch.Tensor) -> torch.Tensor:
    """Edges of a boolean adjacency [N, M] or a batch of them [B, N, M] as LongTensor [2, E].

    For the batched form, source ``i`` of block ``b`` becomes ``b * N + i`` and target ``j`` becomes ``b * M + j``.
    Edges come in row-major order of ``adj`` (same as ``torch_geometric.utils.dense_to_sparse``).
    """
    index = adj.nonzero(as_tuple=True)
    if len(index) == 3:
        index = (index[0] * adj.size(1) + index[1], index[0] * adj.size(2) + index[2])
    elif len(index) != 2:
        raise ValueError(f'bipartite_dense_to_sparse expects a 2-D or 3-D adjacency, got shape {tuple(adj.shape)}')
    return torch.stack(index, dim=0)


def subgraph_by_mask(node_mask: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Edges [2, E'] of ``edge_index`` whose two endpoints are both set in the boolean ``node_mask`` [N]."""
    return edge_index[:, node_mask[edge_index[0]] & node_mask[edge_index[1]]]


def merge_edges(edge_indices: Sequence[torch.Tensor], edge_attrs: Optional[Sequence[torch.Tensor]] = None,
                reduce: str = 'add', num_nodes: Optional[int] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Union of several edge sets with duplicates merged (``reduce`` in add/sum/max/min/mean over their attributes).

    Output edges are sorted by (source, target), like ``torch_geometric.utils.coalesce``. Attributes keep their
    dtype. ``num_nodes`` (> every index) avoids a host sync when given.
    """
    edge_index = torch.cat(list(edge_indices), dim=1)
    if num_nodes is None:
        num_nodes = int(edge_index.max()) + 1 if edge_index.numel() > 0 else 0
    key = edge_index[0] * max(num_nodes, 1) + edge_index[1]
    unique_key, inverse = torch.unique(key, sorted=True, return_inverse=True)
    merged_index = torch.stack([unique_key // max(num_nodes, 1), unique_key % max(num_nodes, 1)], dim=0)
    if edge_attrs is None:
        return merged_index, None
    edge_attr = torch.cat(list(edge_attrs), dim=0)
    reductions = {'add': 'sum', 'sum': 'sum', 'max': 'amax', 'min': 'amin', 'mean': 'mean'}
    if reduce not in reductions:
        raise ValueError(f'merge_edges: unsupported reduce {reduce!r} (use one of {sorted(reductions)})')
    work_dtype = edge_attr.dtype if edge_attr.is_floating_point() else torch.long
    src = edge_attr.to(work_dtype)
    out = src.new_zeros((unique_key.numel(),) + tuple(src.shape[1:]))
    index = inverse.view((-1,) + (1,) * (src.dim() - 1)).expand_as(src)
    out = out.scatter_reduce(0, index, src, reduce=reductions[reduce], include_self=False)
    return merged_index, out.to(edge_attr.dtype)
