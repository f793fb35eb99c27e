#!/usr/bin/env python
"""Does bf16-mixed training reach the metrics of float32 training? Short QCNet runs through train.py / val.py.

Generates synthetic Argoverse 2 scenarios (train / val) into --work_dir, trains the same model from scratch for
--epochs epochs with --precision 32 and bf16-mixed for each seed, validates each final checkpoint with val.py (in
float32) and prints the metric table per run, the mean per precision and the seed spread. bf16 is "within noise"
when the difference of the means is no larger than the spread between seeds of one precision.

Examples:
  python benchmarks/precision_check.py --work_dir /tmp/prec                      # CPU, tiny model, demo scenes
  python benchmarks/precision_check.py --work_dir /tmp/prec --accelerator gpu --size full --profile demo \
      --num_train 1024 --num_val 128 --epochs 6 --batch_size 32 --num_workers 8 --report /tmp/prec.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import atomic_write_json  # noqa: E402

MODEL_FLAGS = ['--dataset', 'argoverse_v2', '--num_historical_steps', '50', '--num_future_steps', '60',
               '--num_recurrent_steps', '3', '--time_span', '10', '--num_t2m_steps', '30', '--num_map_layers', '1']
SIZES = {
    # the CPU demo's model (demo.sh) and the official one
    'tiny': ['--hidden_dim', '32', '--num_freq_bands', '16', '--num_heads', '2', '--head_dim', '16',
             '--num_agent_layers', '1', '--num_dec_layers', '1', '--pl2pl_radius', '50', '--pl2a_radius', '30',
             '--a2a_radius', '30', '--pl2m_radius', '50', '--a2m_radius', '50'],
    'full': ['--pl2pl_radius', '150', '--pl2a_radius', '50', '--a2a_radius', '50', '--pl2m_radius', '150',
             '--a2m_radius', '150'],
}
METRICS = ('minADE', 'minFDE', 'MR', 'brier-minFDE')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', type=str, required=True)
    parser.add_argument('--profile', type=str, default='demo', help='synthetic scene profile')
    parser.add_argument('--num_train', type=int, default=160)
    parser.add_argument('--num_val', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--batch_size', type=int, default=4)
    parser.add_argument('--lr', type=float, default=None,
                        help='learning rate (default: 2e-3 for --size tiny, the official 5e-4 for --size full: the '
                             'full model diverged at 2e-3 in a 64-step GPU run)')
    parser.add_argument('--size', choices=sorted(SIZES), default='tiny')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--precisions', nargs='+', default=['32', 'bf16-mixed'], choices=['32', 'bf16-mixed'])
    parser.add_argument('--accelerator', type=str, default='cpu')
    parser.add_argument('--num_workers', type=int, default=0)
    parser.add_argument('--report', type=str, default=None, help='write the results as JSON here')
    return parser.parse_args(argv)


def run(cmd, log):
    with open(log, 'w') as handle:
        done = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f'precision_check: {" ".join(cmd[:2])} failed (exit {done.returncode}), see {log}')


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.lr is None:
        args.lr = 2e-3 if args.size == 'tiny' else 5e-4
    py = sys.executable
    raw, data = os.path.join(args.work_dir, 'raw'), os.path.join(args.work_dir, 'data')
    os.makedirs(args.work_dir, exist_ok=True)
    for split, num, seed in (('train', args.num_train, 0), ('val', args.num_val, 1)):
        processed = os.path.join(data, split, 'processed')
        if not os.path.isdir(processed) or len(os.listdir(processed)) < num:
            run([py, '-m', 'datasets.synthetic', '--out', raw, '--split', split, '--num', str(num), '--seed',
                 str(seed), '--profile', args.profile, '--no_progress'], os.path.join(args.work_dir, f'gen_{split}.log'))
            run([py, '-m', 'datasets.preprocess', '--dataset', 'argoverse_v2', '--raw_dir', os.path.join(raw, split),
                 '--processed_dir', processed, '--no_progress'], os.path.join(args.work_dir, f'prep_{split}.log'))
    data_flags = ['--root', data, '--train_raw_dir', os.path.join(raw, 'train'), '--val_raw_dir',
                  os.path.join(raw, 'val'), '--train_processed_dir', os.path.join(data, 'train', 'processed'),
                  '--val_processed_dir', os.path.join(data, 'val', 'processed'), '--num_workers', str(args.num_workers)]
    rows = []
    # seed-major order: a run cut short by a time limit still has both precisions of its first seeds
    for seed in args.seeds:
        for precision in args.precisions:
            name = f'{"fp32" if precision == "32" else "bf16"}_s{seed}'
            log_dir = os.path.join(args.work_dir, 'logs')
            ckpt = os.path.join(log_dir, name, 'checkpoints', 'last.ckpt')
            metrics_file = os.path.join(args.work_dir, f'{name}_val.json')
            if not os.path.isfile(metrics_file):
                print(f'training {name} ...', flush=True)
                run([py, 'train.py', *data_flags, *MODEL_FLAGS, *SIZES[args.size], '--train_batch_size',
                     str(args.batch_size), '--val_batch_size', '16', '--test_batch_size', '16', '--max_epochs',
                     str(args.epochs), '--T_max', str(args.epochs), '--lr', str(args.lr), '--seed', str(seed),
                     '--precision', precision, '--accelerator', args.accelerator, '--devices', '1',
                     '--num_sanity_val_steps', '0', '--log_dir', log_dir, '--exp_name', name,
                     '--save_every_n_steps', '0'], os.path.join(args.work_dir, f'{name}_train.log'))
                run([py, 'val.py', '--root', data, '--val_raw_dir', os.path.join(raw, 'val'), '--val_processed_dir',
                     os.path.join(data, 'val', 'processed'), '--val_batch_size', '16', '--num_workers',
                     str(args.num_workers), '--ckpt_path', ckpt, '--accelerator', args.accelerator,
                     '--output_json', metrics_file], os.path.join(args.work_dir, f'{name}_val.log'))
            with open(metrics_file) as handle:
                metrics = json.load(handle)['metrics']
            rows.append({'run': name, 'precision': precision, 'seed': seed, **{m: metrics[m] for m in METRICS}})
            print(f'{name:10s} ' + '  '.join(f'{m} {metrics[m]:.4f}' for m in METRICS), flush=True)
            if args.report:  # after every run, so a job stopped by its time limit keeps what it measured
                atomic_write_json(args.report, {'args': vars(args), 'runs': rows})
    summary = {}
    for precision in args.precisions:
        values = [r for r in rows if r['precision'] == precision]
        summary[precision] = {m: {'mean': statistics.mean(r[m] for r in values),
                                  'spread': max(r[m] for r in values) - min(r[m] for r in values)}
                              for m in METRICS}
    if len(args.precisions) == 2:
        a, b = args.precisions
        for m in METRICS:
            diff = summary[b][m]['mean'] - summary[a][m]['mean']
            noise = max(summary[a][m]['spread'], summary[b][m]['spread'])
            print(f'{m:13s} {a}: {summary[a][m]["mean"]:.4f}  {b}: {summary[b][m]["mean"]:.4f}  difference '
                  f'{diff:+.4f}  seed spread {noise:.4f}  -> {"within" if abs(diff) <= noise else "outside"} noise',
                  flush=True)
    if args.report:
        atomic_write_json(args.report, {'args': vars(args), 'runs': rows, 'summary': summary})
    return 0


if __name__ == '__main__':
    sys.exit(main())
