"""Suite-wide: give freed heap pages back to the system after each test module.

glibc keeps memory that worker threads freed in their own arenas, so the one
pytest process would carry every threaded module's high-water mark into the
next (~215 MiB after ``test_concurrency``'s numba case alone) and the suite's
peak RSS would be a sum of leftovers rather than what any test needs.
"""

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture
def bounds_checked(tmp_path):
    """``run(code, **env)``: Python ``code`` in a child process that compiles numba's kernels with bounds checks, in
    a cache of its own, with this folder's test modules importable; its stdout, once it exited cleanly. Out-of-bounds
    writes need not show in the bits; there they raise IndexError."""
    def run(code: str, **env: str) -> str:
        child_env = {**os.environ, **env, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path)}
        prefix = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        child = subprocess.run([sys.executable, "-c", prefix + code], env=child_env, capture_output=True, text=True,
                               timeout=600)
        assert child.returncode == 0, child.stderr[-2000:]
        return child.stdout

    return run
