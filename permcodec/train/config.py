"""The settings of a training run: one dataclass with a comment per field, and its check.

    config = check_config(TrainConfig(model="conv7", epochs=10, k=20, seed=0))
    k_for_epoch(TrainConfig(k=20, k_schedule=parse_k_schedule("51:100")), 60)  # 100
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..devices import checked_device
from ..errors import FormatError, SpecError
from ..rows import DEFAULT_BLOCK_LAYOUT, BlockLayout

OPTIMIZERS = ("adam", "sgd")
K_RULES = ("since_sync", "global_step")  # the same names as LaPerm's k_rule
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
    k_schedule: list | None = None  # [[epoch, k], ...]: from that epoch (1-based) on, k is this; before the first, k
    k_rule: str = "since_sync"      # since_sync: k steps after the last sync; global_step: when step % k == 0
    seed: int = 0                   # Philox seed of the init; also seeds dropout and shuffling
    dist: str = "he_uniform"        # init distribution (init_), the paper's default
    dist_params: dict | None = None  # its parameters, init_'s keywords: low/high, mean/std, density, value, base,
    #                                  num_levels
    block: int | None = None        # block-local permutations: blocks of about this many positions (None: rows)
    block_layout: str = DEFAULT_BLOCK_LAYOUT  # how positions form blocks: shuffled, strided or contiguous
    baseline: bool = False          # train with the inner optimizer alone (no permutation)
    augment: bool = True            # the notebooks' on-device augmentation
    reset_bn: bool = False          # reset BN gamma/beta at each sync (the rebuttal's variant)
    keep: str = "last"              # which weights to save: last (final sync) or best (best synced test acc)
    device: str = "auto"            # auto (CUDA when present), cpu, cuda or cuda:N (torchrun: cuda is the local rank's)
    save_every: int | None = None   # write a resume checkpoint every N epochs (to train's checkpoint_path)


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
    check_k_schedule(config.k_schedule)
    if config.k_rule not in K_RULES:
        raise SpecError(f"k_rule must be 'since_sync' or 'global_step', found {config.k_rule!r}")
    if config.save_every is not None and not _positive_int(config.save_every):
        raise SpecError(f"save_every must be a positive number of epochs, found {config.save_every!r}")
    if config.epochs <= 0 or (config.steps is not None and config.steps <= 0):
        raise SpecError(f"epochs and steps must be positive, found epochs={config.epochs} steps={config.steps}")
    if config.batch_size <= 0:
        raise SpecError(f"batch_size must be positive, found {config.batch_size}")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise SpecError(f"lr must be a positive number, found {config.lr}")
    if config.keep not in ("last", "best"):
        raise SpecError(f"keep must be 'last' or 'best', found {config.keep!r}")
    checked_device(config.device, allow_auto=True)
    check_dist(config.dist, config.dist_params)
    if config.block is not None:
        BlockLayout(config.block_layout, config.block)
        if config.block == 1:  # valid in the format (init_ takes it), but a run of it could never move a weight
            raise SpecError("block 1 leaves nothing to permute (each block holds one position, so training could "
                            "not change a weight); use a block of 2 or more")
    elif config.block_layout != DEFAULT_BLOCK_LAYOUT:
        raise SpecError(f"block_layout {config.block_layout!r} needs a block size (--block B)")
    return config


def check_dist(dist: str, params: dict | None) -> None:
    """SpecError, before any training, for a distribution or parameters ``init_`` would refuse."""
    from ..init.distributions import make_params  # torch: kept out of `permcodec train --help`

    if params is not None and not isinstance(params, dict):
        raise SpecError(f"dist_params must be a dict of init_ keywords, found {params!r}")
    make_params(dist, (2, 2), **dict(params or {}))


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_k_schedule(schedule) -> None:
    """None, or a list of [epoch, k] pairs of positive ints with epochs strictly ascending."""
    if schedule is None:
        return
    pairs_ok = isinstance(schedule, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(_positive_int(v) for v in pair) for pair in schedule)
    if not pairs_ok:
        raise SpecError(f"k_schedule must be a list of [epoch, k] pairs of positive integers, found {schedule!r}")
    epochs = [epoch for epoch, _ in schedule]
    if epochs != sorted(set(epochs)):
        raise SpecError(f"k_schedule epochs must be strictly ascending, found {epochs}")


def parse_k_schedule(text: str) -> list[list[int]]:
    """Read "51:100,81:200" as [[51, 100], [81, 200]]: from epoch 51 on k is 100, from epoch 81 on 200."""
    schedule = []
    for item in text.split(","):
        epoch, sep, k = item.strip().partition(":")
        if not sep or not epoch.strip().isdigit() or not k.strip().isdigit():
            raise SpecError(f"k schedule must be EPOCH:K pairs separated by commas (e.g. 51:100,81:200), "
                            f"found {text!r}")
        schedule.append([int(epoch), int(k)])
    check_k_schedule(schedule)
    return schedule


def k_for_epoch(config: TrainConfig, epoch: int) -> int:
    """The sync period k in force during ``epoch`` (1-based)."""
    k = config.k
    for first, value in config.k_schedule or ():
        if epoch >= first:
            k = value
    return k


def config_from_dict(saved: dict) -> TrainConfig:
    """The TrainConfig a checkpoint's "config" records, checked; fields it lacks take today's defaults."""
    if not isinstance(saved, dict) or not all(isinstance(key, str) for key in saved):
        raise FormatError(f"the stored config must be a map of settings, found {type(saved).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise SpecError(f"checkpoint config has fields this version does not know: {', '.join(unknown)}")
    try:
        config = TrainConfig(**saved)
        check_config(replace(config, device="auto"))  # the device may change on resume: checked then, not here
        return config
    except (TypeError, ValueError) as err:  # SpecError is a ValueError: a setting check_config refuses
        raise FormatError(f"the stored config holds a setting this version does not accept ({err})") from None
