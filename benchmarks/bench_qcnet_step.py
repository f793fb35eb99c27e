#!/usr/bin/env python
"""Times QCNet training steps and inference (ours or the official implementation) on real scenes.

A training step = forward + official loss + backward + AdamW step, on a batch already on the device. Inference =
forward under torch.no_grad. Each measurement is the median of --steps timed repetitions after --warmup untimed ones
(CUDA events on GPU, perf_counter on CPU). Reports scenarios/s and the peak allocated GPU memory of each setting.

Data: the real Argoverse 2 samples (tests/data/av2/train, processed with this project's datasets package) cycled
to fill each batch, or a processed cache folder (--processed_dir), or a file written earlier with --save_scenes
(a torch.save'd list of HeteroData, for machines without the raw data or av2).

Examples:
  # CPU smoke run with a tiny model
  python benchmarks/bench_qcnet_step.py --device cpu --hidden_dim 16 --batch_sizes 2 --steps 3 --warmup 1
  # H100: ours vs official, fp32 and bf16-mixed
  python benchmarks/bench_qcnet_step.py --device cuda --batch_sizes 4 16 32 --precision fp32 bf16-mixed
  python benchmarks/bench_qcnet_step.py --device cuda --impl official --official_repo /path/to/QCNet
  # every speed option of train.py --speed fast, the edge lists built beforehand as the loader workers do
  python benchmarks/bench_qcnet_step.py --device cuda --batch_sizes 4 32 --precision fp32 --speed fast --prebuilt_graph
"""
import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
import warnings
from typing import Callable, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from acceleration.options import add_speed_args, speed_options_from_args  # noqa: E402  (no torch import)
from utils.atomic_io import atomic_write_text  # noqa: E402

AV2_CONFIG = dict(dataset='argoverse_v2', input_dim=2, hidden_dim=128, output_dim=2, output_head=False,
                  num_historical_steps=50, num_future_steps=60, num_modes=6, num_recurrent_steps=3,
                  num_freq_bands=64, num_map_layers=1, num_agent_layers=2, num_dec_layers=2, num_heads=8,
                  head_dim=16, dropout=0.1, pl2pl_radius=150.0, time_span=10, pl2a_radius=50.0, a2a_radius=50.0,
                  num_t2m_steps=30, pl2m_radius=150.0, a2m_radius=150.0, lr=5e-4, weight_decay=1e-4, T_max=64,
                  submission_dir='./', submission_file_name='submission')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--impl', choices=['ours', 'official'], default='ours')
    parser.add_argument('--official_repo', type=str, default=None, help='official QCNet repository (--impl official)')
    parser.add_argument('--device', type=str, default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=[4, 16, 32])
    parser.add_argument('--precision', nargs='+', choices=['fp32', 'bf16-mixed'], default=['fp32', 'bf16-mixed'])
    parser.add_argument('--mode', nargs='+', choices=['train', 'infer'], default=['train', 'infer'])
    parser.add_argument('--steps', type=int, default=30, help='timed repetitions per setting (median reported)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--module_times', action='store_true',
                        help='CUDA only: also print the forward GPU time of each embedding, attention layer and GRU '
                             '(eager forward at the first batch size; backward costs about twice its forward)')
    parser.add_argument('--prebuilt_graph', action='store_true',
                        help="ours: the batch carries its edge lists, built on the CPU (one thread) before timing, as "
                             'train.py --build_graph_in_workers does in the loader workers; the CPU build time per '
                             'batch is reported next to the step')
    parser.add_argument('--data_root', type=str, default=os.path.join(ROOT, 'tests', 'data', 'av2', 'train'),
                        help='raw Argoverse 2 scenario folders to process and cycle')
    parser.add_argument('--processed_dir', type=str, default=None, help="this project's processed cache folder")
    parser.add_argument('--scenes_file', type=str, default=None, help='list of HeteroData saved by --save_scenes')
    parser.add_argument('--save_scenes', type=str, default=None, help='save the loaded scenes here and exit')
    parser.add_argument('--hidden_dim', type=int, default=AV2_CONFIG['hidden_dim'])
    parser.add_argument('--num_modes', type=int, default=AV2_CONFIG['num_modes'])
    parser.add_argument('--report', type=str, default=None, help='write the results as JSON here')
    parser.add_argument('--profile', type=int, default=0,
                        help='CUDA only: after timing, profile this many more steps of each setting and report '
                             'GPU kernel time and kernel launches per step (the rest of the step is launch '
                             'overhead and host work)')
    # --speed and its overrides, as train.py takes them. --tf32 of --impl official: only when given (PyTorch's
    # default otherwise); --compile_inference: the earlier name of --compile.
    add_speed_args(parser, evaluation=True)
    parser.add_argument('--compile_inference', dest='compile', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.speed_options = speed_options_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def load_scenes(args) -> List:
    from transforms.target_builder import TargetBuilder
    target = TargetBuilder(AV2_CONFIG['num_historical_steps'], AV2_CONFIG['num_future_steps'])
    if args.scenes_file:
        return torch.load(args.scenes_file, weights_only=False)
    if args.processed_dir:
        from datasets import CACHE_SUFFIX, load_features, to_hetero_data
        files = sorted(f for f in os.listdir(args.processed_dir) if f.endswith(CACHE_SUFFIX))
        if not files:
            raise SystemExit(f'bench_qcnet_step: {args.processed_dir}: no *{CACHE_SUFFIX} files')
        return [target(to_hetero_data(load_features(os.path.join(args.processed_dir, f)))) for f in files]
    from datasets import list_argoverse_v2_scenarios, load_argoverse_v2_scenario, process_scenario
    if not os.path.isdir(args.data_root):
        raise SystemExit(f'bench_qcnet_step: {args.data_root}: no such folder (see --data_root / --scenes_file)')
    return [target(process_scenario(load_argoverse_v2_scenario(os.path.join(args.data_root, s))))
            for s in list_argoverse_v2_scenarios(args.data_root)]


def build_model(args):
    config = dict(AV2_CONFIG, hidden_dim=args.hidden_dim, num_modes=args.num_modes)
    if args.impl == 'official':
        if not args.official_repo:
            raise SystemExit('bench_qcnet_step: --impl official needs --official_repo')
        from benchmarks.official_stubs import import_official, install_fast_stand_ins
        install_fast_stand_ins()
        model_cls = import_official(os.path.abspath(args.official_repo), ['predictors.qcnet'])['predictors.qcnet'].QCNet
    else:
        from predictors import QCNet as model_cls
    model = model_cls(**config)
    if args.impl == 'ours':
        from acceleration.apply import apply
        apply(model, args.speed_options)
    return model


class Timer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'

    def measure(self, fn: Callable[[], None], steps: int, warmup: int) -> List[float]:
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        # Wall time of the warm-up steps: where torch.compile compiles and CUDA graphs are captured.
        self.warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times


def check_static_outputs(model, batch, autocast) -> None:
    """Prints how far the padded, replayed forward pass is from the eager one (eval mode, same batch)."""
    model.eval()
    with torch.no_grad(), autocast:
        expected = model(batch)
        actual = model.fixed_shape_step.infer(batch)
    worst = max(float((actual[k].float() - v.float()).abs().max() / v.float().abs().max().clamp(min=1.0))
                for k, v in expected.items())
    print(f'static-shape forward vs eager: worst scale-relative error {worst:.2e}', flush=True)


def module_forward_times(model, batch, repeats: int = 5) -> dict:
    """GPU milliseconds of one eager forward pass spent in each FourierEmbedding, AttentionLayer, GRU and MLP
    head (CUDA events around each call, summed over calls, median of ``repeats`` passes), and the whole pass."""
    from layers.attention_layer import AttentionLayer
    from layers.fourier_embedding import FourierEmbedding
    from layers.mlp_layer import MLPLayer
    kinds = (FourierEmbedding, AttentionLayer, torch.nn.GRU, MLPLayer)
    events, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            def pre(mod, args, name=name):
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                events.setdefault(name, []).append([start, None])

            def post(mod, args, out, name=name):
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                events[name][-1][1] = end
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    totals, whole = {}, []
    with torch.no_grad():
        for _ in range(repeats):
            events.clear()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(batch)
            end.record()
            torch.cuda.synchronize()
            whole.append(start.elapsed_time(end))
            for name, pairs in events.items():
                totals.setdefault(name, []).append(sum(a.elapsed_time(b) for a, b in pairs))
    for handle in handles:
        handle.remove()
    return {'forward_ms': statistics.median(whole),
            'modules_ms': {name: statistics.median(v) for name, v in sorted(totals.items(), key=lambda kv: -statistics.median(kv[1]))}}


def profile_kernels(step: Callable[[], None], steps: int) -> dict:
    """GPU kernel time and kernel count per step (torch.profiler over ``steps`` steps), and the fifteen kernels that
    take the most GPU time."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.kernel_profile import kernel_summary
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    return kernel_summary(prof, steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prebuilt_graph and args.impl == 'official':
        raise SystemExit('bench_qcnet_step: --prebuilt_graph is for --impl ours (the official step builds its graph)')
    warnings.filterwarnings('ignore', message='.*self.log.*')
    from torch_geometric.data import Batch
    scenes = load_scenes(args)
    if args.save_scenes:
        torch.save(scenes, args.save_scenes)
        print(f'saved {len(scenes)} scenes to {args.save_scenes}')
        return 0
    device = torch.device(args.device)
    # TF32 set here (Lightning's fit hooks do not run): ours as its options say, the official step only with --tf32.
    tf32 = args.speed_options.tf32 if args.impl == 'ours' else bool(getattr(args, 'tf32', False))  # flag left out: absent
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    model = build_model(args).to(device)
    if args.impl == 'official':
        from benchmarks.official_stubs import forget_generated_propagate_modules
        forget_generated_propagate_modules()
    model.train()
    [optimizer], _ = model.configure_optimizers()
    info = {'impl': args.impl, 'device': str(device), 'gpu': torch.cuda.get_device_name(device)
            if device.type == 'cuda' else None, 'torch': torch.__version__, 'hidden_dim': args.hidden_dim,
            'num_scenes_available': len(scenes), 'tf32': tf32, 'prebuilt_graph': args.prebuilt_graph,
            'speed': args.speed, 'options': dataclasses.asdict(args.speed_options) if args.impl == 'ours' else None,
            'fused_adamw': bool(optimizer.defaults.get('fused')), 'results': []}
    print(json.dumps({k: v for k, v in info.items() if k != 'results'}))
    timer = Timer(device)
    if args.module_times and device.type == 'cuda':
        from torch_geometric.data import Batch as _Batch
        first = _Batch.from_data_list([copy.deepcopy(scenes[i % len(scenes)]) for i in range(args.batch_sizes[0])])
        info['module_times'] = module_forward_times(model, first.to(device))
        print(f"forward {info['module_times']['forward_ms']:.2f} ms at batch {args.batch_sizes[0]}; by module: "
              + ', '.join(f'{k} {v:.2f}' for k, v in list(info['module_times']['modules_ms'].items())[:24]),
              flush=True)
    for batch_size in args.batch_sizes:
        data_list = [copy.deepcopy(scenes[i % len(scenes)]) for i in range(batch_size)]
        batch = Batch.from_data_list(data_list)
        graph_build_s = None
        if args.prebuilt_graph:
            from acceleration.edge_lists_in_workers import EDGE_LISTS_ATTRIBUTE, edge_list_builder_for
            builder = edge_list_builder_for(model, num_workers=1)  # the CPU model a loader worker would hold
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # as in a loader worker
            with torch.no_grad():
                start = time.perf_counter()
                graph = builder.build_graph(batch)
                graph_build_s = time.perf_counter() - start
            torch.set_num_threads(threads)
            setattr(batch, EDGE_LISTS_ATTRIBUTE, graph)
            print(f'batch {batch_size}: graph built on the CPU in {graph_build_s * 1000:.1f} ms (one thread)',
                  flush=True)
        batch = batch.to(device)
        num_agents = int(batch['agent']['num_nodes'])
        for precision in args.precision:
            autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                      enabled=precision == 'bf16-mixed')
            for mode in args.mode:
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)

                step_piece = getattr(model, 'fixed_shape_step', None)  # --cuda_graphs (acceleration.apply)
                runner = None
                if step_piece is not None:
                    runner = step_piece.training_runner if mode == 'train' else step_piece.inference_runner
                    if mode == 'infer':
                        check_static_outputs(model, batch, autocast)
                if runner is not None and mode == 'train':
                    def step():
                        with autocast:
                            step_piece.train(batch, optimizer)
                elif runner is not None:
                    def step():
                        with autocast:
                            step_piece.infer(batch)
                elif mode == 'train':
                    def step():
                        optimizer.zero_grad(set_to_none=True)
                        with autocast:
                            if args.impl == 'official':
                                loss = model.training_step(batch, 0)
                            else:
                                loss = model.compute_losses(batch, model(batch))['loss']
                        loss.backward()
                        optimizer.step()
                else:
                    def step():
                        with torch.no_grad(), autocast:
                            model(batch)
                try:
                    times = timer.measure(step, args.steps, args.warmup)
                except torch.OutOfMemoryError:
                    print(f'batch {batch_size} {precision} {mode}: out of memory')
                    info['results'].append({'batch_size': batch_size, 'precision': precision, 'mode': mode,
                                            'oom': True})
                    optimizer.zero_grad(set_to_none=True)
                    continue
                median = statistics.median(times)
                peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None
                row = {'batch_size': batch_size, 'agents': num_agents, 'precision': precision, 'mode': mode,
                       'median_s': median, 'min_s': min(times), 'max_s': max(times),
                       'scenarios_per_s': batch_size / median, 'peak_alloc_gib': peak,
                       'warmup_s': timer.warmup_s, 'graph_build_cpu_s': graph_build_s}
                if runner is not None:
                    row.update(captures=runner.num_captures, capacities=runner.last_capacities,
                               sizes=runner.last_sizes)
                    model.train()
                if args.profile and device.type == 'cuda':
                    row.update(profile_kernels(step, args.profile))
                info['results'].append(row)
                if args.report:  # after every row: a call cut short keeps what it measured
                    atomic_write_text(args.report, json.dumps(info, indent=2))
                print(f'batch {batch_size:3d} ({num_agents} agents) {precision:10s} {mode:5s}: '
                      f'median {median * 1000:9.2f} ms  {batch_size / median:8.2f} scen/s'
                      + (f'  peak {peak:6.2f} GiB' if peak is not None else '')
                      + f'  warm-up {timer.warmup_s:.1f} s'
                      + (f"  gpu {row['gpu_kernel_ms']:8.2f} ms in {row['kernels_per_step']} kernels"
                         if 'gpu_kernel_ms' in row else ''), flush=True)
    if args.report:
        atomic_write_text(args.report, json.dumps(info, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
