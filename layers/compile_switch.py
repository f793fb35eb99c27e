"""Shared torch.compile switch of the layers (attention, Fourier embedding): when their compiled function runs."""
from typing import Callable, Dict

import torch


def compile_shared(function: Callable) -> Callable:
    """``torch.compile(function, dynamic=True)`` for a function shared by every instance of a layer class (the layer
    is an argument): each layer variant and instance compiles once, and QCNet has more of them than dynamo's default
    recompile limit of 8, past which it would silently run eagerly; the limit is raised to 64."""
    import torch._dynamo
    limit = 'recompile_limit' if hasattr(torch._dynamo.config, 'recompile_limit') else 'cache_size_limit'
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    return torch.compile(function, dynamic=True)


# One compiled function per layer class, shared by all its instances (the layer is an argument): a copied layer
# (e.g. SmartPretrain's momentum branch) keeps working on its own weights, and the layer variants share one cache.
_COMPILED: Dict[type, Callable] = {}


class CompileSwitch:
    """Mixin of a layer with a compiled path. ``compiled_method`` names the layer's function (taking the layer as
    first argument) that ``torch.compile`` runs (dynamic shapes): for calls with gradients while training after
    ``compile_for_training``, for no-grad calls (evaluation, prediction; val.py / test.py --compile) after
    ``compile_for_inference``; every other call stays eager. Inductor fuses the layer's many small elementwise and
    normalisation kernels; same function, float-rounding-level differences."""

    compiled_method = ''
    compiled_training = False
    compiled_inference = False

    def _compiled_function(self) -> Callable:
        cls = type(self)
        function = _COMPILED.get(cls)
        if function is None:
            function = _COMPILED[cls] = compile_shared(getattr(cls, cls.compiled_method))
        return function

    def compile_for_inference(self) -> None:
        self._compiled_function()
        self.compiled_inference = True

    def compile_for_training(self) -> None:
        self._compiled_function()
        self.compiled_training = True

    def _use_compiled(self) -> bool:
        if torch.is_grad_enabled():
            return self.compiled_training and self.training
        return self.compiled_inference

    def run_compiled(self, *args):
        """The compiled ``compiled_method`` on this layer and ``args``."""
        return self._compiled_function()(self, *args)
