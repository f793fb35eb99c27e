#!/usr/bin/env python
"""Times both backbones (QCNet, ForecastMAE): supervised training step, SmartPretrain pre-training step, inference.

- train: forward + QCNet's objective (shared by both predictors) + backward + AdamW step of the supervised predictor;
- ssl: momentum update + SmartPretrain forward on both views (online and momentum branches) + contrastive and
  reconstruction losses + backward + AdamW step, through the same pre-training module for both backbones;
- infer: supervised forward under torch.no_grad.
--speed fast: the options of train.py / train_ssl.py --speed fast (acceleration.apply: the CUDA-graph step, compiled
attention layers and embeddings); train and ssl time ``fixed_shape_step.train`` (replay + optimiser step), infer
``fixed_shape_step.infer``. QCNet's edge lists are built once before the timed steps, as the loader workers do.
Each measurement is the median of --steps timed repetitions after --warmup untimed ones (CUDA events on GPU,
perf_counter on CPU), on a batch already on the device. Reports scenarios/s and the peak allocated GPU memory.

Data as in bench_qcnet_step.py: the real Argoverse 2 samples (tests/data/av2/train), a processed cache folder
(--processed_dir) or a file written by bench_qcnet_step.py --save_scenes (--scenes_file), cycled to fill each batch.
The pre-training views of every scene are cut at fixed window starts (anchor 0, target 60: the last possible pair).

Examples:
  # CPU smoke run, tiny models
  python benchmarks/bench_backbones.py --device cpu --size tiny --batch_sizes 2 --steps 2 --warmup 1
  # H100, both models, full size
  python benchmarks/bench_backbones.py --device cuda --batch_sizes 4 16 32 --precision fp32 bf16-mixed \
      --report bench_backbones.json
  # ForecastMAE with every speed option (CUDA-graph step) against its plain step
  python benchmarks/bench_backbones.py --device cuda --models ForecastMAE --batch_sizes 4 32 --precision fp32 \
      --tf32 --speed fast --report fmae_fast.json
"""
import argparse
import copy
import json
import os
import statistics
import sys
import warnings
from typing import Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_qcnet_step import AV2_CONFIG, Timer, load_scenes  # noqa: E402
from utils.atomic_io import atomic_write_text  # noqa: E402

# Model sizes: 'full' = the official QCNet Argoverse 2 configuration and ForecastMAE's defaults (same width);
# 'tiny' = width 16 and short QCNet radii, for CPU smoke runs.
SIZES: Dict[str, Dict[str, Dict]] = {
    'full': {'QCNet': dict(AV2_CONFIG),
             'ForecastMAE': dict(hidden_dim=128, num_heads=8, head_dim=16, num_freq_bands=64, num_temporal_layers=2,
                                 num_scene_layers=4, num_dec_layers=2, dropout=0.1)},
    'tiny': {'QCNet': dict(AV2_CONFIG, hidden_dim=16, num_freq_bands=4, num_heads=2, head_dim=8, num_map_layers=1,
                           num_agent_layers=1, num_dec_layers=1, pl2pl_radius=20.0, pl2a_radius=15.0,
                           a2a_radius=15.0, pl2m_radius=20.0, a2m_radius=20.0, time_span=3, num_t2m_steps=10),
             'ForecastMAE': dict(hidden_dim=16, num_heads=2, head_dim=8, num_freq_bands=4, num_temporal_layers=1,
                                 num_scene_layers=1, num_dec_layers=1, dropout=0.1)},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['QCNet', 'ForecastMAE'],
                        help='predictors to time (names as train.py --model)')
    parser.add_argument('--size', choices=sorted(SIZES), default='full')
    parser.add_argument('--device', type=str, default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch_sizes', type=int, nargs='+', default=[4, 16, 32])
    parser.add_argument('--precision', nargs='+', choices=['fp32', 'bf16-mixed'], default=['fp32', 'bf16-mixed'])
    parser.add_argument('--mode', nargs='+', choices=['train', 'ssl', 'infer'], default=['train', 'ssl', 'infer'])
    parser.add_argument('--steps', type=int, default=30, help='timed repetitions per setting (median reported)')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--tf32', action='store_true', help='allow TF32 matmuls in fp32 runs')
    parser.add_argument('--speed', choices=['default', 'fast'], default='default',
                        help='default: the plain step; fast: the CUDA-graph step with compiled layers (see above)')
    parser.add_argument('--data_root', type=str, default=os.path.join(ROOT, 'tests', 'data', 'av2', 'train'),
                        help='raw Argoverse 2 scenario folders to process and cycle')
    parser.add_argument('--processed_dir', type=str, default=None, help="this project's processed cache folder")
    parser.add_argument('--scenes_file', type=str, default=None,
                        help='list of HeteroData saved by bench_qcnet_step.py --save_scenes')
    parser.add_argument('--report', type=str, default=None, help='write the results as JSON here')
    return parser.parse_args(argv)


def build(model_name: str, size: str, mode: str):
    """(module, optimizer, step function factory input) for one model and mode."""
    from predictors.registry import model_class, resolve_model_name
    name = resolve_model_name(model_name)
    config = SIZES[size][name]
    if mode == 'ssl':
        from predictors.smartpretrain import SmartPretrain
        module = SmartPretrain(**{**config, 'num_modes': 1, 'backbone': model_class(name).SSL_BACKBONE})
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    else:
        module = model_class(name)(**config)
        [optimizer], _ = module.configure_optimizers()
    return name, module, optimizer


def ssl_batch(scenes: List, batch_size: int, device: torch.device, both_views: bool = False) -> Dict:
    """{'anchor', 'target'} view batches, or with ``both_views`` the {'anchor', 'views'} form of the CUDA-graph step
    (acceleration.view_pair_batch)."""
    from torch_geometric.data import Batch
    from acceleration.view_pair_batch import ViewPairCollate
    from transforms.ssl_views import SSLViews
    views = SSLViews(AV2_CONFIG['num_historical_steps'], AV2_CONFIG['num_future_steps'])
    pairs = []
    for i in range(batch_size):
        scene = scenes[i % len(scenes)].clone()
        if 'target' in scene['agent']:  # views are cut from the raw sample
            del scene['agent'].target
        pairs.append(views.make_views(scene, 0, views.num_steps - views.num_historical_steps))
    if both_views:
        return {key: value.to(device) for key, value in ViewPairCollate(Batch.from_data_list)(pairs).items()}
    return {key: Batch.from_data_list([pair[key] for pair in pairs]).to(device) for key in ('anchor', 'target')}


def attach_edge_lists(batch, builder: torch.nn.Module) -> None:
    """QCNet-style edge lists built once and attached to each batch of ``batch`` (what the loader workers of
    --build_graph_in_workers do); nothing for a model without edge lists."""
    from acceleration.edge_lists_in_workers import EDGE_LISTS_ATTRIBUTE
    if not hasattr(builder, 'build_graph'):
        return
    with torch.no_grad():
        for data in (batch.values() if isinstance(batch, dict) else [batch]):
            setattr(data, EDGE_LISTS_ATTRIBUTE, builder.build_graph(data))


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore', message='.*self.log.*')
    from torch_geometric.data import Batch
    scenes = load_scenes(args)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    info = {'device': str(device), 'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
            'torch': torch.__version__, 'size': args.size, 'speed': args.speed, 'num_scenes_available': len(scenes),
            'tf32': args.tf32, 'results': []}
    print(json.dumps({k: v for k, v in info.items() if k != 'results'}))
    timer = Timer(device)
    for model_name in args.models:
        for mode in args.mode:
            torch.manual_seed(0)
            name, module, optimizer = build(model_name, args.size, mode)
            module = module.to(device).train()
            if args.speed == 'fast':
                from acceleration.apply import apply
                from acceleration.options import PRESETS
                options = PRESETS['fast'].replace(tf32=args.tf32, edge_lists_in_workers=False)
                if device.type != 'cuda':  # CPU smoke runs: the padded step runs eagerly and compiles nothing
                    options = options.replace(compile_attention=False, compile_embeddings=False, compile_gru=False)
                apply(module, options)
            params = sum(p.numel() for p in module.parameters())
            for batch_size in args.batch_sizes:
                fast = args.speed == 'fast'
                if mode == 'ssl':
                    batch = ssl_batch(scenes, batch_size, device, both_views=fast)
                    num_agents = int(batch['anchor']['agent']['num_nodes'])
                else:
                    batch = Batch.from_data_list([copy.deepcopy(scenes[i % len(scenes)])
                                                  for i in range(batch_size)]).to(device)
                    num_agents = int(batch['agent']['num_nodes'])
                if fast:
                    attach_edge_lists(batch, module.branch.backbone if mode == 'ssl' else module)
                for precision in args.precision:
                    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                              enabled=precision == 'bf16-mixed')
                    if device.type == 'cuda':
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)

                    if fast and mode == 'train':
                        def step():
                            with autocast:
                                module.fixed_shape_step.train(batch, optimizer)
                    elif fast and mode == 'ssl':
                        def step():
                            module.update_momentum_branch(0.996)
                            with autocast:
                                module.fixed_shape_step.train(batch, optimizer)
                    elif fast:
                        def step():
                            with autocast:
                                module.fixed_shape_step.infer(batch)
                    elif mode == 'train':
                        def step():
                            optimizer.zero_grad(set_to_none=True)
                            with autocast:
                                loss = module.compute_losses(batch, module(batch))['loss']
                            loss.backward()
                            optimizer.step()
                    elif mode == 'ssl':
                        def step():
                            module.update_momentum_branch(0.996)
                            optimizer.zero_grad(set_to_none=True)
                            with autocast:
                                loss = module(batch)['loss']
                            loss.backward()
                            optimizer.step()
                    else:
                        def step():
                            with torch.no_grad(), autocast:
                                module(batch)
                    try:
                        times = timer.measure(step, args.steps, args.warmup)
                    except torch.OutOfMemoryError:
                        print(f'{name} {mode} batch {batch_size} {precision}: out of memory', flush=True)
                        info['results'].append({'model': name, 'mode': mode, 'batch_size': batch_size,
                                                'precision': precision, 'oom': True})
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    median = statistics.median(times)
                    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None
                    row = {'model': name, 'mode': mode, 'batch_size': batch_size, 'agents': num_agents,
                           'precision': precision, 'parameters': params, 'median_s': median, 'min_s': min(times),
                           'max_s': max(times), 'scenarios_per_s': batch_size / median, 'peak_alloc_gib': peak}
                    info['results'].append(row)
                    print(f'{name:12s} {mode:5s} batch {batch_size:3d} ({num_agents:4d} agents) {precision:10s}: '
                          f'median {median * 1000:9.2f} ms  {batch_size / median:8.2f} scen/s'
                          + (f'  peak {peak:6.2f} GiB' if peak is not None else ''), flush=True)
            del module, optimizer
    if args.report:
        atomic_write_text(args.report, json.dumps(info, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
