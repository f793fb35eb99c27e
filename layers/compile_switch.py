"""Shared torch.compile switch of the layers (attention, Fourier embedding): when their compiled function runs."""
from typing import Callable

import torch


def compile_shared(function: Callable) -> Callable:
    """``torch.compile(function, dynamic=True)`` for a function shared by every instance of a layer class (the layer
    is an argument): each layer variant and instance compiles once, and QCNet has more of them than dynamo's default
    recompile limit of 8, past which it would silently run eagerly; the limit is raised to 64."""
    import torch._dynamo
    limit = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') else 'cache_size_limit'
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    return torch.compile(function, dynamic=True)


class CompileSwitch:
    """Mixin of a layer with a compiled path: ``compiled_training`` (calls with gradients while training) and
    ``compiled_inference`` (no-grad calls) are set by the layer's compile_for_training / compile_for_inference."""

    compiled_training = False
    compiled_inference = False

    def _use_compiled(self) -> bool:
        if torch.is_grad_enabled():
            return self.compiled_training and self.training
        return self.compiled_inference
