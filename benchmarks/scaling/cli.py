"""Scaling study: how the benefit of SmartPretrain pre-training grows with the amount of pre-training data.

Protocol (synthetic Argoverse 2-format scenarios from ``datasets.synthetic``; details in docs/SCALING.md):
  * pools of unlabelled pre-training scenarios, one per synthetic profile (scenario k of a pool is the same whatever
    the pool's size, so a pool grows without changing its first scenarios);
  * for every size N of ``--sizes`` (or the geometric series ``--min_size * --size_factor^i``, i < ``--num_sizes``)
    and every data mix of ``--mixes``: pre-train ``train_ssl.py`` on the first N scenarios ('single': all from
    ``--target_profile``; 'mixed': N split evenly over ``--mix_profiles``) for ``--pretrain_epochs`` epochs;
  * fine-tune ``train.py --pretrained_ckpt`` on one fixed labelled set (``--num_labelled`` scenarios of the target
    profile, disjoint from the pools) and evaluate ``val.py`` on one fixed val split; the same fine-tuning from scratch
    is the baseline; every point for every seed of ``--seeds``.

Per run the table records the pre-training scenarios, epochs, optimiser steps, wall-clock and GPU-seconds (wall x
devices) of pre-training and fine-tuning, a FLOP estimate (one training step's FLOPs counted with
torch.utils.flop_counter.FlopCounterMode on real batches, per scenario, x scenarios processed) and the val metrics.
``results.json`` / ``results.csv`` are rewritten atomically after every run; a re-run skips finished points and adds
new sizes, mixes or seeds. Interrupted training runs continue from their last checkpoint (``--resume``).
``--parallel K`` runs up to K CLIs at once on the one GPU (pre-trainings first, a fine-tune once its pre-training is
done; docs/SCALING.md). At the end
``benchmarks/scaling_plots.py`` draws the plots and fits the power laws (``--no_plots`` skips it).

Examples:
  # CPU smoke (minutes): tiny model, 3 sizes x 2 seeds
  python benchmarks/scaling_sweep.py --work_dir /tmp/scaling --size tiny --accelerator cpu --precision 32 \\
      --sizes 4 8 16 --seeds 0 1 --num_labelled 4 --num_val 4 --pretrain_epochs 1 --finetune_epochs 1 \\
      --pretrain_batch_size 4 --finetune_batch_size 4 --num_workers 0 --flop_batches 1
  # one GPU: see docs/SCALING.md for the recorded command and its GPU time
"""
import argparse
import os
import sys
import time
from typing import Callable, List, Optional

from benchmarks.experiment_utils import MODEL_PRESETS, MODELS, CommandFailed, canonical_model, exit_on_sigterm
from benchmarks.scaling.plan import MIXES, describe_plan, geometric_sizes, plan_points
from benchmarks.scaling.results import EXPORT_FILES, ResultsTable, export_results
from benchmarks.scaling.runner import CliRunner
from benchmarks.scaling.schedule import run_sweep


def build_parser() -> argparse.ArgumentParser:
    from datasets.synthetic.profiles import PROFILES
    p = argparse.ArgumentParser(prog='scaling_sweep.py', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='data, runs, logs, results.{json,csv} and plots/ go here')
    sizes = p.add_argument_group('pre-training data sizes (N = scenarios)')
    sizes.add_argument('--sizes', type=int, nargs='+', default=None, help='explicit sizes (overrides the series)')
    sizes.add_argument('--min_size', type=int, default=100, help='first size of the geometric series')
    sizes.add_argument('--size_factor', type=float, default=2.0, help='ratio of consecutive sizes')
    sizes.add_argument('--num_sizes', type=int, default=4, help='number of sizes of the series')
    data = p.add_argument_group('data')
    data.add_argument('--mixes', nargs='+', choices=MIXES, default=['single'],
                      help="'single': pre-train on --target_profile only; 'mixed': N split evenly over "
                           '--mix_profiles (same N, more diverse data)')
    data.add_argument('--target_profile', default='default', choices=sorted(PROFILES),
                      help='profile of the labelled set, the val split and single-mix pre-training')
    data.add_argument('--mix_profiles', nargs='+', default=['default', 'highway'], choices=sorted(PROFILES))
    data.add_argument('--num_labelled', type=int, default=150, help='fixed labelled fine-tuning scenarios')
    data.add_argument('--num_val', type=int, default=300, help='fixed val scenarios')
    train = p.add_argument_group('training')
    train.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    train.add_argument('--pretrain_per_seed', type=int, choices=[0, 1], default=1,
                       help='1: pre-train once per (N, seed), so the seed spread includes pre-training; 0: once per '
                            'N with --pretrain_seed, shared by the fine-tuning seeds (cheaper)')
    train.add_argument('--pretrain_seed', type=int, default=0, help='pre-training seed with --pretrain_per_seed 0')
    train.add_argument('--baseline', type=int, choices=[0, 1], default=1, help='run the from-scratch baseline')
    train.add_argument('--transfer_branch', choices=['momentum', 'online'], default='momentum',
                       help='pre-training branch the fine-tunes start from (train.py --pretrained_branch): momentum '
                            '(the method) or online (short pre-training runs leave the EMA momentum branch close to '
                            'its random start)')
    train.add_argument('--pretrain_epochs', type=int, default=10, help='same for every N (compute grows with N)')
    train.add_argument('--pretrain_warmup', type=int, default=1, help='pre-training learning-rate warm-up epochs')
    train.add_argument('--pretrain_batch_size', type=int, default=32)
    train.add_argument('--finetune_epochs', type=int, default=20)
    train.add_argument('--finetune_batch_size', type=int, default=16)
    train.add_argument('--model', default='QCNet',
                       help=f'predictor / pre-training backbone: {", ".join(MODELS)} (full / tiny are read as --size)')
    train.add_argument('--size', choices=sorted(MODEL_PRESETS), default=None,
                       help='width preset: full (the official configuration, default) or tiny (CPU smoke runs)')
    train.add_argument('--accelerator', default='gpu')
    train.add_argument('--devices', type=int, default=1, help='devices of each pre-training run (fine-tuning: 1)')
    train.add_argument('--precision', default='bf16-mixed', choices=['32', 'bf16-mixed'])
    train.add_argument('--num_workers', type=int, default=min(8, os.cpu_count() or 1))
    run = p.add_argument_group('running')
    run.add_argument('--flop_batches', type=int, default=3, help='batches whose FLOPs are counted (mean)')
    run.add_argument('--flop_device', default='auto', help="device for the FLOP count ('auto': cuda if used)")
    run.add_argument('--deadline_s', type=float, default=None,
                     help='time-limited calls: start a point only if it is expected (from the wall times recorded so '
                          'far) to end within this many seconds of the start; re-run to continue (exit code 3)')
    run.add_argument('--parallel', type=int, default=1, metavar='K',
                     help='run up to K training / val CLIs at once (one GPU is launch-overhead bound with one QCNet '
                          'process): pre-trainings (largest N first) and scratch runs start at once, a fine-tune when '
                          'its pre-training is done, val.py after its fine-tune; --num_workers is split over the K '
                          'runs (at least 1 each) and OMP_NUM_THREADS, when unset, to the cores / K. 1: one after '
                          'another')
    run.add_argument('--parallel_pretrain', type=int, default=None, metavar='P',
                     help='at most P of the K concurrent jobs are pre-trainings (the most GPU memory each); '
                          'default: K')
    run.add_argument('--dry_run', action='store_true', help='print the plan (done / to do, work estimate) and exit')
    run.add_argument('--no_plots', action='store_true', help='skip benchmarks/scaling_plots.py at the end')
    run.add_argument('--export_dir', default=None,
                     help='at the end (also after a deadline or a failure) copy the small result files flat into '
                          'this folder: ' + ', '.join(EXPORT_FILES) + ' (e.g. $OUT of a time-limited GPU call)')
    run.add_argument('--plot_metric', default='minFDE', help='metric of the gain plots and fits')
    return p


def check_args(args: argparse.Namespace) -> List[int]:
    """Returns the sizes (and normalises --model / --size); SystemExit with a one-line message on bad flags."""
    if args.model in MODEL_PRESETS:  # --model full|tiny: the size preset of QCNet (as ssl_low_label.py)
        if args.size is not None:
            raise SystemExit(f'scaling_sweep: error: --model {args.model} is a size; give it with --size')
        args.size, args.model = args.model, 'QCNet'
    try:
        args.model = canonical_model(args.model)
    except ValueError as error:
        raise SystemExit(f'scaling_sweep: error: --model: {error}')
    args.size = args.size or 'full'
    try:
        sizes = sorted(set(args.sizes)) if args.sizes else geometric_sizes(args.min_size, args.size_factor,
                                                                             args.num_sizes)
    except ValueError as error:
        raise SystemExit(f'scaling_sweep: error: {error}')
    if sizes[0] < 1:
        raise SystemExit(f'scaling_sweep: error: sizes must be >= 1, got {sizes}')
    if 'mixed' in args.mixes and (len(set(args.mix_profiles)) < 2 or len(set(args.mix_profiles)) !=
                                  len(args.mix_profiles)):
        raise SystemExit(f'scaling_sweep: error: the mixed data needs >= 2 distinct --mix_profiles, got '
                         f'{args.mix_profiles}')
    if 'mixed' in args.mixes and sizes[0] < len(args.mix_profiles):
        raise SystemExit(f'scaling_sweep: error: size {sizes[0]} is smaller than the {len(args.mix_profiles)} '
                         f'mixed profiles')
    for flag in ('num_labelled', 'num_val', 'pretrain_epochs', 'finetune_epochs', 'pretrain_batch_size',
                 'finetune_batch_size', 'flop_batches', 'devices', 'parallel'):
        if getattr(args, flag) < 1:
            raise SystemExit(f'scaling_sweep: error: --{flag} must be >= 1, got {getattr(args, flag)}')
    if args.parallel_pretrain is not None and not 1 <= args.parallel_pretrain <= args.parallel:
        raise SystemExit(f'scaling_sweep: error: --parallel_pretrain must be in 1..--parallel ({args.parallel}), '
                         f'got {args.parallel_pretrain}')
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f'scaling_sweep: error: repeated --seeds {args.seeds}')
    return sizes


def main(argv=None, runner_factory: Optional[Callable[[argparse.Namespace], object]] = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = check_args(args)
    exit_on_sigterm()
    os.makedirs(args.work_dir, exist_ok=True)
    points = plan_points(sizes, args.mixes, args.seeds, bool(args.baseline))
    runner = (runner_factory or CliRunner)(args)
    table = ResultsTable(args.work_dir)
    table.check_protocol(runner.protocol())
    print(describe_plan(points, table, args), flush=True)
    if args.dry_run:
        return 0
    todo = [p for p in points if not table.has(p.key)]
    started = time.perf_counter()
    try:
        if todo:
            runner.prepare(todo)
            table.extra['flops'] = {k: {f: v[f] for f in ('flops_per_step', 'flops_per_scenario', 'batch_size',
                                                          'batches', 'device')}
                                    for k, v in getattr(runner, 'flops', {}).items()}
            table.save()
        outcome = run_sweep(points, runner, table, args.deadline_s, started=started, parallel=args.parallel,
                            parallel_pretrain=args.parallel_pretrain)
    except CommandFailed as error:
        print(f'scaling_sweep: error: {error}', file=sys.stderr)
        export_results(args.work_dir, args.export_dir)
        return 1
    except (SystemExit, KeyboardInterrupt):
        export_results(args.work_dir, args.export_dir)  # SIGTERM of a time-limited call: bring back finished rows
        raise
    if outcome.get('failed'):
        for line in outcome['failed']:
            print(f'scaling_sweep: error: {line}', file=sys.stderr)
        print(f'scaling_sweep: {len(outcome["failed"])} job(s) failed; {len(outcome["remaining"])} planned points '
              f'still to run; results so far in {table.json_path}', file=sys.stderr)
        export_results(args.work_dir, args.export_dir)
        return 1
    print(f'results: {table.json_path} and {table.csv_path} ({len(table.rows)} rows; '
          f'{len(outcome["remaining"])} planned points still to run)', flush=True)
    if not args.no_plots and table.rows:
        from benchmarks.scaling_plots import make_all
        make_all(table.json_path, os.path.join(os.path.abspath(args.work_dir), 'plots'), args.plot_metric)
    export_results(args.work_dir, args.export_dir)
    return 0 if not outcome['remaining'] else 3


if __name__ == '__main__':
    sys.exit(main())
