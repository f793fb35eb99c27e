#!/usr/bin/env python
"""Counts what one QCNet training step costs, device independently (for machines without a GPU).

One training step = forward + official loss + backward + AdamW step on a batch of real scenes (the Argoverse 2
samples cycled, as in bench_qcnet_step.py). Reported per step:

- ``ops``: leaf ATen operators that do work (views, reshapes, ``empty`` and other metadata-only operators excluded),
  forward + backward + optimizer. On a GPU each one launches at least one kernel, so this is the proxy for launch
  overhead, which dominates the step at small batch (the official step launches ~7,200 kernels on an H100).
- ``kernels``: the innermost working operators (``addmm`` inside ``linear``, ``fill_`` + ``index_add_`` inside
  ``index_select_backward``): closer to a GPU kernel count than ``ops``.
- ``syncs``: operators of the forward/backward pass that force a device -> host synchronisation on CUDA
  (``item``/``_local_scalar_dense``, ``nonzero`` (also inside boolean-mask indexing), ``unique``,
  ``masked_select``, ``repeat_interleave``, ``bincount``). The optimizer step is left out: CPU fused AdamW reads
  its step counters with ``item``, the CUDA kernel does not. ``Tensor.tolist`` is not an operator: not counted.
- ``peak_mib``: peak of the CPU allocator's live bytes over the step (torch.profiler memory events), minus what
  was live before the step (parameters, optimizer state and the batch stay allocated throughout).
- ``saved_mib``: bytes of the distinct tensors autograd keeps for the backward pass (activation memory).
- ``median_ms``: median wall time of --steps repetitions on this CPU (after --warmup ones); ``cpu_ms``: median
  CPU time of this process per step (all threads), steadier than wall time on a shared machine.

Examples:
  python benchmarks/profile_qcnet_step.py --batch_size 4
  python benchmarks/profile_qcnet_step.py --batch_size 4 --top 25 --fused_adamw on
"""
import argparse
import collections
import copy
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_qcnet_step import AV2_CONFIG  # noqa: E402

# Operators that only create views or metadata (no kernel on a GPU).
METADATA_OPS = {
    'aten::view', 'aten::reshape', 'aten::_reshape_alias', 'aten::_unsafe_view', 'aten::as_strided',
    'aten::expand', 'aten::expand_as', 'aten::slice', 'aten::select', 'aten::unsqueeze', 'aten::squeeze',
    'aten::t', 'aten::transpose', 'aten::permute', 'aten::alias', 'aten::detach', 'aten::detach_',
    'aten::empty', 'aten::empty_like', 'aten::empty_strided', 'aten::unbind', 'aten::split', 'aten::chunk',
    'aten::narrow', 'aten::numpy_T', 'aten::lift_fresh', 'aten::resolve_conj', 'aten::resolve_neg',
    'aten::result_type', 'aten::size', 'aten::stride', 'aten::is_nonzero', 'aten::view_as', 'aten::unflatten',
    'aten::flatten', 'aten::split_with_sizes', 'aten::unsafe_split', 'aten::_has_compatible_shallow_copy_type',
    'aten::set_', 'aten::lift', 'aten::contiguous', 'aten::to', 'aten::_to_copy_noop', 'aten::movedim',
    'aten::unsafe_chunk', 'aten::conj', 'aten::_conj', 'aten::_neg_view', 'aten::real', 'aten::matrix_H',
    'aten::mT', 'aten::_nested_tensor_from_mask_left_aligned', 'aten::requires_grad_', 'aten::pin_memory',
    'aten::_propagate_xla_data', 'aten::diagonal', 'aten::_unique', 'aten::as_strided_', 'aten::resize_',
}
SYNC_OPS = {'aten::_local_scalar_dense', 'aten::nonzero', 'aten::nonzero_static', 'aten::_unique2',
            'aten::unique_dim', 'aten::unique_consecutive', 'aten::masked_select', 'aten::bincount',
            'aten::repeat_interleave'}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch_size', type=int, default=4)
    parser.add_argument('--steps', type=int, default=5, help='timed repetitions (median reported)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--hidden_dim', type=int, default=AV2_CONFIG['hidden_dim'])
    parser.add_argument('--num_modes', type=int, default=AV2_CONFIG['num_modes'])
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--fused_adamw', choices=['off', 'on'], default='on',
                        help='fused AdamW on CPU too (what the model uses on CUDA), so the op count matches the GPU')
    parser.add_argument('--checkpoint_agent_encoder', action='store_true', help='model option of the same name')
    parser.add_argument('--top', type=int, default=0, help='also print the N most frequent operators')
    parser.add_argument('--data_root', type=str, default=os.path.join(ROOT, '..', 'shared', 'data', 'av2', 'train'))
    parser.add_argument('--scenes_file', type=str, default=None, help='list of HeteroData (bench_qcnet_step.py)')
    parser.add_argument('--report', type=str, default=None, help='write the numbers as JSON here')
    return parser.parse_args(argv)


def work_events(prof) -> List:
    """The outermost operators that do work: walking down from the roots, an ATen operator outside
    METADATA_OPS is counted and its children are not (they are its implementation: ``linear`` counts once, not
    also its ``addmm``); metadata operators and non-operator events (autograd nodes, optimizer) are walked through,
    so e.g. the copy inside a non-contiguous ``reshape`` counts."""
    counted = []

    def walk(event):
        if event.name.startswith('aten::') and event.name not in METADATA_OPS:
            counted.append(event)
            return
        for child in event.cpu_children:
            walk(child)

    for event in prof.events():
        if event.cpu_parent is None:
            walk(event)
    return counted


def innermost_work_events(prof) -> List:
    """Operators that do work and call no other working operator (e.g. ``addmm`` rather than ``linear``; both the
    ``fill_`` and the ``index_add_`` of an ``index_select_backward``): closer to the number of GPU kernels."""
    def does_work(event) -> bool:
        return event.name.startswith('aten::') and event.name not in METADATA_OPS

    def has_working_descendant(event) -> bool:
        return any(does_work(c) or has_working_descendant(c) for c in event.cpu_children)

    return [e for e in prof.events() if does_work(e) and not has_working_descendant(e)]


def inside(event, name_prefix: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(name_prefix):
            return True
        parent = parent.cpu_parent
    return False


def peak_live_bytes(prof) -> int:
    """Peak of the running sum of the bytes allocated (+) and freed (-) by each operator, taken at the operator's
    start (bytes above the level at the start of the profile; transients inside one operator are not seen)."""
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in deltas:
        live += delta
        peak = max(peak, live)
    return peak


def saved_tensor_bytes(step_forward) -> int:
    """Bytes of the distinct storages autograd saves during ``step_forward()`` (returns the loss)."""
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step_forward()
    loss.backward()
    return sum(storages.values())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings
    warnings.filterwarnings('ignore', message='.*self.log.*')
    from torch_geometric.data import Batch
    from benchmarks.bench_qcnet_step import load_scenes
    from predictors import QCNet
    scenes = load_scenes(argparse.Namespace(scenes_file=args.scenes_file, processed_dir=None,
                                            data_root=args.data_root))
    batch = Batch.from_data_list([copy.deepcopy(scenes[i % len(scenes)]) for i in range(args.batch_size)])
    torch.manual_seed(0)
    model = QCNet(**dict(AV2_CONFIG, hidden_dim=args.hidden_dim, num_modes=args.num_modes),
                  checkpoint_agent_encoder=args.checkpoint_agent_encoder).train()
    [optimizer], _ = model.configure_optimizers()
    if args.fused_adamw == 'on':
        groups = [{'params': g['params'], 'weight_decay': g['weight_decay']} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=model.lr, weight_decay=model.weight_decay, fused=True)

    def forward_loss():
        return model.compute_losses(batch, model(batch))['loss']

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    for _ in range(max(1, args.warmup)):  # also creates the optimizer state
        step()
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)

    optimizer.zero_grad(set_to_none=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    work = work_events(prof)
    syncs = [e for e in prof.events() if e.name in SYNC_OPS and not inside(e, 'Optimizer.step')]
    optimizer.zero_grad(set_to_none=True)
    saved = saved_tensor_bytes(forward_loss)

    result = {
        'batch_size': args.batch_size, 'agents': int(batch['agent']['num_nodes']),
        'polygons': int(batch['map_polygon']['num_nodes']), 'hidden_dim': args.hidden_dim,
        'threads': torch.get_num_threads(), 'fused_adamw': args.fused_adamw,
        'checkpoint_agent_encoder': args.checkpoint_agent_encoder,
        'median_ms': statistics.median(times) * 1000 if times else None,
        'cpu_ms': statistics.median(cpu_times) * 1000 if cpu_times else None, 'ops': len(work),
        'kernels': len(innermost_work_events(prof)),
        'syncs': len(syncs), 'sync_ops': dict(collections.Counter(e.name for e in syncs)),
        'peak_mib': peak_live_bytes(prof) / 2 ** 20, 'saved_mib': saved / 2 ** 20,
    }
    print(json.dumps(result))
    if args.top:
        print('most frequent operators (count per step):')
        for name, count in collections.Counter(e.name for e in work).most_common(args.top):
            print(f'{count:6d}  {name}')
        print('largest CPU self time (ms per step):')
        self_time = collections.Counter()
        for event in prof.events():
            self_time[event.name] += event.self_cpu_time_total / 1000
        for name, ms in self_time.most_common(args.top):
            print(f'{ms:10.1f}  {name}')
    if args.report:
        with open(args.report, 'w') as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
