"""JSON text of AV2 map point lists, written for all points at once.

A map json holds thousands of points `{"x": .., "y": .., "z": ..}` whose coordinates are rounded to centimetres.
`json.dumps` formats every float on its own (the shortest text that reads back as the same float); here the same
text is made with array operations: for a float that is the nearest one to a number with at most two decimals,
that shortest text is exactly the number's decimal digits (trailing zeros dropped, at least one decimal kept),
since two different such numbers of the magnitudes used here never share a float.

Each point becomes one row of eight-byte words (little-endian: the first byte of a word is its first character);
a mask of the same shape says which bytes belong to the text, and the masked row-major bytes are the text.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

MAX_INTEGER_DIGITS = 7    # |value| < 1e7 m: sign and integer digits fill one word
_WORD = 8
_U8 = np.dtype('<u8')   # little-endian words whatever the machine, so a word's first byte is its first character


def _word(text: str) -> int:
    """The text (at most 8 bytes) as a word, left-aligned."""
    return int.from_bytes(text.encode('ascii').ljust(_WORD, b'\0'), 'little')


def _mask_word(first: int, last: int) -> int:
    """Mask word keeping bytes first .. last - 1."""
    return int.from_bytes(bytes(1 if first <= k < last else 0 for k in range(_WORD)), 'little')


def _digit_words(width: int) -> np.ndarray:
    """[10 ** width] words with the zero-padded decimal text of 0 .. 10 ** width - 1 in their first bytes."""
    return np.array([_word(f'{n:0{width}d}') for n in range(10 ** width)], dtype=_U8)


_THREE, _TWO = _digit_words(3), _digit_words(2)
# mask of the last m bytes (the right-aligned sign and integer digits), m = 0 .. 8
_LAST_BYTES = np.array([_mask_word(_WORD - m, _WORD) for m in range(_WORD + 1)], dtype=_U8)
_DOT, _MINUS = np.uint64(ord('.')), np.uint64(ord('-'))
# the words of one point: '{"x": ', x integer, x decimals, ', "y": ', y ..., ', "z": ', z ..., '}, '
_CONSTANT = {column: (_word(text), _mask_word(0, len(text)))
             for column, text in {0: '{"x": ', 3: ', "y": ', 6: ', "z": ', 9: '}, '}.items()}
_ROW_WORDS = 10
_LAST_POINT_END = _mask_word(0, 1)          # '}' without ', '
_DECIMAL_MASKS = np.array([_mask_word(0, 2), _mask_word(0, 3)], dtype=_U8)   # '.d', '.dd'


def _integer_words(cents: np.ndarray, negative: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(text word, mask word) [K] of sign and integer digits, right-aligned (e.g. '-12' in the last 3 bytes)."""
    integer = cents // 100
    high, low = np.divmod(integer, 1000)
    high, middle = np.divmod(high, 1000)            # high < 10: the leading byte stays free for the sign
    # eight digits: a free byte and high (two-digit words hold it as '0h'), then middle and low
    text = _TWO[high] << np.uint64(0) | _THREE[middle] << np.uint64(16) | _THREE[low] << np.uint64(40)
    digits = np.ones(len(cents), dtype=np.int64)
    for power in range(1, MAX_INTEGER_DIGITS):
        digits += integer >= 10 ** power
    sign_shift = ((_WORD - 1 - digits) * 8).astype(np.uint64)
    text = np.where(negative, text & ~(np.uint64(0xFF) << sign_shift) | _MINUS << sign_shift, text)
    return text, _LAST_BYTES[digits + negative]


def _decimal_words(cents: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(text word, mask word) [K] of '.' and the decimals: '.5' for .50, '.0' for .00, '.05' for .05."""
    decimals = cents % 100
    text = _DOT | _TWO[decimals] << np.uint64(8)
    return text, _DECIMAL_MASKS[(decimals % 10 != 0).astype(np.intp)]


def number_words(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(integer text, integer mask, decimal text, decimal mask) words [K] of `values` [K], floats already rounded
    to two decimals (as np.round(x, 2) gives them): the kept bytes of both words read repr(float(value))."""
    if values.size and not np.all(np.abs(values) < 10.0 ** MAX_INTEGER_DIGITS):
        raise ValueError(f'map coordinates must be finite and below 1e{MAX_INTEGER_DIGITS} in magnitude')
    cents = np.abs(np.rint(values * 100.0)).astype(np.int64)     # exact integers at these magnitudes
    return (*_integer_words(cents, np.signbit(values).astype(np.int64)), *_decimal_words(cents))


def point_lists_text(x: np.ndarray, y: np.ndarray, z: np.ndarray, counts: np.ndarray) -> List[str]:
    """The json text of consecutive point lists ('[{"x": 1.0, "y": -2.25, "z": 0.0}, ...]', as json.dumps writes
    a list of such dicts), one per entry of `counts`; x, y, z [K] rounded to two decimals, K = sum(counts)."""
    k = len(x)
    words = np.empty((k, _ROW_WORDS), dtype=_U8)
    masks = np.empty((k, _ROW_WORDS), dtype=_U8)
    for column, (text, mask) in _CONSTANT.items():
        words[:, column] = text
        masks[:, column] = mask
    for column, values in ((1, x), (4, y), (7, z)):
        words[:, column], masks[:, column], words[:, column + 1], masks[:, column + 1] = number_words(values)
    ends = (np.cumsum(counts) - 1)[counts > 0]
    masks[ends, 9] = _LAST_POINT_END            # no ', ' after the last point of a list
    kept = masks.view(np.uint8).view(bool)       # [K, 80]: little-endian words, first byte first
    text = words.view(np.uint8)[kept].tobytes().decode('ascii')
    row_end = np.concatenate([[0], np.cumsum(kept.sum(1))])
    bounds = row_end[np.concatenate([[0], np.cumsum(counts)])].tolist()
    return ['[' + text[a:b] + ']' for a, b in zip(bounds[:-1], bounds[1:])]
