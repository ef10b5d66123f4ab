"""The `Dataset` record every loader returns, and the checks the loaders share."""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from permcodec.errors import FormatError

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


def dataset_from_arrays(name, train_x, train_y, test_x, test_y) -> Dataset:
    """A Dataset over numpy arrays: images uint8 (N, C, H, W), labels any integer type."""
    return Dataset(
        name=name,
        train_x=torch.from_numpy(np.require(train_x, requirements=["C", "W"])),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(np.require(test_x, requirements=["C", "W"])),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=NUM_CLASSES,
    )


def check_labels(labels: np.ndarray, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        found = f"{int(labels.min())}..{int(labels.max())}"
        raise FormatError(f"{path}: labels must be in 0..{NUM_CLASSES - 1}, found {found}")


def check_directory(directory: str | os.PathLike) -> Path:
    """`directory` as a Path, ~ expanded; FileNotFoundError unless it is a directory."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"data directory {directory} does not exist or is not a directory")
    return directory
