"""benchmarks/bench_ssl_step.py on the CPU: ours (plain and --speed fast) and, when the official checkout is present
(.official/SmartPretrain, see the script's docstring), the official step, on the same real scenes and windows."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sample_data import AV2_TRAIN_DIR

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / '.official' / 'SmartPretrain'
SMALL = ['--device', 'cpu', '--hidden_dim', '16', '--batch_size', '2', '--steps', '2', '--warmup', '1',
         '--crop_radius', '30']


def run_bench(tmp_path, *extra):
    if not AV2_TRAIN_DIR.is_dir():
        pytest.skip(f'real AV2 samples are absent ({AV2_TRAIN_DIR})')
    report = tmp_path / f'report{len(list(tmp_path.iterdir()))}.json'
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_ssl_step.py'), *SMALL, *extra,
                           '--report', str(report)], cwd=ROOT, capture_output=True, text=True, timeout=500,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result['steps'] == 2 and result['batch_size'] == 2 and result['device'] == 'cpu'
    assert 0 < result['min_s'] <= result['median_s'] <= result['max_s']
    assert result['scenarios_per_s'] == pytest.approx(2 / result['median_s'])
    return result


@pytest.mark.slow
def test_ours_plain_and_fast_steps(tmp_path):
    plain = run_bench(tmp_path, '--impl', 'ours')
    assert plain['speed'] == 'default' and plain['graph_build_cpu_s'] is None and plain['agents'] > 0
    fast = run_bench(tmp_path, '--impl', 'ours', '--speed', 'fast')
    assert fast['speed'] == 'fast' and fast['graph_build_cpu_s'] > 0 and fast['agents'] == plain['agents']


@pytest.mark.slow
def test_official_step_on_the_same_scenes(tmp_path):
    if not (OFFICIAL / 'predictors' / 'qcnet_ssl.py').is_file():
        pytest.skip(f'official SmartPretrain checkout absent ({OFFICIAL}; see benchmarks/bench_ssl_step.py)')
    official = run_bench(tmp_path, '--impl', 'official')
    ours = run_bench(tmp_path, '--impl', 'ours', '--steps', '2')
    # the report names the checkout relative to the repository, so reports from different machines compare
    assert official['impl'] == 'official' and official['official_repo'] == str(OFFICIAL.relative_to(ROOT))
    assert official['agents'] == ours['agents'] > 0  # same scenes (views keep every agent of the scene)


def test_cuda_graphs_flag_reaches_the_model():
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_ssl_step import build_model, parse_args
    fast = build_model(parse_args(['--device', 'cpu', '--hidden_dim', '16', '--speed', 'fast']), None)
    assert fast.fixed_shape_step is not None
    eager = build_model(parse_args(['--device', 'cpu', '--hidden_dim', '16', '--speed', 'fast', '--cuda_graphs', '0']),
                        None)
    assert eager.fixed_shape_step is None


def test_flag_errors():
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_ssl_step.py'), '--impl', 'official',
                           '--speed', 'fast'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and '--speed is for --impl ours' in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_ssl_step.py'), '--impl', 'official',
                           '--cuda_graphs', '0'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and '--speed is for --impl ours' in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'bench_ssl_step.py'), '--impl', 'official',
                           '--official_repo', str(ROOT / 'tests')], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and 'not an official SmartPretrain checkout' in done.stderr
