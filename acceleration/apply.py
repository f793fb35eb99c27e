"""``apply(model, options)``: installs run-time speed options into a model built from layers/ modules/ predictors/.

The model code is the plain reference math; its hooks are the ``ops`` attribute of the layers with faster forms
(layers/layer_ops.py: attention layers, Fourier embeddings, QCNet's decoder GRU), the agent encoder's
``checkpoint_layers`` switch, and three attributes of the Lightning modules (``fixed_shape_step``,
``fused_optimizer``, ``speed_callbacks``). Layers are found by type, so every model made of them (QCNet, SmartPretrain
with either backbone, ForecastMAE) goes through the same code. Nothing here touches parameters, buffers or
hyper-parameters: a checkpoint trained under any options loads and evaluates the same under any other.
"""
from typing import List

import pytorch_lightning as pl
import torch

from acceleration.compiled import set_activation_memory_budget, use_compile_cache_dir
from acceleration.kernels.layer_ops import CompiledOps, FusedOps, GRULoopOps, RecomputedOps
from acceleration.options import SpeedOptions
from layers.attention_layer import AttentionLayer
from layers.fourier_embedding import FourierEmbedding
from layers.layer_ops import PLAIN_OPS, LayerOps

_FUSED, _COMPILED, _RECOMPUTED = FusedOps(), CompiledOps(), RecomputedOps()


def _layer_ops(layer: torch.nn.Module, options: SpeedOptions) -> LayerOps:
    if isinstance(layer, AttentionLayer):
        if options.compile_attention:
            return _COMPILED
    elif isinstance(layer, FourierEmbedding):
        if options.compile_embeddings:
            return _COMPILED
        if options.recompute_embeddings:
            return _RECOMPUTED
    return _FUSED if options.fused_kernels else PLAIN_OPS


def _has_gru_hook(module: torch.nn.Module) -> bool:
    return hasattr(module, 'ops') and hasattr(type(module), 'ops') and hasattr(module, 'traj_emb')


def builds_edge_lists(model: torch.nn.Module) -> bool:
    """Whether ``model`` has edge lists to build beforehand: QCNet, pre-training with the qcnet backbone (its
    backbone's, acceleration.view_pair_batch)."""
    builds = model if not hasattr(model, 'momentum_branch') else getattr(model.branch, 'backbone', None)
    return hasattr(builds, 'build_graph')


def options_for_model(model: torch.nn.Module, options: SpeedOptions, given_flags) -> SpeedOptions:
    """``options`` as ``model`` takes them from a preset: the edge lists in the loader workers of ``--speed fast``
    only for a model that builds edge lists (ForecastMAE's data-dependent part, its scene token layout, is computed in
    the step). ``given_flags``: the flags given on the command line (``vars(args)``); ``--build_graph_in_workers 1``
    among them stays a flag error for such a model (``apply``)."""
    if options.edge_lists_in_workers and 'build_graph_in_workers' not in given_flags and not builds_edge_lists(model):
        return options.replace(edge_lists_in_workers=False)
    return options


def apply(model: torch.nn.Module, options: SpeedOptions) -> torch.nn.Module:
    """Installs ``options`` into ``model`` (in place; returns it). Raises ValueError (one line naming the flag) for an
    option the model cannot take, e.g. ``cuda_graphs`` for a model without a padding scheme."""
    remove(model)
    compiles = []
    for module in model.modules():
        if isinstance(module, (AttentionLayer, FourierEmbedding)):
            module.ops = _layer_ops(module, options)
            compiles.append(module.ops is _COMPILED)
        elif _has_gru_hook(module) and options.compile_gru:
            module.ops = GRULoopOps()
            compiles.append(True)
        if hasattr(module, 'checkpoint_layers'):
            module.checkpoint_layers = options.checkpoint_agent_encoder
    wanted = [name for name in ('compile_attention', 'compile_embeddings', 'compile_gru') if getattr(options, name)]
    if wanted and not any(compiles):
        raise ValueError(f'--{wanted[0]}: {type(model).__name__} has no layer of that kind to compile')
    if options.edge_lists_in_workers and not builds_edge_lists(model):
        raise ValueError(f'--build_graph_in_workers: {type(model).__name__} has no separate edge-list construction '
                         '(QCNet and pre-training with the qcnet backbone only)')
    if options.compiles:
        use_compile_cache_dir(options.compile_cache_dir)
        set_activation_memory_budget(options.compile_memory_budget)

    if isinstance(model, pl.LightningModule):
        model.fused_optimizer = options.fused_optimizer
        callbacks: List[pl.Callback] = []
        if options.tf32:
            from acceleration.lightning_callbacks import TF32DuringFit
            callbacks.append(TF32DuringFit())
        if options.cuda_graphs:
            if hasattr(model, 'momentum_branch') and not options.batch_views:
                raise ValueError('--cuda_graphs: pre-training replays the two-view step; it needs '
                                 '--batch_momentum_views 1')
            from acceleration.cuda_graph_step import CudaGraphStep
            from acceleration.lightning_callbacks import ManualSchedulerStep
            # Captured where the model runs on CUDA; elsewhere the same padded step runs eagerly (the CPU tests).
            model.fixed_shape_step = CudaGraphStep(model, padding_scheme(model))
            model.automatic_optimization = False
            callbacks.append(ManualSchedulerStep())
        model.speed_callbacks = tuple(callbacks)
    return model


def remove(model: torch.nn.Module) -> torch.nn.Module:
    """Back to the plain model (every hook at its class default)."""
    for module in model.modules():
        module.__dict__.pop('ops', None)
        if hasattr(module, 'checkpoint_layers'):
            module.checkpoint_layers = False
    if isinstance(model, pl.LightningModule):
        for name in ('fixed_shape_step', 'fused_optimizer', 'speed_callbacks'):
            model.__dict__.pop(name, None)
        model.automatic_optimization = True
    return model


def padding_scheme(model: torch.nn.Module):
    """The padding scheme of ``model``'s CUDA-graph step (looked up by type); ValueError for a model without one."""
    from predictors.forecast_mae import ForecastMAE
    from predictors.qcnet import QCNet
    from predictors.smartpretrain import SmartPretrain
    if isinstance(model, QCNet):
        from acceleration.padded_qcnet_batch import QCNetPadding
        return QCNetPadding(model)
    if isinstance(model, ForecastMAE):
        from acceleration.padded_forecast_mae_batch import ForecastMAEPadding
        return ForecastMAEPadding(model)
    if isinstance(model, SmartPretrain):
        from acceleration.padded_ssl_batch import ViewPairPadding
        return ViewPairPadding(model)
    raise ValueError(f'--cuda_graphs: {type(model).__name__} has no fixed-shape step yet (QCNet, ForecastMAE, '
                     'SmartPretrain)')


def check_cuda_device(accelerator: str) -> None:
    """--cuda_graphs needs a CUDA device: ValueError naming the flag otherwise (no silent eager fallback)."""
    if accelerator not in ('gpu', 'cuda', 'auto') or not torch.cuda.is_available():
        raise ValueError(f'--cuda_graphs: needs a CUDA GPU (--accelerator {accelerator}, CUDA available: '
                         f'{torch.cuda.is_available()})')
