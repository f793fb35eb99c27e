"""The results table of a scaling sweep (``results.json`` + ``results.csv``, rewritten atomically) and its export."""
import csv
import io
import os
import shutil
from typing import Dict, List, Optional

from benchmarks.experiment_utils import ALL_METRICS, atomic_write_json, atomic_write_text, read_json

# what a later call needs to resume (results.json, flops.json) and what a reader wants (the rest): 8 small files
EXPORT_FILES = ('results.json', 'results.csv', 'flops.json', 'plots/summary.md', 'plots/fit.json',
                'plots/metric_vs_data.png', 'plots/gain_vs_data.png', 'plots/gain_vs_compute.png')
RESULTS_VERSION = 1
COLUMNS = ['key', 'kind', 'mix', 'profiles', 'num_pretrain_scenarios', 'seed', 'pretrain_seed',
           'pretrain_epochs', 'pretrain_steps', 'pretrain_wall_s', 'pretrain_gpu_s', 'pretrain_flops_per_scenario',
           'pretrain_flops', 'finetune_scenarios', 'finetune_epochs', 'finetune_steps', 'finetune_wall_s',
           'finetune_gpu_s', 'finetune_flops', 'val_scenarios'] + ALL_METRICS + \
          ['point_wall_s', 'pretrain_reused', 'device', 'precision', 'finished_at', 'run']


class ProtocolMismatch(SystemExit):
    pass


class ResultsTable:
    """``<work_dir>/results.json`` (protocol + rows, the source of truth) and ``results.csv`` (the same rows), both
    rewritten atomically after every added row. Rows are keyed by :attr:`Point.key`."""

    def __init__(self, work_dir: str) -> None:
        self.json_path = os.path.join(work_dir, 'results.json')
        self.csv_path = os.path.join(work_dir, 'results.csv')
        self.protocol: Optional[dict] = None
        self.extra: Dict[str, dict] = {}
        self.rows: Dict[str, dict] = {}
        if os.path.exists(self.json_path):
            data = read_json(self.json_path, 'scaling sweep results')
            if not isinstance(data, dict) or not isinstance(data.get('rows'), list):
                raise ValueError(f'{self.json_path}: no "rows" list (not a scaling_sweep.py results file)')
            self.protocol = data.get('protocol')
            self.extra = data.get('extra', {})
            for row in data['rows']:
                self.rows[row['key']] = row

    def check_protocol(self, protocol: dict) -> None:
        """First use stores ``protocol``; later runs must match it (rows of different protocols are not comparable)."""
        if self.protocol is None:
            self.protocol = dict(protocol)
            return
        changed = {k: (self.protocol.get(k), protocol.get(k)) for k in set(self.protocol) | set(protocol)
                   if self.protocol.get(k) != protocol.get(k)}
        if changed:
            detail = ', '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in sorted(changed.items()))
            raise ProtocolMismatch(f'scaling_sweep: {self.json_path} was recorded with another protocol ({detail}); '
                                   f'use the same flags to extend it or another --work_dir')

    def has(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        self.rows[row['key']] = row
        self.save()

    def sorted_rows(self) -> List[dict]:
        def order(row):
            return (row['kind'] != 'scratch', row.get('mix') or '', int(row.get('num_pretrain_scenarios') or 0),
                    int(row['seed']))
        return sorted(self.rows.values(), key=order)

    def save(self) -> None:
        rows = self.sorted_rows()
        atomic_write_json(self.json_path, {'version': RESULTS_VERSION, 'protocol': self.protocol,
                                           'extra': self.extra, 'rows': rows})
        columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, '') for k in columns})
        atomic_write_text(self.csv_path, buffer.getvalue())


def export_results(work_dir: str, export_dir: Optional[str]) -> None:
    """Copies the EXPORT_FILES that exist flat into ``export_dir`` (nothing without one)."""
    if not export_dir:
        return
    os.makedirs(export_dir, exist_ok=True)
    copied = []
    for name in EXPORT_FILES:
        source = os.path.join(work_dir, name)
        if os.path.isfile(source):
            shutil.copyfile(source, os.path.join(export_dir, os.path.basename(name)))
            copied.append(os.path.basename(name))
    print(f'exported to {export_dir}: {", ".join(copied) or "nothing yet"}', flush=True)
