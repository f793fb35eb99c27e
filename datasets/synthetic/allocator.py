"""The C allocator's thresholds for generating many scenes in one process.

A scene allocates and frees arrays of up to about a megabyte (route geometry, speed profiles, the simulation's
padded rows). glibc's malloc serves allocations above its mmap threshold with fresh mappings and hands the free top
of its heap back to the system above its trim threshold; both thresholds adapt to the sizes freed last, so from one
scene to the next the same arrays land on new pages, and every first touch of a page is a page fault (hundreds per
scene, a sizeable share of a scene's CPU time). Fixed thresholds above what one scene allocates keep that memory in
the process for the next scene: at most TRIM_THRESHOLD bytes of freed heap stay reserved.

The setting is process-wide and made once (`keep_freed_memory`, called by `generate_scenarios`). It changes no
generated value. C libraries other than glibc keep their own policy (keep_freed_memory returns False there).
"""
from __future__ import annotations

import ctypes
import platform
from typing import Optional

MMAP_THRESHOLD = 16 << 20    # bytes: larger single allocations still get a mapping of their own
TRIM_THRESHOLD = 64 << 20    # bytes of free heap top kept before memory is returned to the system
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameter numbers of glibc's malloc.h

_applied: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (once); False where the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if platform.libc_ver()[0] != 'glibc':
        return False
    libc = ctypes.CDLL(None)     # the C library this process runs on
    for parameter, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if libc.mallopt(parameter, value) != 1:
            raise RuntimeError(f'glibc mallopt({parameter}, {value}) failed')
    return True
