"""The settings of a training run: one dataclass with a comment per field, and its check.

    config = check_config(TrainConfig(model="conv7", epochs=10, k=20, seed=0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..devices import checked_device
from ..errors import SpecError
OPTIMIZERS = ("adam", "sgd")
# The names of models.MODELS and of the datasets data.get_dataset reads, here without torch, so that
# `permcodec train --help` lists them without importing it; models.py checks that its table agrees.
MODEL_NAMES = ("mlp", "conv2", "conv4", "conv7", "conv13", "resnet50")
KNOWN_DATASETS = ("mnist5k", "mnist", "cifar10")


@dataclass
class TrainConfig:
    model: str = "conv7"            # one of MODEL_NAMES
    data: str = "mnist5k"           # mnist5k (embedded), mnist or cifar10 (need data_dir)
    data_dir: str | None = None     # directory of the dataset's files
    epochs: int = 10
    steps: int | None = None        # stop after this many optimizer steps (smoke runs)
    batch_size: int = 128           # global batch; split across ranks under torchrun
    optimizer: str = "adam"         # inner optimizer: adam or sgd (momentum 0.9)
    lr: float | None = None         # None: DEFAULT_LR of the run kind (see below)
    k: int = 20                     # sync every k inner steps
    seed: int = 0                   # Philox seed of the init; also seeds dropout and shuffling
    dist: str = "he_uniform"        # init distribution (init_), the paper's default
    baseline: bool = False          # train with the inner optimizer alone (no permutation)
    augment: bool = True            # the notebooks' on-device augmentation
    reset_bn: bool = False          # reset BN gamma/beta at each sync (the rebuttal's variant)
    keep: str = "last"              # which weights to save: last (final sync) or best (best synced test acc)
    device: str = "auto"            # auto (CUDA when present), cpu, cuda or cuda:N (torchrun: cuda is the local rank's)


# From a 4-epoch Conv7 sweep on mnist5k (README, "Learning rates"): LaPerm+Adam
# reached 0.940 / 0.963 / 0.887 test accuracy at lr 1e-3 / 3e-3 / 1e-2, Adam alone
# 0.942 / 0.948 / 0.100 (diverged). SGD rates are untested guesses, scaled 10x.
DEFAULT_LR = {("adam", False): 3e-3, ("adam", True): 3e-3, ("sgd", False): 3e-2, ("sgd", True): 1e-2}


def check_config(config: TrainConfig) -> TrainConfig:
    if config.model not in MODEL_NAMES:
        raise SpecError(f"unknown model {config.model!r}; known models: {', '.join(MODEL_NAMES)}")
    if config.optimizer not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.k <= 0:
        raise SpecError(f"k must be a positive integer, found {config.k}")
    if config.epochs <= 0 or (config.steps is not None and config.steps <= 0):
        raise SpecError(f"epochs and steps must be positive, found epochs={config.epochs} steps={config.steps}")
    if config.batch_size <= 0:
        raise SpecError(f"batch_size must be positive, found {config.batch_size}")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise SpecError(f"lr must be a positive number, found {config.lr}")
    if config.keep not in ("last", "best"):
        raise SpecError(f"keep must be 'last' or 'best', found {config.keep!r}")
    checked_device(config.device, allow_auto=True)
    return config
