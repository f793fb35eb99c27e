"""The realism report as markdown: one row per statistic with a column per folder, the plots, and the scenarios
that could not be read."""
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from datasets.realism.scene_statistics import RealismSamples
from utils.atomic_io import atomic_write_text


def format_value(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '–'
    if float(value).is_integer():
        return f'{int(value)}'
    return f'{value:.3f}' if abs(value) < 10 else f'{value:.1f}'


def statistics_table(columns: Sequence[Tuple[str, Dict[str, float]]]) -> str:
    """Markdown table: rows are the statistics of the first column's dictionary (in its order), one column per
    (label, statistics) pair; a key missing from a column is shown as '–'."""
    header = '| statistic | ' + ' | '.join(label for label, _ in columns) + ' |'
    rule = '|---|' + '---:|' * len(columns)
    lines = [header, rule]
    for key in columns[0][1]:
        cells = ' | '.join(format_value(stats.get(key, float('nan'))) for _, stats in columns)
        lines.append(f'| {key} | {cells} |')
    return '\n'.join(lines)


def render_report(folders: Sequence[Tuple[str, str, Dict[str, float], RealismSamples]],
                  plot_names: Sequence[str], created: str) -> str:
    """folders: (label, folder path, statistics, samples) for data and, optionally, the reference."""
    lines = ['# Realism report', '',
             f'Created {created} by `python -m datasets.realism`. Definitions of the statistics: `docs/REALISM.md` '
             '(and the docstring of `datasets/realism/__init__.py`).', '']
    for label, folder, stats, _ in folders:
        lines.append(f'- **{label}**: `{folder}`, {int(stats["num_scenes"])} scenarios'
                     f' ({int(stats["num_skipped"])} skipped)')
    lines += ['', statistics_table([(label, stats) for label, _, stats, _ in folders]), '']
    if plot_names:
        lines += ['## Plots', '']
        lines += [f'![{name}]({name})' for name in plot_names]
        lines.append('')
    skipped: List[Tuple[str, str, str]] = [(label, path, problem) for label, _, _, samples in folders
                                           for path, problem in samples.skipped]
    lines += ['## Skipped scenarios', '']
    if skipped:
        lines += [f'- {label}: `{path}`: {problem}' for label, path, problem in skipped]
    else:
        lines.append('None.')
    lines.append('')
    return '\n'.join(lines)


def write_report(path: Path, text: str) -> None:
    atomic_write_text(path, text)
