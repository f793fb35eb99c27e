"""Low-label experiment: does SmartPretrain pre-training help when labels are scarce?

Protocol (all on synthetic Argoverse 2-format scenarios written by ``datasets.synthetic``):
  1. an unlabelled pool of ``--num_pool`` training scenarios, a labelled subset (the first ``--num_labelled`` of the
     pool) and ``--num_val`` validation scenarios from another seed;
  2. pre-train with ``train_ssl.py`` on the pool for ``--pretrain_epochs``;
  3. for every seed in ``--seeds``: fine-tune ``train.py --pretrained_ckpt`` on the labelled subset, and train the
     same model from scratch with the same budget (``--finetune_epochs``);
  4. validate every run with ``val.py`` on the full val split as soon as its training ends; write ``results.json``
     and a markdown table.

``--online_arm 1`` adds fine-tunes from the online branch of the same pre-training (``pretrained_online``; the
method transfers the momentum branch, an EMA that keeps much of its random start after a few hundred steps);
``--probe 1`` adds decoder-only runs on frozen encoders; ``--runs KIND ...`` runs only some kinds in this job.

Runs go through the project's own CLIs (the code path a user runs). Scratch runs start while pre-training is still
going (``--overlap``): a QCNet step leaves most of an H100 idle, so the wall time of the whole experiment drops.

--model picks the predictor / backbone (QCNet, the default, or ForecastMAE), --size its width preset (full, tiny).

Split over two device calls (each at most 10 minutes, wiped afterwards, files back through a small output folder):
call 1 pre-trains only and exports the slim checkpoint (``--skip_finetune 1 --export_dir OUT``: momentum encoder +
decoder in float16, ~10.6 MiB for the full-size QCNet, see ``utils/export_pretrained.py``); call 2 carries that file in
and runs the scratch baselines and the fine-tunes (``--pretrained_ckpt pretrained_slim.ckpt --export_dir OUT``).

Example (one H100, ~8 minutes per model):
  python benchmarks/ssl_low_label.py --work_dir /tmp/lowlabel --accelerator gpu --precision bf16-mixed
  python benchmarks/ssl_low_label.py --work_dir /tmp/lowlabel_fmae --model ForecastMAE
In two calls (same data flags in both; synthetic data is regenerated identically from its seeds):
  python benchmarks/ssl_low_label.py --work_dir /tmp/ll --skip_finetune 1 --export_dir $OUT
  python benchmarks/ssl_low_label.py --work_dir /tmp/ll --pretrained_ckpt pretrained_slim.ckpt --export_dir $OUT
With the online arm, in three calls (as recorded in docs/BENCHMARKS.md section 4c):
  python benchmarks/ssl_low_label.py --work_dir /tmp/ll --online_arm 1 --skip_finetune 1 --export_dir $OUT
  python benchmarks/ssl_low_label.py --work_dir /tmp/ll --runs pretrained pretrained_online \
      --pretrained_ckpt pretrained_slim.ckpt --pretrained_online_ckpt pretrained_online_slim.ckpt --export_dir $OUT
  python benchmarks/ssl_low_label.py --work_dir /tmp/ll --runs scratch --export_dir $OUT
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import (METRICS, MODEL_PRESETS, MODELS, atomic_write_json,  # noqa: E402
                                         atomic_write_text, canonical_model, finetune_cmd, prepare_run_dir, pretrain_cmd,
                                         read_val_metrics, start_logged, val_cmd)
from utils.atomic_io import atomic_output_path  # noqa: E402

SLIM_NAME = 'pretrained_slim.ckpt'            # --export_dir: the slim pre-training checkpoint
ONLINE_SLIM_NAME = 'pretrained_online_slim.ckpt'  # --export_dir --online_arm 1: its online branch
PRETRAIN_METRICS_NAME = 'pretrain_metrics.csv'  # --export_dir: the pre-training run's CSV log (losses, accuracy)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='everything (data, logs, results) goes here')
    p.add_argument('--num_pool', type=int, default=1200, help='unlabelled pre-training scenarios')
    p.add_argument('--num_labelled', type=int, default=150, help='labelled fine-tuning scenarios (pool prefix)')
    p.add_argument('--num_val', type=int, default=300)
    p.add_argument('--pretrain_epochs', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1, help='pre-training warm-up epochs')
    p.add_argument('--finetune_epochs', type=int, default=15)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--pretrain_batch_size', type=int, default=32)
    p.add_argument('--finetune_batch_size', type=int, default=16)
    p.add_argument('--model', default='QCNet',
                   help=f'predictor / pre-training backbone: {", ".join(MODELS)} (backbone names such as forecast_mae '
                        f'work too; the former size values full / tiny are still read as --size)')
    p.add_argument('--size', choices=sorted(MODEL_PRESETS), default=None, help='model width preset (default: full)')
    p.add_argument('--accelerator', default='gpu')
    p.add_argument('--precision', default='bf16-mixed')
    p.add_argument('--num_workers', type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument('--overlap', type=int, default=1, choices=[0, 1],
                   help='run the scratch baselines concurrently with pre-training')
    p.add_argument('--profile', default='default', help='synthetic scenario profile')
    p.add_argument('--probe', type=int, default=0, choices=[0, 1],
                   help='also train only the decoder on a frozen encoder, random (scratch_frozen) and pre-trained '
                        '(pretrained_frozen): does the pre-trained representation itself carry the information?')
    p.add_argument('--online_arm', type=int, default=0, choices=[0, 1],
                   help='also fine-tune from the ONLINE branch of the same pre-training (pretrained_online; '
                        'train.py --pretrained_branch online): the momentum branch the method transfers is an EMA '
                        'that keeps much of its random start after few pre-training steps')
    p.add_argument('--pretrained_online_ckpt', default=None,
                   help=f'with --pretrained_ckpt and --online_arm 1: the checkpoint holding the online branch (the '
                        f'{ONLINE_SLIM_NAME} of an earlier --export_dir); default: --pretrained_ckpt itself')
    p.add_argument('--runs', nargs='+', default=None,
                   choices=['scratch', 'pretrained', 'pretrained_online', 'scratch_frozen', 'pretrained_frozen'],
                   help='run only these kinds of run (default: all that the other flags ask for); e.g. the scratch '
                        'baselines in one time-limited call and the fine-tunes in another')
    p.add_argument('--pretrained_ckpt', default=None,
                   help='skip pre-training and fine-tune from this pre-training checkpoint (full, or the slim '
                        f'{SLIM_NAME} of an earlier --export_dir)')
    p.add_argument('--skip_finetune', type=int, default=0, choices=[0, 1],
                   help='stop after pre-training (no scratch or fine-tuning run); with --export_dir, fine-tune in a '
                        'later call with --pretrained_ckpt')
    p.add_argument('--export_dir', default=None,
                   help=f'write {SLIM_NAME} (float16 momentum encoder + decoder of the pre-training run here, when '
                        f'it pre-trained), {PRETRAIN_METRICS_NAME}, results.json and the *_val.json files here')
    args = p.parse_args(argv)
    if args.pretrained_ckpt is not None:
        if args.skip_finetune:
            p.error('--pretrained_ckpt skips pre-training and --skip_finetune 1 skips fine-tuning: nothing would run')
        if not os.path.isfile(args.pretrained_ckpt):
            p.error(f'--pretrained_ckpt {args.pretrained_ckpt}: no such checkpoint file')
        args.pretrained_ckpt = os.path.abspath(args.pretrained_ckpt)
    if args.runs and 'pretrained_online' in args.runs:
        args.online_arm = 1
    if args.probe == 0 and args.runs and {'scratch_frozen', 'pretrained_frozen'} & set(args.runs):
        args.probe = 1
    if args.pretrained_online_ckpt is not None:
        if args.pretrained_ckpt is None or not args.online_arm:
            p.error('--pretrained_online_ckpt goes with --pretrained_ckpt and --online_arm 1')
        if not os.path.isfile(args.pretrained_online_ckpt):
            p.error(f'--pretrained_online_ckpt {args.pretrained_online_ckpt}: no such checkpoint file')
        args.pretrained_online_ckpt = os.path.abspath(args.pretrained_online_ckpt)
    elif args.pretrained_ckpt is not None and args.online_arm:
        args.pretrained_online_ckpt = args.pretrained_ckpt
    if args.model in MODEL_PRESETS:  # earlier meaning of --model: the size preset of QCNet
        if args.size is not None:
            p.error(f'--model {args.model} is a size; give the size with --size and the model with --model')
        args.size, args.model = args.model, 'QCNet'
    try:
        args.model = canonical_model(args.model)
    except ValueError as error:
        p.error(f'--model: {error}')
    args.size = args.size or 'full'
    return args


def run(cmd: List[str], log_path: str, background: bool = False):
    """Runs one CLI of the project, its output going to log_path; returns the Popen when background."""
    proc = start_logged(cmd, log_path)
    if background:
        return proc
    if proc.wait() != 0:
        sys.exit(f'ssl_low_label: command failed (exit {proc.returncode}), see {log_path}')
    return None


def wait_each(procs: Dict[str, subprocess.Popen], logs: Dict[str, str], on_done, poll_s: float = 2.0) -> None:
    """Waits for the background runs ``procs``, calling ``on_done(name)`` for each as soon as it has ended well;
    a failed run stops the experiment with its log's path (the other runs are terminated; their finished results
    stay, and a rerun resumes the rest)."""
    pending = dict(procs)
    while pending:
        for name, proc in list(pending.items()):
            if proc.poll() is None:
                continue
            del pending[name]
            if proc.returncode != 0:
                for other in pending.values():
                    other.terminate()
                for other in pending.values():
                    other.wait()
                sys.exit(f'ssl_low_label: {name} failed (exit {proc.returncode}), see {logs[name]}')
            on_done(name)
        if pending:
            time.sleep(poll_s)


def check_pretrained_ckpt(path: str, model: str, branch: str = 'momentum') -> None:
    """Fails now (not minutes later in train.py) on a checkpoint that is no pre-training one of ``model``'s
    backbone or lacks ``branch``; the messages name the file."""
    from predictors import model_class
    from utils.pretrained import _check_pretraining_layout, read_pretraining_checkpoint
    try:
        state_dict, hparams = read_pretraining_checkpoint(path)
        _check_pretraining_layout(path, state_dict, hparams, branch)
    except (OSError, ValueError) as error:
        sys.exit(f'ssl_low_label: --pretrained_ckpt {str(error).splitlines()[0]}')
    expected = model_class(model).SSL_BACKBONE
    found = str(hparams.get('backbone') or 'qcnet') if hparams else expected  # bare state dicts: train.py checks
    if found != expected:
        sys.exit(f'ssl_low_label: --pretrained_ckpt {path}: pre-trained with backbone {found!r}, but --model {model} '
                 f'takes {expected!r} weights')


def export_files(export_dir: str, sources: List[str], names: Optional[List[str]] = None) -> None:
    """Copies the files of ``sources`` that exist into ``export_dir`` (under ``names``, default their own), each
    atomically: a call that ends mid-copy leaves the previous version, never half a file."""
    os.makedirs(export_dir, exist_ok=True)
    for source, name in zip(sources, names or [os.path.basename(s) for s in sources]):
        if os.path.isfile(source):
            with atomic_output_path(os.path.join(export_dir, name)) as temporary:
                shutil.copyfile(source, temporary)


def pretrain_metrics_csv(run_dir: str):
    """The CSV log (csv/version_N/metrics.csv) of the newest version of a train_ssl.py run, or None."""
    csv_dir = os.path.join(run_dir, 'csv')
    versions = sorted((d for d in os.listdir(csv_dir) if d.startswith('version_')),
                      key=lambda d: int(d.split('_')[1]) if d.split('_')[1].isdigit() else -1) \
        if os.path.isdir(csv_dir) else []
    path = os.path.join(csv_dir, versions[-1], 'metrics.csv') if versions else None
    return path if path and os.path.isfile(path) else None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pretrained_ckpt is not None:
        check_pretrained_ckpt(args.pretrained_ckpt, args.model)
    if args.pretrained_online_ckpt is not None:
        check_pretrained_ckpt(args.pretrained_online_ckpt, args.model, 'online')
    export_dir = os.path.abspath(args.export_dir) if args.export_dir else None
    py = sys.executable
    work = os.path.abspath(args.work_dir)
    raw, data, logs = (os.path.join(work, d) for d in ('raw', 'data', 'logs'))
    os.makedirs(logs, exist_ok=True)
    # one experiment per work dir: resuming must not mix runs of another model or size into this one
    marker = os.path.join(logs, 'experiment_model.txt')
    setting = f'{args.model} {args.size}'
    if os.path.exists(marker):
        with open(marker) as f:
            earlier = f.read().strip()
        if earlier != setting:
            sys.exit(f'ssl_low_label: {work} holds an experiment with model/size {earlier!r}, not {setting!r}; '
                     f'use another --work_dir')
    else:
        atomic_write_text(marker, setting + '\n')
    timings = {}

    t0 = time.time()
    if not os.path.isdir(os.path.join(raw, 'train')):
        run([py, '-m', 'datasets.synthetic', '--out', raw, '--split', 'train', '--num', str(args.num_pool),
             '--seed', '0', '--num_workers', str(os.cpu_count()), '--profile', args.profile],
            os.path.join(logs, 'gen_train.log'))
    if not os.path.isdir(os.path.join(raw, 'val')):
        run([py, '-m', 'datasets.synthetic', '--out', raw, '--split', 'val', '--num', str(args.num_val),
             '--seed', '1', '--num_workers', str(os.cpu_count()), '--profile', args.profile],
            os.path.join(logs, 'gen_val.log'))
    # the labelled subset: links to the first scenarios of the pool
    labelled_raw = os.path.join(raw, 'labelled')
    os.makedirs(labelled_raw, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(raw, 'train')))[:args.num_labelled]:
        link = os.path.join(labelled_raw, name)
        if not os.path.exists(link):
            os.symlink(os.path.join(raw, 'train', name), link)
    for split in ('train', 'labelled', 'val'):
        run([py, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir', os.path.join(raw, split),
             '--processed_dir', os.path.join(data, split, 'processed'), '--num_workers', str(os.cpu_count())],
            os.path.join(logs, f'preprocess_{split}.log'))
    timings['data_s'] = time.time() - t0

    def supervised_cmd(name: str, seed: int, pretrained: str = None) -> List[str]:
        extra = ['--freeze_encoder', '1'] if 'frozen' in name else []
        if name.startswith('pretrained_online'):
            extra += ['--pretrained_branch', 'online']
        return finetune_cmd(py, data, labelled_raw, os.path.join(data, 'labelled', 'processed'),
                            os.path.join(raw, 'val'), os.path.join(data, 'val', 'processed'),
                            args.finetune_batch_size, args.finetune_epochs, args.num_workers, args.accelerator, 1,
                            args.precision, seed, logs, name, args.size, pretrained=pretrained,
                            model=args.model, extra=extra)

    kinds = (['scratch', 'pretrained'] + (['pretrained_online'] if args.online_arm else [])
             + (['scratch_frozen', 'pretrained_frozen'] if args.probe else []))
    if args.runs:
        kinds = [kind for kind in kinds if kind in args.runs]

    procs, proc_logs = {}, {}
    t_scratch = time.time()
    names = [] if args.skip_finetune else [f'{kind}_s{seed}' for kind in kinds for seed in args.seeds]
    todo = {name for name in names if prepare_run_dir(logs, name)}
    if args.overlap and not args.skip_finetune:
        for seed in args.seeds:
            for name in (f'{kind}_s{seed}' for kind in kinds if kind.startswith('scratch')):
                if name in todo:
                    proc_logs[name] = os.path.join(logs, name + '.log')
                    procs[name] = run(supervised_cmd(name, seed), proc_logs[name], background=True)

    t_pre = time.time()
    if args.pretrained_ckpt is not None:  # pre-trained elsewhere (an earlier call): nothing to pre-train here
        pretrained, pretrained_online = args.pretrained_ckpt, args.pretrained_online_ckpt
    elif not args.skip_finetune and not any(kind.startswith('pretrained') for kind in kinds):
        pretrained = pretrained_online = None  # --runs without a pre-trained kind: nothing needs pre-training
    else:
        pretrained = pretrained_online = os.path.join(logs, 'pretrain', 'checkpoints', 'last.ckpt')
        if not os.path.exists(os.path.join(logs, 'pretrain', 'done')):
            shutil.rmtree(os.path.join(logs, 'pretrain'), ignore_errors=True)
            run(pretrain_cmd(py, data, os.path.join(raw, 'train'), os.path.join(data, 'train', 'processed'),
                             os.path.join(raw, 'val'), os.path.join(data, 'val', 'processed'),
                             args.pretrain_batch_size, args.pretrain_epochs, args.warmup, args.num_workers,
                             args.accelerator, 1, args.precision, 0, logs, 'pretrain', args.size, model=args.model),
                os.path.join(logs, 'pretrain.log'))
            open(os.path.join(logs, 'pretrain', 'done'), 'w').close()
        timings['pretrain_s'] = time.time() - t_pre
        if export_dir:  # right away: should the call end during fine-tuning, the pre-training is saved already
            run([py, '-m', 'utils.export_pretrained', pretrained, os.path.join(export_dir, SLIM_NAME)],
                os.path.join(logs, 'export_pretrained.log'))
            if args.online_arm:
                run([py, '-m', 'utils.export_pretrained', pretrained, os.path.join(export_dir, ONLINE_SLIM_NAME),
                     '--branch', 'online'], os.path.join(logs, 'export_pretrained_online.log'))
            metrics_csv = pretrain_metrics_csv(os.path.join(logs, 'pretrain'))
            if metrics_csv:
                export_files(export_dir, [metrics_csv], [PRETRAIN_METRICS_NAME])
    if args.skip_finetune:
        timings['total_s'] = time.time() - t0
        results = {'config': vars(args), 'runs': {}, 'timings': timings, 'pretrained_ckpt': pretrained}
        atomic_write_json(os.path.join(work, 'results.json'), results)
        if export_dir:
            export_files(export_dir, [os.path.join(work, 'results.json')])
        print(f'--skip_finetune 1: stopped after pre-training; checkpoint {pretrained}'
              + (f', slim copy {os.path.join(export_dir, SLIM_NAME)}' if export_dir else ''))
        print(json.dumps(timings, indent=2))
        return 0

    t_ft = time.time()
    for seed in args.seeds:
        for kind in kinds:
            name = f'{kind}_s{seed}'
            if name in todo and name not in procs:
                proc_logs[name] = os.path.join(logs, name + '.log')
                source = (pretrained_online if kind.startswith('pretrained_online') else
                          pretrained if kind.startswith('pretrained') else None)
                procs[name] = run(supervised_cmd(name, seed, source), proc_logs[name], background=True)
    def validate(name: str) -> None:
        out_json = os.path.join(logs, name + '_val.json')
        run(val_cmd(py, data, os.path.join(raw, 'val'), os.path.join(data, 'val', 'processed'),
                    os.path.join(logs, name, 'checkpoints', 'last.ckpt'), args.accelerator, out_json),
            os.path.join(logs, name + '_val.log'))
        if export_dir:  # one by one: a call that ends early still hands back every run validated so far
            export_files(export_dir, [out_json])

    # each run is validated as soon as its training ends, while the others go on training
    wait_each(procs, proc_logs, validate)
    timings['finetune_wall_s'] = time.time() - t_ft  # training and val of the runs started here
    timings['scratch_and_finetune_wall_s'] = time.time() - t_scratch

    results = {'config': vars(args), 'runs': {}, 'timings': timings}
    for name in names:
        results['runs'][name] = read_val_metrics(os.path.join(logs, name + '_val.json'))
    timings['total_s'] = time.time() - t0

    summary = {}
    for kind in kinds:
        for metric in METRICS:
            values = [results['runs'][f'{kind}_s{s}'][metric] for s in args.seeds if
                      metric in results['runs'][f'{kind}_s{s}']]
            if values:
                summary.setdefault(kind, {})[metric] = {
                    'mean': statistics.fmean(values), 'std': statistics.pstdev(values), 'values': values}
    results['summary'] = summary
    lines = ['| run | ' + ' | '.join(METRICS) + ' |', '|---|' + '---|' * len(METRICS)]
    for kind in kinds:
        cells = [f"{summary[kind][m]['mean']:.3f} ± {summary[kind][m]['std']:.3f}" for m in METRICS
                 if m in summary.get(kind, {})]
        lines.append(f'| {kind} | ' + ' | '.join(cells) + ' |')
    if 'minFDE' in summary.get('scratch', {}) and 'minFDE' in summary.get('pretrained', {}):
        gain = 1 - summary['pretrained']['minFDE']['mean'] / summary['scratch']['minFDE']['mean']
        results['minFDE_relative_gain'] = gain
        lines.append(f'\nminFDE relative gain from pre-training: {100 * gain:.1f} %')
    if 'minFDE' in summary.get('scratch', {}) and 'minFDE' in summary.get('pretrained_online', {}):
        online_gain = 1 - summary['pretrained_online']['minFDE']['mean'] / summary['scratch']['minFDE']['mean']
        results['online_branch_minFDE_relative_gain'] = online_gain
        lines.append(f'minFDE relative gain from pre-training, online branch transferred: {100 * online_gain:.1f} %')
    if 'minFDE' in summary.get('scratch_frozen', {}) and 'minFDE' in summary.get('pretrained_frozen', {}):
        probe_gain = 1 - summary['pretrained_frozen']['minFDE']['mean'] / summary['scratch_frozen']['minFDE']['mean']
        results['frozen_encoder_minFDE_relative_gain'] = probe_gain
        lines.append(f'minFDE relative gain of a frozen pre-trained encoder over a frozen random one: '
                     f'{100 * probe_gain:.1f} %')
    table = '\n'.join(lines)
    results['table'] = table
    atomic_write_json(os.path.join(work, 'results.json'), results)
    if export_dir:
        export_files(export_dir, [os.path.join(work, 'results.json')])
    print(table)
    print(json.dumps(timings, indent=2))
    print(f'results: {os.path.join(work, "results.json")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
