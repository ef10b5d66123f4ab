"""The one place that picks the integer kernels: numba when it is installed, unless PERMCODEC_BACKEND=numpy.

Each accelerated module has two files with the same function names, a numba
one and a fallback (``format/_rans_numba.py`` and ``_rans_numpy.py``;
``init/_philox_numba.py`` and ``_philox_arrays.py``). They give identical
words, and the tests compare them; ``kernels`` hands out the chosen one.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import stat
import tempfile
from pathlib import Path

from .errors import SpecError

NAMES = ("numba", "numpy")
AVAILABLE = NAMES if importlib.util.find_spec("numba") is not None else ("numpy",)
ENVIRONMENT_VARIABLE = "PERMCODEC_BACKEND"


def chosen(backend: str | None = None) -> str:
    """``backend`` if given, else $PERMCODEC_BACKEND, else numba where it is installed.

    An unknown name is a SpecError. Asking for numba by name where it is not
    installed is a ValueError; the environment's default falls back to numpy.
    """
    if backend is None:
        wanted = os.environ.get(ENVIRONMENT_VARIABLE, AVAILABLE[0])
        if wanted not in NAMES:
            raise SpecError(f"{ENVIRONMENT_VARIABLE} must be 'numba' or 'numpy', found {wanted!r}")
        return wanted if wanted in AVAILABLE else AVAILABLE[0]
    if backend not in AVAILABLE:
        raise ValueError(f"backend {backend!r} is not available here; available: {', '.join(AVAILABLE)}")
    return backend


def kernels(package: str, numba_module: str, fallback_module: str, backend: str | None = None):
    """The module of ``package`` that implements the chosen backend (imported on first use)."""
    if chosen(backend) == "numba":
        prepare_numba_cache()
        return importlib.import_module(f"{package}.{numba_module}")
    return importlib.import_module(f"{package}.{fallback_module}")


# Where numba caches the @njit(cache=True) kernels: $NUMBA_CACHE_DIR if set, else the
# __pycache__ beside each source file, else its user-wide dir (~/.cache/numba). When none
# is writable (a read-only install run by a user without a writable home) numba raises
# RuntimeError("no locator available") as the kernel module is imported.
NUMBA_KERNEL_DIRS = ("format", "init")  # the subpackages holding _*_numba.py


@functools.cache
def prepare_numba_cache() -> None:
    """Give numba a private cache dir under the temp dir when it would have none; call before importing a kernel."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    from numba.misc.appdirs import AppDirs

    in_tree = [Path(__file__).parent / name / "__pycache__" for name in NUMBA_KERNEL_DIRS]
    user_wide = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    if all(map(_writable_dir, in_tree)) or _writable_dir(user_wide):
        return
    path = str(_private_temp_dir())
    os.environ["NUMBA_CACHE_DIR"] = path  # read again whenever numba reloads its config

    import numba

    numba.config.CACHE_DIR = path


def _writable_dir(path: Path) -> bool:
    """The test numba applies: the dir can be created and a file made in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _private_temp_dir() -> Path:
    """<tempdir>/permcodec-numba-<uid>, kept across runs if ours alone (numba's cache files are pickles),
    else a fresh one."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = Path(tempfile.gettempdir()) / f"permcodec-numba-{uid}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode) and (uid is None or info.st_uid == uid) and not info.st_mode & 0o077:
            return path
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="permcodec-numba-"))
