"""Suite-wide: give freed heap pages back to the system after each test module.

glibc keeps memory that worker threads freed in their own arenas, so the one
pytest process would carry every threaded module's high-water mark into the
next (~215 MiB after ``test_concurrency``'s numba case alone) and the suite's
peak RSS would be a sum of leftovers rather than what any test needs.
"""

import ctypes
import ctypes.util

import pytest


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = _malloc_trim()


@pytest.fixture(autouse=True, scope="module")
def _give_freed_heap_back_after_each_module():
    yield
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
