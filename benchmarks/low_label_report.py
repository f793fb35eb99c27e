"""Report of the low-label study (docs/LOW_LABEL.md): paired gains, their standard errors, the decision rule's verdict.

Reads the files that ``benchmarks/ssl_low_label.py`` writes into its results folder:

  runs.csv             one row per fine-tune: backbone, arm, labelled, seed, minADE, minFDE, MR, brier_minFDE,
                       pretrain_steps, gpu_seconds
  pretrain.json        the pre-training runs (steps, GPU-seconds, momentum-branch initialisation share)
  pretrain_curves.csv  pre-training loss / contrastive accuracy over steps
  finetune_curves.csv  in-training val minFDE per fine-tuning epoch (the plateau check)

and writes ``summary.md``, ``gain_vs_labelled.png`` and ``pretrain_curves.png`` (when pre-training curves exist)
next to them.

Gain of an arm over scratch at one (backbone, labelled size): the paired differences d_s = scratch_s - arm_s over
the seeds s that both have; gain = mean(d) / mean(scratch), its standard error = sd(d) / sqrt(n) / mean(scratch)
(positive = the arm predicts better). The decision rule, per backbone and labelled size, on minFDE:

  shown                 the method (arm 'pretrained') gains >= 5 % and more than 2 standard errors;
  refuted (this setup)  the oracle gains >= 10 % but the method < 3 % (the transfer is then the suspect);
  not testable          the oracle gains < 5 % (shrink the labelled set or grow the pool);
  inconclusive          anything else (or fewer than 2 paired seeds).

Example:  python benchmarks/low_label_report.py docs/results/2026-12-07_h100_low_label
"""
import argparse
import csv
import json
import math
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import atomic_write_text  # noqa: E402
from utils.atomic_io import atomic_output_path  # noqa: E402

RUN_COLUMNS = ['backbone', 'arm', 'labelled', 'seed', 'minADE', 'minFDE', 'MR', 'brier_minFDE', 'pretrain_steps',
               'gpu_seconds']
METRIC_COLUMNS = ['minADE', 'minFDE', 'MR', 'brier_minFDE']
ARMS = ('scratch', 'pretrained', 'pretrained_sym', 'oracle', 'mixed', 'scratch_frozen', 'pretrained_frozen',
        'pretrained_contrastive', 'pretrained_reconstruction')
STUDY_ARMS = ARMS[:5]  # the protocol's arms; the probes and the one-task ablations are diagnostics on request
ARM_TITLES = {'scratch': 'scratch', 'pretrained': 'pre-trained (momentum branch: the method)',
              'pretrained_sym': 'pre-trained, mode symmetry broken (deviation)',
              'oracle': 'oracle (supervised pre-training on the labelled pool)',
              'mixed': 'pre-trained on two profiles mixed',
              'scratch_frozen': 'probe: random encoder frozen, decoder trained',
              'pretrained_frozen': 'probe: pre-trained encoder frozen, decoder trained',
              'pretrained_contrastive': 'ablation: pre-trained with the contrastive task only',
              'pretrained_reconstruction': 'ablation: pre-trained with the reconstruction task only'}
ARM_SOURCE = {'scratch': None, 'pretrained': 'ssl_target', 'pretrained_sym': 'ssl_target', 'oracle': 'oracle',
              'mixed': 'ssl_mixed', 'scratch_frozen': None, 'pretrained_frozen': 'ssl_target',
              'pretrained_contrastive': 'ssl_contrastive', 'pretrained_reconstruction': 'ssl_reconstruction'}
SHOWN_GAIN, SHOWN_STANDARD_ERRORS = 0.05, 2.0
REFUTED_ORACLE, REFUTED_METHOD, TESTABLE_ORACLE = 0.10, 0.03, 0.05
PLATEAU_TOLERANCE = 0.02   # the last quarter of epochs improves the best val minFDE by less than this: a plateau


def read_runs(path: str) -> List[dict]:
    """Rows of runs.csv with numbers parsed; a malformed file raises ValueError naming it."""
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in RUN_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: not a runs.csv of the low-label study (missing columns {missing})')
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({**row, 'labelled': int(row['labelled']), 'seed': int(row['seed']),
                             **{c: float(row[c]) for c in METRIC_COLUMNS + ['pretrain_steps', 'gpu_seconds']}})
            except ValueError as error:
                raise ValueError(f'{path}: line {line}: {error}') from None
    return rows


def paired_gain(scratch: Dict[int, float], arm: Dict[int, float]) -> Optional[dict]:
    """Relative gain of ``arm`` over ``scratch`` (metric by seed) over their common seeds; None without one."""
    seeds = sorted(set(scratch) & set(arm))
    if not seeds:
        return None
    diffs = [scratch[s] - arm[s] for s in seeds]
    base = statistics.fmean(scratch[s] for s in seeds)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float('nan')
    return {'n': len(seeds), 'seeds': seeds, 'scratch_mean': base, 'arm_mean': statistics.fmean(arm[s] for s in seeds),
            'diff_mean': statistics.fmean(diffs), 'diff_se': se, 'gain': statistics.fmean(diffs) / base,
            'gain_se': se / base}


def gains(rows: Sequence[dict], metric: str = 'minFDE') -> Dict[Tuple[str, int, str], dict]:
    """{(backbone, labelled, arm): paired_gain} for every arm other than scratch."""
    table: Dict[Tuple[str, int, str], Dict[int, float]] = {}
    for row in rows:
        table.setdefault((row['backbone'], row['labelled'], row['arm']), {})[row['seed']] = row[metric]
    out = {}
    for (backbone, labelled, arm), values in table.items():
        if arm == 'scratch' or (backbone, labelled, 'scratch') not in table:
            continue
        gain = paired_gain(table[(backbone, labelled, 'scratch')], values)
        if gain:
            out[(backbone, labelled, arm)] = gain
    return out


def verdict(method: Optional[dict], oracle: Optional[dict]) -> str:
    """The decision rule (module docstring) on the minFDE gains of the method and of the oracle."""
    if method is None or method['n'] < 2:
        return 'inconclusive (fewer than 2 paired seeds of the method)'
    if method['gain'] >= SHOWN_GAIN and method['gain'] > SHOWN_STANDARD_ERRORS * method['gain_se']:
        return 'shown'
    if oracle is None or oracle['n'] < 2:
        return 'inconclusive (no oracle with 2+ paired seeds)'
    if oracle['gain'] >= REFUTED_ORACLE and method['gain'] < REFUTED_METHOD:
        return 'refuted for this setup (the oracle has the headroom; the transfer is the suspect)'
    if oracle['gain'] < TESTABLE_ORACLE:
        return 'not testable (the oracle gains < 5 %: shrink the labelled set or grow the pool)'
    return 'inconclusive'


def read_curves(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def plateau(curves: Sequence[dict]) -> Dict[Tuple[str, str, int], Optional[float]]:
    """{(backbone, arm, labelled): relative improvement of the best seed-mean val minFDE during the last quarter of
    the epochs over the best before it} (None: too few epochs). Below PLATEAU_TOLERANCE the fine-tune plateaued."""
    by_run: Dict[Tuple[str, str, int], Dict[int, List[float]]] = {}
    for row in curves:
        if row.get('val_minFDE') in (None, ''):
            continue
        key = (row['backbone'], row['arm'], int(row['labelled']))
        by_run.setdefault(key, {}).setdefault(int(row['epoch']), []).append(float(row['val_minFDE']))
    out = {}
    for key, epochs in by_run.items():
        means = [statistics.fmean(epochs[e]) for e in sorted(epochs)]
        if len(means) < 4:
            out[key] = None
            continue
        cut = len(means) - max(1, len(means) // 4)
        before, last = min(means[:cut]), min(means[cut:])
        out[key] = (before - last) / before
    return out


def _fmt(gain: Optional[dict], scale: float = 100.0) -> str:
    if gain is None:
        return '—'
    se = '' if math.isnan(gain['gain_se']) else f' ± {scale * gain["gain_se"]:.1f}'
    return f'{scale * gain["gain"]:+.1f}{se} % (n={gain["n"]})'


def summary_markdown(rows: Sequence[dict], pretrain: dict, pretrain_curves: Sequence[dict],
                     finetune_curves: Sequence[dict], protocol: dict) -> Tuple[str, dict]:
    """The summary text and the verdicts {backbone: {labelled: verdict}}."""
    lines = ['# Low-label study: summary', '']
    info = protocol.get('finetune', {})
    if protocol:
        lines += [f'Device: {info.get("device", "?")}; protocol: docs/LOW_LABEL.md; generated by '
                  f'`benchmarks/low_label_report.py`.', '']
    fde = gains(rows, 'minFDE')
    other = {m: gains(rows, m) for m in ('minADE', 'MR', 'brier_minFDE')}
    backbones = sorted({r['backbone'] for r in rows})
    sizes = sorted({r['labelled'] for r in rows})
    runs_pre = pretrain.get('runs', {})
    verdicts: Dict[str, Dict[int, str]] = {}

    def compute(backbone: str, arm: str) -> str:
        record = runs_pre.get(f'{backbone}_{ARM_SOURCE[arm]}') if ARM_SOURCE.get(arm) else None
        if not record:
            return '—'
        return f'{record.get("steps", "?")} steps, {record.get("gpu_seconds", 0):.0f} GPU-s'

    lines += ['## Decision rule (minFDE, paired over seeds)', '',
              'shown: the method gains >= 5 % and > 2 standard errors; refuted for this setup: the oracle gains '
              '>= 10 % but the method < 3 %; not testable: the oracle gains < 5 %.', '',
              '| backbone | labelled | method gain | oracle gain | verdict |', '|---|---|---|---|---|']
    for backbone in backbones:
        for n in sizes:
            method, oracle = fde.get((backbone, n, 'pretrained')), fde.get((backbone, n, 'oracle'))
            if method is None and oracle is None:
                continue
            verdicts.setdefault(backbone, {})[n] = verdict(method, oracle)
            lines.append(f'| {backbone} | {n} | {_fmt(method)} | {_fmt(oracle)} | {verdicts[backbone][n]} |')
    lines += ['', '## minFDE per arm (mean over seeds; gain = paired mean difference / scratch mean ± standard error)',
              '', '| backbone | labelled | arm | minFDE | paired diff. (m) | gain | pre-training compute | '
              'fine-tune GPU-s / run | plateau (last-quarter gain) |', '|---|---|---|---|---|---|---|---|---|']
    plateaus = plateau(finetune_curves)
    for backbone in backbones:
        for n in sizes:
            for arm in ARMS:
                sel = [r for r in rows if (r['backbone'], r['labelled'], r['arm']) == (backbone, n, arm)]
                if not sel:
                    continue
                mean = statistics.fmean(r['minFDE'] for r in sel)
                gpu = statistics.fmean(r['gpu_seconds'] for r in sel)
                g = fde.get((backbone, n, arm))
                diff = '—' if g is None else (f'{g["diff_mean"]:+.3f}' + ('' if math.isnan(g['diff_se'])
                                                                          else f' ± {g["diff_se"]:.3f}'))
                p = plateaus.get((backbone, arm, n))
                flag = '—' if p is None else f'{100 * p:.1f} % ' + ('(plateau)' if p < PLATEAU_TOLERANCE
                                                                     else '(still improving)')
                lines.append(f'| {backbone} | {n} | {arm} | {mean:.3f} (n={len(sel)}) | {diff} | '
                             f'{_fmt(g) if arm != "scratch" else "—"} | {compute(backbone, arm)} | {gpu:.0f} | '
                             f'{flag} |')
    lines += ['', '## Other metrics: gain over scratch (paired, ± standard error)', '',
              '| backbone | labelled | arm | minADE | MR | brier-minFDE |', '|---|---|---|---|---|---|']
    for backbone in backbones:
        for n in sizes:
            for arm in ARMS[1:]:
                if (backbone, n, arm) in fde:
                    cells = [_fmt(other[m].get((backbone, n, arm))) for m in ('minADE', 'MR', 'brier_minFDE')]
                    lines.append(f'| {backbone} | {n} | {arm} | ' + ' | '.join(cells) + ' |')
    def between(base_arm: str, arm: str) -> List[str]:
        out = []
        for backbone in backbones:
            for n in sizes:
                table: Dict[str, Dict[int, float]] = {}
                for r in rows:
                    if r['backbone'] == backbone and r['labelled'] == n and r['arm'] in (base_arm, arm):
                        table.setdefault(r['arm'], {})[r['seed']] = r['minFDE']
                if base_arm in table and arm in table:
                    out.append(f'| {backbone} | {n} | {_fmt(paired_gain(table[base_arm], table[arm]))} |')
        return out

    mixed_lines = between('pretrained', 'mixed')
    if mixed_lines:
        lines += ['', '## Two profiles mixed vs the target profile alone (same pre-training steps)', '',
                  'Gain of the mixed pre-training over the target-only one (positive: mixed is better).', '',
                  '| backbone | labelled | gain |', '|---|---|---|'] + mixed_lines
    task_lines = [f'| {arm} ' + line for arm in ('pretrained_contrastive', 'pretrained_reconstruction')
                  for line in between('pretrained', arm)]
    if task_lines:
        lines += ['', '## One pretext task vs both (same pre-training steps)', '',
                  'Gain of pre-training with one task over pre-training with both (positive: one task alone is '
                  'better).', '', '| arm | backbone | labelled | gain |', '|---|---|---|---|'] + task_lines
    probe_lines = between('scratch_frozen', 'pretrained_frozen')
    if probe_lines:
        lines += ['', '## Probe: frozen pre-trained encoder vs frozen random encoder (decoder trained)', '',
                  '| backbone | labelled | gain |', '|---|---|---|'] + probe_lines
    if runs_pre:
        lines += ['', '## Pre-training runs', '',
                  '| run | data | steps | GPU-s | momentum branch: share of its initialisation | loss first → last | '
                  'contrastive accuracy, last (chance) |', '|---|---|---|---|---|---|---|']
        for name, record in sorted(runs_pre.items()):
            share = record.get('init_share')
            share_text = (f'{100 * share["init_share"]:.1f} % ± {100 * share["init_share_standard_error"]:.1f}'
                          if isinstance(share, dict) else str(share or '—'))
            curve = [c for c in pretrain_curves if c.get('run') == name and c.get('loss') not in (None, '')]
            loss = f'{float(curve[0]["loss"]):.2f} → {float(curve[-1]["loss"]):.2f}' if curve else '—'
            acc = [c for c in pretrain_curves if c.get('run') == name and c.get('contra_acc') not in (None, '')]
            keys = [c for c in acc if c.get('num_keys') not in (None, '')]
            chance = f' ({100 / float(keys[-1]["num_keys"]):.2f} %)' if keys and float(keys[-1]['num_keys']) > 0 else ''
            acc_text = f'{100 * float(acc[-1]["contra_acc"]):.1f} %{chance}' if acc else '—'
            lines.append(f'| {name} | {record.get("data", "")} | {record.get("steps", "?")} | '
                         f'{record.get("gpu_seconds", 0):.0f} | {share_text} | {loss} | {acc_text} |')
    lines += ['', 'GPU-s: wall-clock seconds of the run while it shared the GPU with the other runs of its command. '
              'Plateau: relative improvement of the best seed-mean in-training val minFDE (first val batch) during '
              f'the last quarter of the epochs; below {100 * PLATEAU_TOLERANCE:.0f} % the fine-tune counts as '
              'plateaued.', '']
    return '\n'.join(lines), verdicts


def plot_gains(rows: Sequence[dict], path: str) -> None:
    """gain_vs_labelled.png: minFDE gain over scratch vs labelled size, one panel per backbone, error bars 2 SE."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fde = gains(rows, 'minFDE')
    backbones = sorted({b for b, _, _ in fde}) or ['—']
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.5 * len(backbones), 4.2), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        for i, arm in enumerate(ARMS[1:]):
            points = sorted((n, g) for (b, n, a), g in fde.items() if b == backbone and a == arm)
            if not points:
                continue
            xs = [n * (1 + 0.04 * (i - 1.5)) for n, _ in points]  # small offsets: overlapping bars stay readable
            ys = [100 * g['gain'] for _, g in points]
            err = [0.0 if math.isnan(g['gain_se']) else 200 * g['gain_se'] for _, g in points]
            ax.errorbar(xs, ys, yerr=err, marker='o', capsize=3, label=arm)
        ax.axhline(0, color='black', lw=0.8)
        ax.axhline(100 * SHOWN_GAIN, color='grey', lw=0.8, ls='--')
        sizes = sorted({n for b, n, _ in fde if b == backbone})
        ax.set_xscale('log')
        ax.set_xticks(sizes, [str(n) for n in sizes])  # the labelled sizes only: no log-scale minor labels
        ax.minorticks_off()
        if len(sizes) == 1:
            ax.set_xlim(sizes[0] / 1.3, sizes[0] * 1.3)
        ax.set_xlabel('labelled scenarios')
        ax.set_ylabel('minFDE gain over scratch (%), ± 2 SE')
        ax.set_title(backbone)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output_path(path) as temporary:
        fig.savefig(temporary, dpi=120)
    plt.close(fig)


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot_pretrain_curves(curves: Sequence[dict], path: str) -> bool:
    """pretrain_curves.png: per self-supervised pre-training run, the loss and its two terms, and the contrastive
    accuracy (train, and val where logged) against the chance level 1 / number of keys, over optimiser steps.
    Returns False (and writes nothing) when no run logged a contrastive term, in training or validation (e.g. only
    the supervised oracle)."""
    runs: Dict[str, List[dict]] = {}
    for row in curves:
        if _number(row.get('step')) is not None:
            runs.setdefault(row['run'], []).append(row)
    runs = {run: rows for run, rows in runs.items()
            if any(_number(r.get('contra_loss')) is not None or _number(r.get('val_contra_acc')) is not None
                   for r in rows)}
    if not runs:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for (loss_ax, acc_ax), (run, rows) in zip(axes, sorted(runs.items())):
        rows = sorted(rows, key=lambda r: _number(r['step']))

        def series(column: str, scale: float = 1.0) -> Tuple[List[float], List[float]]:
            """(steps, scale * values) of the rows that logged ``column``."""
            points = [(_number(r['step']), scale * _number(r[column])) for r in rows
                      if _number(r.get(column)) is not None]
            return [s for s, _ in points], [v for _, v in points]

        lines = [(loss_ax, 'loss', 1.0, '-', 'loss'), (loss_ax, 'contra_loss', 1.0, '-', 'contrastive'),
                 (loss_ax, 'rec_loss', 1.0, '-', 'reconstruction'), (loss_ax, 'val_loss', 1.0, 'o--', 'val loss'),
                 (acc_ax, 'contra_acc', 100.0, '-', 'train'), (acc_ax, 'val_contra_acc', 100.0, 'o--', 'val')]
        for ax, column, scale, style, label in lines:
            xs, ys = series(column, scale)
            if xs:
                ax.plot(xs, ys, style, label=label)
        keys_steps, keys = series('num_keys')
        chance = [(s, 100 / k) for s, k in zip(keys_steps, keys) if k]
        if chance:
            acc_ax.plot(*zip(*chance), color='grey', lw=0.8, ls=':', label='chance (1 / keys)')
        for ax, title in ((loss_ax, 'loss'), (acc_ax, 'contrastive accuracy (%)')):
            ax.set_title(f'{run}: {title}')
            ax.set_xlabel('optimiser step')
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output_path(path) as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)
    return True


def make_report(results_dir: str) -> dict:
    """Writes summary.md, gain_vs_labelled.png and pretrain_curves.png into ``results_dir``; returns the verdicts."""
    runs_path = os.path.join(results_dir, 'runs.csv')
    if not os.path.exists(runs_path):
        raise ValueError(f'{runs_path}: no such file (run `ssl_low_label.py finetune` first)')
    rows = read_runs(runs_path)

    def read_json(name: str) -> dict:
        path = os.path.join(results_dir, name)
        if not os.path.exists(path):
            return {}
        try:
            with open(path) as f:
                return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f'{path}: not valid JSON: {error}') from None

    pretrain_curves = read_curves(os.path.join(results_dir, 'pretrain_curves.csv'))
    text, verdicts = summary_markdown(rows, read_json('pretrain.json'), pretrain_curves,
                                      read_curves(os.path.join(results_dir, 'finetune_curves.csv')),
                                      read_json('protocol.json'))
    atomic_write_text(os.path.join(results_dir, 'summary.md'), text)
    plot_gains(rows, os.path.join(results_dir, 'gain_vs_labelled.png'))
    plot_pretrain_curves(pretrain_curves, os.path.join(results_dir, 'pretrain_curves.png'))
    return verdicts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results_dir', help='folder holding runs.csv (+ pretrain.json, *_curves.csv, protocol.json)')
    args = p.parse_args(argv)
    try:
        verdicts = make_report(args.results_dir)
    except (OSError, ValueError) as error:
        print(f'low_label_report: error: {error}', file=sys.stderr)
        return 2
    for backbone, by_size in verdicts.items():
        for n, text in sorted(by_size.items()):
            print(f'{backbone}, {n} labelled: {text}')
    print(f'summary.md and the plots written to {args.results_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
