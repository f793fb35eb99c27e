"""The .sh launchers' FAST switch: FAST=1 passes --speed fast to train.py / val.py / test.py, FAST=0 nothing, any
other value is a one-line error before any data is written; with the real interpreter on a CPU the scripts' own
flag check answers (the options need a CUDA GPU)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_FAST = EVAL_FAST = ['--speed', 'fast']
ALL_FAST = set(TRAIN_FAST)


def launch(script, tmp_path, python=None, **env):
    """Runs ``script`` with ROOT in tmp_path (no synthetic default is written) and returns the completed process."""
    full_env = {**os.environ, 'ROOT': str(tmp_path / 'root'), 'CKPT': str(tmp_path / 'model.ckpt'),
                'ACCELERATOR': 'cpu', 'PRETRAINED_CKPT': 'none', **env}
    if python is not None:
        full_env['PYTHON'] = python
    return subprocess.run(['bash', os.path.join(ROOT, script)], capture_output=True, text=True, timeout=120,
                          env=full_env)


@pytest.fixture
def recording_python(tmp_path):
    """An interpreter stand-in that records the arguments it is given, one per line (the launchers' PYTHON)."""
    record = tmp_path / 'argv.txt'
    stub = tmp_path / 'record_argv.sh'
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{record}"\n')
    stub.chmod(0o755)
    return str(stub), record


@pytest.mark.parametrize('script,expected', [('train.sh', TRAIN_FAST), ('val.sh', EVAL_FAST),
                                             ('test.sh', EVAL_FAST)])
def test_fast_switch_passes_the_speed_options(script, expected, tmp_path, recording_python):
    stub, record = recording_python
    done = launch(script, tmp_path, python=stub, FAST='1')
    assert done.returncode == 0, done.stderr
    argv = record.read_text().split('\n')
    assert argv[0] == script.replace('.sh', '.py')
    assert [a for a in argv if a in ALL_FAST] == expected
    done = launch(script, tmp_path, python=stub)  # FAST unset: plain run
    assert done.returncode == 0, done.stderr
    assert not ALL_FAST & set(record.read_text().split('\n'))


def test_fast_switch_errors(tmp_path):
    bad = launch('train.sh', tmp_path, FAST='yes')
    assert bad.returncode == 2 and bad.stderr.strip() == "error: FAST must be 0 or 1, got 'yes'"
    assert not (tmp_path / 'root').exists()
    if not os.path.isfile(os.path.join(ROOT, '.venv', 'bin', 'python')):
        pytest.skip('the launchers run .venv/bin/python (scripts/setup_env.sh)')
    cpu = launch('train.sh', tmp_path, FAST='1')  # the real train.py refuses the GPU options on a CPU
    assert cpu.returncode == 2
    assert cpu.stderr.strip().splitlines()[-1].startswith('error: --cuda_graphs: needs a CUDA GPU')
