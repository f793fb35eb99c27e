"""Speed flags shared by val.py and test.py: --cuda_graphs, --compile, --build_graph_in_workers (no torch import:
the parsers are built before torch is imported)."""
import argparse
from typing import Any, Optional

from utils.cli import CliError, bool_flag, input_errors


def add_evaluation_speed_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--compile', **bool_flag(False),
                        help='QCNet: torch.compile the attention layers and embeddings for the forward passes '
                             '(fused kernels; the first batches compile for a minute or two)')
    parser.add_argument('--build_graph_in_workers', **bool_flag(False),
                        help="QCNet: build each batch's edge lists in the --num_workers loader processes instead of "
                             'inside the forward pass (same edges; docs/PERFORMANCE.md)')
    parser.add_argument('--cuda_graphs', **bool_flag(False),
                        help='QCNet on one GPU per process: replay each forward pass as a CUDA graph over a batch '
                             'padded to fixed sizes (same outputs, faster; docs/PERFORMANCE.md)')


def prepare_model_for_evaluation(model: Any, args: argparse.Namespace) -> Optional[Any]:
    """Applies the speed flags to a loaded model before any data is processed (flag errors are one-line CliErrors);
    returns the CPU graph builder for the loader workers (utils.prebuilt_graph.GraphBuildingCollate) or None."""
    if args.cuda_graphs:
        from utils.static_graph import enable_for_evaluation
        with input_errors(ValueError):
            enable_for_evaluation(model, args.accelerator)
    elif getattr(model, 'cuda_graphs', False):
        model.cuda_graphs = False  # trained with --cuda_graphs (a saved hyper-parameter): evaluate as asked, eagerly
    if args.compile:
        if not hasattr(model, 'compile_for_inference'):
            raise CliError(f'--compile: {type(model).__name__} has no compiled path (QCNet only)')
        model.compile_for_inference()
    if not args.build_graph_in_workers:
        return None
    from utils.prebuilt_graph import graph_builder_for
    with input_errors(ValueError):
        return graph_builder_for(model, args.num_workers)
