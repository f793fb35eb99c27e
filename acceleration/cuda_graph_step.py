"""The fixed-shape training step replayed as a CUDA graph, for any of the project's Lightning modules.

Why: an eager step of these models is launch-bound (H200, QCNet at B = 4: 44 ms of GPU work in a 188 ms step, 6,600
kernel launches). A CUDA graph replays every kernel of a captured step with one launch, but needs fixed shapes and no
host synchronisation. So a step here is:

1. the batch's data-dependent part (e.g. QCNet's edge lists) prepared eagerly, or taken from the loader workers;
2. its tensors copied into static buffers padded to *capacities* (``CapacityLadder``; a padding scheme per model,
   e.g. ``acceleration.padded_qcnet_batch.QCNetPadding``);
3. the fixed-shape rest (forward, loss, backward; or forward only) captured once per capacity and replayed; then,
   outside the graph, the gradients averaged across processes (a replay bypasses DDP's autograd hooks), clipped,
   and the optimiser stepped.

What a module provides: ``padded_step_losses(padded) -> {'loss': ..., other scalars}`` (training) and
``padded_forward(padded) -> {name: per-row tensor}`` (evaluation), both computed from the static buffers only.
Without a CUDA device (``capture=False``) the same padded step runs eagerly: the CPU tests compare it with the plain
step.
"""
import math
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from acceleration.gradient_averaging import average_gradients

# Capacities are multiples of this (aligned rows for the matmuls; split-K linear maps need rows in 32 chunks).
ROUND = 32

class CapacityLadder:
    """Capacities for batches of varying size: rung k = reference sizes x growth^k (rounded up), for every count
    at once, so one number (k) names a capacity and a training run sees only a few of them (batch totals of B
    scenes vary by roughly +-1/sqrt(B) of a scene's variation).

    The reference is the first batch seen; rung(sizes) is the smallest k whose capacities hold every count of
    ``sizes`` plus one padding node/edge. Waste: each count is padded by at most ``growth`` x (it or the count that
    sets the rung).
    """

    def __init__(self, growth: float = 1.1) -> None:
        if growth <= 1.0:
            raise ValueError(f'CapacityLadder: growth must be > 1, got {growth}')
        self.growth = growth
        self.reference: Optional[Dict[str, int]] = None

    def rung(self, sizes: Mapping[str, int]) -> int:
        if self.reference is None:
            self.reference = {name: max(int(count), 1) for name, count in sizes.items()}
        ratio = max((int(sizes[name]) + 1) / self.reference[name] for name in self.reference)
        rung = math.ceil(math.log(ratio) / math.log(self.growth) - 1e-9)
        # Rounding capacities up to whole rows of ROUND can make a lower rung hold the batch too.
        while self._holds(self.capacities(rung - 1), sizes) and rung > -1000:
            rung -= 1
        return rung

    @staticmethod
    def _holds(capacities: Mapping[str, int], sizes: Mapping[str, int]) -> bool:
        return all(int(sizes[name]) < capacities[name] for name in capacities)

    def capacities(self, rung: int) -> Dict[str, int]:
        scale = self.growth ** rung
        return {name: max(ROUND, ROUND * math.ceil(count * scale / ROUND))
                for name, count in self.reference.items()}


class _Capture:
    """One capacity and structure: its static buffers and (on CUDA) the captured graph with its static outputs."""

    def __init__(self, padded) -> None:
        self.padded = padded
        self.cuda_graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Optional[Dict[str, torch.Tensor]] = None
        self.grads: Optional[List[Optional[torch.Tensor]]] = None


class FixedShapeRunner:
    """Runs ``body(padded)`` on padded batches; on CUDA (``capture=True``) each capacity is captured once as a CUDA
    graph and replayed afterwards. ``train``: the body also runs the backward pass (gradients of ``params`` land in
    buffers of the graph's memory pool, which ``param.grad`` is pointed at after each replay). ``capture`` None:
    capture where the module's parameters are on a CUDA device.

    At most ``max_graphs`` capacities are kept (least recently used dropped first); they share one memory pool, which
    is safe because replays never overlap and each replay's outputs are read before the next. The graphs read the
    parameters' memory: the optimiser steps in place, and when the parameters move (``.to()``, Lightning's
    end-of-fit move to the CPU) every graph is dropped and captured again.
    """

    def __init__(self, module: torch.nn.Module, padding, body: Callable, train: bool, capture: Optional[bool] = None,
                 growth: float = 1.1, warmup: int = 2, max_graphs: int = 8) -> None:
        self.module, self.padding, self.body, self.train = module, padding, body, train
        self.capture, self.warmup, self.max_graphs = capture, warmup, max_graphs
        self.ladder = CapacityLadder(growth)
        self._entries: 'OrderedDict[Hashable, _Capture]' = OrderedDict()
        self._pool = None
        self._fingerprint: Optional[Tuple[int, ...]] = None
        self.num_captures = 0
        self.last_sizes: Optional[Dict[str, int]] = None
        self.last_capacities: Optional[Dict[str, int]] = None

    def params(self) -> List[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def _run_body(self, padded) -> Dict[str, torch.Tensor]:
        # Autocast's weight-cast cache must be off while capturing (its cached casts would be freed memory).
        device = next(self.module.parameters()).device.type
        autocast_on = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast_on else None
        with torch.autocast(device, dtype=dtype, enabled=autocast_on, cache_enabled=False):
            if not self.train:
                with torch.no_grad():
                    return dict(self.body(padded))
            losses = self.body(padded)
        losses['loss'].backward()
        return {name: value.detach() for name, value in losses.items()
                if isinstance(value, torch.Tensor) and value.dim() == 0}

    def _entry(self, sizes: Mapping[str, int], key: Hashable, payload) -> _Capture:
        rung = self.ladder.rung(sizes)
        full_key = (rung, key)
        entry = self._entries.get(full_key)
        if entry is not None:
            self._entries.move_to_end(full_key)
            return entry
        if len(self._entries) >= self.max_graphs:
            self._entries.popitem(last=False)
        entry = self._entries[full_key] = _Capture(self.padding.allocate(payload, self.ladder.capacities(rung)))
        return entry

    def _capture(self, entry: _Capture) -> None:
        """Warm-up runs on a side stream (lazy initialisations and torch.compile stay out of the graph), then the
        capture."""
        params = self.params() if self.train else []
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                for p in params:
                    p.grad = None
                self._run_body(entry.padded)
        torch.cuda.current_stream().wait_stream(side)
        for p in params:  # the captured backward allocates the gradients in the graph's pool: they stay put
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        # With several processes (DDP) the NCCL watchdog thread polls CUDA events while this thread captures: the
        # default 'global' mode would fail those calls, 'thread_local' restricts the capture rules to this thread.
        distributed = dist.is_available() and dist.is_initialized()
        with torch.cuda.graph(graph, pool=self._pool,
                              capture_error_mode='thread_local' if distributed else 'global'):
            entry.outputs = self._run_body(entry.padded)
        if self._pool is None:
            self._pool = graph.pool()
        entry.cuda_graph = graph
        entry.grads = [p.grad for p in params]
        self.num_captures += 1

    def _forget_graphs_if_weights_moved(self) -> None:
        """A captured graph reads the parameters at the addresses they had when it was captured; when they moved
        (Lightning moves a module to the CPU at the end of fit/validate and back at the next), it would read freed
        memory, so every graph is dropped and captured again."""
        fingerprint = tuple(t.data_ptr() for t in list(self.module.parameters()) + list(self.module.buffers()))
        if fingerprint != self._fingerprint:
            self._entries.clear()
            self._pool = None
            self._fingerprint = fingerprint

    def __call__(self, batch) -> Dict[str, torch.Tensor]:
        """Training: the detached scalar losses (gradients in ``param.grad``); evaluation: the outputs of the real
        rows (``padding.real_rows``)."""
        self._forget_graphs_if_weights_moved()
        sizes, key, payload = self.padding.prepare(batch)
        entry = self._entry(sizes, key, payload)
        self.padding.fill(entry.padded, payload, sizes)
        self.last_sizes, self.last_capacities = dict(sizes), dict(self.ladder.capacities(self.ladder.rung(sizes)))
        capture = self.capture if self.capture is not None else next(self.module.parameters()).is_cuda
        if not capture:
            if self.train:  # as a replay does: this step's gradients replace the last step's
                for p in self.params():
                    p.grad = None
            outputs = self._run_body(entry.padded)
        else:
            if entry.cuda_graph is None:
                self._capture(entry)
            entry.cuda_graph.replay()
            outputs = entry.outputs
            if self.train:
                for p, grad in zip(self.params(), entry.grads):
                    p.grad = grad  # this capacity's gradient buffers (each graph has its own)
        if self.train:
            return {name: value.clone() for name, value in outputs.items()}
        return {name: value.clone() for name, value in self.padding.real_rows(outputs, sizes).items()}

    def capacity_rungs(self) -> List[int]:
        """The capacity rungs that have static buffers (and, on CUDA, a captured graph) now."""
        return sorted({key[0] for key in self._entries})


class CudaGraphStep:
    """The fixed-shape training step and evaluation forward of one Lightning module (see the module docstring).

    ``module``: provides ``padded_step_losses(padded)`` and ``padded_forward(padded)``; ``padding``: its padding
    scheme (``prepare(batch) -> (sizes, key, payload)``, ``allocate(payload, capacities)``,
    ``fill(padded, payload, sizes)``, ``real_rows(outputs, sizes)``); ``capture``: CUDA graphs (False: the padded
    step runs eagerly; None: capture where the module is on a CUDA device). The module trains with Lightning's
    manual optimisation (``acceleration.apply`` switches it) and calls ``train(batch, optimizer, clip_norm)`` from its training_step.
    """

    def __init__(self, module: torch.nn.Module, padding, capture: Optional[bool] = None) -> None:
        self.module = module
        self.training_runner = FixedShapeRunner(module, padding, module.padded_step_losses, train=True,
                                                capture=capture)
        self.inference_runner = FixedShapeRunner(module, padding, module.padded_forward, train=False,
                                                 capture=capture)

    def train(self, batch, optimizer, clip_norm: float = 0.0) -> Dict[str, torch.Tensor]:
        """One optimiser step on ``batch``: forward, loss and backward (replayed), gradients averaged over the
        processes as DDP would, clipped to ``clip_norm`` (0: not), ``optimizer.step()``. Returns the detached
        scalar losses."""
        losses = self.training_runner(batch)
        params = self.training_runner.params()
        average_gradients(params)
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip_norm)
        optimizer.step()
        return losses

    def infer(self, batch) -> Dict[str, torch.Tensor]:
        """The module's forward outputs of the real rows of ``batch`` (replayed, no gradients)."""
        return self.inference_runner(batch)
