"""The one place that picks the integer kernels: numba when it is installed, unless PERMCODEC_BACKEND=numpy.

Each accelerated module has two files with the same function names, a numba
one and a fallback (``format/_rans_numba.py`` and ``_rans_numpy.py``;
``init/_philox_numba.py`` and ``_philox_arrays.py``). They give identical
words, and the tests compare them; ``kernels`` hands out the chosen one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
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
        return importlib.import_module(f"{package}.{numba_module}")
    return importlib.import_module(f"{package}.{fallback_module}")


# Where numba caches the @njit(cache=True) kernels: $NUMBA_CACHE_DIR if set, else the
# __pycache__ beside each source file, else its user-wide dir (~/.cache/numba). When none
# is writable (a read-only install run by a user without a writable home) numba raises
# RuntimeError("no locator available") as the kernel module is imported.
NUMBA_KERNEL_DIRS = ("format", "init")  # the subpackages holding _*_numba.py
PACKAGE_DIR = Path(__file__).parent


@functools.cache
def prepare_numba_cache() -> None:
    """Called by each kernel module before it defines a kernel: a private cache dir under the temp dir where
    numba would have none, then no stale cached kernel (``forget_stale_kernels``)."""
    if not os.environ.get("NUMBA_CACHE_DIR"):
        _give_numba_a_cache_dir()
    forget_stale_kernels(PACKAGE_DIR)


def _give_numba_a_cache_dir() -> None:
    from numba.misc.appdirs import AppDirs

    in_tree = [PACKAGE_DIR / name / "__pycache__" for name in NUMBA_KERNEL_DIRS]
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


# numba checks a cached kernel against the file that defines it, and no other (a documented limit of its
# cache): a kernel keeps the functions it calls from other files, and the constants it imports, as they were
# when it was cached. After an edit to any of those alone it would run code older than its sources (once, a
# stale group width wrote past an array). So each cache dir of the kernels holds a record of the digest of every
# file they import, and where that changed, the kernels cached there are deleted before any is loaded; and each
# kernel's numba stamp carries that digest too (``stamp_kernels``), so that a process which imported older
# sources cannot cache its kernels for newer ones.
KERNEL_GLOB = "_*_numba.py"  # a kernel file, in each of NUMBA_KERNEL_DIRS
KERNEL_RECORD = "permcodec-kernel-sources.json"
RECORD_LIMIT = 1 << 16  # bytes; a record lists a few dozen files
_sources_digest: str | None = None  # the digest of the kernels' files as this process found them


def forget_stale_kernels(package_dir: Path) -> list[Path]:
    """Delete the cached kernels of ``package_dir`` from each cache dir numba gives them where a file they import
    changed since the dir's record was written (or it has none); returns the files deleted. While nothing
    changed it costs a few stat calls per dir."""
    global _sources_digest
    current, deleted = None, []
    for name in NUMBA_KERNEL_DIRS:
        kernels = sorted((package_dir / name).glob(KERNEL_GLOB))
        cache_dir = numba_cache_dir(kernels[0]) if kernels else None
        if cache_dir is None:
            continue
        record = _read_record(cache_dir / KERNEL_RECORD)
        names = {str(kernel.relative_to(package_dir)) for kernel in kernels}
        if record is not None and names <= record["files"].keys() and _unchanged(package_dir, record["files"]):
            _sources_digest = _sources_digest or record["digest"]
            continue
        current = current or _sources_record(package_dir)
        _sources_digest = current["digest"]
        try:
            if record is None or record["digest"] != current["digest"]:
                for kernel in kernels:
                    for cached in cache_dir.glob(f"{kernel.stem}.*.nb[ic]"):
                        cached.unlink(missing_ok=True)
                        deleted.append(cached)
            from .atomicfile import atomic_write_bytes

            atomic_write_bytes(cache_dir / KERNEL_RECORD, json.dumps(current).encode())
        except OSError:  # a cache that cannot be written holds nothing new either; the next process tries again
            pass
    return deleted


def numba_cache_dir(source: Path) -> Path | None:
    """The dir numba caches the kernels of ``source`` in, as it finds it for them (NUMBA_CACHE_DIR, beside the
    source, or the user's cache), or None where it has none."""
    from numba.core.caching import FunctionCache

    def probe():
        pass

    probe.__code__ = probe.__code__.replace(co_filename=str(source))
    try:
        return Path(FunctionCache(probe).cache_path)
    except Exception:  # no locator (nothing is cached then), or a numba whose cache differs: nothing to forget
        return None


def kernel_dependencies(package_dir: Path) -> list[Path]:
    """The kernel files of ``package_dir`` and every file of it they import, directly or not (relative
    imports, read from the source: nothing is imported to find them)."""
    found = {path for name in NUMBA_KERNEL_DIRS for path in (package_dir / name).glob(KERNEL_GLOB)}
    todo = list(found)
    while todo:
        for path in _relative_imports(todo.pop()) - found:
            found.add(path)
            todo.append(path)
    return sorted(found)


def _relative_imports(path: Path) -> set[Path]:
    """The files ``from .x import y`` statements of ``path`` name: module x, or where x is a package, its
    submodule y, else its __init__ (which then defines y)."""
    import ast

    named = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = path.parents[node.level - 1]
        target = base.joinpath(*node.module.split(".")) if node.module else base
        if target.with_suffix(".py").is_file():
            named.add(target.with_suffix(".py"))
            continue
        for alias in node.names:  # a submodule, a subpackage, or a name the package's __init__ defines
            named.add(next((path for path in (target / f"{alias.name}.py", target / alias.name / "__init__.py")
                            if path.is_file()), target / "__init__.py"))
    return {file for file in named if file.is_file()}


def _sources_record(package_dir: Path) -> dict:
    """The digest of the kernels' files (names and bytes), and each one's ``_stamp`` to tell a change."""
    digest, stamps = hashlib.sha256(), {}
    for path in kernel_dependencies(package_dir):
        name, data = str(path.relative_to(package_dir)), path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode() + data)
        stamps[name] = _stamp(path)
    return {"digest": digest.hexdigest(), "files": stamps}


def _read_record(path: Path) -> dict | None:
    """The record at ``path``, or None (stale) where it is missing, unreadable or not as written here."""
    try:
        if not path.is_file() or path.stat().st_size > RECORD_LIMIT:  # a FIFO would block the read
            return None
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("digest"), str):
        return None
    return record if isinstance(record.get("files"), dict) else None


def _unchanged(package_dir: Path, stamps: dict) -> bool:
    try:
        return all(_stamp(package_dir / name) == stamp for name, stamp in stamps.items())
    except (OSError, ValueError):  # a file gone, or a name no file can have (a NUL byte)
        return False


def _stamp(path: Path) -> list[int]:
    """What tells a change without reading the file: its ctime too, which no copy (tar, rsync -a, cp -p) sets."""
    info = path.stat()
    return [info.st_mtime_ns, info.st_ctime_ns, info.st_size]


def stamp_kernels(namespace: dict) -> None:
    """Fold the digest of the files the kernels import into numba's stamp of each cached kernel defined in
    ``namespace`` (a kernel module's globals, at its end). numba stamps a kernel's index with its own file only;
    so stamped, an index saved from other sources, even by a process that imported them before an edit and
    compiled after a newer process wrote its record, is not loaded (relies on numba 0.68's ``Cache`` layout)."""
    if _sources_digest is None:
        return
    for value in list(namespace.values()):
        cache_file = getattr(getattr(value, "_cache", None), "_cache_file", None)
        defined_here = getattr(getattr(value, "py_func", None), "__module__", None) == namespace["__name__"]
        if defined_here and isinstance(getattr(cache_file, "_source_stamp", None), bytes):
            cache_file._source_stamp = (cache_file._source_stamp, _sources_digest)
