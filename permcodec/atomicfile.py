"""Atomic file writes: a temp file beside the target, fsync, then rename.

A writer killed half-way leaves the target untouched (old content or none) and
at most a temp file named ``.<target>.permcodec-tmp-<pid>``, which the next
write to the same target removes once that pid is gone.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from .errors import SpecError

TEMP_MARK = ".permcodec-tmp-"


def temp_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_MARK}{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete temp files left beside ``target`` by writers that no longer run."""
    removed = []
    prefix = f".{target.name}{TEMP_MARK}"
    for candidate in target.parent.glob(f"{glob.escape(prefix)}*"):
        pid = candidate.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def check_output_path(target, suffixes: tuple[str, ...] = (), what: str = "the output",
                      overwrite: bool = True) -> Path:
    """Fail before any work is done if ``target`` cannot be written as a file, lacks one of ``suffixes``, or
    exists and ``overwrite`` is off (the CLI's default, as zstd's: ``-f/--force`` turns it on)."""
    target = Path(target)
    if suffixes and target.suffix.lower() not in suffixes:
        raise SpecError(f"{what} must end in {' or '.join(suffixes)}, found {target.name!r}")
    if not overwrite and (target.exists() or target.is_symlink()):
        raise SpecError(f"{target} already exists; pass -f/--force to overwrite it")
    if target.is_dir():
        raise IsADirectoryError(f"output path {target} is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output directory {parent} does not exist")
    return target


def _default_file_mode() -> int:
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read where Linux shows it (/proc/self/status, since 4.7) without changing it.
    os.umask can only read it by setting it: a file that another thread creates in between gets no umask at
    all (mode 0666), so that is only the fallback."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(target, write) -> None:
    """Call ``write(temp_path)`` and move the result onto ``target`` only if it succeeds."""
    target = check_output_path(target)
    remove_stale_temps(target)
    temp = temp_path_for(target)
    try:
        write(temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temp, _default_file_mode())  # some writers (safetensors) create their files 0600
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_bytes(target, data: bytes) -> None:
    atomic_write(target, lambda temp: Path(temp).write_bytes(data))
