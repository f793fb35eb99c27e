"""benchmarks/bench_qcnet_step.py on the CPU: ours and, when the official checkout is present (.official/QCNet, see
benchmarks/official_stubs.py), the official step, on the same real scenes; the JSON report each writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sample_data import AV2_TRAIN_DIR

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / '.official' / 'QCNet'
SMALL = ['--device', 'cpu', '--data_root', str(AV2_TRAIN_DIR), '--hidden_dim', '16', '--batch_sizes', '2',
         '--steps', '1', '--warmup', '0', '--precision', 'fp32', '--mode', 'train']


def run_bench(tmp_path, *extra):
    report = tmp_path / f'report{len(list(tmp_path.iterdir()))}.json'
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_qcnet_step.py'), *SMALL, *extra,
                           '--report', str(report)], cwd=ROOT, capture_output=True, text=True, timeout=500,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f'official QCNet checkout absent ({OFFICIAL})')
def test_official_and_ours_on_the_same_scenes(tmp_path):
    # The official step takes no speed flags: TF32 stays PyTorch's default unless --tf32 is given.
    official = run_bench(tmp_path, '--impl', 'official', '--official_repo', str(OFFICIAL))
    ours = run_bench(tmp_path, '--impl', 'ours')
    assert official['impl'] == 'official' and official['tf32'] is False
    assert ours['impl'] == 'ours' and ours['tf32'] is True
    assert official['num_scenes_available'] == ours['num_scenes_available'] > 0
