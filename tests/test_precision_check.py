"""benchmarks/precision_check.py on the CPU: real synthetic AV2 files, train.py and val.py in both precisions."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'precision_check.py')


@pytest.mark.slow
def test_precision_check_reports_each_run_and_resumes(tmp_path):
    report = tmp_path / 'report.json'
    common = [sys.executable, SCRIPT, '--work_dir', str(tmp_path / 'work'), '--num_train', '4', '--num_val', '2',
              '--epochs', '1', '--batch_size', '2', '--seeds', '0', '--report', str(report)]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    first = subprocess.run(common + ['--precisions', '32'], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    written = json.loads(report.read_text())
    assert [r['run'] for r in written['runs']] == ['fp32_s0'] and written['args']['lr'] == 2e-3
    fp32 = written['runs'][0]
    # the second call reuses the finished float32 run (its metrics file) and trains only bf16
    second = subprocess.run(common, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count('training ') == 1 and 'training bf16_s0' in second.stdout
    written = json.loads(report.read_text())
    assert [r['run'] for r in written['runs']] == ['fp32_s0', 'bf16_s0']
    assert written['runs'][0] == fp32
    for run in written['runs']:
        assert all(math.isfinite(run[m]) and run[m] >= 0 for m in ('minADE', 'minFDE', 'MR', 'brier-minFDE'))
    assert set(written['summary']) == {'32', 'bf16-mixed'}
    assert 'noise' in second.stdout
