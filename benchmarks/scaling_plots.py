"""Plots and power-law fits of a scaling sweep (``benchmarks/scaling_sweep.py``'s ``results.json``).

Writes into ``--out`` (default: ``plots/`` next to the results file):
  metric_vs_data.png   minADE / minFDE / MR / brier-minFDE vs pre-training scenarios (log x): every seed as a dot,
                       the seed mean with a +-1 std bar, the from-scratch baseline as a band (mean +- std);
  gain_vs_data.png     relative gain of ``--metric`` over the scratch mean vs scenarios, linear and log-log, with the
                       fitted power law gain = a * N^b (solid where it holds, dashed outside);
  gain_vs_compute.png  the same gain vs pre-training FLOPs and vs pre-training GPU-seconds;
  fit.json, summary.md per-point table, fits (exponent, standard error, R^2, range where the law holds) and verdicts.

Fits are least squares of log(y) on log(N) over the seed means. "Holds" has a definite meaning here: a point agrees
with a law when the fitted value lies within two standard errors of the point's seed mean (and at least within 5 %
of it for gains, 1 % for errors, so that a point with a near-zero seed spread is not rejected for rounding); the law
is reported over the longest run of >= 3 consecutive sizes whose own fit agrees with every point of the run. Fewer
than three usable sizes give no verdict (two points always lie on a power law). Gains at or below zero cannot enter
a log fit and are reported as excluded.
"""
import argparse
import math
import os
import statistics
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.experiment_utils import METRICS, atomic_write_json, atomic_write_text, read_json  # noqa: E402
from utils.atomic_io import atomic_output_path  # noqa: E402

AGREE_SIGMAS = 2.0
# smallest tolerance, relative to the point's mean: gains are small numbers (a 5 % tolerance on a 10 % gain is half
# a percentage point); errors are large ones with small relative changes, so they get a tighter floor
AGREE_MIN_RELATIVE = {'gain': 0.05, 'error': 0.01}
MIN_FIT_POINTS = 3
MIX_STYLE = {'single': dict(color='tab:blue', marker='o'), 'mixed': dict(color='tab:orange', marker='s')}


# ----------------------------------------------------------------------------------------------------------------------
# aggregation
# ----------------------------------------------------------------------------------------------------------------------
def _stats(values: Sequence[float]) -> Dict[str, float]:
    values = [float(v) for v in values]
    return {'values': values, 'n': len(values), 'mean': statistics.fmean(values),
            'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'sem': statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None}


def aggregate(rows: List[dict], metric: str) -> dict:
    """Seed statistics of ``metric`` per point. Returns {'scratch': stats or None, 'mixes': {mix: [point, ...]}},
    points sorted by size, each {'num_pretrain_scenarios', 'metric': stats, 'gain': stats or None (relative gain
    1 - value / scratch mean, per seed), 'pretrain_flops', 'pretrain_gpu_s' (means over seeds)}."""
    scratch_values = [r[metric] for r in rows if r['kind'] == 'scratch' and r.get(metric) is not None]
    scratch = _stats(scratch_values) if scratch_values else None
    groups: Dict[str, Dict[int, List[dict]]] = {}
    for r in rows:
        if r['kind'] == 'pretrained' and r.get(metric) is not None:
            groups.setdefault(r['mix'], {}).setdefault(int(r['num_pretrain_scenarios']), []).append(r)
    mixes = {}
    for mix, by_size in groups.items():
        points = []
        for size in sorted(by_size):
            members = by_size[size]
            values = [m[metric] for m in members]
            point = {'num_pretrain_scenarios': size, 'seeds': sorted(int(m['seed']) for m in members),
                     'metric': _stats(values),
                     'pretrain_flops': statistics.fmean(float(m.get('pretrain_flops') or 0) for m in members),
                     'pretrain_gpu_s': statistics.fmean(float(m.get('pretrain_gpu_s') or 0) for m in members),
                     'gain': None}
            if scratch is not None and scratch['mean'] > 0:
                point['gain'] = _stats([1.0 - v / scratch['mean'] for v in values])
            points.append(point)
        mixes[mix] = points
    return {'metric': metric, 'scratch': scratch, 'mixes': mixes}


# ----------------------------------------------------------------------------------------------------------------------
# power laws
# ----------------------------------------------------------------------------------------------------------------------
def fit_power_law(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least squares of log y = log a + b log x. Returns {'a', 'b', 'b_se' (None for 2 points), 'r2' (in log space;
    None for constant y), 'n'}.
    Needs >= 2 points with x > 0, y > 0 and two distinct x."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f'a power-law fit needs at least 2 points, got {len(x)}')
    if any(v <= 0 for v in x) or any(v <= 0 for v in y):
        raise ValueError('a power-law fit needs positive x and y')
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    n = len(lx)
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((v - mx) ** 2 for v in lx)
    if sxx == 0:
        raise ValueError('a power-law fit needs at least two distinct x values')
    b = sum((u - mx) * (v - my) for u, v in zip(lx, ly)) / sxx
    log_a = my - b * mx
    residuals = [v - (log_a + b * u) for u, v in zip(lx, ly)]
    sse = sum(r * r for r in residuals)
    syy = sum((v - my) ** 2 for v in ly)
    r2 = 1.0 - sse / syy if syy > 0 else None  # constant y: nothing for the law to explain
    b_se = math.sqrt(sse / (n - 2) / sxx) if n > 2 else None
    return {'a': math.exp(log_a), 'b': b, 'b_se': b_se, 'r2': r2, 'n': n}


def power_law(fit: dict, x: float) -> float:
    return fit['a'] * x ** fit['b']


def _agrees(fit: dict, size: float, stats: dict, min_relative: float) -> bool:
    tolerance = max(AGREE_SIGMAS * (stats['sem'] or 0.0), min_relative * abs(stats['mean']))
    return abs(power_law(fit, size) - stats['mean']) <= tolerance


def fit_scaling(points: List[dict], quantity: str = 'gain') -> dict:
    """Power law of ``quantity`` ('gain': gain = a N^b; 'error': metric = c N^b, b < 0 when the error falls) over the
    seed means of ``points`` (``aggregate``'s per-mix list, sorted by size).

    Returns 'fit_all' (all usable sizes), 'fit' with 'holds_from' / 'holds_to' (the longest run of >= 3 consecutive
    sizes whose own fit agrees with every point of the run; ties: higher R^2), per-point 'agreement' with 'fit_all',
    'excluded_sizes' (no value or non-positive), 'noise_dominated' (every gain within two standard errors of zero)
    and a 'verdict' sentence that says plainly when the data cannot support a law."""
    if quantity not in AGREE_MIN_RELATIVE:
        raise ValueError(f'quantity must be one of {sorted(AGREE_MIN_RELATIVE)}, got {quantity!r}')
    key = 'gain' if quantity == 'gain' else 'metric'
    min_rel = AGREE_MIN_RELATIVE[quantity]
    ok = [p.get(key) is not None and p[key]['mean'] > 0 for p in points]
    usable = [p for p, good in zip(points, ok) if good]
    excluded = [p['num_pretrain_scenarios'] for p, good in zip(points, ok) if not good]
    out = {'quantity': quantity, 'num_points': len(points),
           'usable_sizes': [p['num_pretrain_scenarios'] for p in usable],
           'excluded_sizes': excluded, 'fit_all': None, 'fit': None, 'holds_from': None, 'holds_to': None,
           'agreement': {}, 'noise_dominated': None}
    if quantity == 'gain' and points and all(p.get('gain') is not None and p['gain']['sem'] is not None
                                             for p in points):
        out['noise_dominated'] = all(abs(p['gain']['mean']) < AGREE_SIGMAS * p['gain']['sem'] for p in points)
    what = 'relative gain' if quantity == 'gain' else 'error'
    noise_note = (' Every gain is within two standard errors of zero: the sweep does not resolve a benefit, so no '
                  'law can be read from it.' if out['noise_dominated'] else '')
    excluded_note = f' Excluded (no value or non-positive {quantity}): N = {excluded}.' if excluded else ''
    if len(usable) < 2:
        out['verdict'] = f'no fit: {len(usable)} size(s) with a positive {quantity}.' + excluded_note + noise_note
        return out
    sizes = [p['num_pretrain_scenarios'] for p in usable]
    fit_all = fit_power_law(sizes, [p[key]['mean'] for p in usable])
    out['fit_all'] = fit_all
    out['agreement'] = {str(p['num_pretrain_scenarios']): _agrees(fit_all, p['num_pretrain_scenarios'], p[key], min_rel)
                        for p in usable}
    if len(usable) < MIN_FIT_POINTS:
        out['verdict'] = (f'too few points: {len(usable)} sizes with a positive {quantity}; two points always lie on '
                          f'a power law, so the slope b = {fit_all["b"]:.3f} between them is not evidence of one.'
                          + excluded_note + noise_note)
        return out
    best = None  # (length, r2, lo, hi, fit)
    for lo in range(len(points)):
        for hi in range(lo + MIN_FIT_POINTS - 1, len(points)):
            if not all(ok[lo:hi + 1]):
                break
            run = points[lo:hi + 1]
            xs = [p['num_pretrain_scenarios'] for p in run]
            fit = fit_power_law(xs, [p[key]['mean'] for p in run])
            if all(_agrees(fit, x, p[key], min_rel) for x, p in zip(xs, run)):
                candidate = (len(run), fit['r2'] if fit['r2'] is not None else -1.0, lo, hi, fit)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
    if best is None:
        r2 = f'{fit_all["r2"]:.2f}' if fit_all['r2'] is not None else 'n/a'
        misses = sum(not a for a in out['agreement'].values())
        verdict = (f'no power law: no run of >= {MIN_FIT_POINTS} consecutive sizes lies on one within two standard '
                   f'errors; the all-point fit ({what} ∝ N^{fit_all["b"]:.3f}, R² = {r2}) misses {misses} of '
                   f'{len(usable)} seed means.')
    else:
        _, _, lo, hi, fit = best
        out.update(fit=fit, holds_from=points[lo]['num_pretrain_scenarios'],
                   holds_to=points[hi]['num_pretrain_scenarios'])
        se = f' ± {fit["b_se"]:.3f}' if fit['b_se'] is not None else ''
        r2 = f'{fit["r2"]:.3f}' if fit['r2'] is not None else 'n/a (constant means)'
        verdict = (f'{what} ∝ N^{fit["b"]:.3f}{se} (standard error), R² = {r2} in log-log, within two standard '
                   f'errors of every seed mean for N = {out["holds_from"]}..{out["holds_to"]} ({fit["n"]} of '
                   f'{len(points)} sizes)')
        if fit['b_se'] is not None and abs(fit['b']) < AGREE_SIGMAS * fit['b_se']:
            verdict += '; the exponent is not distinguishable from 0 at two standard errors'
        verdict += '.'
    if out['noise_dominated']:  # lead with what matters: there is nothing to scale
        out['verdict'] = noise_note.strip() + ' Formal fit, for the record: ' + verdict + excluded_note
    else:
        out['verdict'] = verdict + excluded_note
    return out


# ----------------------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=8)


def _style(mix: str) -> dict:
    return MIX_STYLE.get(mix, dict(color='tab:green', marker='^'))


def _dodge(mix: str, mixes: Sequence[str]) -> float:
    """Multiplicative x offset so that the mixes measured at the same N do not hide each other on a log axis."""
    mixes = sorted(mixes)
    return 1.0 + 0.04 * (mixes.index(mix) - (len(mixes) - 1) / 2) if mix in mixes else 1.0


def _size_axis(ax, sizes: Sequence[int]) -> None:
    """Log x axis labelled with the swept sizes themselves (not 4x10^0)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    ax.set_xscale('log')
    ax.set_xlabel('pre-training scenarios N')
    if sizes:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(sizes))))
        ax.xaxis.set_major_formatter(lambda value, pos: f'{value:g}')
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        lo, hi = min(sizes), max(sizes)
        ax.set_xlim(lo / 1.3, hi * 1.3)


def _all_sizes(agg: dict) -> List[int]:
    return sorted({p['num_pretrain_scenarios'] for points in agg['mixes'].values() for p in points})


def _plot_seed_points(ax, xs: List[float], stats_list: List[dict], mix: str, scale: float = 1.0,
                      label: Optional[str] = None, dodge: float = 1.0) -> None:
    style = _style(mix)
    xs = [x * dodge for x in xs]
    for x, s in zip(xs, stats_list):
        ax.scatter([x] * s['n'], [v * scale for v in s['values']], color=style['color'], alpha=0.35, s=14,
                   marker=style['marker'], linewidths=0)
    ax.errorbar(xs, [s['mean'] * scale for s in stats_list], yerr=[s['std'] * scale for s in stats_list],
                color=style['color'], marker=style['marker'], capsize=3, label=label or mix)


def plot_metric_vs_data(rows: List[dict], path: str, model: str = 'QCNet') -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, metric in zip(axes.flat, METRICS):
        agg = aggregate(rows, metric)
        for mix, points in sorted(agg['mixes'].items()):
            _plot_seed_points(ax, [p['num_pretrain_scenarios'] for p in points], [p['metric'] for p in points], mix,
                              label=f'pre-trained ({mix})', dodge=_dodge(mix, agg['mixes']))
        if agg['scratch'] is not None:
            s = agg['scratch']
            ax.axhline(s['mean'], color='black', linestyle='--', linewidth=1, label=f'scratch ({s["n"]} seeds)')
            ax.axhspan(s['mean'] - s['std'], s['mean'] + s['std'], color='black', alpha=0.08)
        _size_axis(ax, _all_sizes(agg))
        ax.set_ylabel(f'val {metric} (lower is better)')
        ax.set_title(metric)
        ax.grid(True, which='both', alpha=0.3)
    _legend(axes.flat[0])
    fig.suptitle(f'Fine-tuned {model} vs amount of SmartPretrain pre-training data (dots: seeds; bars: ±1 std)')
    fig.tight_layout()
    with atomic_output_path(path) as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)


def _fit_curve(ax, fit_info: dict, lo: float, hi: float, color: str, scale: float = 100.0) -> None:
    import numpy as np
    if fit_info.get('fit') is not None:
        f = fit_info['fit']
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, [power_law(f, x) * scale for x in xs], color=color, linestyle=':', linewidth=1)
        inside = np.geomspace(fit_info['holds_from'], fit_info['holds_to'], 50)
        label = f'fit: gain ∝ N^{f["b"]:.2f}' + (f' ± {f["b_se"]:.2f}' if f['b_se'] is not None else '')
        ax.plot(inside, [power_law(f, x) * scale for x in inside], color=color, linewidth=2, alpha=0.6, label=label)
    elif fit_info.get('fit_all') is not None:
        f = fit_info['fit_all']
        xs = np.geomspace(lo, hi, 50)
        ax.plot(xs, [power_law(f, x) * scale for x in xs], color=color, linestyle=':', linewidth=1,
                label=f'all-point fit N^{f["b"]:.2f} (does not hold)')


def plot_gain_vs_data(agg: dict, fits: Dict[str, dict], path: str) -> None:
    plt = _pyplot()
    fig, (ax_lin, ax_log) = plt.subplots(1, 2, figsize=(11, 4.5))
    for mix, points in sorted(agg['mixes'].items()):
        points = [p for p in points if p['gain'] is not None]
        if not points:
            continue
        xs = [p['num_pretrain_scenarios'] for p in points]
        _plot_seed_points(ax_lin, xs, [p['gain'] for p in points], mix, scale=100.0, dodge=_dodge(mix, agg['mixes']))
        positive = [p for p in points if p['gain']['mean'] > 0]
        if positive:
            ax_log.errorbar([p['num_pretrain_scenarios'] for p in positive],
                            [100 * p['gain']['mean'] for p in positive],
                            yerr=[100 * (p['gain']['sem'] or 0.0) for p in positive], color=_style(mix)['color'],
                            marker=_style(mix)['marker'], linestyle='none', capsize=3, label=f'{mix} (±1 s.e.)')
        for ax in (ax_lin, ax_log):
            _fit_curve(ax, fits.get(mix, {}), min(xs), max(xs), _style(mix)['color'])
    ax_lin.axhline(0.0, color='black', linewidth=1)
    if not ax_log.has_data():
        ax_log.text(0.5, 0.5, 'no size with a positive mean gain:\nnothing to fit', transform=ax_log.transAxes,
                    ha='center', va='center', fontsize=10, color='gray')
    for ax in (ax_lin, ax_log):
        _size_axis(ax, _all_sizes(agg))
        ax.grid(True, which='both', alpha=0.3)
        _legend(ax)
    if ax_log.has_data():
        ax_log.set_yscale('log')
    ax_lin.set_ylabel(f'relative {agg["metric"]} gain over scratch (%)')
    ax_log.set_ylabel('gain (%), log scale (positive means only)')
    ax_lin.set_title('gain vs data (dots: seeds, bars: ±1 std)')
    ax_log.set_title('log-log: a power law is a straight line')
    fig.tight_layout()
    with atomic_output_path(path) as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)


def plot_gain_vs_compute(agg: dict, path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], 'pretrain_flops', 'pre-training compute (FLOPs, matmul count)'),
                           (axes[1], 'pretrain_gpu_s', 'pre-training GPU-seconds (wall × devices)')):
        for mix, points in sorted(agg['mixes'].items()):
            points = [p for p in points if p['gain'] is not None and p[key] > 0]
            if points:
                _plot_seed_points(ax, [p[key] for p in points], [p['gain'] for p in points], mix, scale=100.0)
                for p in points:
                    ax.annotate(f'N={p["num_pretrain_scenarios"]}', (p[key], 100 * p['gain']['mean']),
                                textcoords='offset points', xytext=(4, 4), fontsize=7)
        ax.axhline(0.0, color='black', linewidth=1)
        ax.set_xscale('log')
        ax.set_xlabel(label)
        ax.set_ylabel(f'relative {agg["metric"]} gain over scratch (%)')
        ax.grid(True, which='both', alpha=0.3)
        _legend(ax)
    fig.suptitle('Gain vs pre-training compute')
    fig.tight_layout()
    with atomic_output_path(path) as temporary:
        fig.savefig(temporary, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------------------
def _pm(stats: Optional[dict], scale: float = 1.0, digits: int = 3) -> str:
    if stats is None:
        return '—'
    return f'{stats["mean"] * scale:.{digits}f} ± {stats["std"] * scale:.{digits}f}'


def summary_markdown(rows: List[dict], metric: str, fits: dict) -> str:
    lines = [f'# Scaling sweep summary ({len(rows)} runs)', '',
             f'Gain = 1 − {metric} / scratch mean; ± is the std over seeds.', '',
             '| data | N | seeds | ' + ' | '.join(METRICS)
             + f' | {metric} gain % | pre-train TFLOPs | pre-train GPU-s |',
             '|---|---|---|' + '---|' * len(METRICS) + '---|---|---|']
    aggs = {m: aggregate(rows, m) for m in METRICS}
    main = aggregate(rows, metric)
    if main['scratch'] is not None:
        lines.append('| scratch | 0 | ' + str(main['scratch']['n']) + ' | '
                     + ' | '.join(_pm(aggs[m]['scratch']) for m in METRICS) + ' | 0 | 0 | 0 |')
    for mix, points in sorted(main['mixes'].items()):
        for i, p in enumerate(points):
            cells = [_pm(aggs[m]['mixes'][mix][i]['metric']) if mix in aggs[m]['mixes'] and
                     i < len(aggs[m]['mixes'][mix]) else '—' for m in METRICS]
            lines.append(f'| {mix} | {p["num_pretrain_scenarios"]} | {len(p["seeds"])} | ' + ' | '.join(cells)
                         + f' | {_pm(p["gain"], 100, 1)} | {p["pretrain_flops"] / 1e12:.3g} | '
                           f'{p["pretrain_gpu_s"]:.0f} |')
    lines += ['', '## Power-law fits', '']
    for mix, per_mix in sorted(fits.items()):
        for quantity, info in per_mix.items():
            lines.append(f'- {mix}, {quantity}: {info["verdict"]}')
    return '\n'.join(lines) + '\n'


def make_all(results_path: str, out_dir: Optional[str] = None, metric: str = 'minFDE') -> dict:
    """Writes the three PNGs, fit.json and summary.md; returns the fits."""
    results = read_json(results_path, 'scaling sweep results')
    rows = results.get('rows') if isinstance(results, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f'{results_path}: no "rows" list (not a scaling_sweep.py results file)')
    if metric not in METRICS:
        raise ValueError(f'--metric must be one of {METRICS}, got {metric!r}')
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(results_path)), 'plots')
    os.makedirs(out_dir, exist_ok=True)
    agg = aggregate(rows, metric)
    fits = {mix: {'gain': fit_scaling(points, 'gain'), 'error': fit_scaling(points, 'error')}
            for mix, points in agg['mixes'].items()}
    model = str((results.get('protocol') or {}).get('model') or 'QCNet')  # the sweep's --model
    plot_metric_vs_data(rows, os.path.join(out_dir, 'metric_vs_data.png'), model)
    plot_gain_vs_data(agg, {mix: f['gain'] for mix, f in fits.items()}, os.path.join(out_dir, 'gain_vs_data.png'))
    plot_gain_vs_compute(agg, os.path.join(out_dir, 'gain_vs_compute.png'))
    atomic_write_json(os.path.join(out_dir, 'fit.json'), {'metric': metric, 'aggregate': agg, 'fits': fits})
    text = summary_markdown(rows, metric, fits)
    atomic_write_text(os.path.join(out_dir, 'summary.md'), text)
    print(text)
    print(f'plots, fit.json and summary.md written to {out_dir}')
    return fits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--results', required=True, help="scaling_sweep.py's results.json")
    p.add_argument('--out', default=None, help='output folder (default: plots/ next to the results file)')
    p.add_argument('--metric', default='minFDE', choices=METRICS, help='metric of the gain plots and fits')
    args = p.parse_args(argv)
    try:
        make_all(args.results, args.out, args.metric)
    except (OSError, ValueError) as error:
        print(f'scaling_plots: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
