#!/usr/bin/env python
"""Times SmartPretrain pre-training steps: this project's (plain or --speed fast) or the official implementation's.

A step = what one optimiser step of pre-training does under Lightning: schedules and EMA update of the momentum
branch, momentum branch on both views, online branch on the anchor view, contrastive + reconstruction losses,
backward, AdamW. Both implementations run through the same harness: a Lightning Trainer set up as each
implementation's script sets it up on one device (official train_qcnet_ssl.py: DDP finding unused parameters, with
synchronised BatchNorm, which its contrastive loss needs for its rank look-ups and key gathering; train_ssl.py: no
DDP for one device) and fed the SAME batch, already on the device, at every step. A callback times each step from ``on_train_batch_start`` to
``on_train_batch_end`` (CUDA events on GPU, perf_counter on CPU); the median of --steps steps after --warmup
untimed ones is reported, with scenarios/s and the peak allocated GPU memory, as JSON (--report, and stdout).

Data: the real Argoverse 2 scenes of tests/data/av2/train (processed with this project's datasets package), cycled
to --batch_size scenes; copy i takes its two windows from ``transforms.SSLViews`` at epoch i, and both
implementations get the same windows. The official views are made by the official code itself
(``ArgoverseV2Dataset.get_scene_data`` and ``TargetBuilder_ssl`` of the checkout, applied to the same samples as the
official dataset's ``get`` prepares them).

--speed (ours): the presets of train_ssl.py (acceleration/options.py). default = the plain step (momentum branch
once per view, edge lists built inside the step, fused kernels, fused AdamW); fast = the CUDA-graph step
(acceleration/padded_ssl_batch.py: EMA update, then momentum branch once over both views, online branch, both
losses and backward replayed over padded fixed shapes; AdamW after it), compiled attention layers and Fourier
embeddings in both branches, and the edge lists of both views built beforehand on the CPU (one thread, as a loader
worker of train_ssl.py does; the build time is reported next to the step). On the CPU the padded step runs eagerly
and nothing is compiled. --tf32 sets the TF32 option of either preset.

The official code is imported from a checkout at run time (benchmarks/official_stubs.py; never copied here) and runs
unmodified; where torch_cluster / torch_scatter are missing, stand-ins with their semantics are installed. To put
the checkout next to this repository on a GPU machine (the folder is git-ignored and small, ~4 MiB):

    # on a machine with network access
    git clone https://github.com/youngzhou1999/SmartPretrain /tmp/SmartPretrain
    mkdir -p .official/SmartPretrain
    git -C /tmp/SmartPretrain archive a549848db398ef0628832bd8cffa4ab3785a60a4 | tar -x -C .official/SmartPretrain
    # (official QCNet for bench_qcnet_step.py --impl official likewise:
    #  https://github.com/ZikangZhou/QCNet at 55cacb418cbbce3753119c1f157360e66993d0d0 into .official/QCNet)
    # then copy the repository folder, .official/ included, to the GPU machine

Examples:
  # CPU smoke run with a small model
  python benchmarks/bench_ssl_step.py --device cpu --hidden_dim 16 --batch_size 2 --steps 2 --warmup 1
  # GPU: ours plain, ours fast and the official step, B = 16 and 32, 30 steps
  for B in 16 32; do
    python benchmarks/bench_ssl_step.py --batch_size $B --steps 30 --warmup 5 --tf32 --report ours_$B.json
    python benchmarks/bench_ssl_step.py --batch_size $B --steps 30 --warmup 10 --tf32 --speed fast --report fast_$B.json
    python benchmarks/bench_ssl_step.py --batch_size $B --steps 30 --warmup 5 --tf32 --impl official --report official_$B.json
  done
"""
import argparse
import json
import os
import statistics
import sys
import time
import types
import warnings
from typing import Dict, List, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from utils.cli import str2bool  # noqa: E402

# Official Argoverse 2 pre-training configuration (train_ssl.sh of the official repository).
AV2_SSL_CONFIG = dict(dataset='argoverse_v2', input_dim=2, hidden_dim=128, output_dim=2, output_head=False,
                      num_historical_steps=50, num_future_steps=60, num_modes=1, num_recurrent_steps=3,
                      num_freq_bands=64, num_map_layers=1, num_agent_layers=2, num_dec_layers=2, num_heads=8,
                      head_dim=16, dropout=0.1, pl2pl_radius=150.0, time_span=10, pl2a_radius=50.0, a2a_radius=50.0,
                      num_t2m_steps=30, pl2m_radius=150.0, a2m_radius=150.0, lr=1.5e-3, weight_decay=1e-1, T_max=32,
                      submission_dir='./', submission_file_name='submission', lr_init=1e-4, lr_last=1e-6,
                      weight_decay_init=1e-2, contra_t=0.07, contra_momentum=0.996, warmup=15)
DEFAULT_OFFICIAL_REPO = os.path.join(ROOT, '.official', 'SmartPretrain')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--impl', choices=['ours', 'official'], default='ours')
    parser.add_argument('--official_repo', type=str, default=DEFAULT_OFFICIAL_REPO,
                        help='official SmartPretrain checkout (--impl official; see above how to get it)')
    parser.add_argument('--speed', choices=['default', 'fast'], default='default', help='ours: see above')
    parser.add_argument('--compile', type=str2bool, default=None,
                        help='ours, --speed fast: 0 keeps the CUDA-graph step but compiles nothing (eager kernels '
                             'replayed; quick to start, e.g. to check the capture); 1 compiles on the CPU too '
                             '(default: compile on CUDA only)')
    parser.add_argument('--cuda_graphs', type=str2bool, default=None,
                        help='ours: 0 runs the step of the preset without CUDA graphs (with --speed fast: compiled '
                             'pieces launched eagerly, so that --profile_steps can name the operator behind each '
                             'kernel; a replayed graph launches no operator); default: the preset\'s')
    parser.add_argument('--compile_memory_budget', type=float, default=None,
                        help='ours: fraction of their activations the compiled backward keeps (below 1: recompute '
                             'more, keep less; default: the preset\'s)')
    parser.add_argument('--device', type=str, default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch_size', type=int, default=16, help='scenarios per step')
    parser.add_argument('--steps', type=int, default=30, help='timed steps (median reported)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first (compilation happens here)')
    parser.add_argument('--precision', choices=['32', 'bf16-mixed'], default='32')
    parser.add_argument('--tf32', action='store_true', help='allow TF32 matmuls in fp32 runs')
    parser.add_argument('--hidden_dim', type=int, default=AV2_SSL_CONFIG['hidden_dim'])
    parser.add_argument('--data_root', type=str, default=os.path.join(ROOT, 'tests', 'data', 'av2', 'train'),
                        help='raw Argoverse 2 scenario folders to process and cycle')
    parser.add_argument('--crop_radius', type=float, default=None,
                        help='keep only the agents and map polygons within this many metres of the AV at the last '
                             'history step (small scenes for CPU smoke runs; default: whole scenes)')
    parser.add_argument('--seed', type=int, default=2025, help='model initialisation and view windows')
    parser.add_argument('--report', type=str, default=None, help='write the result as JSON here')
    parser.add_argument('--profile_steps', type=int, default=0,
                        help='run this many more steps after the timed ones under torch.profiler and report the '
                             'device time per step and its largest kernels (where a step\'s time goes)')
    args = parser.parse_args(argv)
    if args.impl == 'official' and (args.speed != 'default' or args.compile_memory_budget is not None
                                    or args.cuda_graphs is not None):
        parser.error('--speed is for --impl ours (the official step has no speed options)')
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.profile_steps < 0:
        parser.error('--steps and --batch_size must be >= 1, --warmup and --profile_steps >= 0')
    return args


def load_scenes(data_root: str) -> List:
    from datasets import list_argoverse_v2_scenarios, load_argoverse_v2_scenario, process_scenario
    if not os.path.isdir(data_root):
        raise SystemExit(f'bench_ssl_step: {data_root}: no such folder (see --data_root)')
    scenes = [process_scenario(load_argoverse_v2_scenario(os.path.join(data_root, s)))
              for s in list_argoverse_v2_scenarios(data_root)]
    if not scenes:
        raise SystemExit(f'bench_ssl_step: {data_root}: no Argoverse 2 scenario folders')
    return scenes


def view_windows(scenes: List, batch_size: int, seed: int) -> List[Tuple[object, int, int]]:
    """(scene, anchor start, target start) of each batch item: scene i % n, windows of SSLViews at epoch i."""
    from transforms.ssl_views import SSLViews
    views = SSLViews(AV2_SSL_CONFIG['num_historical_steps'], AV2_SSL_CONFIG['num_future_steps'], seed=seed)
    items = []
    for i in range(batch_size):
        scene = scenes[i % len(scenes)]
        views.set_epoch(i)
        items.append((scene, *views.sample_starts(scene)))
    return items


def official_modules(repo: str) -> Dict[str, types.ModuleType]:
    if not os.path.isfile(os.path.join(repo, 'predictors', 'qcnet_ssl.py')):
        raise SystemExit(f'bench_ssl_step: {repo}: not an official SmartPretrain checkout (no predictors/qcnet_ssl.py; '
                         'see this script\'s docstring)')
    from benchmarks.official_stubs import import_official, install_fast_stand_ins
    install_fast_stand_ins()
    return import_official(os.path.abspath(repo), ['predictors.qcnet_ssl', 'datasets.argoverse_v2_dataset',
                                                   'transforms.target_builder'])


def official_batch(items, modules) -> Dict[str, object]:
    """The official pre-training batch {'t_', 't'} of ``items``, made by the official code: each sample prepared as
    the official dataset's ``get`` does, cut by its ``get_scene_data``, then ``TargetBuilder_ssl``."""
    from torch_geometric.data import HeteroData
    from torch_geometric.loader import DataLoader
    dataset_cls = modules['datasets.argoverse_v2_dataset'].ArgoverseV2Dataset
    builder_cls = modules['transforms.target_builder'].TargetBuilder_ssl
    # Their methods are called on plain attribute holders: the dataset class would process a whole raw folder when
    # built, and TargetBuilder_ssl cannot be instantiated under newer PyG (BaseTransform.forward became abstract).
    steps = types.SimpleNamespace(num_historical_steps=AV2_SSL_CONFIG['num_historical_steps'],
                                  num_future_steps=AV2_SSL_CONFIG['num_future_steps'])
    pairs = []
    for scene, anchor_start, target_start in items:
        raw = scene.to_dict()
        data = HeteroData({key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()})
        data['data_set'] = 1
        del data['agent']['id']
        if 'height' in data['map_polygon'] and data['city'] != 'waymo':
            del data['map_polygon']['height']
        scene_t = dataset_cls.get_scene_data(steps, data.clone(), start=anchor_start, first=1)
        scene_t_ = dataset_cls.get_scene_data(steps, data.clone(), start=target_start, first=0)
        scene_t['start'], scene_t_['start'] = anchor_start, target_start
        pairs.append(builder_cls.__call__(steps, {'t_': scene_t_, 't': scene_t}))
    return next(iter(DataLoader(pairs, batch_size=len(pairs))))


def our_batch(items, model, speed: str) -> Tuple[Dict[str, object], float]:
    """Our batch of ``items`` (the loader's collate of train_ssl.py) and the CPU time of building its edge lists
    (--speed fast; None otherwise)."""
    from torch_geometric.loader import DataLoader
    from transforms.ssl_views import SSLViews
    from acceleration.view_pair_batch import ViewPairCollate, view_edge_list_builder
    views = SSLViews(AV2_SSL_CONFIG['num_historical_steps'], AV2_SSL_CONFIG['num_future_steps'])
    pairs = [views.make_views(scene, anchor_start, target_start) for scene, anchor_start, target_start in items]
    collate = DataLoader(pairs, batch_size=len(pairs)).collate_fn
    if speed == 'default':
        return collate(pairs), None
    builder = view_edge_list_builder(model, num_workers=1)  # the CPU copy a loader worker holds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        start = time.perf_counter()
        batch = ViewPairCollate(collate, builder, batch_views=True)(pairs)
        build_s = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return batch, build_s


def build_model(args, modules):
    config = dict(AV2_SSL_CONFIG, hidden_dim=args.hidden_dim)
    if args.impl == 'official':
        return modules['predictors.qcnet_ssl'].QCNet_ssl(**config)
    from acceleration.apply import apply
    from acceleration.options import PRESETS
    from predictors.smartpretrain import SmartPretrain
    model = SmartPretrain(**config, seed=args.seed)
    options = PRESETS[args.speed].replace(tf32=args.tf32)
    if args.compile_memory_budget is not None:
        options = options.replace(compile_memory_budget=args.compile_memory_budget)
    if args.cuda_graphs is not None:
        options = options.replace(cuda_graphs=args.cuda_graphs)
    compile_here = args.compile if args.compile is not None else torch.device(args.device).type == 'cuda'
    if not compile_here:  # CPU smoke runs compile nothing unless asked to
        options = options.replace(compile_attention=False, compile_embeddings=False, compile_gru=False)
    apply(model, options)
    return model


def step_timer(device: torch.device, warmup: int):
    """A Lightning callback recording each training step's duration (seconds, after ``warmup`` steps)."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.events, self.times, self.count, self.warmup_end = [], [], 0, None
            self.fit_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.count == warmup:
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                self.warmup_end = time.perf_counter()
            if device.type == 'cuda':
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                self.events.append([start, None])
            else:
                self.events.append([time.perf_counter(), None])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if device.type == 'cuda':
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self.events[-1][1] = end
            else:
                self.events[-1][1] = time.perf_counter()
            self.count += 1

        def durations(self) -> List[float]:
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
                return [a.elapsed_time(b) / 1000.0 for a, b in self.events[warmup:]]
            return [b - a for a, b in self.events[warmup:]]

    return StepTimer()


def kernel_profiler(device: torch.device, first: int, count: int):
    """A Lightning callback running steps ``first`` .. ``first + count - 1`` under torch.profiler; ``summary()`` then
    gives the device (kernel) time per step, the number of kernels per step and the largest kernels, so that the
    wall time of a step can be split into GPU work and the rest (launches, host work, waiting)."""
    import pytorch_lightning as pl
    from torch.profiler import ProfilerActivity, profile

    class KernelProfiler(pl.Callback):
        def __init__(self) -> None:
            self.count, self.profiler = 0, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.count == first:
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
                self.profiler = profile(activities=activities, record_shapes=True)
                self.profiler.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.count += 1
            if self.count == first + count:
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                self.profiler.__exit__(None, None, None)

        def summary(self) -> Dict[str, object]:
            from benchmarks.kernel_profile import kernel_summary
            if self.profiler is None:
                raise SystemExit('bench_ssl_step: the profiled steps did not run')
            return {'profiled_steps': count, **kernel_summary(self.profiler, count)}

    return KernelProfiler()


def compile_statistics() -> Dict[str, object]:
    """What torch.compile did in this process: graphs compiled by dynamo, hits and misses of the persistent compile
    cache, and seconds spent per compile phase (the split between tracing and code generation that a warm start
    with a filled cache can or cannot skip)."""
    import torch._dynamo.utils as dynamo_utils
    stats = dynamo_utils.counters['stats']
    phases = {}
    if stats.get('unique_graphs', 0):
        names, values = dynamo_utils.compile_times(repr='csv', aggregate=True)
        phases = {name: round(float(value), 2) for name, value in zip(names, values)}
    # cache hits / misses: a restart with the persistent cache finds every graph's forward-backward split
    # (aot_autograd) and kernels (inductor fx graph) there; a miss or bypass is traced or compiled again
    caches = {f'{group}.{name}': int(count) for group in ('aot_autograd', 'inductor')
              for name, count in dynamo_utils.counters[group].items() if 'cache' in name}
    return {'compiled_graphs': int(stats.get('unique_graphs', 0)), 'compile_cache': caches, 'compile_phase_s': phases}


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings('ignore', message='.*(self.log|sync_dist|num_workers|LeafSpec|does not have many).*')
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import DDPStrategy
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    modules = official_modules(args.official_repo) if args.impl == 'official' else None
    scenes = load_scenes(args.data_root)
    if args.crop_radius is not None:
        from utils.scene_crop import crop_scene
        current = AV2_SSL_CONFIG['num_historical_steps'] - 1
        scenes = [crop_scene(scene, args.crop_radius, current) for scene in scenes]
    items = view_windows(scenes, args.batch_size, args.seed)
    pl.seed_everything(args.seed, verbose=False)
    model = build_model(args, modules)
    if args.impl == 'official':
        from benchmarks.official_stubs import forget_generated_propagate_modules
        forget_generated_propagate_modules()
        batch, build_s = official_batch(items, modules), None
        num_agents = int(batch['t']['agent']['num_nodes'])
    else:
        batch, build_s = our_batch(items, model, args.speed)
        num_agents = int(batch['anchor']['agent']['num_nodes'])
    batch = {name: view.to(device) for name, view in batch.items()}
    total = args.warmup + args.steps + args.profile_steps
    loader = torch.utils.data.DataLoader([batch] * total, batch_size=None, collate_fn=lambda item: item)
    timer = step_timer(device, args.warmup)
    profiler = kernel_profiler(device, args.warmup + args.steps, args.profile_steps) if args.profile_steps else None
    accelerator = 'gpu' if device.type == 'cuda' else 'cpu'
    if args.impl == 'official':  # the official script's trainer: DDP finding unused parameters, synchronised BN
        strategy = DDPStrategy(find_unused_parameters=True,
                               process_group_backend='nccl' if device.type == 'cuda' else 'gloo')
    else:  # train_ssl.py on one device
        from utils.cli import training_strategy
        strategy = training_strategy(1)
    trainer = pl.Trainer(accelerator=accelerator, devices=[device.index or 0] if device.type == 'cuda' else 1,
                         strategy=strategy, sync_batchnorm=args.impl == 'official' and device.type == 'cuda',
                         precision=args.precision, max_epochs=1, max_steps=total, limit_val_batches=0,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer] + ([profiler] if profiler else []))
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(model, train_dataloaders=loader)
    times = timer.durations()[:args.steps]
    if len(times) != args.steps:
        raise SystemExit(f'bench_ssl_step: {len(times)} timed steps instead of {args.steps}')
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None
    result = {'impl': args.impl, 'speed': args.speed, 'device': str(device),
              'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
              'torch': torch.__version__, 'precision': args.precision, 'tf32': args.tf32,
              'compile_memory_budget': args.compile_memory_budget, 'cuda_graphs': args.cuda_graphs,
              'hidden_dim': args.hidden_dim,
              'batch_size': args.batch_size, 'agents': num_agents,
              'num_scenes_available': len(scenes), 'steps': args.steps, 'warmup': args.warmup,
              'median_s': median, 'min_s': min(times), 'max_s': max(times),
              'scenarios_per_s': args.batch_size / median, 'peak_alloc_gib': peak,
              'warmup_s': (timer.warmup_end or time.perf_counter()) - timer.fit_start,
              'graph_build_cpu_s': build_s, 'official_repo': os.path.relpath(args.official_repo, ROOT)
              if args.impl == 'official' else None}
    result.update(compile_statistics())
    if profiler:
        result['kernel_profile'] = profiler.summary()
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if args.report:
        from utils.atomic_io import atomic_write_text
        atomic_write_text(args.report, text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
