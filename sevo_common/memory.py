"""Hand freed heap memory back to the operating system.

A long online run allocates and frees tensors of ever-changing sizes (batches, growing tables,
per-snapshot products). glibc's allocator keeps much of what is freed in its arenas, so the
resident set creeps up although the live state does not. ``malloc_trim(0)`` releases the free
top-of-heap and whole free pages; the run loop calls :func:`release_free_memory` every so often.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["release_free_memory"]


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None on other C libraries / platforms."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return free heap memory to the OS where the C library can (glibc); True if it did."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
