"""torch.compile in one place: the compiled functions of the process (one per function, shared by every layer that
runs it) and the persistent on-disk cache of the compiled kernels."""
import os
from typing import Callable, Dict, Optional

import torch

# Compiled layer functions take the layer as an argument, so a copied layer (SmartPretrain's momentum branch) runs
# the same compiled function on its own weights, and the layer variants share one dynamo cache.
_COMPILED: Dict[Callable, Callable] = {}
# QCNet has more layer variants and instances than dynamo's default recompile limit of 8, past which a function
# silently runs eagerly.
RECOMPILE_LIMIT = 64


def compiled(function: Callable) -> Callable:
    """``torch.compile(function, dynamic=True)``, made once per function."""
    result = _COMPILED.get(function)
    if result is None:
        import torch._dynamo
        limit = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') else 'cache_size_limit'
        setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), RECOMPILE_LIMIT))
        # Without duck shaping: sizes that happen to be equal in the first call (padded capacities are multiples of
        # 32, so a node count and an edge count often are) would otherwise share one symbol, and every later call
        # where they differ would trace a new graph.
        import torch.fx.experimental._config as fx_config
        fx_config.use_duck_shape = False
        avoid_mix_order_reduction()
        result = _COMPILED[function] = torch.compile(function, dynamic=True)
    return result


def avoid_mix_order_reduction() -> None:
    """Turns off inductor's mix-order reduction (Triton backends, on by default since torch 2.10), which fuses a
    per-row reduction with the per-column sums of a parameter gradient. In the torch releases we run on GPUs it
    returns wrongly shaped gradients for broadcast parameters such as the stacked [1, 1, H] norm scales of a
    one-scalar Fourier embedding (https://github.com/pytorch/pytorch/issues/178080, seen here with torch 2.11) and,
    for scale tables sliced from one tensor, silently wrong ones (https://github.com/pytorch/pytorch/issues/193061).
    Correct gradients come first."""
    import torch._inductor.config as inductor_config
    if hasattr(inductor_config.triton, 'mix_order_reduction'):
        inductor_config.triton.mix_order_reduction = False


def graph_input(value):
    """A compiled function's argument with its tensors as plain contiguous tensors. Dynamo guards the strides of
    each input tensor and, for a view, the layout of the tensor it views, so the same call with a view of another
    tensor (the output of a split-K linear map is a view of its 3-D result, the decoder's first queries are one
    embedding expanded over the slots) would trace a graph of its own. A contiguous view is re-labelled without a
    copy (``_unsafe_view``, as torch.matmul does with its folded result; nothing writes into these tensors), other
    layouts are copied."""
    if isinstance(value, tuple):
        return tuple(graph_input(item) for item in value)
    if not isinstance(value, torch.Tensor):
        return value
    if not value.is_contiguous():
        return value.contiguous()
    return torch.ops.aten._unsafe_view(value, value.shape) if value._is_view() else value


def use_compile_cache_dir(path: Optional[str]) -> Optional[str]:
    """Keeps inductor's compiled kernels (and triton's, which inductor places below it) and the traced
    forward-backward graphs in ``path``, so a later run with the same shapes loads them instead of compiling again;
    None leaves inductor's default (a folder under the system temporary directory, or TORCHINDUCTOR_CACHE_DIR).
    Inductor reads the folder from TORCHINDUCTOR_CACHE_DIR at each compilation, so this is set before the first
    one. Returns the folder in use."""
    if path is not None:
        os.makedirs(path, exist_ok=True)
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.abspath(path)
    import torch._inductor.config
    torch._inductor.config.fx_graph_cache = True  # compiled graphs (forward and backward)
    torch._inductor.config.autotune_local_cache = True
    import torch._functorch.config
    if hasattr(torch._functorch.config, 'enable_autograd_cache'):
        torch._functorch.config.enable_autograd_cache = True  # the forward-backward split of each graph
    if hasattr(torch._functorch.config, 'autograd_cache_allow_custom_autograd_functions'):
        # The attention layers' custom autograd functions (acceleration/kernels/gather_scatter.py) are traced into
        # the graph with their forward and backward, which the cache key covers; without this switch every graph
        # holding one bypasses the cache and is traced forward and backward again at each start.
        torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    return os.environ.get('TORCHINDUCTOR_CACHE_DIR')


def set_activation_memory_budget(budget: float) -> None:
    """Fraction of the compiled functions' activations their backward may keep (process-wide setting of the
    compiled backward's partitioner; below 1 it recomputes more of the forward)."""
    import torch._functorch.config
    torch._functorch.config.activation_memory_budget = budget
