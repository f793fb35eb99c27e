#!/usr/bin/env python
"""Checks on a GPU that the compiled Fourier embeddings (``--compile_embeddings``, acceleration/compiled.py) give the
plain embedding's output and parameter gradients, for 1 to 4 continuous scalars with and without categorical inputs.

    python benchmarks/check_compiled_gradients.py [--device cuda] [--rows 20000] [--scalars 1 2 3 4]
        [--allow_mix_order_reduction]

The CPU tests compare the compiled forms with the plain ones through inductor's C++ backend; this runs the same
comparison through the Triton backend, where the compiled backward is generated differently (for example inductor's
mix-order reduction, which acceleration/compiled.py turns off: ``--allow_mix_order_reduction`` leaves inductor's
default to show what it does). One line per configuration: the largest relative difference of the output and of any parameter
gradient (float32, TF32 off), or the error the compiled function raised. Exit status 1 if any configuration fails.
"""
import argparse
import copy
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from acceleration.apply import apply  # noqa: E402
from acceleration.options import SpeedOptions  # noqa: E402
from layers.fourier_embedding import FourierEmbedding  # noqa: E402

TOLERANCE = 1e-3  # relative, float32 with different reduction orders


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check(input_dim: int, categorical: bool, args) -> str:
    torch.manual_seed(input_dim)
    plain = FourierEmbedding(input_dim, args.hidden_dim, args.num_freq_bands).to(args.device)
    fast = apply(copy.deepcopy(plain), SpeedOptions(compile_embeddings=True))
    inputs = torch.randn(args.rows, input_dim, device=args.device) * 10
    cats = [torch.randn(args.rows, args.hidden_dim, device=args.device)] if categorical else None
    outputs = []
    for model in (plain, fast):
        out = model(inputs, cats)
        out.square().mean().backward()
        outputs.append(out.detach())
    worst = relative_difference(outputs[1], outputs[0])
    for (name, p_plain), p_fast in zip(plain.named_parameters(), fast.parameters()):
        if p_fast.grad is None or p_fast.grad.shape != p_plain.grad.shape:
            raise RuntimeError(f'{name}: gradient {None if p_fast.grad is None else tuple(p_fast.grad.shape)}')
        worst = max(worst, relative_difference(p_fast.grad, p_plain.grad))
    if worst > TOLERANCE:
        raise RuntimeError(f'largest relative difference {worst:.2e} > {TOLERANCE:g}')
    return f'{worst:.2e}'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--rows', type=int, default=20000, help='rows of the embedded inputs')
    parser.add_argument('--scalars', type=int, nargs='+', default=[1, 2, 3, 4],
                        help='numbers of continuous scalars to check (QCNet embeds 1 to 4)')
    parser.add_argument('--hidden_dim', type=int, default=128)
    parser.add_argument('--num_freq_bands', type=int, default=64)
    parser.add_argument('--allow_mix_order_reduction', action='store_true',
                        help="leave inductor's mix-order reduction at its default (on) instead of turning it off")
    args = parser.parse_args(argv)
    if args.allow_mix_order_reduction:  # keep inductor's default instead
        import acceleration.compiled
        acceleration.compiled.avoid_mix_order_reduction = lambda: None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f'torch {torch.__version__}, {torch.cuda.get_device_name() if args.device == "cuda" else args.device}, '
          f'mix-order reduction {"on" if args.allow_mix_order_reduction else "off"}')
    failed = 0
    for input_dim in args.scalars:
        for categorical in (False, True):
            try:
                verdict = 'ok, largest relative difference ' + check(input_dim, categorical, args)
            except RuntimeError as error:
                failed += 1
                verdict = 'FAILED: ' + str(error).strip().splitlines()[-1][:200]
            print(f'scalars {input_dim}, categorical {"yes" if categorical else "no "}: {verdict}', flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
