"""``python -m datasets.realism --data DIR [--reference DIR] --out DIR``: the realism report of a folder of
Argoverse 2-format scenarios, side by side with a reference folder (OUT/realism.md and PNG plots)."""
import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from datasets.realism.plots import write_plots
from datasets.realism.reading_waymo import is_waymo_source
from datasets.realism.report import render_report, write_report
from datasets.realism.scene_statistics import collect
from datasets.realism.summary import statistics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m datasets.realism', description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', required=True, help='folder of scenarios: <id>/scenario_<id>.parquet + '
                        'log_map_archive_<id>.json, at any depth (e.g. an Argoverse 2 split folder)')
    parser.add_argument('--reference', default=None, help='second folder in the same layout, reported beside --data; '
                        'or a Waymo Open Motion .tfrecord file (or a folder of them)')
    parser.add_argument('--out', required=True, help='output folder for realism.md and the PNG plots')
    parser.add_argument('--max_scenes', type=int, default=None, help='first N scenarios of each folder (by path)')
    parser.add_argument('--label', default='data', help='column name of --data')
    parser.add_argument('--reference_label', default='reference', help='column name of --reference')
    parser.add_argument('--no_plots', action='store_true', help='the table only')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_scenes is not None and args.max_scenes < 1:
        print(f'realism: --max_scenes must be >= 1, got {args.max_scenes}', file=sys.stderr)
        return 2
    inputs = [(args.label, args.data)]
    if args.reference is not None:
        inputs.append((args.reference_label, args.reference))
    folders = []
    for label, folder in inputs:
        if not Path(folder).is_dir() and not is_waymo_source(folder):
            print(f'realism: {folder}: neither a directory nor a Waymo .tfrecord file', file=sys.stderr)
            return 2
        started = time.perf_counter()
        samples = collect(folder, args.max_scenes)
        print(f'realism: {folder}: {samples.num_scenes} scenarios measured, {len(samples.skipped)} skipped, '
              f'{time.perf_counter() - started:.1f} s', file=sys.stderr)
        if samples.num_scenes == 0:
            print(f'realism: {folder}: no readable scenario_<id>.parquet found', file=sys.stderr)
            return 1
        folders.append((label, folder, statistics(samples), samples))
    out = Path(args.out)
    plot_names = [] if args.no_plots else write_plots(out, [(label, samples) for label, _, _, samples in folders])
    created = time.strftime('%Y-%m-%d %H:%M %Z')
    write_report(out / 'realism.md', render_report(folders, plot_names, created))
    print(f'realism: wrote {out / "realism.md"}' + (f' and {len(plot_names)} plots' if plot_names else ''),
          file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
