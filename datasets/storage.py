"""Compact on-disk cache of one processed scenario (the nested dict of numpy arrays of ``build_qcnet_features``).

File layout (little-endian)::

    8 bytes   magic  b'QCNSCN\\x00\\x01'
    4 bytes   uint32 format version (FORMAT_VERSION)
    4 bytes   uint32 header length H
    H bytes   UTF-8 JSON header: codec, payload sizes, scalars (ids, names, counts), array table, free-form ``meta``
    rest      payload: all arrays, byte-shuffled (byte k of every element together: floats compress ~10% better),
              concatenated and compressed with zstd (level 3: ~50 KB per Argoverse 2 scenario, ~0.1 ms to decode)

No pickle: loading a cache file never executes code. Writes are atomic (temporary file in the same directory, then
``os.replace``), so a killed preprocessing run never leaves a truncated file under a final name.
A file written by another format version raises :class:`CacheVersionError` telling the user to re-run preprocessing.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa

from utils.atomic_io import atomic_write_bytes as _atomic_write_bytes

FORMAT_VERSION = 1
CACHE_SUFFIX = '.qcs'
MAGIC = b'QCNSCN\x00\x01'
_PREFIX = struct.Struct('<8sII')
_CODEC_NAME = 'zstd'
_CODEC_LEVEL = 3
_EDGE_KEY_SEPARATOR = '__'  # ('map_point', 'to', 'map_polygon') <-> 'map_point__to__map_polygon' in the header

PathLike = Union[str, os.PathLike]


class CacheError(RuntimeError):
    """A processed cache file that cannot be read. ``str(err)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: object, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f'{self.path}: {problem}')

    def __reduce__(self):
        return self.__class__, (self.path, self.problem)


class CacheVersionError(CacheError):
    """The file was written by another cache format version."""


def _codec() -> pa.Codec:
    if not pa.Codec.is_available(_CODEC_NAME):  # pragma: no cover - every pyarrow wheel ships zstd
        raise RuntimeError(f'this pyarrow build lacks the {_CODEC_NAME} codec needed by the processed-data cache')
    return pa.Codec(_CODEC_NAME, compression_level=_CODEC_LEVEL)


def _key_to_text(key: Union[str, Tuple[str, ...]]) -> str:
    return _EDGE_KEY_SEPARATOR.join(key) if isinstance(key, tuple) else key


def _text_to_key(text: str) -> Union[str, Tuple[str, ...]]:
    return tuple(text.split(_EDGE_KEY_SEPARATOR)) if _EDGE_KEY_SEPARATOR in text else text


def _shuffle(array: np.ndarray) -> bytes:
    if array.dtype.itemsize == 1:
        return array.tobytes()
    return np.ascontiguousarray(array).view(np.uint8).reshape(-1, array.dtype.itemsize).T.tobytes()


def _unshuffle(buffer: memoryview, dtype: np.dtype, shape: Tuple[int, ...]) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if dtype.itemsize > 1:
        raw = raw.reshape(dtype.itemsize, -1).T.copy()
    else:
        raw = raw.copy()  # own, writable memory (torch.from_numpy wants writable arrays)
    return raw.view(dtype).reshape(shape)


def encode_features(features: Dict[Any, Any], meta: Optional[Dict[str, Any]] = None) -> bytes:
    """Serialise a (two-level) nested dict of numpy arrays / JSON scalars to the cache file bytes."""
    arrays: List[List[Any]] = []
    scalars: Dict[str, Any] = {}
    chunks: List[bytes] = []
    offset = 0
    for key, value in features.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for field, item in items:
            name = _key_to_text(key) if field is None else f'{_key_to_text(key)}/{field}'
            if isinstance(item, np.ndarray):
                chunk = _shuffle(item)
                arrays.append([name, item.dtype.str, list(item.shape), offset, len(chunk)])
                chunks.append(chunk)
                offset += len(chunk)
            else:
                scalars[name] = item  # str / int / list[str]: stored in the JSON header
    raw = b''.join(chunks)
    payload = _codec().compress(raw, asbytes=True)
    header = json.dumps({'codec': _CODEC_NAME, 'raw_size': len(raw), 'payload_size': len(payload),
                         'arrays': arrays, 'scalars': scalars, 'meta': meta or {}},
                        separators=(',', ':')).encode('utf-8')
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload


def _parse_prefix(path: PathLike, blob: bytes) -> Tuple[int, int]:
    if len(blob) < _PREFIX.size:
        raise CacheError(path, f'file is truncated ({len(blob)} bytes); delete it and re-run preprocessing')
    magic, version, header_size = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CacheError(path, 'not a processed-scenario cache file (bad magic bytes); delete it and re-run '
                               'preprocessing')
    if version != FORMAT_VERSION:
        raise CacheVersionError(path, f'processed with cache format version {version}, but this code reads version '
                                      f'{FORMAT_VERSION}: re-run preprocessing from the raw scenarios (python -m '
                                      f'datasets.preprocess --raw_dir <raw> --processed_dir <this dir> rebuilds '
                                      f'the old files; training with the raw dir given does it automatically)')
    return version, header_size


def decode_features(blob: bytes, path: PathLike = '<bytes>') -> Tuple[Dict[Any, Any], Dict[str, Any]]:
    """Inverse of :func:`encode_features`: (nested dict of numpy arrays and scalars, meta)."""
    _, header_size = _parse_prefix(path, blob)
    start = _PREFIX.size + header_size
    try:
        header = json.loads(blob[_PREFIX.size:start].decode('utf-8'))
        payload = blob[start:]
        if len(payload) != header['payload_size']:
            raise ValueError(f'payload has {len(payload)} bytes, header says {header["payload_size"]}')
        raw = memoryview(_codec().decompress(payload, header['raw_size'], asbytes=True))
        features: Dict[Any, Any] = {}
        for name, value in header['scalars'].items():
            _store(features, name, value)
        for name, dtype, shape, offset, size in header['arrays']:
            _store(features, name, _unshuffle(raw[offset:offset + size], np.dtype(dtype), tuple(shape)))
    except (ValueError, KeyError, TypeError, pa.ArrowException) as error:
        raise CacheError(path, f'corrupt cache file ({type(error).__name__}: {error}); delete it and re-run '
                               f'preprocessing') from None
    return features, header['meta']


def _store(features: Dict[Any, Any], name: str, value: Any) -> None:
    if '/' in name:
        group, field = name.split('/', 1)
        features.setdefault(_text_to_key(group), {})[field] = value
    else:
        features[_text_to_key(name)] = value


def atomic_write_bytes(path: PathLike, blob: bytes) -> None:
    """Write ``blob`` to ``path`` atomically (``utils.atomic_io``). Cache files are many and can be rebuilt: no
    flush to disk per file, the rename alone keeps a killed run from leaving a truncated file."""
    _atomic_write_bytes(path, blob, sync=False)


class UnwritableDirectoryError(OSError):
    """An output directory that cannot be created or written. ``str(err)`` is one line: ``<dir>: <problem>``."""


def ensure_writable_directory(directory: PathLike, what: str = 'processed directory',
                              fix: str = 'choose a writable processed dir') -> None:
    """Create ``directory`` if needed and check that files can be written in it, before any work is done.

    Raises :class:`UnwritableDirectoryError` naming the directory, the problem and ``fix`` (e.g. a path below a
    regular file, a read-only mount or a full disk)."""
    try:
        os.makedirs(directory, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        if error.filename is not None and os.fspath(error.filename) != os.fspath(directory):
            reason += f': {error.filename}'
        raise UnwritableDirectoryError(f'{os.fspath(directory)}: cannot write the {what} ({reason}); {fix}') from None


def save_features(path: PathLike, features: Dict[Any, Any], meta: Optional[Dict[str, Any]] = None) -> int:
    """Atomically write one processed scenario; returns the file size in bytes."""
    blob = encode_features(features, meta)
    atomic_write_bytes(path, blob)
    return len(blob)


def load_features(path: PathLike) -> Dict[Any, Any]:
    """Read one processed scenario: nested dict of numpy arrays (writable) and scalars."""
    try:
        with open(path, 'rb') as handle:
            blob = handle.read()
    except OSError as error:
        raise CacheError(path, f'cannot read processed file ({error.strerror or error})') from None
    return decode_features(blob, path)[0]


def read_header(path: PathLike) -> Dict[str, Any]:
    """Header of a cache file (``meta``, ``scalars``, array table) without decompressing the payload.

    Raises :class:`CacheVersionError` for another format version, :class:`CacheError` for a broken file."""
    try:
        with open(path, 'rb') as handle:
            prefix = handle.read(_PREFIX.size)
            _, header_size = _parse_prefix(path, prefix)
            text = handle.read(header_size)
        return json.loads(text.decode('utf-8'))
    except OSError as error:
        raise CacheError(path, f'cannot read processed file ({error.strerror or error})') from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CacheError(path, f'corrupt cache header ({error}); delete it and re-run preprocessing') from None


def is_current_cache_file(path: PathLike) -> bool:
    """True if ``path`` exists and starts with a header of the current format version (used to resume)."""
    try:
        with open(path, 'rb') as handle:
            prefix = handle.read(_PREFIX.size)
    except OSError:
        return False
    if len(prefix) < _PREFIX.size:
        return False
    magic, version, _ = _PREFIX.unpack(prefix)
    return magic == MAGIC and version == FORMAT_VERSION
