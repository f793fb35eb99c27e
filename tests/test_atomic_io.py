"""utils.atomic_io: a failed write leaves the old file untouched and no temporary file behind."""
import os

import pytest

from utils.atomic_io import atomic_output_path, atomic_write, atomic_write_text


def test_atomic_write_publishes_complete_file(tmp_path):
    target = tmp_path / 'sub' / 'result.json'
    atomic_write_text(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert os.listdir(target.parent) == ['result.json']


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / 'result.txt'
    target.write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_write(target, 'w') as f:
            f.write('half of the new')
            raise RuntimeError('killed mid-write')
    assert target.read_text() == 'old'
    assert os.listdir(tmp_path) == ['result.txt']


def test_output_path_keeps_suffix_and_publishes(tmp_path):
    target = tmp_path / 'plot.png'
    with atomic_output_path(target) as temporary:
        assert temporary.suffix == '.png' and temporary.parent == tmp_path
        temporary.write_bytes(b'png')
        assert not target.exists()
    assert target.read_bytes() == b'png'
    assert os.listdir(tmp_path) == ['plot.png']


def test_mode_must_be_write(tmp_path):
    with pytest.raises(ValueError, match='mode'):
        with atomic_write(tmp_path / 'x', 'a'):
            pass
