"""Run-time helpers to import the official QCNet / SmartPretrain code next to this project (benchmarks only).

The official repositories use the same top-level package names as this project (layers, modules, utils, ...), and
need the compiled ``torch_cluster`` / ``torch_scatter``. ``import_official`` imports the requested official modules
in isolation (our packages are set aside and restored afterwards) and, when the compiled packages are missing,
installs small stand-ins written here from their documented semantics (torch_cluster 1.6.1, the version of the
official QCNet environment: CUDA-kernel neighbour order, self counted against the radius_graph cap). The stand-ins
are deliberately simple per-example loops, independent of ``utils.graph``, so they also cross-check it.
No official code is copied here; it is imported from the path given at run time.
"""
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Dict, List, Optional, Sequence

import torch

SHARED_PACKAGE_NAMES = ('layers', 'modules', 'utils', 'losses', 'predictors', 'metrics', 'datasets', 'transforms',
                        'datamodules')


def _reference_radius(x: torch.Tensor, y: torch.Tensor, r: float, batch_x: Optional[torch.Tensor] = None,
                      batch_y: Optional[torch.Tensor] = None, max_num_neighbors: int = 32, num_workers: int = 1,
                      batch_size: Optional[int] = None) -> torch.Tensor:
    """torch_cluster.radius (CUDA semantics): per y point, the first max_num_neighbors x points (index order) of
    the same example with squared distance < r^2. Returns [2, E] = (y index, x index)."""
    if x.numel() == 0 or y.numel() == 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    x = x.view(-1, 1) if x.dim() == 1 else x
    y = y.view(-1, 1) if y.dim() == 1 else y
    if batch_x is None:
        batch_x = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    if batch_y is None:
        batch_y = torch.zeros(y.size(0), dtype=torch.long, device=y.device)
    num_examples = int(max(batch_x.max(), batch_y.max())) + 1
    threshold = torch.tensor(r * r, dtype=x.dtype)
    rows: List[torch.Tensor] = []
    cols: List[torch.Tensor] = []
    for b in range(num_examples):
        xi = (batch_x == b).nonzero(as_tuple=True)[0]
        yi = (batch_y == b).nonzero(as_tuple=True)[0]
        if xi.numel() == 0 or yi.numel() == 0:
            continue
        diff = y[yi].unsqueeze(1) - x[xi].unsqueeze(0)  # [ny, nx, D]
        dist = torch.zeros(diff.shape[:2], dtype=x.dtype, device=x.device)
        for d in range(diff.size(-1)):
            dist = dist + diff[..., d] * diff[..., d]
        for q in range(yi.numel()):
            hits = (dist[q] < threshold).nonzero(as_tuple=True)[0][:max_num_neighbors]
            rows.append(yi[q].repeat(hits.numel()))
            cols.append(xi[hits])
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    return torch.stack([torch.cat(rows), torch.cat(cols)], dim=0)


def _reference_radius_graph(x: torch.Tensor, r: float, batch: Optional[torch.Tensor] = None, loop: bool = False,
                            max_num_neighbors: int = 32, flow: str = 'source_to_target', num_workers: int = 1,
                            batch_size: Optional[int] = None) -> torch.Tensor:
    """torch_cluster 1.6.1 radius_graph: search with cap max_num_neighbors (+1 without loops), drop self edges."""
    edge_index = _reference_radius(x, x, r, batch, batch, max_num_neighbors if loop else max_num_neighbors + 1)
    row, col = (edge_index[1], edge_index[0]) if flow == 'source_to_target' else (edge_index[0], edge_index[1])
    if not loop:
        keep = row != col
        row, col = row[keep], col[keep]
    return torch.stack([row, col], dim=0)


def _reference_segment_csr(src: torch.Tensor, indptr: torch.Tensor, out=None, reduce: str = 'sum') -> torch.Tensor:
    return torch.segment_reduce(src, reduce, offsets=indptr, axis=indptr.dim() - 1)


def _reference_gather_csr(src: torch.Tensor, indptr: torch.Tensor, out=None) -> torch.Tensor:
    return src.repeat_interleave(indptr[1:] - indptr[:-1], dim=0)


def install_fast_stand_ins() -> List[str]:
    """Like :func:`install_compiled_stand_ins`, but the torch_cluster stand-in runs this project's vectorised
    ``utils.graph`` search (same semantics, GPU friendly): for timing the official model, not for checking it."""
    from utils.graph import radius, radius_graph

    def fast_radius(x, y, r, batch_x=None, batch_y=None, max_num_neighbors=32, num_workers=1, batch_size=None):
        return radius(x, y, r, batch_x, batch_y, max_num_neighbors, batch_size=batch_size)

    def fast_radius_graph(x, r, batch=None, loop=False, max_num_neighbors=32, flow='source_to_target',
                          num_workers=1, batch_size=None):
        return radius_graph(x, r, batch, loop, max_num_neighbors, flow, batch_size=batch_size, cap_counts_self=True)

    return install_compiled_stand_ins(radius_fn=fast_radius, radius_graph_fn=fast_radius_graph)


def install_compiled_stand_ins(radius_fn=None, radius_graph_fn=None) -> List[str]:
    """Puts stand-in ``torch_cluster``/``torch_scatter`` modules in sys.modules where the real ones are missing.

    Lightning, torch_geometric and this project's ``utils.graph`` are imported first, so that they record the real
    (absent) backends and never pick the stand-ins up.
    """
    import pytorch_lightning  # noqa: F401  (its optional-import checks must not find the torchvision stand-in)
    import torch_geometric  # noqa: F401
    import utils.graph  # noqa: F401
    installed = []
    if importlib.util.find_spec('torch_cluster') is None and 'torch_cluster' not in sys.modules:
        module = types.ModuleType('torch_cluster')
        module.__spec__ = importlib.machinery.ModuleSpec('torch_cluster', None)
        module.radius = radius_fn or _reference_radius
        module.radius_graph = radius_graph_fn or _reference_radius_graph
        sys.modules['torch_cluster'] = module
        installed.append('torch_cluster')
    if importlib.util.find_spec('torch_scatter') is None and 'torch_scatter' not in sys.modules:
        module = types.ModuleType('torch_scatter')
        module.__spec__ = importlib.machinery.ModuleSpec('torch_scatter', None)
        module.segment_csr = _reference_segment_csr
        module.gather_csr = _reference_gather_csr
        sys.modules['torch_scatter'] = module
        installed.append('torch_scatter')
    if importlib.util.find_spec('torchvision') is None and 'torchvision' not in sys.modules:
        # Only the official FocalLoss (unused by QCNet) imports torchvision.ops.sigmoid_focal_loss.
        def sigmoid_focal_loss(*args, **kwargs):
            raise NotImplementedError('torchvision is not installed (stand-in imported for the official losses)')
        package = types.ModuleType('torchvision')
        package.__spec__ = importlib.machinery.ModuleSpec('torchvision', None)
        ops = types.ModuleType('torchvision.ops')
        ops.__spec__ = importlib.machinery.ModuleSpec('torchvision.ops', None)
        ops.sigmoid_focal_loss = sigmoid_focal_loss
        package.ops = ops
        sys.modules['torchvision'] = package
        sys.modules['torchvision.ops'] = ops
        installed.append('torchvision')
    return installed


def _pop_packages(names: Sequence[str]) -> Dict[str, types.ModuleType]:
    popped = {}
    for key in list(sys.modules):
        if key.split('.')[0] in names:
            popped[key] = sys.modules.pop(key)
    return popped


def import_official(repo_path: str, module_names: Sequence[str]) -> Dict[str, types.ModuleType]:
    """Imports ``module_names`` (e.g. 'predictors.qcnet') from the repository at ``repo_path`` without disturbing
    this project's packages of the same names. Returns {name: module}.

    The official modules stay registered under an alias ('official_<repo>.<name>') and their classes report that
    module name, so that torch_geometric (which resolves a layer's annotations through ``sys.modules`` and caches
    generated code per module and class name) never confuses the official AttentionLayer with ours.
    """
    install_compiled_stand_ins()
    repo_path = os.path.abspath(repo_path)
    alias_root = 'official_' + ''.join(c if c.isalnum() else '_' for c in os.path.basename(repo_path))
    ours = _pop_packages(SHARED_PACKAGE_NAMES)
    sys.path.insert(0, repo_path)
    try:
        imported = {name: importlib.import_module(name) for name in module_names}
    finally:
        sys.path.remove(repo_path)
        official = _pop_packages(SHARED_PACKAGE_NAMES)
        sys.modules.update(ours)
    for key, module in official.items():
        alias = f'{alias_root}.{key}'
        sys.modules[alias] = module
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == key:
                value.__module__ = alias
    for name, module in imported.items():
        origin = getattr(module, '__file__', '') or ''
        if not origin.startswith(repo_path):
            raise ImportError(f'{name} was imported from {origin}, not from {repo_path}')
    return imported


def forget_generated_propagate_modules() -> None:
    """Drops torch_geometric's generated ``<module>_<Class>_propagate`` modules from sys.modules.

    torch_geometric caches the code it generates for ``MessagePassing.propagate`` under a name built from the
    class's module and name, which are the same ('layers.attention_layer', 'AttentionLayer') for the official layer
    and ours; call this after building a model of one implementation so the other gets its own code.
    """
    for key in list(sys.modules):
        if key.endswith('_propagate') or key.endswith('_edge_updater'):
            if key.split('.')[0] in SHARED_PACKAGE_NAMES:
                del sys.modules[key]
