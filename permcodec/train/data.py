"""The trainer's datasets by name, and their batches on the device.

    dataset = get_dataset("mnist5k")                      # embedded, no download
    dataset = get_dataset("mnist", data_dir="~/mnist")    # the four IDX files, plain or .gz
    dataset = get_dataset("cifar10", data_dir="~/data")   # binary or python batches
    for images, labels in iterate_batches(dataset.train_x, dataset.train_y, 128, shuffle=True,
                                          generator=rng, device="cuda"): ...

Images stay uint8 (N, C, H, W) in memory; `iterate_batches` turns each batch into
float32 in [0, 1] on the device. The readers live in mnist.py and cifar10.py,
the augmentation in augment.py.
"""

import os

import torch

from ..errors import SpecError
from .cifar10 import load_cifar10
from .config import KNOWN_DATASETS
from .dataset import Dataset
from .mnist import load_mnist, load_mnist5k


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
