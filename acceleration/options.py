"""Run-time speed and memory options (:class:`SpeedOptions`), their named presets and their command-line flags.

This module imports no torch, so every script's ``--help`` stays fast. ``--speed {default,fast,low_memory}`` picks a
preset; the individual flags (the names train.py / val.py / test.py / train_ssl.py have always taken) override its
fields. None of these options is a model hyper-parameter: ``acceleration.apply.apply`` installs them into a built
model, and checkpoints never store them (:data:`RUN_TIME_KEYS` lists the names older checkpoints may still carry).
"""
import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Dict, Optional

from utils.cli import str2bool, unit_fraction


@dataclass(frozen=True)
class SpeedOptions:
    """What ``acceleration.apply`` installs. Every combination computes the same function as the plain model (float
    rounding aside); they differ in time and memory.

    tf32: TF32 tensor-core matmuls for float32 training on CUDA (during ``fit`` only; evaluation keeps full float32).
    fused_kernels: the layers' custom autograd / split-K forms (acceleration.kernels): fewer saved activations, fewer
        kernels. Off: the plain PyTorch formulation of layers/.
    compile_attention / compile_embeddings / compile_gru: torch.compile the attention layers, the Fourier embeddings,
        QCNet's refinement GRU (as a step loop).
    compile_memory_budget: fraction in (0, 1] of their activations the compiled backward may keep (below 1: more
        recomputation, less memory; torch._functorch's activation_memory_budget).
    cuda_graphs: the training step (forward, loss, backward) and evaluation forward replayed as CUDA graphs over
        batches padded to fixed sizes (acceleration.cuda_graph_step); CUDA only.
    recompute_embeddings: the Fourier embeddings keep only their inputs for the backward pass and recompute the rest.
    checkpoint_agent_encoder: activation checkpointing of QCNet's agent encoder.
    edge_lists_in_workers: QCNet's edge lists built in the data-loader workers (acceleration.edge_lists_in_workers).
    fused_optimizer: the fused AdamW kernel on CUDA (taken only when no gradient clipping is asked for).
    batch_views: pre-training runs its momentum branch once over both views of a batch (one batch of 2B scenes,
        acceleration.view_pair_batch) instead of once per view.
    compile_cache_dir: persistent torch.compile cache (inductor's and its autotuning results); None: inductor's
        default folder under the system temporary directory. The training scripts default it to
        <run directory>/compile_cache.
    """

    tf32: bool = True
    fused_kernels: bool = True
    compile_attention: bool = False
    compile_embeddings: bool = False
    compile_gru: bool = False
    compile_memory_budget: float = 1.0
    cuda_graphs: bool = False
    recompute_embeddings: bool = False
    checkpoint_agent_encoder: bool = False
    edge_lists_in_workers: bool = False
    fused_optimizer: bool = True
    batch_views: bool = True
    compile_cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if not 0.0 < self.compile_memory_budget <= 1.0:
            raise ValueError(f'--compile_memory_budget must be in (0, 1], got {self.compile_memory_budget}')
        if self.compile_embeddings and self.recompute_embeddings:
            raise ValueError('--compile_embeddings and --recompute_embeddings exclude each other (the compiled '
                             'embeddings already recompute their cheap activations); pass one of them')
        if self.cuda_graphs and (self.checkpoint_agent_encoder or self.recompute_embeddings):
            # Activation checkpointing saves and restores RNG states, which is not checked inside a capture yet.
            flag = 'checkpoint_agent_encoder' if self.checkpoint_agent_encoder else 'recompute_embeddings'
            raise ValueError(f'--cuda_graphs: not available together with --{flag} yet (use one of them)')

    @property
    def compiles(self) -> bool:
        return self.compile_attention or self.compile_embeddings or self.compile_gru

    def replace(self, **changes) -> 'SpeedOptions':
        return dataclasses.replace(self, **changes)


PRESETS: Dict[str, SpeedOptions] = {
    # What a plain command has always done: fused eager kernels, TF32 while training on CUDA, fused AdamW.
    'default': SpeedOptions(),
    # Every speed option (CUDA GPUs; the first steps compile for a few minutes, the cache keeps them for the next run).
    'fast': SpeedOptions(compile_attention=True, compile_embeddings=True, compile_gru=True, cuda_graphs=True,
                         edge_lists_in_workers=True),
    # Least activation memory: checkpointed agent encoder and recomputed embeddings (~20 % more compute each).
    'low_memory': SpeedOptions(checkpoint_agent_encoder=True, recompute_embeddings=True),
}

# Names that are run-time options, never hyper-parameters: dropped from a model's hyper-parameters (older checkpoints
# stored some of them, e.g. cuda_graphs or compile_attention) and from the arguments a script builds a model from.
RUN_TIME_KEYS = frozenset({f.name for f in fields(SpeedOptions)} | {
    'speed', 'no_tf32', 'build_graph_in_workers', 'compile', 'fused_adamw', 'batch_momentum_views'})

# Flag -> SpeedOptions field, for the boolean override flags (each takes 0/1/true/false; given alone it means true).
_BOOLEAN_FLAGS = {
    'tf32': 'tf32', 'fused_kernels': 'fused_kernels', 'compile_attention': 'compile_attention',
    'compile_embeddings': 'compile_embeddings', 'compile_gru': 'compile_gru', 'cuda_graphs': 'cuda_graphs',
    'recompute_embeddings': 'recompute_embeddings', 'checkpoint_agent_encoder': 'checkpoint_agent_encoder',
    'build_graph_in_workers': 'edge_lists_in_workers', 'fused_optimizer': 'fused_optimizer',
    'batch_momentum_views': 'batch_views',
}


def add_speed_args(parser: argparse.ArgumentParser, evaluation: bool = False) -> None:
    """``--speed`` and the override flags (default None: the preset decides). ``evaluation`` (val.py / test.py) also
    takes ``--compile`` (= --compile_attention 1 --compile_embeddings 1, their earlier evaluation flag)."""
    group = parser.add_argument_group('speed and memory (run-time options: same model, same checkpoints; each '
                                      'flag left out takes its value from --speed; docs/PERFORMANCE.md)')
    group.add_argument('--speed', choices=sorted(PRESETS), default='default',
                       help='preset of the options below: default (fused kernels, TF32 while training on CUDA), fast '
                            '(+ torch.compile, CUDA graphs, edge lists in the loader workers where the model has '
                            'them; CUDA GPUs), low_memory (activation checkpointing and recomputed embeddings); each '
                            'flag below overrides it')
    helps = {
        'tf32': 'TF32 tensor-core matmuls while training on CUDA',
        'fused_kernels': "the layers' fused custom-autograd / split-K forms (0: the plain PyTorch formulation)",
        'compile_attention': 'torch.compile the attention layers (the first steps compile for a few minutes)',
        'compile_embeddings': 'torch.compile the Fourier embeddings',
        'compile_gru': "torch.compile QCNet's refinement GRU as a step loop (replaces cuDNN's GRU kernels)",
        'cuda_graphs': 'replay each step as a CUDA graph over a batch padded to fixed sizes (CUDA only; with several '
                       'GPUs the gradients are averaged after each replay)',
        'recompute_embeddings': 'recompute the Fourier embeddings in the backward pass (less memory, more compute)',
        'checkpoint_agent_encoder': 'activation checkpointing of the agent encoder (less memory, more compute)',
        'build_graph_in_workers': "build each batch's edge lists in the --num_workers loader processes",
        'fused_optimizer': 'the fused AdamW kernel on CUDA (not with gradient clipping)',
        'batch_momentum_views': 'pre-training: the momentum branch runs once over both views of a batch (one batch '
                                'of 2B scenes, BatchNorm statistics per view) instead of once per view',
    }
    for flag, text in helps.items():
        group.add_argument(f'--{flag}', type=str2bool, nargs='?', const=True, default=argparse.SUPPRESS,
                           metavar='0|1', help=text)
    # Left-out overrides stay out of the namespace (SUPPRESS): the preset decides, and --help shows no default.
    group.add_argument('--no_tf32', dest='tf32', action='store_const', const=False, default=argparse.SUPPRESS,
                       help='same as --tf32 0 (full float32 matmuls while training)')
    group.add_argument('--compile_memory_budget', type=unit_fraction, default=argparse.SUPPRESS,
                       help='with the --compile_* options: fraction of their activations the compiled backward may '
                            'keep (below 1: more recomputation, less memory; default 1)')
    group.add_argument('--compile_cache_dir', type=str, default=argparse.SUPPRESS,
                       help='persistent torch.compile cache folder (training default: <run directory>/compile_cache; '
                            'a shared folder lets every run and node reuse the compiled kernels)')
    if evaluation:
        group.add_argument('--compile', type=str2bool, nargs='?', const=True, default=False, metavar='0|1',
                           help='same as --compile_attention 1 --compile_embeddings 1')


def speed_options_from_args(args: argparse.Namespace, default_cache_dir: Optional[str] = None) -> SpeedOptions:
    """The preset of ``args.speed`` with every flag that was given applied over it; ValueError for a contradicting
    combination (one line naming the flags)."""
    options = PRESETS[getattr(args, 'speed', None) or 'default']
    changes = {}
    for flag, field in _BOOLEAN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = bool(value)
    if getattr(args, 'compile', False):
        changes.update(compile_attention=True, compile_embeddings=True)
    if getattr(args, 'compile_memory_budget', None) is not None:
        changes['compile_memory_budget'] = float(args.compile_memory_budget)
    cache_dir = getattr(args, 'compile_cache_dir', None) or default_cache_dir
    if cache_dir is not None:
        changes['compile_cache_dir'] = str(cache_dir)
    if changes.get('compile_embeddings') and 'recompute_embeddings' not in changes:
        changes['recompute_embeddings'] = False  # an explicit compile flag wins over the preset's recomputation
    return options.replace(**changes)


def model_arguments(args: argparse.Namespace) -> dict:
    """``vars(args)`` without the run-time options: what a script builds a model (its hyper-parameters) from."""
    return {key: value for key, value in vars(args).items() if key not in RUN_TIME_KEYS}
