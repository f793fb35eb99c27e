"""TFRecord files without TensorFlow: framing, CRC-32C checks, an index of record offsets.

A TFRecord file is a sequence of records, each framed as (little-endian)::

    uint64  length
    uint32  masked_crc32c(length bytes)
    bytes   payload[length]
    uint32  masked_crc32c(payload)

with ``masked_crc(x) = ((crc >> 15 | crc << 17) + 0xa282ead8) mod 2**32`` over CRC-32C (Castagnoli). Both CRCs are
verified: a flipped bit or a truncated file raises :class:`ScenarioError` naming the file and the record.

CRC-32C uses the ``google_crc32c`` or ``crc32c`` package when one is installed (hardware accelerated) and otherwise
a numpy implementation (~10 ms per MB): bytes are split into equal chunks whose CRCs are computed in parallel lanes,
then combined with the linear "append n zero bytes" operator, the same algebra as zlib's ``crc32_combine``.
"""
from __future__ import annotations

import functools
import os
import struct
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from datasets.scenario import ScenarioError

PathLike = Union[str, os.PathLike]
_HEADER = struct.Struct('<QI')
_FOOTER = struct.Struct('<I')
_MASK_DELTA = 0xA282EAD8
_POLY_REFLECTED = 0x82F63B78  # CRC-32C (Castagnoli), bit-reversed
# Refuse absurd lengths (a corrupt length whose CRC happened to match is astronomically unlikely, but a huge
# allocation from one would be unpleasant); one WOMD scenario is ~1 MB.
MAX_RECORD_BYTES = 1 << 31


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _crc_register_python(data: bytes, register: int) -> int:
    table = _TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


class _ZeroShift:
    """The linear map "feed n zero bytes into the CRC register", applied to uint32 arrays via 4 byte tables."""

    def __init__(self, columns: np.ndarray) -> None:  # columns[i] = image of register bit i
        bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1  # [256, 8]
        self.tables = []
        for k in range(4):
            cols = columns[8 * k:8 * k + 8].astype(np.uint64)
            images = np.zeros(256, dtype=np.uint64)
            for bit in range(8):
                images ^= np.where(bits[:, bit] == 1, cols[bit], np.uint64(0))
            self.tables.append(images.astype(np.uint32))

    def __call__(self, registers: np.ndarray) -> np.ndarray:
        r = registers.astype(np.uint32, copy=False)
        return (self.tables[0][r & 0xFF] ^ self.tables[1][(r >> 8) & 0xFF] ^ self.tables[2][(r >> 16) & 0xFF]
                ^ self.tables[3][r >> 24])

    def then(self, other: '_ZeroShift') -> '_ZeroShift':
        """Composition: first self, then other."""
        basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
        return _ZeroShift(other(self(basis)))


@functools.lru_cache(maxsize=None)
def _zero_shift(num_bytes: int) -> _ZeroShift:
    if num_bytes == 1:
        basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)
        return _ZeroShift(_TABLE[basis & 0xFF] ^ (basis >> 8))
    half = _zero_shift(num_bytes // 2)
    doubled = half.then(half)
    return doubled.then(_zero_shift(1)) if num_bytes % 2 else doubled


_CHUNK = 1024


def _crc32c_numpy(data: bytes) -> int:
    """CRC-32C of ``data`` (init 0xFFFFFFFF, final xor 0xFFFFFFFF) with numpy."""
    n = len(data)
    if n < 4 * _CHUNK:
        return _crc_register_python(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    buffer = np.frombuffer(data, dtype=np.uint8).copy()
    # An initial register r equals a zero register with r xor-ed into the first 4 message bytes (reflected CRC).
    buffer[:4] ^= np.uint8(0xFF)
    num_chunks = 1 << int(np.ceil(np.log2(-(-n // _CHUNK))))
    # zero bytes in front do not change a zero register: pad at the front to num_chunks equal chunks
    padded = np.zeros(num_chunks * _CHUNK, dtype=np.uint8)
    padded[num_chunks * _CHUNK - n:] = buffer
    lanes = padded.reshape(num_chunks, _CHUNK).T.copy()  # [chunk byte, chunk]
    registers = np.zeros(num_chunks, dtype=np.uint32)
    table = _TABLE
    for row in lanes:
        registers = table[(registers ^ row) & 0xFF] ^ (registers >> 8)
    length = _CHUNK
    while len(registers) > 1:  # pairwise: crc(A || B) = shift_|B|(crc(A)) ^ crc(B)
        registers = _zero_shift(length)(registers[0::2]) ^ registers[1::2]
        length *= 2
    return int(registers[0]) ^ 0xFFFFFFFF


def _pick_crc32c() -> Tuple[Callable[[bytes], int], str]:
    try:
        import google_crc32c  # type: ignore
        if google_crc32c.implementation == 'c':
            return (lambda data: int(google_crc32c.value(data))), 'google_crc32c'
    except (ImportError, AttributeError):
        pass
    try:
        import crc32c as crc32c_package  # type: ignore
        return (lambda data: int(crc32c_package.crc32c(data))), 'crc32c'
    except (ImportError, AttributeError):
        pass
    return _crc32c_numpy, 'numpy'


crc32c, CRC32C_BACKEND = _pick_crc32c()


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------------------
def index_tfrecord(path: PathLike) -> Tuple[List[Tuple[int, int]], Optional[str]]:
    """Offsets of the records of a TFRecord file without reading payloads.

    Returns ``([(payload offset, payload length), ...], problem)``: ``problem`` is None for a well-formed file,
    else a one-line description of where the framing breaks (the records before it are listed). Length CRCs are
    checked here; payload CRCs when a record is read.
    """
    records: List[Tuple[int, int]] = []
    size = os.path.getsize(path)
    with open(path, 'rb') as handle:
        position = 0
        while position < size:
            header = handle.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return records, f'record {len(records)} at byte {position}: truncated header ' \
                                 f'({len(header)} of {_HEADER.size} bytes)'
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                return records, f'record {len(records)} at byte {position}: length CRC mismatch (corrupt file)'
            if length > MAX_RECORD_BYTES:
                return records, f'record {len(records)} at byte {position}: implausible length {length}'
            end = position + _HEADER.size + length + _FOOTER.size
            if end > size:
                return records, f'record {len(records)} at byte {position}: truncated (needs {end} bytes, file ' \
                                 f'has {size})'
            records.append((position + _HEADER.size, length))
            handle.seek(end)
            position = end
    return records, None


def read_record(path: PathLike, offset: int, length: int, index: int = -1) -> bytes:
    """Payload of the record at ``offset`` (from :func:`index_tfrecord`), its CRC verified."""
    try:
        with open(path, 'rb') as handle:
            handle.seek(offset)
            blob = handle.read(length + _FOOTER.size)
    except OSError as error:
        raise ScenarioError(path, f'cannot read TFRecord file ({error.strerror or error})') from None
    where = f'record {index}' if index >= 0 else f'record at byte {offset - _HEADER.size}'
    if len(blob) < length + _FOOTER.size:
        raise ScenarioError(path, f'{where}: truncated payload')
    payload = blob[:length]
    (expected,) = _FOOTER.unpack_from(blob, length)
    if masked_crc32c(payload) != expected:
        raise ScenarioError(path, f'{where}: payload CRC mismatch (corrupt file)')
    return payload


def write_tfrecord(path: PathLike, payloads: List[bytes]) -> None:
    """Write ``payloads`` as a TFRecord file (tests and tools; not atomic)."""
    with open(path, 'wb') as handle:
        for payload in payloads:
            header = struct.pack('<Q', len(payload))
            handle.write(header + struct.pack('<I', masked_crc32c(header)) + payload
                         + struct.pack('<I', masked_crc32c(payload)))
