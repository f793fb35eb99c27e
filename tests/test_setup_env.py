"""scripts/setup_env.sh keeps the user's torch: it uses a python that is itself a virtual environment as it is,
makes new virtual environments see the calling python's packages, installs only what does not import (never a
second torch) and calls no pip when nothing is missing (offline machines)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# the python running the suite: a virtual environment that imports torch (the usual case on GPU machines)
TORCH_PYTHON = Path(sys.executable)

pytestmark = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason='needs the suite to run in a virtual environment')


def checkout(tmp_path: Path, extra_requirements=()) -> Path:
    """A copy of what setup_env.sh reads: scripts/ and the requirements files (plus extra lines)."""
    root = tmp_path / 'repo'
    shutil.copytree(PROJECT_ROOT / 'scripts', root / 'scripts')
    for name in ('requirements.txt', 'requirements-dev.txt'):
        shutil.copy(PROJECT_ROOT / name, root / name)
    with open(root / 'requirements-dev.txt', 'a') as f:
        f.writelines(f'{line}\n' for line in extra_requirements)
    return root


def setup(root: Path, **env: str) -> subprocess.CompletedProcess:
    """Sources setup_env.sh offline (no package index: any download attempt fails) and prints the chosen python."""
    environment = {**os.environ, 'PIP_NO_INDEX': '1', 'PIP_DISABLE_PIP_VERSION_CHECK': '1', **env}
    return subprocess.run(['bash', '-c', 'source scripts/setup_env.sh && echo "PY=$PY"'], cwd=root, env=environment,
                          capture_output=True, text=True, timeout=600)


def chosen_python(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith('PY=')][-1][3:]


def site_packages(python: Path) -> Path:
    return Path(subprocess.check_output([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                        text=True).strip())


def tiny_wheel(directory: Path) -> Path:
    """setup-probe-pkg 1.0, a pure-python wheel that depends on torch."""
    directory.mkdir()
    path = directory / 'setup_probe_pkg-1.0-py3-none-any.whl'
    info = 'setup_probe_pkg-1.0.dist-info'
    files = {'setup_probe_pkg/__init__.py': 'VALUE = 1\n',
             f'{info}/METADATA': 'Metadata-Version: 2.1\nName: setup-probe-pkg\nVersion: 1.0\nRequires-Dist: torch\n',
             f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{info}/RECORD'] = ''.join(f'{name},,\n' for name in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(path, 'w') as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return directory


def test_a_virtual_environment_with_torch_is_used_as_it_is_without_pip(tmp_path):
    root = checkout(tmp_path)
    result = setup(root, PYTHON=str(TORCH_PYTHON))
    assert chosen_python(result) == str(TORCH_PYTHON)
    assert 'installing' not in result.stdout
    assert not (root / '.venv').exists()


def test_a_new_virtual_environment_sees_the_calling_pythons_torch(tmp_path):
    # `python -m venv --system-site-packages` from a python that is itself a venv sees only the base installation
    root = checkout(tmp_path)
    venv = tmp_path / 'env'
    result = setup(root, PYTHON=str(TORCH_PYTHON), VENV=str(venv))
    python = Path(chosen_python(result))
    assert python == venv / 'bin' / 'python'
    torch_dir = subprocess.check_output([str(python), '-c', 'import importlib.util as u; '
                                         'print(u.find_spec("torch").submodule_search_locations[0])'], text=True)
    assert Path(torch_dir.strip()).parent == site_packages(TORCH_PYTHON)  # the caller's torch, not a copy
    assert 'installing' not in result.stdout
    assert not (site_packages(python) / 'torch').exists()


def test_only_what_does_not_import_is_installed_and_torch_is_kept(tmp_path):
    root = checkout(tmp_path, ['setup-probe-pkg'])
    venv = tmp_path / 'env'
    result = setup(root, PYTHON=str(TORCH_PYTHON), VENV=str(venv), PIP_FIND_LINKS=str(tiny_wheel(tmp_path / 'wheels')))
    python = Path(chosen_python(result))
    assert 'installing what' in result.stdout and ': setup-probe-pkg' in result.stdout
    installed = sorted(p.name for p in site_packages(python).iterdir() if not p.name.startswith(('_', 'pip', 'setup',
                                                                                                 'pkg_', 'distutils')))
    assert installed == ['calling_python_packages.pth']  # the probe package went in, nothing else (no torch)
    assert (site_packages(python) / 'setup_probe_pkg').is_dir()
    again = setup(root, PYTHON=str(TORCH_PYTHON), VENV=str(venv))  # everything present now: no pip
    assert chosen_python(again) == str(python) and 'installing' not in again.stdout


def test_a_requirement_that_cannot_be_installed_is_one_clear_error(tmp_path):
    root = checkout(tmp_path, ['no-such-package-for-setup-test'])
    result = setup(root, PYTHON=str(TORCH_PYTHON), VENV=str(tmp_path / 'env'))
    assert result.returncode != 0
    assert '[setup] ERROR: could not install: no-such-package-for-setup-test' in result.stderr


def test_constraints_pin_every_requirement_and_not_torch():
    sys.path.insert(0, str(PROJECT_ROOT / 'scripts'))
    from missing_requirements import requirement_lines
    pinned = {}
    for line in requirement_lines(PROJECT_ROOT / 'constraints.txt'):
        name, _, pinned_version = line.partition('==')
        pinned[name.lower()] = pinned_version
    required = {line.split('>')[0].split('=')[0].strip().lower()
                for line in requirement_lines(PROJECT_ROOT / 'requirements-dev.txt')}
    assert 'torch' not in pinned  # an installed CUDA build is kept
    assert required - {'torch'} <= set(pinned), required - set(pinned)
    assert all(pinned.values())
