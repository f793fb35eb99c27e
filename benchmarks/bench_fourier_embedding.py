#!/usr/bin/env python
"""Times one QCNet Fourier edge embedding (forward + backward), eager vs torch.compile, at the size of the B = 32
map->agent edge embedding (720k edges x 3 scalars, hidden 128, 64 frequency bands).

The edge embeddings are the largest memory-bound part of the QCNet step (per scalar: angles, cos/sin, a batched
matmul, LayerNorm, ReLU; then a sum, LayerNorm, ReLU, Linear and the shared edge normalisation). This measures how
much kernel fusion (torch.compile / inductor) would save on that part, and how long it takes to compile.

Example:  python benchmarks/bench_fourier_embedding.py --device cuda --rows 720000
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from utils.atomic_io import atomic_write_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', type=str, default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--rows', type=int, default=720_000)
    parser.add_argument('--input_dim', type=int, default=3)
    parser.add_argument('--hidden_dim', type=int, default=128)
    parser.add_argument('--num_freq_bands', type=int, default=64)
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--precision', type=str, default='fp32', choices=['fp32', 'bf16-mixed'])
    parser.add_argument('--memory_budget', type=float, default=1.0,
                        help='activation memory budget of the compiled backward (QCNet --compile_memory_budget)')
    parser.add_argument('--report', type=str, default=None)
    return parser.parse_args(argv)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    from layers.attention_layer import normalize_edge_embedding
    from acceleration.kernels.fourier_embedding import traced_embedding, traced_embedding_arguments
    from acceleration.kernels.layer_ops import FusedOps
    from layers.fourier_embedding import FourierEmbedding
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    emb = FourierEmbedding(args.input_dim, args.hidden_dim, args.num_freq_bands).to(device)
    emb.ops = FusedOps()  # eager: the fused form that --speed default runs
    features = torch.randn(args.rows, args.input_dim, device=device) * 20
    grad_out = torch.randn(args.rows, args.hidden_dim, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == 'bf16-mixed')

    def embed(x):
        return normalize_edge_embedding(emb(continuous_inputs=x, categorical_embs=None))

    import torch._functorch.config as functorch_config
    functorch_config.activation_memory_budget = args.memory_budget
    # compiled: the traced form that --compile_embeddings compiles
    traced = torch.compile(lambda *arguments: normalize_edge_embedding(traced_embedding(*arguments)), dynamic=False)
    compiled = lambda x: traced(*traced_embedding_arguments(emb, x, None))  # noqa: E731
    results = {'device': torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu', 'args': vars(args)}
    outputs = {}
    for name, fn in (('eager', embed), ('compiled', compiled)):
        def step():
            emb.zero_grad(set_to_none=True)
            with autocast:
                out = fn(features)
            out.backward(grad_out.to(out.dtype))
            return out
        start = time.perf_counter()
        out = step()
        sync(device)
        first = time.perf_counter() - start
        outputs[name] = (out.detach().float(), [p.grad.detach().clone() for p in emb.parameters()])
        for _ in range(3):
            step()
        times = []
        for _ in range(args.steps):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
            step()
            peak = torch.cuda.max_memory_allocated() / 2 ** 30
        else:
            peak = None
        saved = []  # bytes the forward keeps for the backward pass

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()
        saved_mib = sum(saved) / 2 ** 20
        results[name] = {'first_call_s': first, 'median_ms': statistics.median(times) * 1000, 'peak_gib': peak,
                         'saved_for_backward_mib': saved_mib}
        print(f'{name:9s}: first call {first:7.2f} s, forward+backward median {results[name]["median_ms"]:8.2f} ms'
              f', kept for backward {saved_mib:.1f} MiB'
              + (f', peak {peak:.2f} GiB' if peak is not None else ''), flush=True)
    ref_out, ref_grads = outputs['eager']
    out, grads = outputs['compiled']
    results['max_rel_output'] = float((out - ref_out).abs().max() / ref_out.abs().max())
    results['max_rel_grad'] = max(float((g - r).abs().max() / r.abs().max().clamp(min=1e-12))
                                  for g, r in zip(grads, ref_grads))
    print(f'compiled vs eager: output {results["max_rel_output"]:.2e}, gradients {results["max_rel_grad"]:.2e}; '
          f'speed-up {results["eager"]["median_ms"] / results["compiled"]["median_ms"]:.2f}x', flush=True)
    if args.report:
        atomic_write_text(args.report, json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
