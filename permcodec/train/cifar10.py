"""CIFAR-10, binary or python version, and the unpickler the python version needs.

    dataset = load_cifar10("~/data")   # cifar-10-batches-bin/ or -py/, or the batches themselves

Every file is untrusted: the python batches go through an unpickler that admits
only the globals a numpy array needs, so a hostile pickle cannot run code.
"""

import io
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from permcodec.errors import FormatError

from .dataset import Dataset, check_directory, check_labels, dataset_from_arrays

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_SUBDIRS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}
CIFAR10_IMAGE_SHAPE = (3, 32, 32)  # R, G, B planes, each row-major 32x32
CIFAR10_PIXELS = math.prod(CIFAR10_IMAGE_SHAPE)
CIFAR10_RECORD_SIZE = 1 + CIFAR10_PIXELS  # label byte, then pixels


def load_cifar10(directory: str | os.PathLike) -> Dataset:
    """Load CIFAR-10, binary or python version, from `directory` or its cifar-10-batches-* child."""
    directory = check_directory(directory)
    batches_dir, version = _find_cifar10_batches(directory)
    read_batch = _read_cifar10_bin_batch if version == "bin" else _read_cifar10_py_batch
    train = [read_batch(batches_dir / _cifar10_file_name(stem, version)) for stem in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = read_batch(batches_dir / _cifar10_file_name(CIFAR10_TEST_BATCH, version))
    train_x = np.concatenate([images for images, _ in train])
    train_y = np.concatenate([labels for _, labels in train])
    return dataset_from_arrays("cifar10", train_x, train_y, test_x, test_y)


def _cifar10_file_name(stem: str, version: str) -> str:
    return f"{stem}.bin" if version == "bin" else stem


def _cifar10_file_names(version: str) -> list[str]:
    return [_cifar10_file_name(stem, version) for stem in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)]


def _find_cifar10_batches(directory: Path) -> tuple[Path, str]:
    """The directory holding the batches, and "bin" or "py"; the binary version wins (no pickle)."""
    candidates = [(directory, "bin"), (directory, "py")]
    candidates += [(directory / subdir, version) for version, subdir in CIFAR10_SUBDIRS.items()]
    for batches_dir, version in candidates:
        if any((batches_dir / name).is_file() for name in _cifar10_file_names(version)):
            return batches_dir, version
    raise FormatError(
        f"no CIFAR-10 batches in {directory}: looked for {', '.join(_cifar10_file_names('bin'))} "
        f"(binary version) or {', '.join(_cifar10_file_names('py'))} (python version), "
        f"in {directory} itself or in its {' or '.join(CIFAR10_SUBDIRS.values())} subdirectory"
    )


def _read_cifar10_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size == 0 or size % CIFAR10_RECORD_SIZE:
        raise FormatError(
            f"{path}: size must be a positive multiple of {CIFAR10_RECORD_SIZE} (one record), found {size} bytes"
        )
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_SIZE)
    labels = records[:, 0]
    check_labels(labels, path)
    return records[:, 1:].reshape(-1, *CIFAR10_IMAGE_SHAPE), labels


def _read_cifar10_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_restricted_pickle(path.read_bytes(), path)
    if not isinstance(batch, dict):
        raise FormatError(f"{path}: a CIFAR-10 batch must be a dict, found {type(batch).__name__}")
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR10_PIXELS):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise FormatError(f"{path}: b'data' must be a uint8 array (N, {CIFAR10_PIXELS}), found {found}")
    if not (isinstance(labels, list) and all(type(label) is int for label in labels)):
        raise FormatError(f"{path}: b'labels' must be a list of ints, found {type(labels).__name__}")
    if len(labels) != len(data):
        raise FormatError(f"{path}: b'data' holds {len(data)} images but b'labels' holds {len(labels)} labels")
    labels = np.array(labels, dtype=np.int64)
    check_labels(labels, path)
    return data.reshape(-1, *CIFAR10_IMAGE_SHAPE), labels


# --- the restricted unpickler ---------------------------------------------------


def _numpy_pickle_globals() -> dict[tuple[str, str], object]:
    # numpy >= 2 writes numpy._core, older numpy (and the official CIFAR files) numpy.core;
    # both names map to the objects of the numpy installed, without importing the
    # deprecated numpy.core shim. Protocol 5 pickles use _frombuffer instead of _reconstruct.
    try:
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy < 1.26
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _codecs_encode()}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return allowed


def _codecs_encode():
    import _codecs  # protocol 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")

    return _codecs.encode


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, bytes, str, ints and numpy arrays, and nothing else."""

    allowed_globals = _numpy_pickle_globals()

    def __init__(self, stream, path: Path):
        super().__init__(stream, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return self.allowed_globals[(module, name)]
        except KeyError:
            raise FormatError(
                f"{self.path}: pickle refers to global {module}.{name}, which is refused; "
                "only numpy array globals are allowed"
            ) from None


def load_restricted_pickle(data: bytes, path: str | os.PathLike) -> object:
    """Unpickle `data` (read from `path`, named in errors) admitting only numpy array globals."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), Path(path)).load()
    except FormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError, struct.error) as error:
        raise FormatError(f"{path}: not a valid pickle ({type(error).__name__}: {error})") from error
