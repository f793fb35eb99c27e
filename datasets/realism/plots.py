"""Plots of the realism report: distributions of two folders side by side, focal speed over time, focal futures in
the focal agent's frame. Object-oriented matplotlib on the Agg canvas (no pyplot state); files are written
atomically."""
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from datasets.realism.reading import CURRENT_STEP, SAMPLING_RATE_HZ
from datasets.realism.scene_statistics import RealismSamples
from utils.atomic_io import atomic_output_path

DATA_COLOUR, REFERENCE_COLOUR = '#1f77b4', '#d62728'
MAX_LINES = 100   # scenes drawn per folder in the line plots

# (field of RealismSamples, axis label, histogram range)
HISTOGRAMS = (
    ('speed', 'moving-vehicle speed (m/s)', (0.0, 30.0)),
    ('lon_acc', 'longitudinal acceleration over 1 s (m/s$^2$)', (-4.0, 4.0)),
    ('centreline_offset', 'signed offset from the lane centreline (m, + left)', (-2.5, 2.5)),
    ('track_mean_offset', "each track's mean offset (m)", (-2.0, 2.0)),
    ('yaw_rate', 'yaw rate (deg/s, at >= 1 m/s)', (-40.0, 40.0)),
    ('track_length', 'observed steps per track', (0.0, 110.0)),
    ('focal_cv_fde6', 'focal constant-velocity error at 6 s (m)', (0.0, 40.0)),
    ('focal_speed_change', 'focal speed change over the future (m/s)', (-10.0, 10.0)),
    ('lane_segment_length', 'lane segment centreline length (m)', (0.0, 120.0)),
)


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    with atomic_output_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format='png')


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[np.isfinite(values)]


def plot_histograms(path: Path, folders: Sequence[Tuple[str, RealismSamples]]) -> None:
    """One panel per distribution, each folder as a density-normalised step histogram."""
    columns = 3
    rows = -(-len(HISTOGRAMS) // columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows))
    axes = figure.subplots(rows, columns).ravel()
    for axis, (name, label, value_range) in zip(axes, HISTOGRAMS):
        for (folder_label, samples), colour in zip(folders, (DATA_COLOUR, REFERENCE_COLOUR)):
            values = np.clip(_finite(getattr(samples, name)), *value_range)
            if len(values):
                axis.hist(values, bins=50, range=value_range, density=True, histtype='step', linewidth=1.5,
                          color=colour, label=f'{folder_label} (n={len(values)})')
        axis.set_xlabel(label)
        axis.legend(fontsize=7)
    for axis in axes[len(HISTOGRAMS):]:
        axis.set_visible(False)
    figure.tight_layout()
    _save(figure, path)


def plot_focal_speed(path: Path, folders: Sequence[Tuple[str, RealismSamples]]) -> None:
    """Focal agent speed against time, one line per scene, one panel per folder; the dashed line is the current
    step."""
    figure = Figure(figsize=(6.0 * len(folders), 4.0))
    axes = np.atleast_1d(figure.subplots(1, len(folders), sharey=True))
    for axis, (label, samples), colour in zip(axes, folders, (DATA_COLOUR, REFERENCE_COLOUR)):
        seconds = np.arange(samples.focal_speed.shape[1]) / SAMPLING_RATE_HZ
        for speed in samples.focal_speed[:MAX_LINES]:
            axis.plot(seconds, speed, color=colour, alpha=0.35, linewidth=0.8)
        axis.axvline(CURRENT_STEP / SAMPLING_RATE_HZ, color='k', linestyle='--', linewidth=0.8)
        axis.set_title(f'{label}: focal speed ({min(len(samples.focal_speed), MAX_LINES)} scenes)')
        axis.set_xlabel('time (s)')
    axes[0].set_ylabel('speed (m/s)')
    figure.tight_layout()
    _save(figure, path)


def plot_focal_futures(path: Path, folders: Sequence[Tuple[str, RealismSamples]]) -> None:
    """Focal history (grey) and future (colour) in the focal frame at the current step: x forward, y left (m)."""
    figure = Figure(figsize=(6.0 * len(folders), 5.0))
    axes = np.atleast_1d(figure.subplots(1, len(folders), sharex=True, sharey=True))
    for axis, (label, samples), colour in zip(axes, folders, (DATA_COLOUR, REFERENCE_COLOUR)):
        for history in samples.focal_history[:MAX_LINES]:
            axis.plot(history[:, 0], history[:, 1], color='0.6', alpha=0.5, linewidth=0.8)
        for future in samples.focal_future[:MAX_LINES]:
            axis.plot(future[:, 0], future[:, 1], color=colour, alpha=0.5, linewidth=0.8)
        axis.plot([0.0], [0.0], 'k+')
        axis.set_title(f'{label}: focal futures in the focal frame')
        axis.set_xlabel('forward (m)')
        axis.set_aspect('equal', adjustable='box')
    axes[0].set_ylabel('left (m)')
    figure.tight_layout()
    _save(figure, path)


PLOTS = (('histograms.png', plot_histograms), ('focal_speed.png', plot_focal_speed),
         ('focal_futures.png', plot_focal_futures))


def write_plots(out_dir: Path, folders: Sequence[Tuple[str, RealismSamples]]) -> List[str]:
    """Every plot of the report into ``out_dir``; returns the file names written."""
    names = []
    for name, plot in PLOTS:
        plot(Path(out_dir) / name, folders)
        names.append(name)
    return names
