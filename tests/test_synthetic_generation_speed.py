"""benchmarks/synthetic_generation_speed.py: --help without heavy imports, and a short real run whose report holds
positive rates for every profile asked for (no timing thresholds: the rate depends on the machine)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'synthetic_generation_speed.py'


def test_help_imports_nothing_heavy():
    done = subprocess.run(
        [sys.executable, '-c', 'import runpy, sys\n'
         f'sys.argv = [{str(SCRIPT)!r}, "--help"]\n'
         'try:\n'
         f'    runpy.run_path({str(SCRIPT)!r}, run_name="__main__")\n'
         'except SystemExit as exit:\n'
         '    assert exit.code in (0, None), exit.code\n'
         'print("HEAVY", sorted(m for m in ("torch", "numpy", "pandas", "pyarrow") if m in sys.modules))\n'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'usage:' in done.stdout and done.stdout.strip().splitlines()[-1] == 'HEAVY []'


def test_short_run_reports_positive_rates(tmp_path):
    report = tmp_path / 'speed.json'
    done = subprocess.run([sys.executable, str(SCRIPT), '--num', '2', '--repeats', '2', '--profiles', 'demo', 'highway',
                           '--scenes_per_map', '2', '--json', str(report)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert [r['profile'] for r in result['results']] == ['demo', 'highway']
    for r in result['results']:
        assert r['num'] == 2 and r['repeats'] == 2 and r['scenes_per_map'] == 2
        assert len(r['generate_cpu_s_passes']) == 2 and len(r['write_cpu_s_passes']) == 2
        assert r['generate_cpu_s_per_scenario'] == pytest.approx(min(r['generate_cpu_s_passes']) / 2)
        assert r['generate_cpu_s_per_scenario'] > 0 and r['write_cpu_s_per_scenario'] > 0
        assert r['generate_scenarios_per_s'] == pytest.approx(1 / r['generate_cpu_s_per_scenario'])
        assert r['write_scenarios_per_s'] == pytest.approx(1 / r['write_cpu_s_per_scenario'])
    assert '| demo |' in done.stdout and '| highway |' in done.stdout and 'scenarios/s' in done.stdout


def test_baseline_comparison_reports_both_generators(tmp_path):
    # the checkout against itself: both generators are imported and timed scene by scene
    report = tmp_path / 'compare.json'
    done = subprocess.run([sys.executable, str(SCRIPT), '--num', '2', '--repeats', '1', '--profiles', 'demo',
                           '--baseline', str(ROOT), '--json', str(report)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result['baseline'] == str(ROOT)
    [r] = result['results']
    assert r['profile'] == 'demo' and r['num'] == 2
    assert r['baseline_scenarios_per_s'] > 0 and r['this_scenarios_per_s'] > 0
    assert r['baseline_write_scenarios_per_s'] > 0 and r['this_write_scenarios_per_s'] > 0
    assert '| demo | in memory |' in done.stdout and '| demo | with file writes |' in done.stdout
    assert 'x |' in done.stdout
